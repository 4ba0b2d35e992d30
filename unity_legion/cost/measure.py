"""Measured operator costs: run an operator's real tasks on this machine's processors, cache it.

`MeasuredCost` implements the CostModel protocol for the local device kind. For an operator, its
input shapes and a configuration it builds a one-node graph, runs it through the executor
(`GraphExecutor` with a plan giving the node the configuration's degrees, all its points on the
first processor, one after another, so that no two compete for a core) with random data, and
times the forward and the backward launches: after `warmup` runs, `repeats` runs each blocked on
by an execution fence, the median is taken.

What is measured is CPU time, per thread, in three parts. The host cost is the issuing thread's
CPU time while it issues the pass (building the launches, the executor's bookkeeping and
zero-fills, Legate's analysis; not its wait at the fence). The device cost, per point, is the
CPU time of the processors' threads (those that ran the tasks: kernels and the Python task
wrapper) over the pass, divided by the launch's points. The runtime cost is the CPU time of the
process's other threads over the pass (Legion's dependence analysis and mapping on its utility
thread, Realm), less what an empty fence costs them. Threads are read from Linux's
`/proc/self/task/*/schedstat`; where that is missing, the kernels' CPU time in their tasks stands
for the device cost and the runtime's is taken as none. CPU time, not
wall time: a machine shared with other jobs makes a second of work take longer, which the
machine model's `RuntimeSpec.cores` (the parallel capacity measured by `calibrate`) accounts for,
once. Legate's folding of reductions and its copies between processors are not in it either (no
run reads a result back): the simulator prices those from the machine model (`RuntimeSpec.fold`,
links), so nothing is counted twice. The kernels' own CPU time in their tasks and the blocking
wall time of each pass are recorded too (`Measurement.forward_kernel`, `forward_wall`), for
reports. The measurement reaches into the executor (`_forward`, `_backward`): it must time the
passes without the loss, the update and the reads of a whole step.

Results are cached on disk, as JSON under `cache_dir` (default `$UNITY_LEGION_CACHE`, else
`~/.cache/unity_legion/costs`), keyed by the operator's type and attributes (`op.describe()`),
its input shapes and dtypes, the configuration's degrees, which inputs need gradients, the
device kind and a fingerprint of this machine (CPU model, core count, numpy and legate versions):
a second search on the same machine measures nothing (`hits` / `misses` count it).

A device that is not this machine's (a GPU preset on a machine without GPUs, any device whose
name does not start with "local") is priced by the fallback, `AnalyticCost`.

Several ranks (`legate --launcher mpirun --ranks-per-node N`): every rank runs the same
measuring code (the executor is SPMD: every rank must issue the same Legate operations in the
same order); the points run on processor 0, which is rank 0's, so rank 0's clocks see the
tasks, its issuing thread and its runtime's threads: the per-rank figures (each rank has its own
issuing thread and Legion runtime, and issues every launch), but for the runtime's cost: there
what a pass waits for beyond its CPU (the ranks' runtimes agreeing on each launch, messages
between them: latency, not work) is what a step waits for, so the runtime cost is the pass's wall
time less an empty fence's, the issuing thread's CPU and the tasks'. Rank 0's measurement is
broadcast (mpi4py), so every rank holds the same figures; rank 0 alone decides what the disk
cache holds (and writes it), so that all ranks measure the same operators in the same order,
and every rank checks that it asks for the same operator as rank 0 (a clear error, not a
deadlock, when they diverge). Measurements of a job of N > 1 ranks are keyed apart from
one-rank ones (`job_fingerprint`).

The executor is imported inside the measuring function only: importing this module (and
`unity_legion.cost`) never imports legate.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from unity_legion.cost.machine import DeviceSpec
from unity_legion.cost.op_cost import AnalyticCost, CostModel, OpCost, priced
from unity_legion.operators.base import Kernel, Launch, Operator
from unity_legion.pcg.tensor import TensorShape
from unity_legion.strategy.config import OpConfig

CACHE_ENV = "UNITY_LEGION_CACHE"
SCHEMA = "unity_legion.op_costs"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where measurements live: `cache_dir`, else $UNITY_LEGION_CACHE, else
    ~/.cache/unity_legion/costs."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "unity_legion" / "costs"


@cache
def machine_fingerprint() -> str:
    """What makes a measurement from this machine valid here: CPU model, logical cores, numpy and
    legate versions (read without importing legate)."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        legate = metadata.version("legate")
    except metadata.PackageNotFoundError:
        legate = "none"
    parts = [platform.machine(), model, str(os.cpu_count()), np.__version__, legate]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def job_ranks() -> int:
    """Ranks of the running Legate job; 1 when legate has not started (nothing is started
    here)."""
    import sys

    if "legate.core" not in sys.modules:
        return 1
    from unity_legion.runtime import machine_info

    return machine_info().ranks


