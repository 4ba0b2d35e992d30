"""Machine models: devices, their speed and memory, and the links between them. Pure Python.

A machine is `nodes` x `devices_per_node` identical devices; devices are numbered node-major
(device d is on node d // devices_per_node), as Legate numbers processors over ranks. Links are
alpha-beta: moving b bytes costs latency + b / bandwidth; `intra` joins devices of one node,
`inter` devices of different nodes (per device: each GPU of a DGX has its own NIC).

Presets and where their figures come from (vendor data sheets; dense, no sparsity):
- "p3.8xlarge": the Unity artifact's machine, 4 x V100-SXM2-16GB (15.7 TFLOP/s fp32, 125 fp16
  tensor, 900 GB/s HBM2; NVIDIA V100 data sheet), NVLink 2.0 between every pair (2 links x 25 GB/s
  per direction; AWS P3 page and NVIDIA NVLink page), 10 Gbit/s network between instances.
- "dgx-a100": 8 x A100-SXM4-80GB (19.5 TFLOP/s fp32, 312 bf16 tensor, 2039 GB/s HBM2e; A100 data
  sheet), NVLink 3 through NVSwitch (600 GB/s per GPU both directions, 300 each way), one 200 Gbit/s
  HDR InfiniBand NIC per GPU (DGX A100 user guide).
- "dgx-h100": 8 x H100-SXM5-80GB (67 TFLOP/s fp32, 989 bf16 tensor, 3350 GB/s HBM3; H100 data
  sheet), NVLink 4 through NVSwitch (900 GB/s per GPU, 450 each way), one 400 Gbit/s NDR NIC per
  GPU (DGX H100 user guide).
- "local": this machine's CPU processors as devices, with figures measured by
  `unity_legion.profiling.calibrate` (see there); the default figures below are those measured on
  one rank of the 2-core development machine, and a job on CPUs plans and prices with its own
  machine's measurement instead when one is cached (`keras.trainer.job_model`).
Latencies are effective per-message costs of a collective library, not wire latencies: 5 us
inside a node, 10 us between nodes (typical NCCL small-message figures).

Beside the devices and links, a machine has a `RuntimeSpec`: what the runtime that drives it costs
on the host. Legate issues every launch from the one Python thread that runs the program (the
executor), so launches cannot start faster than that thread issues them; a blocking read of a
result (the executor reads the loss once the whole step is issued) costs a round trip; and
an ADD reduction of a store that several points write (a replicated weight's gradient, a Linear
split by input features) is folded by Legate copy by copy into the store, where a GPU collective
library would run a ring all-reduce. The data-sheet presets leave the host at zero (no
measurement of a host stands behind them) and keep the ring; "local" has all of it measured.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

GB = 1e9
TFLOPS = 1e12


class MachineError(ValueError):
    """A machine description that cannot be right (missing or non-positive figures)."""


@dataclass(frozen=True)
class DeviceSpec:
    kind: str                      # "gpu" or "cpu"
    name: str
    flops_fp32: float              # peak FLOP/s
    flops_bf16: float
    mem_bandwidth: float           # bytes/s
    memory: float                  # bytes
    launch_overhead: float = 5e-6  # seconds of the device per task (dispatch, task start-up)
    # Fitted to measurements (cost/gpu_calibration.py), per operator family: the fraction of peak
    # FLOP/s and of peak bandwidth its kernels reach, and its backward / forward time ratio.
    # Families not named keep op_cost's defaults. (family, value) pairs, sorted.
    efficiency: tuple[tuple[str, float], ...] = ()
    memory_efficiency: tuple[tuple[str, float], ...] = ()
    backward_ratio: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        for f in ("efficiency", "memory_efficiency", "backward_ratio"):
            object.__setattr__(self, f, _pairs(getattr(self, f), f"device {self.name!r}: {f}"))
        if self.kind not in ("cpu", "gpu"):
            raise MachineError(f"device {self.name!r}: kind must be 'cpu' or 'gpu', got {self.kind!r}")
        for f in ("flops_fp32", "flops_bf16", "mem_bandwidth", "memory"):
            _positive(getattr(self, f), f"device {self.name!r}: {f}")
        if not isinstance(self.launch_overhead, (int, float)) or self.launch_overhead < 0:
            raise MachineError(f"device {self.name!r}: launch_overhead must be >= 0, got "
                               f"{self.launch_overhead!r}")


@dataclass(frozen=True)
class LinkSpec:
    bandwidth: float               # bytes/s, each direction
    latency: float                 # seconds per message

    def __post_init__(self) -> None:
        _positive(self.bandwidth, "link bandwidth")
        if not isinstance(self.latency, (int, float)) or self.latency < 0:
            raise MachineError(f"link latency must be >= 0, got {self.latency!r}")

    def time(self, nbytes: float) -> float:
        return self.latency + nbytes / self.bandwidth if nbytes > 0 else 0.0


REDUCTIONS = ("ring", "fold", "partials")


@dataclass(frozen=True)
class RuntimeSpec:
    """The host side of a step (see the module doc).

    issue: seconds of the issuing thread per launch (the executor's Python, Legate's analysis);
        a launch's tasks cannot start before it is issued.
    sync: seconds a blocking read of a finished result costs the issuing thread (round trip);
        over several nodes, seconds from the read's issue to its value's arrival, a round trip
        between the ranks' runtimes that runs while the work it waits for does.
    posted_sync: seconds the issuing thread spends ending a step whose losses and metrics its
        tasks post to the host (the executor's posted values, pipelined steps' too) once they
        are done: its closing fence, and over several nodes the ranks' exchange of what their
        tasks posted; None: `sync`, a read.
    reduction: "ring" (replicas summed by a ring all-reduce over the links) or "fold" (the
        runtime folds each of the c partial copies, whole, into the result: c x fold.time(bytes)).
    fold: the cost of folding one copy: latency per copy, bytes folded per second (with "fold").
    cores: how much work the host thread, the processors and the runtime's own threads can do at
        once when they share the machine's cores (0: they do not share, as a GPU job's host and
        devices do not): they are then time-sliced (see the simulator). Measured as the CPU
        seconds per second the process gets with all of them busy (so it also reflects whatever
        else the machine is running at the time).
    analysis: seconds of the runtime's own thread per launch (Legion's dependence analysis and
        mapping run on one utility thread, between the issue and the tasks), for launches whose
        cost model does not measure it.
    fusion: steps a fused group holds at most (the executor's `fusion.MAX_STEPS`; 0: every
        launch is a task of its own). Consecutive launches on the same devices then run as one
        task: `issue` and `analysis` are paid once per group, `fused_issue` per launch joining
        it (binding its arguments), and the devices pay their launch overhead once per group
        and `fused_step` per step (its kernel's dispatch inside the task).
    walk_issue, walk_fused_issue: `issue` and `fused_issue` for a step the executor issues by
        walking the graph (its first two of a kind) where `issue` and `fused_issue` are those of
        steps re-issued from a recording; 0: the same. Calibrated for the record: every step
        the simulator prices is a re-issued one (pipelined steps too, since they are recorded).
    analysis_store: seconds of the runtime's thread per store a fused task binds beyond three,
        per point (`analysis` is that of a launch of three stores): Legion analyses and maps
        every region requirement of every point.
    task_store: seconds of each device per store its fused task binds beyond three, before the
        first kernel runs: Legate wraps every store the task is given, and each becomes an
        array (the instance's allocation looked up: ~12 us a store on the development machine,
        where a task's kernels can be a few hundred microseconds).
    analysis_reduction: seconds of the runtime's thread per store a task ADD-reduces into, per
        point (reduction instances made, then folded into the store).
    issue_store: seconds of the issuing thread per store a fused task binds beyond three, as it
        is submitted (each store argument added to the Legate task with its partition: ~8 us a
        store on the development machine, where a replayed task binds a hundred or more).
    reduction "partials": the executor's partial sums (fused): every point adds into its own
        piece of a stacked store, summed into the result by one more step (a pass over the
        pieces, split by rows) right before the first reader; no copies are folded.
    gather: seconds a fused task's points spend exchanging a sum they added into (batch
        statistics read by the operator's next launch) inside the task, a barrier between
        them (the executor's gathers, on one rank: `MachineModel.nodes` 1); None: the runtime
        cannot, and such a read ends the fused group (the sum settled by a task between).
    """

    issue: float = 0.0
    sync: float = 0.0
    reduction: str = "ring"
    fold: LinkSpec | None = None
    cores: float = 0.0
    analysis: float = 0.0
    fusion: int = 0
    fused_issue: float = 0.0
    fused_step: float = 0.0
    analysis_store: float = 0.0
    analysis_reduction: float = 0.0
    task_store: float = 0.0
    walk_issue: float = 0.0
    walk_fused_issue: float = 0.0
    issue_store: float = 0.0
    gather: float | None = None
    posted_sync: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.fusion, bool) or not isinstance(self.fusion, int) or self.fusion < 0:
            raise MachineError(f"runtime fusion must be an integer >= 0, got {self.fusion!r}")
        for f in ("issue", "sync", "cores", "analysis", "fused_issue", "fused_step",
                  "analysis_store", "analysis_reduction", "walk_issue", "walk_fused_issue",
                  "task_store", "issue_store"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise MachineError(f"runtime {f} must be a number >= 0, got {v!r}")
        for f in ("gather", "posted_sync"):
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise MachineError(f"runtime {f} must be a number >= 0 or null, got {v!r}")
        if self.reduction not in REDUCTIONS:
            raise MachineError(f"runtime reduction must be one of {', '.join(REDUCTIONS)}, got "
                               f"{self.reduction!r}")
        if self.reduction == "fold" and self.fold is None:
            raise MachineError("runtime reduction 'fold' needs a 'fold' link (latency per copy, "
                               "bandwidth)")

    @classmethod
    def from_dict(cls, data: Any) -> "RuntimeSpec":
        if not isinstance(data, dict):
            raise MachineError(f"machine description: 'runtime' must be an object, got {data!r}")
        data = dict(data)
        fold = data.pop("fold", None)
        try:
            return cls(**data, fold=None if fold is None else LinkSpec(**fold))
        except TypeError as exc:
            raise MachineError(f"machine description: runtime: {exc}") from None


@dataclass(frozen=True)
class MachineModel:
    name: str
    nodes: int
    devices_per_node: int
    device: DeviceSpec
    intra: LinkSpec
    inter: LinkSpec
    source: str = ""
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)

    def __post_init__(self) -> None:
        for f in ("nodes", "devices_per_node"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise MachineError(f"machine {self.name!r}: {f} must be a positive integer, got "
                                   f"{v!r}")

    @property
    def num_devices(self) -> int:
        return self.nodes * self.devices_per_node

    def node_of(self, device: int) -> int:
        return device // self.devices_per_node

    def link(self, a: int, b: int) -> LinkSpec:
        return self.intra if self.node_of(a) == self.node_of(b) else self.inter

    def with_nodes(self, nodes: int, devices_per_node: int | None = None) -> "MachineModel":
        return replace(self, nodes=nodes, devices_per_node=devices_per_node or self.devices_per_node)

    def check_devices(self, used: int, what: str = "the strategy") -> None:
        if used > self.num_devices:
            raise MachineError(f"{what} uses {used} devices but machine {self.name!r} has "
                               f"{self.num_devices} ({self.nodes} node(s) x "
                               f"{self.devices_per_node})")

    # --- files --------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"schema": "unity_legion.machine", "version": 1} | asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MachineModel":
        try:
            return cls(name=str(data["name"]), nodes=data["nodes"],
                       devices_per_node=data["devices_per_node"],
                       device=DeviceSpec(**data["device"]), intra=LinkSpec(**data["intra"]),
                       inter=LinkSpec(**data["inter"]), source=str(data.get("source", "")),
                       runtime=RuntimeSpec.from_dict(data.get("runtime", {})))
        except KeyError as exc:
            raise MachineError(f"machine description is missing {exc.args[0]!r}") from None
        except TypeError as exc:
            raise MachineError(f"machine description: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "MachineModel":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise MachineError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise MachineError(f"{path}: expected a JSON object")
        return cls.from_dict(data)


def _pairs(value: Any, what: str) -> tuple[tuple[str, float], ...]:
    """(family, positive number) pairs from a mapping or a list of pairs (as JSON gives them)."""
    items = value.items() if isinstance(value, dict) else value
    try:
        pairs = tuple(sorted((str(k), float(v)) for k, v in items))
    except (TypeError, ValueError):
        raise MachineError(f"{what} must map operator families to numbers, got {value!r}") from None
    for k, v in pairs:
        _positive(v, f"{what}[{k!r}]")
    return pairs


def _positive(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise MachineError(f"{what} must be a positive number, got {value!r}")


V100 = DeviceSpec("gpu", "V100-SXM2-16GB", 15.7 * TFLOPS, 125 * TFLOPS, 900 * GB, 16 * 2**30)
A100 = DeviceSpec("gpu", "A100-SXM4-80GB", 19.5 * TFLOPS, 312 * TFLOPS, 2039 * GB, 80 * 2**30)
# Kernel efficiencies of Hopper GPUs, fitted (cost/gpu_calibration.py) to 939 float32 timings of
# the zoo's operators measured on an H200 (PyTorch eager, cuBLAS/cuDNN, TF32 off; 2026-11-26;
# data/gpu_h200_fp32.json). The H100 shares the H200's SMs and clocks; only its memory is slower,
# and these are fractions of each card's own peaks. Memory-bound families' compute fractions only
# keep their (tiny) flops from deciding; the floor of 30 us per kernel includes the framework's
# dispatch, as a Legate GPU task's start-up would. A family the data shows compute-bound at every
# size (attention) has no bandwidth fraction: op_cost's streaming default applies to it. Keys are cost families, as the operators name
# them (`Operator.cost_family`; tests/test_cost.py checks every key is one): measured data, so
# written out here rather than derived.
HOPPER_EFFICIENCY = {"conv2d": 0.279, "linear": 0.529, "multi_head_attention": 0.529,
                     "batch_matmul": 0.529}
HOPPER_MEMORY_EFFICIENCY = {
    "activation": 1.0, "add": 0.926, "batch_norm": 0.215, "concatenate": 1.0, "conv2d": 0.092,
    "dropout": 0.584, "embedding": 1.0, "global_avg_pool2d": 0.681, "layer_norm": 0.116,
    "linear": 0.341, "pool2d": 0.126, "split": 1.0,
    "zero_pad2d": 0.464}
HOPPER_BACKWARD_RATIO = {"activation": 1.68, "batch_norm": 1.51, "conv2d": 2.25, "embedding": 3.07,
                         "layer_norm": 3.13, "linear": 1.98, "multi_head_attention": 1.79,
                         "pool2d": 1.52}
HOPPER_FLOOR = 3.04e-5
H100 = DeviceSpec("gpu", "H100-SXM5-80GB", 67 * TFLOPS, 989 * TFLOPS, 3350 * GB, 80 * 2**30,
                  HOPPER_FLOOR, HOPPER_EFFICIENCY, HOPPER_MEMORY_EFFICIENCY, HOPPER_BACKWARD_RATIO)
H200 = DeviceSpec("gpu", "H200-SXM-141GB", 67 * TFLOPS, 989 * TFLOPS, 4800 * GB, 141 * 10**9,
                  HOPPER_FLOOR, HOPPER_EFFICIENCY, HOPPER_MEMORY_EFFICIENCY, HOPPER_BACKWARD_RATIO)
# This machine's CPU processors, as measured on the 2-core development machine (calibrate.py
# re-measures and caches): one Legate CPU processor runs numpy single-threaded; a task costs its
# processor ~0.15 ms of CPU besides its kernel (the Python task wrapper).
# Its compute-bound kernels (oneDNN convolutions, ATen's attention) reach the matmul peak, or
# close (calibrate's efficiency factors: conv2d 1.0, multi_head_attention 0.7).
LOCAL_CPU = DeviceSpec("cpu", "local-cpu", 86e9, 86e9, 9.4 * GB, 8 * 2**30, launch_overhead=1.5e-4,
                       efficiency=(("conv2d", 1.0), ("multi_head_attention", 0.7)))
# The host side there, for training steps re-issued from their recording (executor/replay.py,
# every step after the second): ~60 us of the issuing thread per task and ~5 us per launch
# joining one (walking the graph, as pipelined steps are issued: ~0.2 ms and ~0.1 ms, walk_*),
# ~0.25 ms of Legion's utility thread per launch, a 12 us blocking read, Legion folding an ADD
# reduction's copies at ~1 GB/s (0.3 ms each besides), and 2 cores shared by the issuing thread, the processors and Legion's threads,
# which give about 1.6 cores' work with all of them busy (1.3-1.9 measured per strategy by
# bench_simulator; calibrate measures the share of the moment). The executor fuses launches
# (groups of up to 128; ~5-10 us of the processor per step) and sums reductions as partial
# sums (those of fewer than 4096 elements in shared banks). Legion's
# thread pays ~8.5 us more per store a fused task binds beyond three and ~130 us per store it
# ADD-reduces into, per point, and each processor ~19 us per such store before the task's
# first kernel (a fused task binds tens to hundreds of stores); the issuing thread ~4 us per
# such store as it submits the task.
LOCAL_RUNTIME = RuntimeSpec(issue=6e-5, sync=1.2e-5, reduction="partials",
                            fold=LinkSpec(1.0 * GB, 3e-4), cores=1.6, analysis=2.5e-4,
                            fusion=128, fused_issue=5e-6, fused_step=1e-5,
                            analysis_store=8.5e-6, analysis_reduction=1.3e-4,
                            task_store=1.9e-5, walk_issue=2e-4, walk_fused_issue=1e-4,
                            issue_store=4e-6)
# A fused task's points exchanging batch statistics inside it (RuntimeSpec.gather, where the
# executor's gathers are on): ~30 us a meeting (a 2-point concurrent task meeting 34 times:
# 2.2 ms against 1.2 ms meeting once, measured here).
GATHER_S = 3e-5

PRESETS: dict[str, MachineModel] = {
    "p3.8xlarge": MachineModel("p3.8xlarge", 1, 4, V100, LinkSpec(50 * GB, 5e-6),
                               LinkSpec(1.25 * GB, 10e-6), "AWS P3, NVIDIA V100 data sheet"),
    "dgx-a100": MachineModel("dgx-a100", 1, 8, A100, LinkSpec(300 * GB, 5e-6),
                             LinkSpec(25 * GB, 10e-6), "NVIDIA A100 data sheet, DGX A100 guide"),
    "dgx-h100": MachineModel("dgx-h100", 1, 8, H100, LinkSpec(450 * GB, 5e-6),
                             LinkSpec(50 * GB, 10e-6), "NVIDIA H100 data sheet, DGX H100 guide; "
                             "kernel efficiencies measured on an H200"),
    "hgx-h200": MachineModel("hgx-h200", 1, 8, H200, LinkSpec(450 * GB, 5e-6),
                             LinkSpec(50 * GB, 10e-6), "NVIDIA H200 data sheet (HGX H200: NVLink 4 "
                             "through NVSwitch, one 400 Gbit/s NIC per GPU); kernel efficiencies "
                             "measured on an H200"),
    "local": MachineModel("local", 1, 2, LOCAL_CPU, LinkSpec(3 * GB, 7e-5), LinkSpec(1 * GB, 1e-4),
                          "defaults measured on one rank of the 2-core development machine "
                          "(train.py --calibrate measures this one)",
                          LOCAL_RUNTIME),
}


def preset(name: str, nodes: int = 1, devices_per_node: int | None = None) -> MachineModel:
    """A preset by name, with `nodes` nodes (and optionally another number of devices each)."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise MachineError(f"unknown machine preset {name!r}; presets: "
                           f"{', '.join(sorted(PRESETS))} (or a JSON file)") from None
    return base.with_nodes(nodes, devices_per_node)


def machine_from(spec: str, nodes: int | None = None,
                 devices_per_node: int | None = None) -> MachineModel:
    """A preset name or a path to a machine JSON file; `nodes` / `devices_per_node` override its
    size (a plan for a cluster bigger than the machine in hand)."""
    if spec in PRESETS:
        return preset(spec, nodes or 1, devices_per_node)
    if Path(spec).is_file():
        m = MachineModel.load(spec)
        return m.with_nodes(nodes or m.nodes, devices_per_node)
    raise MachineError(f"{spec!r} is neither a machine preset ({', '.join(sorted(PRESETS))}) "
                       f"nor a machine file")
