"""Measure this machine's figures for the "local" preset, and the analytic model's efficiencies.

Everything is measured through Legate on the processors of the running job (`legate --cpus N`),
with the executor's own launch path (its profiling API: `GraphExecutor.launch`, `new_store`,
`fence`; fusion off, every launch a task of its own), as medians of repeated runs. Costs are CPU
seconds, per thread (Linux `schedstat`, as `measure.py` does here): a machine shared with other
jobs stretches wall time, which the one wall-time figure, `cores`, accounts for.

- flops_fp32: one processor's matmul rate: a serial Linear forward of 512 x 512 x 512
  (2 n^3 flops over the kernel's CPU time in its task).
- mem_bandwidth: one processor streaming a 32 MiB copy (bytes read + written over CPU time).
- runtime.cores: a compute-bound task (matmuls) on one processor alone, then one on every
  processor while the issuing thread computes as much: the work done per second over what one
  thread alone does. Costs are measured one thread at a time (`MeasuredCost` runs a launch's
  points one after another), so this is the machine's capacity in those units: it counts cores
  shared with the issuing thread, Legate's own threads and other jobs, and hardware threads that
  share a core (`measure_cores`, which a benchmark can call again: it is a figure of the
  moment).
- launch_overhead (device, per task), runtime.analysis (per launch) and runtime.issue (host, per
  launch): batches of trivial launches of three stores on one and on all processors; the CPU of
  the processors' threads per task (the Python task wrapper), of the runtime's other threads per
  launch (Legion's analysis and mapping, Realm), and of the issuing thread per launch. Operators'
  own launches are measured with them (`MeasuredCost`); these figures price the executor's glue
  launches (loss, accumulations, optimizer updates, fills, attaching the batch).
  Where the executor fuses, runtime.issue and runtime.fused_issue are then taken from the same
  launches recorded and issued again (`GraphExecutor.record` / `reissue`), as training steps
  after the second are (executor/replay.py): 20 tasks of one launch and one task of 20; and
  runtime.issue_store from replayed tasks of 2 and of 16 launches binding 12 distinct stores
  each (the host adds every store to the task it submits).
- runtime.analysis_store and runtime.analysis_reduction: the runtime's threads' CPU per launch
  over every processor of launches binding 3 and 12 stores, and 12 of which two small ones are
  ADD-reduced into: per store beyond three and per reduced store, per point. A fused task binds
  tens to hundreds of stores, and Legion analyses each for every point. Where the executor
  fuses, the per-store figure is taken from fused tasks over distinct stores instead, used as a
  step uses them (written by rows by one task, read whole or by rows by the next: a step's
  stores are each its own, and written every step; re-binding the same twelve costs Legion a
  third as much, stores only read half as much), with runtime.task_store: the processors' CPU
  per store their task binds (Legate wraps each and it becomes an array before any kernel runs).
- runtime.sync: a blocking read of a finished result (the executor reads the loss so); over
  several ranks, a launch whose points write a store on every rank and a read of it, timed
  from the launch's issue (the simulator takes it as a round trip from the read's issue).
  runtime.posted_sync: a fence with nothing pending, all that ends a step whose tasks posted
  its losses to the host (executor/posted.py), and over several ranks the ranks' exchange of
  what their tasks posted (an MPI allgather) after it.
- intra link (moving data between processors): a store written by the processors tiled by rows
  is read by them tiled by columns, each point then needing (p-1)/p of its piece from the
  others'; the CPU beyond the same read tiled by rows, at two sizes, gives latency and bandwidth
  (on one rank all processors share one memory: this is close to nothing).
- runtime.fold (reducing): every processor's point ADD-reduces into a whole store, then one task
  reads it, against every point writing its own rows of it (trivial kernels: only the runtime's
  work differs). One point reduces in place (Legion folds nothing), p points leave p copies to
  fold: the CPU the reduction adds, per copy, at two sizes, gives the per-copy latency and the
  fold bandwidth.
- efficiency factors of AnalyticCost: for the compute-bound families (conv2d,
  multi_head_attention) the fraction of the measured peak that a serial forward of a typical
  piece reaches, flops / (flops_fp32 x kernel time) (linear is 1: the peak is measured on a
  Linear); the memory efficiency from a serial
  elementwise add (its bytes over mem_bandwidth x kernel time). Factors are clipped to [0.01, 1].
  They make the analytic model (the fallback for what is not measured) agree with this machine.

The result (`unity_legion.cost.calibration.Calibration`: the machine model and the efficiencies)
is cached as JSON in the cost cache directory (`cost.measure.cache_root`), keyed by the job's
fingerprint (`profiling.measure.job_fingerprint`), so a second run measures nothing.
`local_machine()` returns the "local" preset with the measured figures (the cached ones;
measuring first if `measure` and none are cached, else the preset's defaults).
On several ranks (below) rank 0's figures are the model's: every rank's issuing thread, runtime
and processors cost what rank 0's do (they issue the same launches); nothing is summed across
processes.

If the job has GPUs, nothing here applies (the probes are CPU tasks): `calibrate` refuses.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from unity_legion.cost.calibration import (Calibration, calibration_file, read_calibration,
                                           write_calibration)
from unity_legion.cost.machine import GATHER_S, PRESETS, LinkSpec, MachineModel, RuntimeSpec
from unity_legion.operators.base import In, Out, Sum, kernel
from unity_legion.profiling.measure import cpu_split, job_fingerprint, measure_op, thread_cpu
from unity_legion.runtime import bcast, is_rank0, rank_comm
from unity_legion.types import TensorShape

def calibration_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where this job's calibration is cached."""
    return calibration_file(job_fingerprint(), cache_dir)