def job_fingerprint() -> str:
    """`machine_fingerprint`, and the job's ranks when there are several (per-rank figures of an
    N-rank job are not those of a one-rank job)."""
    ranks = job_ranks()
    return machine_fingerprint() + (f"-{ranks}ranks" if ranks > 1 else "")


def rank_comm() -> Any:
    """MPI's world communicator when the job has several ranks (mpi4py, imported after legate,
    as it must be), else None."""
    if job_ranks() <= 1:
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD


def bcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (itself on a one-rank job)."""
    comm = rank_comm()
    return obj if comm is None else comm.bcast(obj, root=0)


def is_rank0() -> bool:
    comm = rank_comm()
    return comm is None or comm.Get_rank() == 0


@dataclass(frozen=True)
class Measurement:
    """One operator under one configuration, as measured (seconds, medians)."""

    forward: float            # seconds of one point's tasks on its processor (kernels, wrapper)
    backward: float
    forward_host: float       # the issuing thread's seconds for the pass's launches
    backward_host: float
    forward_runtime: float    # the runtime's own threads' seconds for the pass (all launches)
    backward_runtime: float
    forward_kernel: float     # kernels alone: per launch its slowest point, summed
    backward_kernel: float
    forward_wall: float       # issue + run + fence of the pass, blocking
    backward_wall: float
    launches_forward: int
    launches_backward: int
    points: int               # tasks per launch
    repeats: int
    processors: int           # local processors the measurement ran on

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Measurement":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


class CostCache:
    """A JSON file of measurements (key -> entry); writes are atomic and merge with what other
    processes wrote meanwhile."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            if self._entries is None:
                self._entries = self._load()
            return self._entries.get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        with self._lock:
            entries = self._load()
            entries[key] = entry
            self._entries = entries
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump({"schema": SCHEMA, "version": 1, "entries": entries}, f, indent=1)
            os.replace(tmp, self.path)


def cost_key(op: Operator, inputs: Sequence[TensorShape], config: OpConfig,
             needs_input_grad: Sequence[bool], device_kind: str, fingerprint: str) -> str:
    return json.dumps([op.describe(), [[list(s.dims), s.dtype.value] for s in inputs],
                       [list(d) for d in config.degrees], [bool(n) for n in needs_input_grad],
                       device_kind, fingerprint])


