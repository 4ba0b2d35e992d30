"""Where a real training step's time went, per operator and per processor, next to a simulation.

Profiling is off by default: every task takes one extra scalar, its profiling id (-1), and its
body compares it with 0; nothing is recorded. `profile_train_step` turns it on for one
`GraphExecutor.train_step`:

- each task's body records every kernel's start and end (time.perf_counter) and the thread
  (= the Legate processor) it ran on, under the task's id (`tasks.TRACE`);
- the executor labels what its host thread does (`GraphExecutor._mark`): issuing operator X's
  forward / backward / update launches, the objective's, or waiting for results ("sync": the
  blocking read of the loss, the fence that ends the step); each fused task remembers the
  label of each of its steps.

`StepProfile` turns that into per-operator rows (kernel time summed over points and on the
busiest processor, host time issuing its launches, processor time spent idle just before its
kernels) and per-lane totals; `table` prints them next to a simulated step's figures given as
plain data (the executor does not import the cost model: the caller simulates, see
`keras.Trainer.profile_step`); `draw` writes each processor's timeline, measured above
simulated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from unity_legion.executor import tasks as tasks_mod

Label = tuple[str | None, str]   # (operator name or None, phase)
# (lane, start, end, operator, phase): seconds from the step's start; lane -1 is the host
Interval = tuple[int, float, float, str, str]
HOST = -1


class Profiler:
    """Collects one step's host segments and task ids (set on the executor while profiling)."""

    def __init__(self) -> None:
        self.label: Label = (None, "host")
        self.start = time.perf_counter()
        self._since = self.start
        self.segments: list[tuple[float, float, Label]] = []
        self.groups: dict[int, list[Label]] = {}

    def switch(self, name: str | None, phase: str) -> None:
        now = time.perf_counter()
        self.segments.append((self._since, now, self.label))
        self.label, self._since = (name, phase), now

    def task(self, labels: Sequence[Label]) -> int:
        """A new task's id; `labels` names its steps' operators."""
        uid = len(self.groups)
        self.groups[uid] = list(labels)
        return uid


