"""Measuring operators: run an operator's real tasks on this machine's processors and time them.

`measure_op` builds a one-node graph for an operator, its input shapes and a configuration, runs
it through the executor (`GraphExecutor` with a plan giving the node the configuration's degrees,
all its points on the first processor, one after another, so that no two compete for a core)
with random data, and times the forward and the backward launches: after `warmup` runs,
`repeats` runs each blocked on by an execution fence, the median is taken. Before each backward
pass the processor reads a buffer several times its L2 (`evict_cache`, not charged): in a step the
backward reads what the forward saved long before, and a backward timed right after its forward
on hot caches was priced at half the time some memory-bound kernels take in a step. What a
step's neighbouring operators would have just written, though, is warm: the first launch that
reads the operator's input (forward) or its output gradient (backward) reads it beforehand
(`warmed_args`, not charged either). `LocalMeasurer`
offers it to the cost model (`unity_legion.cost.measure.OpMeasurer`), and `measured_cost()`
builds the `MeasuredCost` that uses it (cache, fallback: see there).

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
reports. The passes are timed through the executor's profiling API (`forward_pass`,
`backward_pass`): without the loss, the update and the reads of a whole step, and with fusion
off, so that every launch runs as a task of its own, as each is priced.

Several ranks (`legate --launcher mpirun --ranks-per-node N`): every rank runs the same
measuring code (the executor is SPMD: every rank must issue the same Legate operations in the
same order); the points run on processor 0, which is rank 0's, so rank 0's clocks see the
tasks, its issuing thread and its runtime's threads: the per-rank figures (each rank has its own
issuing thread and Legion runtime, and issues every launch), but for the runtime's cost: there
what a pass waits for beyond its CPU (the ranks' runtimes agreeing on each launch, messages
between them: latency, not work) is what a step waits for, so the runtime cost is the pass's wall
time less an empty fence's, the issuing thread's CPU and the tasks'. Rank 0's measurement is
broadcast (mpi4py), so every rank holds the same figures. Measurements of a job of N > 1 ranks
are keyed apart from one-rank ones (`job_fingerprint`).

The executor is imported inside the measuring function only: importing this module starts
nothing.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, ClassVar, Sequence, TypeVar

import numpy as np

from unity_legion.cost.measure import (MeasuredCost, Measurement, machine_fingerprint,
                                       needed_grads)
from unity_legion.operators.base import Kernel, Launch, Operator, RefKind
from unity_legion.runtime import bcast, is_rank0, job_gpus, job_ranks
from unity_legion.types import OpConfig, TensorShape

T = TypeVar("T")


# how `measure_op` measures; a measurement taken another way is not reused (2: the caches
# evicted before the backward pass; 3: the inputs a step's neighbour just wrote warmed; 4: the
# pieces' origins looked up before the kernel, outside its timed run, as a replayed step finds
# them kept: executor.tasks.program_task)
METHOD = 4


def job_fingerprint() -> str:
    """`machine_fingerprint`, the measuring method, and the job's ranks when there are several
    (per-rank figures of an N-rank job are not those of a one-rank job)."""
    ranks = job_ranks()
    return (machine_fingerprint() + f"-m{METHOD}"
            + (f"-{ranks}ranks" if ranks > 1 else ""))


class LocalMeasurer:
    """The `OpMeasurer` of this job: measures with `measure_op`, agrees between ranks over MPI
    (`unity_legion.runtime`'s rank helpers)."""

    def fingerprint(self) -> str:
        return job_fingerprint()

    def gpus(self) -> int:
        return job_gpus()

    def ranks(self) -> int:
        return job_ranks()

    def is_rank0(self) -> bool:
        return is_rank0()

    def share(self, obj: T) -> T:
        return bcast(obj)

    def measure(self, op: Operator, inputs: Sequence[TensorShape], config: OpConfig,
                needs_input_grad: Sequence[bool], repeats: int, warmup: int,
                device_kind: str) -> Measurement:
        return measure_op(op, inputs, config, needs_input_grad, repeats, warmup, device_kind)

    def __repr__(self) -> str:
        return "LocalMeasurer()"


def measured_cost(cache_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> MeasuredCost:
    """A `MeasuredCost` that measures what its cache lacks on this job's processors."""
    return MeasuredCost(cache_dir=cache_dir, measurer=LocalMeasurer(), **kwargs)


# (launch tag, kernel wall seconds, kernel CPU seconds, thread id) appended by the timed tasks
_RECORDS: list[tuple[str, float, float, int]] = []
# CPU seconds the processors spent evicting their caches before a backward pass, or warming
# what a kernel's neighbours in a step would have just written (`warmed_args`): not a cost
_UNCHARGED: list[float] = []
# bytes a processor reads before a measured backward pass: several times a core's L2 (1 MiB on
# the development machine's AMD EPYC cores)
EVICT_BYTES = 8 << 20
_evict_buffers = threading.local()


def evict_cache() -> float:
    """Read EVICT_BYTES on this thread's core, pushing what it cached out of its L2; returns
    the CPU seconds it took. In a training step the backward reads what its forward saved long
    before, from farther out than the core's L2; a measurement that ran the backward right after
    the forward on the same pieces would find them in L2 (a ResNeXt step's memory-bound kernels
    ran 1.5-2x their hot-cache times)."""
    t = time.thread_time()
    buf = getattr(_evict_buffers, "buf", None)
    if buf is None:
        buf = _evict_buffers.buf = np.ones(EVICT_BYTES // 4, np.float32)
    # read, not written: clean lines, which the kernels' own loads then drop without writing
    # anything back
    buf.sum()
    return time.thread_time() - t


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
def timed_kernel(k: Kernel, tag: str, warm: tuple[str, ...] = ()) -> Kernel:
    """`k`, recording how long each of its tasks runs the kernel (one Legate task per tag);
    the arguments named in `warm` are read first (not timed)."""

    def fn(**kwargs: Any) -> None:
        if tag == "b0":   # the pass's first kernel: as a step's backward finds the caches
            _UNCHARGED.append(evict_cache())
        if warm:   # in the processor's caches, as their producer leaves them
            c = time.thread_time()
            for name in warm:
                a = kwargs[name]
                if isinstance(a, np.ndarray) and a.size:
                    a.sum()
            _UNCHARGED.append(time.thread_time() - c)
        t, c = time.perf_counter(), time.thread_time()
        k.fn(**kwargs)
        _RECORDS.append((tag, time.perf_counter() - t, time.thread_time() - c,
                         threading.get_native_id()))

    return Kernel(f"{k.name}__timed_{tag}", fn, k.stores, k.scalars, k.wants_origin)


def _timed(launches: Sequence[Launch], phase: str) -> list[Launch]:
    return [Launch(timed_kernel(l.kernel, f"{phase}{i}", warm), l.args, l.scalars)
            for i, (l, warm) in enumerate(zip(launches, warmed_args(launches, phase)))]


def warmed_args(launches: Sequence[Launch], phase: str) -> list[tuple[str, ...]]:
    """Per launch of a pass ("f" or "b"), the arguments its timed kernel reads first, untimed.
    In a step the operator's data inputs (forward) and its output gradients (backward) were
    written just before by its neighbours, so they are in the caches; the first launch that
    reads each warms it (ResNeXt's kernels measured on cold inputs cost 1.2-1.4x their in-step
    times; with every argument warmed, 0.86x)."""
    chained = RefKind.INPUT if phase == "f" else RefKind.GRAD_OUTPUT
    seen: set[Any] = set()
    out = []
    for launch in launches:
        warm = tuple(name for name, _role in launch.kernel.stores
                     if launch.args[name].ref.kind is chained
                     and launch.args[name].ref not in seen)
        seen |= {launch.args[name].ref for name in warm}
        out.append(warm)
    return out


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
    from unity_legion.pcg.graph import ComputationGraph
    from unity_legion.runtime import machine_info
    from unity_legion.types import MachineView

    info = machine_info()
    procs = info.gpus if device_kind == "gpu" else info.cpus
    if procs < 1:
        raise RuntimeError(f"measure_op: this job has no {device_kind} processors")
    needs = needed_grads(inputs, needs_input_grad)
    rng = np.random.default_rng(seed)
    g = ComputationGraph()
    tids = [g.add_input(TensorShape((None,) + tuple(s.dims[1:]), s.dtype), f"x{i}")
            for i, s in enumerate(inputs)]
    outs = g.add_node(TimedOp(op), tids, "op")
    ex = GraphExecutor(g, list(outs), seed=seed, input_grads=any(needs))
    ex.fusion = False  # one task per launch: each is timed as it is priced
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
    seeds = [ex.store_of(rng.standard_normal(shapes[t].dims).astype(shapes[t].dtype.numpy))
             for t in outs]
    degrees = ex.degrees_for(batch)
    n_fwd = len(op.forward(list(inputs), True))
    n_bwd = len(op.backward(list(inputs), list(needs)))
    fence = ex.fence

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
        _UNCHARGED.clear()
        h0, t0 = time.thread_time(), time.perf_counter()
        env, node_refs = ex.forward_pass(feeds, batch, degrees, training=True)
        h1 = time.thread_time()
        fence()
        t1 = time.perf_counter()
        c2 = thread_cpu()
        f_rec = list(_RECORDS)
        f_untimed = math.fsum(_UNCHARGED)
        _RECORDS.clear()
        _UNCHARGED.clear()
        h2 = time.thread_time()
        # as after an update: no gradient fills in the timed pass
        ex.backward_pass(env, node_refs, seeds, batch, degrees, grads_zeroed=True)
        h3 = time.thread_time()
        fence()
        t2 = time.perf_counter()
        c3 = thread_cpu()
        b_rec = list(_RECORDS)
        b_untimed = math.fsum(_UNCHARGED)
        workers |= {rec[3] for rec in f_rec + b_rec}
        if r >= warmup:
            runs.append((c0, c1, c2, c3, f_rec, b_rec, h1 - h0, h3 - h2, t1 - t0, t2 - t1,
                         e1 - e0, f_untimed, b_untimed))
    tasks = points
    fwd, bwd, fwd_host, bwd_host, fwd_k, bwd_k, fwd_wall, bwd_wall, fwd_rt, bwd_rt = (
        [] for _ in range(10))
    for c0, c1, c2, c3, f_rec, b_rec, hf, hb, wf, wb, we, f_untimed, b_untimed in runs:
        idle = cpu_split(c0, c1, main, workers).runtime
        f, b = cpu_split(c1, c2, main, workers), cpu_split(c2, c3, main, workers)
        f = replace(f, tasks=max(f.tasks - f_untimed, 0.0))
        b = replace(b, tasks=max(b.tasks - b_untimed, 0.0))
        if c0 and info.ranks > 1:
            # several ranks: what a pass waits for beyond its CPU (the ranks' runtimes agreeing
            # on every launch, messages between them) is the runtime's cost, on the wall clock:
            # the pass's wall time less an empty fence's, the issuing and the tasks (with what
            # they did uncharged)
            fwd.append(f.tasks / tasks)
            bwd.append(b.tasks / tasks)
            fwd_rt.append(max(wf - we - hf - f.tasks - f_untimed, 0.0))
            bwd_rt.append(max(wb - we - hb - b.tasks - b_untimed, 0.0))
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