@dataclass
class MeasuredCost:
    """The CostModel of this machine's processors, measured (see the module doc).

    measure=False never runs anything: a measurement missing from the cache is priced by the
    fallback (a search on a machine without legate, or in a hurry)."""

    cache_dir: str | os.PathLike[str] | None = None
    repeats: int = 5
    warmup: int = 2
    measure: bool = True
    fallback: CostModel = field(default_factory=AnalyticCost)
    hits: int = 0              # answered from memory or the disk cache
    misses: int = 0            # measured (or, with measure=False, priced by the fallback)
    fallbacks: int = 0         # devices that are not this machine's, priced by the fallback

    _memo: dict[str, Measurement] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.fingerprint = job_fingerprint()
        self.cache = CostCache(cache_root(self.cache_dir) / f"ops-{self.fingerprint}.json")

    def is_local(self, device: DeviceSpec) -> bool:
        """Whether `device` is one of this machine's processors (then it is measured)."""
        if not device.name.startswith("local"):
            return False
        return device.kind == "cpu" or (device.kind == "gpu" and _local_gpus() > 0)

    def measurement(self, op: Operator, inputs: Sequence[TensorShape], config: OpConfig,
                    needs_input_grad: Sequence[bool] | None = None,
                    device_kind: str = "cpu") -> Measurement | None:
        """The measurement of `op` under `config` (from memory, disk or a new run); None when it
        is not cached and measure=False."""
        needs = _needs(inputs, needs_input_grad)
        key = cost_key(op, inputs, config, needs, device_kind, self.fingerprint)
        m = self._memo.get(key)
        multi = m is None and rank_comm() is not None
        if multi:
            # rank 0 decides from its cache; every rank must be asking for the same operator
            first, entry = bcast((key, self.cache.get(key)) if is_rank0() else None)
            if first != key:
                raise RuntimeError("MeasuredCost: the ranks asked for different operators (they "
                                   "must issue the same measurements in the same order); rank "
                                   f"0: {first}, this rank: {key}")
        if m is None:
            entry = entry if multi else self.cache.get(key)
            if entry is not None:
                try:
                    m = Measurement.from_dict(entry)
                except (KeyError, TypeError):
                    m = None
        if m is not None:
            self._memo[key] = m
            self.hits += 1
            return m
        self.misses += 1
        if not self.measure:
            return None
        m = measure_op(op, inputs, config, needs, self.repeats, self.warmup, device_kind)
        self._memo[key] = m
        if is_rank0():
            self.cache.put(key, asdict(m) | {"op": op.describe(), "config": str(config)})
        return m

    def op_cost(self, op: Operator, inputs: Sequence[TensorShape], config: OpConfig,
                device: DeviceSpec, needs_input_grad: Sequence[bool] | None = None) -> OpCost:
        if not self.is_local(device):
            self.fallbacks += 1
            return _fallback(self.fallback, op, inputs, config, device, needs_input_grad)
        m = self.measurement(op, inputs, config, needs_input_grad, device.kind)
        if m is None:
            return _fallback(self.fallback, op, inputs, config, device, needs_input_grad)
        return OpCost(m.forward, m.backward, m.launches_forward, m.launches_backward,
                      m.forward_host, m.backward_host, fills_included=True,
                      runtime_forward=m.forward_runtime, runtime_backward=m.backward_runtime)


def _fallback(model: CostModel, op: Operator, inputs: Sequence[TensorShape], config: OpConfig,
              device: DeviceSpec, needs: Sequence[bool] | None) -> OpCost:
    return priced(model, op, inputs, config, device, needs)


def _needs(inputs: Sequence[TensorShape], needs: Sequence[bool] | None) -> tuple[bool, ...]:
    if needs is None:
        return tuple(s.dtype.is_float for s in inputs)
    return tuple(bool(n) and s.dtype.is_float for n, s in zip(needs, inputs))


def _local_gpus() -> int:
    """GPUs of the running Legate job; 0 when legate has not started (nothing is started here)."""
    import sys

    if "legate.core" not in sys.modules:
        return 0
    from unity_legion.runtime import machine_info

    return machine_info().gpus


# ------------------------------------------------------------------------------------------------
# Running an operator (imports the executor, hence legate, only when called)
# ------------------------------------------------------------------------------------------------

# (launch tag, kernel wall seconds, kernel CPU seconds, thread id) appended by the timed tasks
_RECORDS: list[tuple[str, float, float, int]] = []