@dataclass
class StepProfile:
    """One measured step: kernels on processor lanes (0..), host segments (lane -1)."""

    wall: float
    kernels: list[Interval]
    host: list[Interval]
    order: list[str]                       # operators in the order the step issued them
    tasks: int = 0
    # filled by the caller: the simulated step (same tuples, lane = device) and its time
    sim_tasks: list[Interval] = field(default_factory=list)
    sim_step: float | None = None
    sim_span: float | None = None
    result: Any = None                     # the StepResult of the step
    # True: the step was re-issued from a recording (executor/replay.py), as training's are
    replayed: bool = False

    @property
    def lanes(self) -> int:
        return 1 + max((k[0] for k in self.kernels), default=-1)

    def rows(self) -> dict[str, dict[str, float]]:
        """Per operator: kernel (sum over points), busiest (its busiest lane's kernel time),
        host (issuing its launches), wait (lane time idle just before its kernels), and the
        same kernel / busiest / wait of the simulated step (sim_*)."""
        out: dict[str, dict[str, float]] = {}
        for name in self.order:
            out[name] = dict.fromkeys(("kernel", "busiest", "host", "wait", "sim_kernel",
                                       "sim_busiest", "sim_wait"), 0.0)
        for prefix, ivs in (("", self.kernels), ("sim_", [t for t in self.sim_tasks
                                                          if t[0] != HOST])):
            per_lane: dict[tuple[str, int], float] = {}
            for lane, a, b, name, _ph in ivs:
                row = out.setdefault(name, dict.fromkeys(
                    ("kernel", "busiest", "host", "wait", "sim_kernel", "sim_busiest",
                     "sim_wait"), 0.0))
                row[prefix + "kernel"] += b - a
                per_lane[(name, lane)] = per_lane.get((name, lane), 0.0) + b - a
            for (name, _lane), v in per_lane.items():
                out[name][prefix + "busiest"] = max(out[name][prefix + "busiest"], v)
            for name, gap in _gaps(ivs).items():
                out[name][prefix + "wait"] += gap
        for _lane, a, b, name, _ph in self.host:
            if name in out:
                out[name]["host"] += b - a
        return out

    def lane_totals(self, sim: bool = False) -> dict[int, tuple[float, float]]:
        """Per lane: (busy, idle) seconds within the step (the host lane: issuing, waiting)."""
        ivs = [t for t in self.sim_tasks if t[0] != HOST] if sim else self.kernels
        span = (self.sim_span or 0.0) if sim else self.wall
        busy: dict[int, float] = {}
        for lane, a, b, _n, _p in ivs:
            busy[lane] = busy.get(lane, 0.0) + b - a
        out = {lane: (v, max(span - v, 0.0)) for lane, v in sorted(busy.items())}
        if not sim:
            issuing = sum(b - a for _l, a, b, _n, ph in self.host if ph != "sync")
            out[HOST] = (issuing, self.wall - issuing)
        return out

    def table(self) -> str:
        """The per-operator table, milliseconds."""
        ms = 1e3
        rows = self.rows()
        head = (f"{'operator':<28} {'kernel':>8} {'busiest':>8} {'host':>8} {'wait':>8} |"
                f" {'sim kern':>8} {'sim busy':>8} {'sim wait':>8}")
        lines = ["profile of one training step (ms; kernel and wait: summed over processors, "
                 "busiest: the busiest processor's kernel time, host: issuing its launches, "
                 "wait: processor time idle just before its kernels)", head, "-" * len(head)]
        tot = dict.fromkeys(next(iter(rows.values()), {}), 0.0)
        for name, r in rows.items():
            lines.append(f"{name[:28]:<28} {r['kernel']*ms:8.2f} {r['busiest']*ms:8.2f} "
                         f"{r['host']*ms:8.2f} {r['wait']*ms:8.2f} | {r['sim_kernel']*ms:8.2f} "
                         f"{r['sim_busiest']*ms:8.2f} {r['sim_wait']*ms:8.2f}")
            for k in tot:
                tot[k] += r[k]
        lines.append("-" * len(head))
        if tot:
            lines.append(f"{'total':<28} {tot['kernel']*ms:8.2f} {'':>8} {tot['host']*ms:8.2f} "
                         f"{tot['wait']*ms:8.2f} | {tot['sim_kernel']*ms:8.2f} {'':>8} "
                         f"{tot['sim_wait']*ms:8.2f}")
        sync = sum(b - a for _l, a, b, _n, ph in self.host if ph == "sync")
        how = "re-issued from its recording" if self.replayed else "issued by walking the graph"
        lines.append(f"step: measured {self.wall*ms:.2f} ms ({self.tasks} tasks, {how}; host "
                     f"waiting for results {sync*ms:.2f} ms)"
                     + ("" if self.sim_step is None else
                        f"; simulated {self.sim_step*ms:.2f} ms (steady state), "
                        f"{(self.sim_span or 0.0)*ms:.2f} ms (one step from idle)"))
        for sim in (False, True):
            if sim and not self.sim_tasks:
                continue
            parts = [f"{'host' if lane == HOST else f'p{lane}'} busy {b*ms:.2f} idle {i*ms:.2f}"
                     for lane, (b, i) in self.lane_totals(sim).items()]
            lines.append(("simulated " if sim else "measured  ") + "lanes: " + "; ".join(parts))
        return "\n".join(lines)

    def draw(self, path: str) -> None:
        """Each lane's timeline of the step, measured above simulated, coloured by operator."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch

        names = list(dict.fromkeys(self.order + [t[3] for t in self.kernels + self.sim_tasks
                                                 if t[3]]))
        cmap = plt.get_cmap("tab20")
        colour = {n: cmap(i % 20) for i, n in enumerate(names)}
        panels = [("measured", self.kernels + self.host, self.wall)]
        if self.sim_tasks:
            panels.append(("simulated", self.sim_tasks, self.sim_span or 0.0))
        lanes = max(self.lanes, 1 + max((t[0] for t in self.sim_tasks), default=-1))
        fig, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False,
                                 figsize=(12, 1.2 + 0.5 * (lanes + 1) * len(panels)))
        for ax, (title, ivs, span) in zip(axes[:, 0], panels):
            for lane, a, b, name, phase in ivs:
                y = lanes - 1 - lane if lane != HOST else lanes
                if lane == HOST:
                    c = (0.85, 0.85, 0.85, 1.0) if phase == "sync" else colour.get(name or "",
                                                                                 (0.5, 0.5, 0.5, 1))
                else:
                    c = colour.get(name, (0.5, 0.5, 0.5, 1.0))
                ax.broken_barh([(a * 1e3, (b - a) * 1e3)], (y - 0.4, 0.8), facecolors=c,
                               edgecolor="black" if phase == "backward" else "none",
                               linewidth=0.3, hatch="//" if phase == "update" else None)
            ax.set_yticks(range(lanes + 1),
                          [f"p{lanes - 1 - i}" for i in range(lanes)] + ["host"])
            ax.set_ylim(-0.6, lanes + 0.6)
            ax.set_title(f"{title} step: {span * 1e3:.1f} ms", fontsize=9, loc="left")
            ax.grid(axis="x", alpha=0.3)
        axes[-1, 0].set_xlabel("ms from the step's start (forward: plain, backward: outlined, "
                               "update: hatched; host grey: waiting for results)")
        handles = [Patch(color=colour[n], label=n[:30]) for n in names[:40]]
        fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0, 0.8, 1))
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _gaps(ivs: Sequence[Interval]) -> dict[str, float]:
    """Per operator, the idle time of each lane just before one of its kernels (each lane's
    idle stretches within the step, attributed to the kernel that ends them)."""
    by_lane: dict[int, list[Interval]] = {}
    for t in ivs:
        by_lane.setdefault(t[0], []).append(t)
    out: dict[str, float] = {}
    for lane_ivs in by_lane.values():
        lane_ivs.sort(key=lambda t: t[1])
        free = 0.0
        for _lane, a, b, name, _ph in lane_ivs:
            if a > free:
                out[name] = out.get(name, 0.0) + a - free
            free = max(free, b)
    return out


def profile_train_step(executor: Any, *args: Any, **kwargs: Any) -> StepProfile:
    """Run `executor.train_step(*args, **kwargs)` (a GraphExecutor, or one that wraps it as
    `.inner`) with profiling on; returns its StepProfile (the step's result in `.result`)."""
    inner = getattr(executor, "inner", executor)
    tasks_mod.TRACE.clear()
    p = Profiler()
    inner.set_profiler(p)
    try:
        result = executor.train_step(*args, **kwargs)
    finally:
        p.switch(None, "end")
        inner.set_profiler(None)
    end = time.perf_counter()
    records, tasks_mod.TRACE[:] = list(tasks_mod.TRACE), []
    t0 = p.start
    threads: dict[int, float] = {}
    for _uid, _j, th, a, _b in records:
        threads[th] = min(threads.get(th, a), a)
    lane = {th: i for i, th in enumerate(sorted(threads, key=lambda th: (threads[th], th)))}
    kernels: list[Interval] = []
    for uid, j, th, a, b in records:
        name, phase = p.groups[uid][j]
        kernels.append((lane[th], a - t0, b - t0, name or "?", phase))
    host = [(HOST, a - t0, b - t0, name or "", phase)
            for a, b, (name, phase) in p.segments if b > a and phase != "end"]
    order = list(dict.fromkeys(n for labels in p.groups.values() for n, _ in labels if n))
    return StepProfile(end - t0, kernels, host, order, len(p.groups), result=result,
                       replayed=inner.replayed)
