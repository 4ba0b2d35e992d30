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
  `unity_legion.cost.calibrate` (see there); the default figures below are those measured on the
  2-core development machine and are replaced by a measurement when one is cached.
Latencies are effective per-message costs of a collective library, not wire latencies: 5 us
inside a node, 10 us between nodes (typical NCCL small-message figures).
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
    launch_overhead: float = 5e-6  # seconds per task launch (runtime + dispatch)

    def __post_init__(self) -> None:
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


@dataclass(frozen=True)
class MachineModel:
    name: str
    nodes: int
    devices_per_node: int
    device: DeviceSpec
    intra: LinkSpec
    inter: LinkSpec
    source: str = ""

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
                       inter=LinkSpec(**data["inter"]), source=str(data.get("source", "")))
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


def _positive(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise MachineError(f"{what} must be a positive number, got {value!r}")


V100 = DeviceSpec("gpu", "V100-SXM2-16GB", 15.7 * TFLOPS, 125 * TFLOPS, 900 * GB, 16 * 2**30)
A100 = DeviceSpec("gpu", "A100-SXM4-80GB", 19.5 * TFLOPS, 312 * TFLOPS, 2039 * GB, 80 * 2**30)
H100 = DeviceSpec("gpu", "H100-SXM5-80GB", 67 * TFLOPS, 989 * TFLOPS, 3350 * GB, 80 * 2**30)
# This machine's CPU processors, as measured on the 2-core development machine (calibrate.py
# re-measures and caches): one Legate CPU processor runs numpy single-threaded.
LOCAL_CPU = DeviceSpec("cpu", "local-cpu", 40e9, 40e9, 8 * GB, 8 * 2**30, launch_overhead=4e-4)

PRESETS: dict[str, MachineModel] = {
    "p3.8xlarge": MachineModel("p3.8xlarge", 1, 4, V100, LinkSpec(50 * GB, 5e-6),
                               LinkSpec(1.25 * GB, 10e-6), "AWS P3, NVIDIA V100 data sheet"),
    "dgx-a100": MachineModel("dgx-a100", 1, 8, A100, LinkSpec(300 * GB, 5e-6),
                             LinkSpec(25 * GB, 10e-6), "NVIDIA A100 data sheet, DGX A100 guide"),
    "dgx-h100": MachineModel("dgx-h100", 1, 8, H100, LinkSpec(450 * GB, 5e-6),
                             LinkSpec(50 * GB, 10e-6), "NVIDIA H100 data sheet, DGX H100 guide"),
    "local": MachineModel("local", 1, 2, LOCAL_CPU, LinkSpec(4 * GB, 5e-5), LinkSpec(1 * GB, 1e-4),
                          "measured on this machine (unity_legion.cost.calibrate)"),
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