def thread_cpu() -> dict[int, int]:
    """CPU nanoseconds every thread of this process has run so far (Linux: /proc schedstat);
    empty where that is not available."""
    base = "/proc/self/task"
    try:
        tids = os.listdir(base)
    except OSError:
        return {}
    out = {}
    for tid in tids:
        try:
            with open(f"{base}/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


@dataclass
class CpuSplit:
    """CPU seconds of one window, split into the issuing thread, the processors' threads (those
    that ran a timed task) and the runtime's other threads."""

    host: float
    tasks: float
    runtime: float


def cpu_split(before: dict[int, int], after: dict[int, int], main: int, workers: set[int]
              ) -> CpuSplit:
    host = tasks = runtime = 0
    for tid, ns in after.items():
        d = ns - before.get(tid, 0)
        if tid == main:
            host += d
        elif tid in workers:
            tasks += d
        else:
            runtime += d
    return CpuSplit(host * 1e-9, tasks * 1e-9, runtime * 1e-9)


@cache
def timed_kernel(k: Kernel, tag: str) -> Kernel:
    """`k`, recording how long each of its tasks runs the kernel (one Legate task per tag)."""

    def fn(**kwargs: Any) -> None:
        t, c = time.perf_counter(), time.thread_time()
        k.fn(**kwargs)
        _RECORDS.append((tag, time.perf_counter() - t, time.thread_time() - c,
                         threading.get_native_id()))

    return Kernel(f"{k.name}__timed_{tag}", fn, k.stores, k.scalars, k.wants_origin)


def _timed(launches: Sequence[Launch], phase: str) -> list[Launch]:
    return [Launch(timed_kernel(l.kernel, f"{phase}{i}"), l.args, l.scalars)
            for i, l in enumerate(launches)]


@dataclass(frozen=True)
class TimedOp(Operator):
    """`inner` with every launch's kernel timed; everything else is the inner operator's."""

    inner: Operator

    op_type: ClassVar[str] = "timed"
    num_inputs: ClassVar[int | None] = None

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        return self.inner.infer_outputs(inputs)

    def weights(self, inputs: Sequence[TensorShape]) -> Any:
        return self.inner.weights(inputs)

    def saved(self, inputs: Sequence[TensorShape]) -> Any:
        return self.inner.saved(inputs)

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return self.inner.flops(inputs)

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> Any:
        return self.inner.parallel_dims(inputs)

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        return _timed(self.inner.forward(inputs, training), "f")

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]
                 ) -> list[Launch]:
        return _timed(self.inner.backward(inputs, needs_input_grad), "b")

    def describe(self) -> str:
        return self.inner.describe()


def random_inputs(op: Operator, inputs: Sequence[TensorShape], rng: np.random.Generator
                  ) -> list[np.ndarray]:
    """Random values for `inputs`: floats standard normal; integers inside the operator's table
    (`input_dim`, when it has one), else zeros."""
    out = []
    for s in inputs:
        if s.dtype.is_float:
            out.append(rng.standard_normal(s.dims).astype(s.dtype.numpy))
        else:
            bound = getattr(op, "input_dim", None) or 1
            out.append(rng.integers(0, bound, size=s.dims).astype(s.dtype.numpy))
    return out