def cached_calibration(cache_dir: str | os.PathLike[str] | None = None) -> Calibration | None:
    return read_calibration(calibration_path(cache_dir))


def local_calibration(cache_dir: str | os.PathLike[str] | None = None, measure: bool = True,
                      refresh: bool = False) -> Calibration | None:
    """The cached calibration; measured (and cached) first when there is none (or `refresh`)
    and `measure` is true; None when there is none and `measure` is false."""
    multi = rank_comm() is not None
    cal = None if refresh or not is_rank0() else cached_calibration(cache_dir)
    if multi:
        cal = bcast(cal)     # rank 0's cache decides: every rank calibrates, or none does
    if cal is None and measure:
        cal = calibrate()
        if not is_rank0():
            return cal
        write_calibration(calibration_path(cache_dir), cal)
    return None if cal is None else with_gathers(cal)


def with_gathers(cal: Calibration) -> Calibration:
    """`cal` with RuntimeSpec.gather as this job's executors run (a setting of the job, not a
    measurement: a cached calibration serves jobs with and without it)."""
    from unity_legion.executor.executor import gathers_by_default

    rt = cal.machine.runtime
    gather = GATHER_S if cal.machine.nodes == 1 and gathers_by_default() else None
    return cal if rt.gather == gather else replace(
        cal, machine=replace(cal.machine, runtime=replace(rt, gather=gather)))


def local_machine(cache_dir: str | os.PathLike[str] | None = None, measure: bool = True,
                  refresh: bool = False) -> MachineModel:
    """The "local" preset with this machine's measured figures (see the module doc)."""
    cal = local_calibration(cache_dir, measure, refresh)
    return cal.machine if cal is not None else PRESETS["local"]


# ------------------------------------------------------------------------------------------------
# Probes (legate is imported inside `calibrate` only)
# ------------------------------------------------------------------------------------------------

_STAMPS: list[tuple[str, float]] = []   # (probe, CPU seconds in its task) written by the tasks


@kernel
def probe_copy(a: In, b: Out) -> None:
    t = time.thread_time()
    np.copyto(b, a)
    _STAMPS.append(("copy", time.thread_time() - t))


_WORKERS: set[int] = set()    # native ids of the threads that ran probe tasks (processors)


@kernel
def probe_three(a: In, b: In, c: Out) -> None:
    _WORKERS.add(threading.get_native_id())


@kernel
def probe_twelve(a0: In, a1: In, a2: In, a3: In, a4: In, a5: In, a6: In, a7: In, a8: In,
                 a9: In, a10: In, c: Out) -> None:
    _WORKERS.add(threading.get_native_id())


@kernel
def probe_write_twelve(a0: Out, a1: Out, a2: Out, a3: Out, a4: Out, a5: Out, a6: Out, a7: Out,
                       a8: Out, a9: Out, a10: Out, c: Out) -> None:
    _WORKERS.add(threading.get_native_id())


# the store parameters of probe_twelve and probe_write_twelve
_TWELVE = tuple(f"a{i}" for i in range(11)) + ("c",)
# launches per fused task in the per-store probes: the difference between the two is what
# 14 launches' stores cost
_GROUP_SIZES = (2, 16)


def _twelve_stores(pr: "_Probe", launches: int) -> list[dict[str, Any]]:
    """`launches` sets of 12 distinct stores, one set per launch of probe_twelve (64 rows a
    processor)."""
    return [{name: pr.store(64 * pr.procs, 64) for name in _TWELVE} for _ in range(launches)]


@kernel
def probe_twelve_sums(a0: In, a1: In, a2: In, a3: In, a4: In, a5: In, a6: In, a7: In, a8: In,
                      s0: Sum, s1: Sum, c: Out) -> None:
    _WORKERS.add(threading.get_native_id())