def measure_op(op: Operator, inputs: Sequence[TensorShape], config: OpConfig,
               needs_input_grad: Sequence[bool] | None = None, repeats: int = 5,
               warmup: int = 2, device_kind: str = "cpu", seed: int = 0) -> Measurement:
    """Run `op` forward and backward on this machine's processors under `config` (every point on
    the first processor, one after another) and return the medians (see the module doc). On
    several ranks every rank must call it alike; all get rank 0's figures."""
    from unity_legion.executor.executor import GraphExecutor
    from unity_legion.mappers.machine_view import MachineView
    from unity_legion.pcg.graph import ComputationGraph
    from unity_legion.runtime import machine_info, runtime

    rt = runtime()
    info = machine_info()
    procs = info.gpus if device_kind == "gpu" else info.cpus
    if procs < 1:
        raise RuntimeError(f"measure_op: this job has no {device_kind} processors")
    needs = _needs(inputs, needs_input_grad)
    rng = np.random.default_rng(seed)
    g = ComputationGraph()
    tids = [g.add_input(TensorShape((None,) + tuple(s.dims[1:]), s.dtype), f"x{i}")
            for i, s in enumerate(inputs)]
    outs = g.add_node(TimedOp(op), tids, "op")
    ex = GraphExecutor(g, list(outs), seed=seed, input_grads=any(needs))
    for key, spec in ex.weight_specs():
        ex.set_weight(key, 0.1 * rng.standard_normal(spec.shape.dims).astype(spec.shape.dtype.numpy))
    points = max(config.num_points, 1)
    # every point in turn on the first processor: no two compete for a core (or for the two
    # hardware threads of one), so a point's time is that of one thread alone; how concurrent
    # threads share the machine is the machine model's `RuntimeSpec.cores`
    ex.set_plan({0: OpConfig(config.degrees, MachineView.contiguous(device_kind, 0, 1))})
    batch = inputs[0].dims[0]
    feeds = {t: ex.upload(a).rows(0, batch) for t, a in zip(tids, random_inputs(op, inputs, rng))}
    shapes = g.bind_batch(batch)
    seeds = [ex._store_from(rng.standard_normal(shapes[t].dims).astype(shapes[t].dtype.numpy),
                            persistent=True) for t in outs]
    degrees = ex.degrees_for(batch)
    n_fwd = len(op.forward(list(inputs), True))
    n_bwd = len(op.backward(list(inputs), list(needs)))

    def fence() -> None:
        rt.issue_execution_fence(block=True)

    main = threading.get_native_id()
    workers: set[int] = set()
    runs: list[tuple[Any, ...]] = []
    for r in range(warmup + repeats):
        fence()
        c0 = thread_cpu()
        e0 = time.perf_counter()
        fence()                     # what an empty window costs the runtime's threads
        e1 = time.perf_counter()
        c1 = thread_cpu()
        _RECORDS.clear()
        h0, t0 = time.thread_time(), time.perf_counter()
        env, node_refs = ex._forward(feeds, True, batch, degrees)
        h1 = time.thread_time()
        fence()
        t1 = time.perf_counter()
        c2 = thread_cpu()
        f_rec = list(_RECORDS)
        _RECORDS.clear()
        ex._grads_zeroed = True   # as after an update: no gradient fills in the timed pass
        h2 = time.thread_time()
        ex._backward(env, node_refs, seeds, batch, degrees)
        h3 = time.thread_time()
        fence()
        t2 = time.perf_counter()
        c3 = thread_cpu()
        b_rec = list(_RECORDS)
        workers |= {rec[3] for rec in f_rec + b_rec}
        if r >= warmup:
            runs.append((c0, c1, c2, c3, f_rec, b_rec, h1 - h0, h3 - h2, t1 - t0, t2 - t1,
                         e1 - e0))
    tasks = points
    fwd, bwd, fwd_host, bwd_host, fwd_k, bwd_k, fwd_wall, bwd_wall, fwd_rt, bwd_rt = (
        [] for _ in range(10))
    for c0, c1, c2, c3, f_rec, b_rec, hf, hb, wf, wb, we in runs:
        idle = cpu_split(c0, c1, main, workers).runtime
        f, b = cpu_split(c1, c2, main, workers), cpu_split(c2, c3, main, workers)
        if c0 and info.ranks > 1:
            # several ranks: what a pass waits for beyond its CPU (the ranks' runtimes agreeing
            # on every launch, messages between them) is the runtime's cost, on the wall clock:
            # the pass's wall time less an empty fence's, the issuing and the tasks
            fwd.append(f.tasks / tasks)
            bwd.append(b.tasks / tasks)
            fwd_rt.append(max(wf - we - hf - f.tasks, 0.0))
            bwd_rt.append(max(wb - we - hb - b.tasks, 0.0))
        elif c0:
            fwd.append(f.tasks / tasks)
            bwd.append(b.tasks / tasks)
            fwd_rt.append(max(f.runtime - idle, 0.0))
            bwd_rt.append(max(b.runtime - idle, 0.0))
        else:  # no per-thread clocks: the kernels' CPU time, nothing for the runtime
            fwd.append(sum(rec[2] for rec in f_rec) / tasks)
            bwd.append(sum(rec[2] for rec in b_rec) / tasks)
            fwd_rt.append(0.0)
            bwd_rt.append(0.0)
        # the issuing thread while it issues (waiting at a fence can spin: not a cost of a step)
        fwd_host.append(hf)
        bwd_host.append(hb)
        fwd_k.append(_per_point(f_rec))
        bwd_k.append(_per_point(b_rec))
        fwd_wall.append(wf)
        bwd_wall.append(wb)
    med = statistics.median
    m = Measurement(med(fwd), med(bwd), med(fwd_host), med(bwd_host), med(fwd_rt),
                    med(bwd_rt), med(fwd_k), med(bwd_k), med(fwd_wall), med(bwd_wall), n_fwd,
                    n_bwd, points, repeats, procs)
    return bcast(m) if info.ranks > 1 else m


def _per_point(records: Sequence[tuple[str, float, float, int]]) -> float:
    """CPU seconds one point spends in kernels: per launch its slowest point, summed."""
    slowest: dict[str, float] = {}
    for tag, _, cpu, _ in records:
        slowest[tag] = max(slowest.get(tag, 0.0), cpu)
    return math.fsum(slowest.values())