@kernel
def probe_matmuls(a: In, b: Out, times: int) -> None:
    for _ in range(times):
        np.matmul(a, a, out=b)


@kernel
def probe_reduce(acc: Sum, marker: Out) -> None:
    pass


@kernel
def probe_write(acc: Out, marker: Out) -> None:
    pass


def _median(f: Callable[[], float], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        f()
    return statistics.median(f() for _ in range(repeats))


def _fit_line(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float]:
    """(intercept, slope) of the line through two points; both kept >= 0 (a slope of at least
    1e-13 s/byte: 10 TB/s), since a measured cost below zero is noise around nothing."""
    slope = max((y1 - y0) / (x1 - x0) if x1 != x0 else 0.0, 1e-13)
    return max(y0 - slope * x0, 0.0), slope


@dataclass(frozen=True)
class _Cpu:
    host: float       # the issuing thread, while it issues
    tasks: float      # the processors' threads (those that ran probe tasks)
    runtime: float    # every other thread, less what an empty window costs them

    @property
    def total(self) -> float:
        return self.host + self.tasks + self.runtime


class _Probe:
    """Launches through the executor's own path (`GraphExecutor.launch`) on chosen processors."""

    def __init__(self) -> None:
        # Stores come from the executor (the one module that speaks Legate).
        from unity_legion.executor.executor import GraphExecutor
        from unity_legion.pcg.graph import ComputationGraph

        self.ex = GraphExecutor(ComputationGraph(), [])
        self.fusing = self.ex.fusion   # whether the executor runs fused groups in this job
        self.ex.fusion = False  # one task per launch: each is timed as it is priced

    def fence(self) -> None:
        self.ex.fence()

    def store(self, *shape: int, value: float = 1.0) -> Any:
        return self.ex.new_store(TensorShape(tuple(shape)), value)

    def launch(self, k: Any, args: Mapping[str, tuple[str | None, ...]], stores: Mapping[str, Any],
               points: int, scalars: Mapping[str, Any] | None = None, start: int = 0) -> None:
        from unity_legion.operators.base import SAMPLE, Arg, Launch, Ref, RefKind
        from unity_legion.types import MachineView

        refs = {Ref(RefKind.SAVED, name): store for name, store in stores.items()}
        launch = Launch(k, {name: Arg(Ref(RefKind.SAVED, name), split)
                            for name, split in args.items()}, dict(scalars or {}))
        self.ex.launch(launch, refs, {SAMPLE: points},
                       MachineView.contiguous("cpu", start, min(points, self.procs)))

    @property
    def procs(self) -> int:
        """Processors of the whole job (every rank's)."""
        from unity_legion.runtime import machine_info

        return machine_info().cpus

    @property
    def local(self) -> int:
        """Processors of this rank (rank 0's are the job's first ones)."""
        from unity_legion.runtime import machine_info

        return machine_info().cpus_per_rank

    def timed(self, f: Callable[[], None]) -> float:
        self.fence()
        t = time.perf_counter()
        f()
        self.fence()
        return time.perf_counter() - t

    def cpu_window(self, f: Callable[[], None]) -> "_Cpu":
        """CPU seconds of the issuing thread (while it issues), of the processors' threads and of
        the runtime's other threads while `f`'s launches are issued and run."""
        main = threading.get_native_id()
        self.fence()
        c0 = thread_cpu()
        self.fence()
        c1 = thread_cpu()
        h = time.thread_time()
        f()
        host = time.thread_time() - h   # issuing only (waiting at a fence can spin)
        self.fence()
        c2 = thread_cpu()
        idle = cpu_split(c0, c1, main, _WORKERS)
        busy = cpu_split(c1, c2, main, _WORKERS)
        return _Cpu(host, max(busy.tasks - idle.tasks, 0.0),
                    max(busy.runtime - idle.runtime, 0.0))


def calibrate(repeats: int = 9) -> Calibration:
    """Run every probe on this job's CPU processors (see the module doc)."""
    from unity_legion.executor.executor import read
    from unity_legion.operators.base import SAMPLE
    from unity_legion.operators.elementwise import Add
    from unity_legion.operators.linear import Linear
    from unity_legion.runtime import machine_info
    from unity_legion.types import OpConfig, TensorShape

    info = machine_info()
    if info.gpus:
        raise RuntimeError("calibrate: this job has GPUs; the local probes measure CPU "
                           "processors only (use a GPU preset)")
    pr = _Probe()
    procs = pr.procs
    probes: dict[str, float] = {}
    rows = (SAMPLE, None)

    # --- compute and memory of one processor (CPU time in the task) ------------------------------
    n = 512
    mm = measure_op(Linear(n, use_bias=False), [TensorShape((n, n))], OpConfig(), repeats=repeats)
    flops = 2.0 * n ** 3 / mm.forward_kernel
    elems = 8 * 2 ** 20  # 32 MiB of float32
    a, b = pr.store(elems), pr.store(elems)

    def stream() -> float:
        _STAMPS.clear()
        pr.launch(probe_copy, {"a": (SAMPLE,), "b": (SAMPLE,)}, {"a": a, "b": b}, 1)
        pr.fence()
        cpu = [sec for tag, sec in _STAMPS if tag == "copy"]
        return cpu[0] if cpu else 1.0    # the task ran on another rank (rank 0's counts)
    bandwidth = 2 * 4 * elems / _median(stream, repeats)
    if info.ranks > 1:
        bandwidth = bcast(bandwidth)
    probes |= {"matmul_512_s": mm.forward_kernel, "stream_32MiB_s": 2 * 4 * elems / bandwidth}

    # --- parallel capacity: one processor busy, then all of them (wall time) ---------------------
    cores = measure_cores(max(3, repeats // 2))
    probes |= {"cores": cores}

    # --- per-task, per-launch costs of a launch with 3 stores: processors, runtime, host ---------
    stores = {k: pr.store(64 * procs, 64) for k in ("a", "b", "c")}
    per_task, per_analysis, per_issue = [], [], []
    for points in sorted({1, procs}):
        def trivial() -> None:
            for _ in range(20):
                pr.launch(probe_three, {"a": rows, "b": rows, "c": rows}, stores, points)
        for _ in range(2):
            pr.cpu_window(trivial)
        splits = [pr.cpu_window(trivial) for _ in range(max(3, repeats // 2))]
        # the points on this rank (the first ones: rank 0's processors come first)
        per_task.append(statistics.median(s.tasks for s in splits)
                        / (20 * min(points, pr.local)))
        per_analysis.append(statistics.median(s.runtime for s in splits) / 20)
        per_issue.append(statistics.median(s.host for s in splits) / 20)
        if info.ranks > 1:
            # several ranks: the runtime's cost per launch is what a launch waits for beyond
            # the CPU: the wall clock of one launch, fenced, less an empty fence's (as
            # `measure_op` prices an operator's launches there; see the module doc)
            def one() -> None:
                pr.launch(probe_three, {"a": rows, "b": rows, "c": rows}, stores, points)
            empty, wall = [], []
            for r in range(2 + repeats):   # interleaved: a change of load touches both alike
                e, w = pr.timed(lambda: None), pr.timed(one)
                if r >= 2:
                    empty.append(e)
                    wall.append(w)
            per_analysis[-1] = max(statistics.median(wall) - statistics.median(empty)
                                   - per_issue[-1] - per_task[-1], 0.0)
    task_overhead = statistics.fmean(per_task)
    analysis = statistics.fmean(per_analysis)
    issue = statistics.fmean(per_issue)
    for p, t, a in zip(sorted({1, procs}), per_task, per_analysis):
        probes |= {f"task_cpu_{p}pt_s": t, f"analysis_cpu_{p}pt_s": a}
    analysis_store, analysis_reduction = _store_analysis_costs(pr, stores, procs, repeats)
    probes |= {"analysis_store_s": analysis_store, "analysis_reduction_s": analysis_reduction}

    # --- the same launches fused into one group (as the executor runs a step) ------------------
    fusion_steps, fused_issue, fused_step = _fused_launch_costs(pr, stores, issue, task_overhead,
                                                                repeats)
    probes |= {"fused_issue_s": fused_issue, "fused_step_s": fused_step}
    task_store = 0.0
    fused_stores = _fused_store_costs(pr, fused_step, repeats)
    if fused_stores is not None:
        # a fused task's stores are each its own (a step's tensors, weights, gradients): the
        # runtime maps every one, where the unfused probe above re-binds the same twelve
        analysis_store, task_store = fused_stores
        probes |= {"analysis_store_s": analysis_store, "task_store_s": task_store}
    replayed = _replayed_issue_costs(pr, stores, repeats)
    walk_issue = walk_fused_issue = issue_store = 0.0   # (0: as walked, as measured above)
    if replayed is not None:
        # training steps after the second are re-issued from a recording: that is what the
        # host pays per task and per launch joining one (the walk above costs it far more)
        probes |= {"walked_issue_s": issue, "walked_fused_issue_s": fused_issue}
        walk_issue, walk_fused_issue = issue, fused_issue
        issue, fused_issue, issue_store = replayed
        probes |= {"issue_s": issue, "fused_issue_s": fused_issue, "issue_store_s": issue_store}

    small = pr.store(4)

    def blocking_read() -> float:
        pr.fence()
        t = time.perf_counter()
        read(small)
        return time.perf_counter() - t
    sync = _median(blocking_read, repeats)
    empty = _median(lambda: pr.timed(lambda: None), repeats)   # a fence with nothing pending
    if info.ranks == 1:
        # a step whose tasks posted its losses ends with a fence only (executor/posted.py)
        posted_sync = empty
    else:
        # ... and over several ranks with the ranks sharing what their tasks posted (a small
        # MPI allgather, executor/posted.share)
        comm = rank_comm()
        posted_rows = {0: {0: np.zeros(16 * procs)}}   # a box's pieces: key -> start -> rows

        def fence_and_share() -> float:
            pr.fence()
            t = time.perf_counter()
            pr.fence()
            comm.allgather([posted_rows])
            return time.perf_counter() - t
        posted_sync = _median(fence_and_share, repeats)
        # the loss read: a store every processor wrote its rows of, read whole on every rank
        # (pieces cross between the ranks), from the launch's issue: the round trip runs while
        # the launch does (a fence after the same launch, for the record)
        src, loss = pr.store(16 * procs, 4), pr.store(16 * procs, 4)

        def write_then(finish: Callable[[], None]) -> float:
            pr.fence()
            t = time.perf_counter()
            pr.launch(probe_copy, {"a": rows, "b": rows}, {"a": src, "b": loss}, procs)
            finish()
            return time.perf_counter() - t
        then_read = _median(lambda: write_then(lambda: read(loss)), repeats)
        then_fence = _median(lambda: write_then(pr.fence), repeats)
        sync = max(sync, then_read)
        probes |= {"read_after_launch_s": then_read, "fence_after_launch_s": then_fence,
                   "empty_fence_s": empty}
    probes |= {"posted_sync_s": posted_sync}

    # --- moving data between processors (tilings that differ): CPU of all threads ----------------
    def moved(side: int) -> float:
        src, dst = pr.store(side, side), pr.store(side, side)

        def once(split: tuple[str | None, ...]) -> float:
            pr.launch(probe_copy, {"a": rows, "b": rows}, {"a": dst, "b": src}, procs)
            pr.fence()
            return pr.cpu_window(lambda: pr.launch(probe_copy, {"a": split, "b": split},
                                                   {"a": src, "b": dst}, procs)).total
        same = _median(lambda: once(rows), repeats)
        crossed = _median(lambda: once((None, SAMPLE)), repeats)
        return crossed - same

    sizes = (256, 1024)
    base = PRESETS["local"]
    if info.ranks == 1:
        extra = [moved(s) for s in sizes]
        # each point reads 1/procs of the store, of which a share (procs-1)/procs sits elsewhere
        moved_bytes = [4.0 * s * s * (procs - 1) / procs ** 2 for s in sizes]
        lat, inv_bw = _fit_line(moved_bytes[0], extra[0], moved_bytes[1], extra[1])
        intra = LinkSpec(1.0 / inv_bw, lat)
        probes |= {f"move_extra_{s}_s": e for s, e in zip(sizes, extra)}
        inter = base.inter
    else:
        intra = base.intra   # see the module doc
        inter = _inter_link(pr, repeats, probes)

    # --- folding ADD-reduction copies: CPU of all threads -------------------------------------------
    def reduced(side: int, fold: bool) -> float:
        """procs points with trivial kernels writing a store, then one task reads it: each
        point ADD-reducing into all of it (fold) or writing its own rows (no fold)."""
        acc, out = pr.store(side, side), pr.store(side, side)
        marker = pr.store(procs)

        def once() -> None:
            if fold:
                pr.launch(probe_reduce, {"acc": (), "marker": (SAMPLE,)},
                          {"acc": acc, "marker": marker}, procs)
            else:
                pr.launch(probe_write, {"acc": rows, "marker": (SAMPLE,)},
                          {"acc": acc, "marker": marker}, procs)
            pr.launch(probe_copy, {"a": rows, "b": rows}, {"a": acc, "b": out}, 1)
        if info.ranks > 1:   # copies between ranks: what they wait for (wall clock)
            return _median(lambda: pr.timed(once), repeats)
        return _median(lambda: pr.cpu_window(once).total, repeats)

    if procs > 1:
        fold_extra = [(reduced(s, True) - reduced(s, False)) / procs for s in sizes]
    else:
        fold_extra = [0.0 for _ in sizes]
    fold_bytes = [4.0 * s * s for s in sizes]
    f_lat, f_inv = _fit_line(fold_bytes[0], fold_extra[0], fold_bytes[1], fold_extra[1])
    fold = LinkSpec(1.0 / f_inv, f_lat)
    probes |= {f"fold_per_copy_{s}_s": e for s, e in zip(sizes, fold_extra)}

    # --- efficiencies of the analytic model --------------------------------------------------------
    efficiency = {"linear": min(max(2.0 * n ** 3 / (flops * mm.forward_kernel), 0.01), 1.0)}
    efficiency |= _family_efficiencies(flops, repeats)
    add_shape = TensorShape((256, 4096))
    add = measure_op(Add(), [add_shape, add_shape], OpConfig(), repeats=repeats)
    mem_eff = min(max(3 * add_shape.num_bytes() / (bandwidth * add.forward_kernel), 0.01), 1.0)
    probes |= {"add_256x4096_s": add.forward_kernel}

    device = replace(base.device, flops_fp32=flops, flops_bf16=flops, mem_bandwidth=bandwidth,
                     launch_overhead=task_overhead)
    source = "measured by unity_legion.profiling.calibrate on this machine"
    if info.ranks > 1:
        source += f" ({info.ranks} ranks: per-rank figures, rank 0's)"
    machine = replace(base, nodes=info.ranks, devices_per_node=pr.local, device=device,
                      intra=intra, inter=inter,
                      runtime=RuntimeSpec(issue=issue, sync=sync, posted_sync=posted_sync,
                                          reduction=_reduction(pr), fold=fold,
                                          cores=cores, analysis=analysis, fusion=fusion_steps,
                                          fused_issue=fused_issue, fused_step=fused_step,
                                          analysis_store=analysis_store,
                                          analysis_reduction=analysis_reduction,
                                          task_store=task_store, walk_issue=walk_issue,
                                          walk_fused_issue=walk_fused_issue,
                                          issue_store=issue_store),
                      source=source)
    cal = with_gathers(Calibration(machine, efficiency, mem_eff, probes))
    return bcast(cal) if info.ranks > 1 else cal


def _store_analysis_costs(pr: "_Probe", stores: Mapping[str, Any], procs: int, repeats: int
                          ) -> tuple[float, float]:
    """The runtime threads' CPU per store a launch binds beyond three, and per store it
    ADD-reduces into, each per point: launches of 3 and of 12 stores over every processor, and
    of 12 with two small stores reduced into (RuntimeSpec.analysis_store, analysis_reduction)."""
    from unity_legion.operators.base import SAMPLE

    rows = (SAMPLE, None)
    (many,) = _twelve_stores(pr, 1)
    sums = ({f"a{i}": many[f"a{i}"] for i in range(9)}
            | {"s0": pr.store(4, 4), "s1": pr.store(4, 4), "c": many["c"]})
    cases = [(probe_three, {k: rows for k in ("a", "b", "c")}, stores),
             (probe_twelve, {k: rows for k in many}, many),
             (probe_twelve_sums, {k: (() if k in ("s0", "s1") else rows) for k in sums}, sums)]
    runtime = []
    for k, args, st in cases:
        def chain(k: Any = k, args: Any = args, st: Any = st) -> None:
            for _ in range(20):
                pr.launch(k, args, st, procs)
        for _ in range(2):   # the first registers the task, the second warms up
            pr.cpu_window(chain)
        runtime.append(statistics.median(pr.cpu_window(chain).runtime
                                         for _ in range(max(3, repeats // 2))) / 20)
    per_store = max((runtime[1] - runtime[0]) / (9 * procs), 0.0)
    per_reduction = max((runtime[2] - runtime[1]) / (2 * procs), 0.0) if procs > 1 else 0.0
    return per_store, per_reduction


def _fused_launch_costs(pr: "_Probe", stores: Mapping[str, Any], issue: float,
                        task_overhead: float, repeats: int) -> tuple[int, float, float]:
    """(steps per group, issuing seconds per launch joining a group, processor seconds per
    step) of the executor's fused groups: batches of 20 trivial launches on every processor
    fused into one task, against the same launches each a task of its own (measured before:
    `issue`, `task_overhead`). (0, 0, 0) where the executor does not fuse."""
    from unity_legion.executor.fusion import MAX_STEPS
    from unity_legion.operators.base import SAMPLE

    if not pr.fusing:
        return 0, 0.0, 0.0
    rows = (SAMPLE, None)
    points = pr.procs
    n = 20

    def fused() -> None:
        for _ in range(n):
            pr.launch(probe_three, {"a": rows, "b": rows, "c": rows}, stores, points)
        pr.ex.flush()
    pr.ex.fusion = True
    try:
        for _ in range(2):
            pr.cpu_window(fused)
        splits = [pr.cpu_window(fused) for _ in range(max(3, repeats // 2))]
    finally:
        pr.ex.fusion = False
    host = statistics.median(s.host for s in splits)
    tasks = statistics.median(s.tasks for s in splits) / min(points, pr.local)
    fused_issue = max((host - issue) / n, 0.0)
    fused_step = max((tasks - task_overhead) / n, 0.0)
    return MAX_STEPS, fused_issue, fused_step


def _fused_store_costs(pr: "_Probe", fused_step: float, repeats: int
                       ) -> tuple[float, float] | None:
    """(runtime threads' CPU, processors' CPU) per store a fused task binds, per point
    (RuntimeSpec.analysis_store, task_store), with stores used as a training step uses them:
    every round, one fused task over every processor writes them by rows, and the next reads
    them, half whole (as a weight the update wrote by rows is read by the forward) and half by
    rows (an activation). Rounds of 2 and of 16 such launch pairs, each launch binding 12
    distinct stores; None where the executor does not fuse. (Stores only ever read, as this
    probe first bound them, cost Legion under half as much: bert's data-parallel step spent
    ~2.5x the figure so measured.)"""
    from unity_legion.operators.base import SAMPLE

    if not pr.fusing:
        return None
    rows = (SAMPLE, None)
    whole = (None, None)
    points = pr.procs
    sizes = _GROUP_SIZES
    readers = {name: (whole if i < 6 else rows) for i, name in enumerate(_TWELVE[:11])}
    runtime, tasks = [], []
    pr.ex.fusion = True
    try:
        for k in sizes:
            groups = _twelve_stores(pr, k)

            def rounds(groups: list[dict[str, Any]] = groups) -> None:
                for st in groups:
                    pr.launch(probe_write_twelve, {name: rows for name in st}, st, points)
                pr.ex.flush()
                for st in groups:
                    pr.launch(probe_twelve, readers | {"c": rows}, st, points)
                pr.ex.flush()
            for _ in range(2):   # the first registers the groups' tasks, the second warms up
                pr.cpu_window(rounds)
            splits = [pr.cpu_window(rounds) for _ in range(max(3, repeats // 2))]
            runtime.append(statistics.median(s.runtime for s in splits))
            tasks.append(statistics.median(s.tasks for s in splits) / min(points, pr.local))
    finally:
        pr.ex.fusion = False
    more = 2 * 12 * (sizes[1] - sizes[0])   # store bindings: two tasks a round
    per_store = max((runtime[1] - runtime[0]) / (more * points), 0.0)
    # the processors' extra steps are dispatched too (fused_step each)
    per_task_store = max((tasks[1] - tasks[0] - 2 * (sizes[1] - sizes[0]) * fused_step) / more,
                         0.0)
    return per_store, per_task_store


def _replayed_issue_costs(pr: "_Probe", stores: Mapping[str, Any], repeats: int
                          ) -> tuple[float, float, float] | None:
    """(host seconds per task, per launch joining it, per store it binds beyond three) of a
    replayed training step (executor/replay.py): 20 trivial launches on every processor
    recorded as 20 tasks of one step and as one task of 20 steps, each issued again from its
    recording; then one task of 2 and one of 16 launches binding 12 distinct stores each (a
    step's task binds a hundred or more). None where the executor does not fuse."""
    from unity_legion.operators.base import SAMPLE

    if not pr.fusing:
        return None
    rows = (SAMPLE, None)
    n = 20

    def chain(alone: bool) -> None:
        for _ in range(n):
            pr.launch(probe_three, {"a": rows, "b": rows, "c": rows}, stores, pr.procs)
            if alone:
                pr.ex.flush()

    sizes = _GROUP_SIZES
    groups = {k: _twelve_stores(pr, k) for k in sizes}

    def distinct(k: int) -> None:
        for st in groups[k]:
            pr.launch(probe_twelve, {name: rows for name in st}, st, pr.procs)
    pr.ex.fusion = True
    try:
        traces = [pr.ex.record(lambda alone=alone: chain(alone)) for alone in (True, False)]
        traces += [pr.ex.record(lambda k=k: distinct(k)) for k in sizes]
    finally:
        pr.ex.fusion = False
    if any(t is None for t in traces):
        return None
    hosts = []
    for trace in traces:
        for _ in range(2):
            pr.cpu_window(lambda trace=trace: pr.ex.reissue(trace))
        hosts.append(statistics.median(pr.cpu_window(lambda trace=trace: pr.ex.reissue(trace)).host
                                       for _ in range(max(3, repeats // 2))))
    alone, together = hosts[0] / n, hosts[1]   # issue + fused_issue; issue + n x fused_issue
    fused_issue = max((together - alone) / (n - 1), 0.0)
    more = sizes[1] - sizes[0]
    per_store = max((hosts[3] - hosts[2] - more * fused_issue) / (12 * more), 0.0)
    return max(alone - fused_issue, 0.0), fused_issue, per_store


def _reduction(pr: "_Probe") -> str:
    """How the executor sums reductions on this job: partial sums where it fuses, else
    Legion's folds."""
    return "partials" if pr.fusing and pr.ex.partial_sums else "fold"


def _inter_link(pr: "_Probe", repeats: int, probes: dict[str, float]) -> LinkSpec:
    """Latency and bandwidth of moving a store piece from rank 0's first processor to rank 1's
    (wall clock, fenced: see the module doc); every rank runs it, rank 0's figure counts."""
    from unity_legion.operators.base import SAMPLE

    rows = (SAMPLE, None)
    there = pr.local          # the first processor of rank 1
    sizes = (128, 1024)

    def extra(side: int) -> float:
        src, x, y = pr.store(side, side), pr.store(side, side), pr.store(side, side)

        def once(written_on: int) -> float:
            # x written (only) on `written_on`, then read on rank 1's processor
            pr.launch(probe_copy, {"a": rows, "b": rows}, {"a": src, "b": x}, 1,
                      start=written_on)
            pr.fence()
            return pr.timed(lambda: pr.launch(probe_copy, {"a": rows, "b": rows},
                                              {"a": x, "b": y}, 1, start=there))

        moved, local = [], []
        for r in range(2 + repeats):   # interleaved: a change of load touches both alike
            m, l = once(0), once(there)
            if r >= 2:
                moved.append(m)
                local.append(l)
        return max(statistics.median(moved) - statistics.median(local), 0.0)

    extras = [extra(s) for s in sizes]
    nbytes = [4.0 * s * s for s in sizes]
    lat, inv_bw = _fit_line(nbytes[0], extras[0], nbytes[1], extras[1])
    probes |= {f"inter_move_{s}_s": e for s, e in zip(sizes, extras)}
    return LinkSpec(1.0 / inv_bw, lat)


def measure_cores(repeats: int = 3, warmup: int = 1) -> float:
    """The parallel capacity this job has now, in threads' worth of work: a compute-bound task
    (matmuls) on one processor alone, then one on every processor while the issuing thread
    computes as much: the work done per second then over the work one thread alone does per
    second, within [1, the core count] (see the module doc)."""
    from unity_legion.operators.base import SAMPLE

    pr = _Probe()
    procs = pr.procs
    rows = (SAMPLE, None)
    side, times = 256, 40
    one = pr.store(side, side), pr.store(side, side)
    every = pr.store(side * procs, side), pr.store(side * procs, side)
    a = np.ones((side, side), np.float32)
    b = np.empty_like(a)

    def alone() -> float:
        return pr.timed(lambda: pr.launch(probe_matmuls, {"a": rows, "b": rows},
                                          {"a": one[0], "b": one[1]}, 1, {"times": times}))

    def together() -> float:
        def work() -> None:
            pr.launch(probe_matmuls, {"a": rows, "b": rows}, {"a": every[0], "b": every[1]},
                      procs, {"times": times})
            for _ in range(times):
                np.matmul(a, a, out=b)
        return pr.timed(work)

    t_one = _median(alone, repeats, warmup=warmup)
    t_all = _median(together, repeats, warmup=warmup)
    return min(max((procs + 1) * t_one / t_all, 1.0), float(os.cpu_count() or procs + 1))


def _family_efficiencies(flops: float, repeats: int) -> dict[str, float]:
    """Fraction of `flops` reached by a serial forward of a typical piece of each compute-bound
    family that is available (conv2d, multi_head_attention)."""
    from unity_legion.types import OpConfig, TensorShape

    out: dict[str, float] = {}
    cases: list[tuple[str, Callable[[], Any], list[TensorShape]]] = []
    try:
        from unity_legion.operators.conv2d import Conv2D

        cases.append(("conv2d", lambda: Conv2D(64, (3, 3), padding="same"),
                      [TensorShape((16, 32, 32, 64))]))
    except ImportError:
        pass
    try:
        from unity_legion.operators.attention import MultiHeadAttention

        cases.append(("multi_head_attention", lambda: MultiHeadAttention(4, 64),
                      [TensorShape((16, 64, 256))] * 2))
    except ImportError:
        pass
    for family, make, shapes in cases:
        try:
            op = make()
            op.infer_outputs(shapes)
        except Exception:   # an operator whose signature moved on: keep the default
            continue
        m = measure_op(op, shapes, OpConfig(), repeats=repeats)
        out[family] = min(max(op.flops(shapes) / (flops * m.forward), 0.01), 1.0)
    return out
