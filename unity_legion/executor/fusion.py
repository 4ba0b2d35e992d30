"""Fused groups: consecutive launches over the same grid and processors run as one task.

A launch costs the issuing thread and Legion's analysis far more than a small kernel takes
(hundreds of microseconds on these machines), and a training step is hundreds to thousands of
launches. Launches issued one after another whose points run on the same processors and see
every store they share through the same tiles fuse: the group becomes one Legate task whose
body runs the kernels in order on each point's pieces (FlexFlow's FusedOp; here formed as the
step is issued, so every plan, optimizer and loss fuses alike).

What keeps a fused task equal to the launches it replaces:
- a store is one slot of the task, with one tile shape and projection for every use: a point
  then reads exactly the piece it (or an earlier step on it) wrote;
- a store some step adds into (an ADD reduction over points) is only added into by the
  group: reading it needs every point's contribution, so a reader starts a new group;
- unless the points exchange their sums inside the task (one rank, one point per processor:
  GraphExecutor._gathers_on): each adds into a piece of its own, and a step reading the sum
  gets the store plus every point's piece (Step.gathers), its points meeting there; such a
  task is launched concurrent (its points run at once);
- unless every point adds into a piece of its own (the store tiled along every split axis of
  the grid, as a weight's gradient under a split of its output features): that piece is all
  of the sum there is, so the slot is read-write, later steps may read it, and Legion makes
  no reduction instance to initialise and fold for it;
- zero-filling a store the group already uses ends the group first (the fill must come
  after the group's uses).
`FUSION_RULE` states the same rule for the cost model (`unity_legion.cost`), which prices a
group's launch overhead once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from unity_legion.executor.launcher import BoundArg, submit_program
from unity_legion.executor.tasks import PASSED, Access, Program, Step, fixed_scalars
from unity_legion.types import MachineView
from unity_legion.mappers.placement import placed

# Programs that differ only in the scalar values they hold (Program.fixed), per program that
# passes them all: past this many, a group's scalars are passed instead (a scalar that changes
# from launch to launch without being marked dynamic would otherwise register a task a launch).
FIXED_VARIANTS = 64
_FIXED_VARIANTS: dict[Program, set[Program]] = {}

# a group's task program, its slots' (store, tile, projection), the scalars its launch passes
# and the (index, kind) of those among them that change from step to step
Built = tuple[Program, list[tuple[Any, Any, Any]], list[tuple[Any, type]], list[tuple[int, str]]]

# Steps per fused task at most: a longer task holds its processors' pieces for longer before
# any consumer on another processor can start (and its registration is one more shape).
MAX_STEPS = 128


def fuses_by_default(kind: str, setting: str | None = None) -> bool:
    """Whether a job whose processors are of `kind` runs fused groups, unless `setting` (the
    UNITY_LEGION_FUSION environment variable: "0" or "1") says. CPU processors fuse: there a
    task's overhead is a large share of its kernels'. GPU jobs run every launch as a task of
    its own, as the GPU machine models price them (`RuntimeSpec.fusion` 0): their kernels take
    milliseconds at the sizes planned for, and an operator's input gradients can leave for
    their consumers' processors while its weight gradients are still being computed, where a
    fused task would hold them until it ends."""
    if setting is not None and setting.strip() in ("0", "1"):
        return setting.strip() == "1"
    return kind != "gpu"


def owns_piece(grid: Sequence[int], tile: Any, proj: Any) -> bool:
    """Whether each point of `grid` reaches a piece of the store no other point does: one
    point, or a tiling whose projection follows every grid axis of extent > 1."""
    if math.prod(grid) == 1:
        return True
    if tile is None or proj is None:
        return False
    return all(i in proj for i, n in enumerate(grid) if n > 1)


def _combine(old: Access | None, arg: BoundArg, own_piece: bool = False) -> Access | None:
    """The slot access after `arg`'s use, or None where the group cannot take it. Where each
    point adds into a piece of its own (`own_piece`: see `owns_piece`) an addition is a
    read-write: that point's sum is the whole sum there, so later steps may read it in the
    same task."""
    if arg.is_reduction:
        if own_piece and old is not Access.REDUCE:
            return Access.READ_WRITE if old in (None, Access.READ) else old
        return Access.REDUCE if old in (None, Access.REDUCE) else None
    if old is Access.REDUCE:
        return None
    if old is None:
        return {True: {True: Access.READ_WRITE, False: Access.READ},
                False: {True: Access.WRITE, False: Access.READ}}[arg.reads][arg.writes]
    if old is Access.READ and arg.writes:
        return Access.READ_WRITE
    return old   # WRITE stays WRITE (later reads see the written piece); READ_WRITE stays


@dataclass
class _Slot:
    store: Any
    tile: tuple[int, ...] | None
    proj: tuple[int | None, ...] | None
    access: Access
    squeeze: int = 0


@dataclass
class FusedGroup:
    """Launches collected for one task: the grid and processors they share, their steps."""

    grid: tuple[int, ...]
    view: MachineView
    steps: list[Step] = field(default_factory=list)
    slots: list[_Slot] = field(default_factory=list)
    by_store: dict[int, int] = field(default_factory=dict)
    scalars: list[tuple[Any, type]] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)   # per step: the profiler's label
    # scalars that change from step to step: (index in `scalars`, kind; see executor.replay)
    dynamic: list[tuple[int, str]] = field(default_factory=list)
    # windows of slots (Program.windows): (slot, offset, shape) -> its index among them; the
    # steps name window j as slot -(j + 1) until `program` numbers them after the slots
    windows: dict[tuple[int, int, tuple[int, ...]], int] = field(default_factory=dict)

    def uses(self, store: Any) -> bool:
        return id(store) in self.by_store

    def plan(self, bound: Sequence[BoundArg]) -> list[tuple[int, Access]] | None:
        """Per argument, its slot and the slot's access after the launch (new slots numbered
        from len(slots) on); None where the launch cannot join the group."""
        if len(self.steps) >= MAX_STEPS:
            return None
        seen: dict[int, tuple[int, Access | None, Any, Any]] = {}
        out = []
        fresh = len(self.slots)
        for b in bound:
            key = id(b.store)
            if key in seen:
                slot, access, tile, proj = seen[key]
            elif key in self.by_store:
                s = self.slots[self.by_store[key]]
                slot, access, tile, proj = self.by_store[key], s.access, s.tile, s.proj
            else:
                slot, access, tile, proj = fresh, None, b.tile, b.proj
                fresh += 1
            if (tile, proj) != (b.tile, b.proj):
                return None
            own = b.is_reduction and owns_piece(self.grid, tile, proj)
            access = _combine(access, b, own)
            if access is None:
                return None
            seen[key] = (slot, access, tile, proj)
            out.append((slot, access))
        # the final access of each slot (a later argument of the same store may widen it)
        return [(slot, seen[id(b.store)][1]) for b, (slot, _a) in zip(bound, out)]  # type: ignore[misc]

    def add(self, kernel: Any, bound: Sequence[BoundArg], reduced: frozenset[str],
            scalars: Sequence[tuple[Any, type]], plan: list[tuple[int, Access]],
            guards: int = 0, dynamic: Sequence[tuple[int, str]] = (),
            gathers: Sequence[tuple[int, int]] = ()) -> None:
        for b, (slot, access) in zip(bound, plan):
            if slot == len(self.slots):
                self.slots.append(_Slot(b.store, b.tile, b.proj, access, b.squeeze))
                self.by_store[id(b.store)] = slot
            else:
                self.slots[slot].access = access
        slots = tuple(slot if b.window is None else
                      -1 - self.windows.setdefault((slot,) + b.window, len(self.windows))
                      for b, (slot, _) in zip(bound, plan))
        n = len(slots) - guards - len(gathers)
        self.steps.append(Step(kernel, slots[:n], reduced, slots[len(slots) - guards:],
                               tuple((p, slots[i]) for p, i in gathers)))
        self.dynamic.extend((len(self.scalars) + i, kind) for i, kind in dynamic)
        self.scalars.extend(scalars)

    def program(self) -> Built:
        """The group's task program, its slots' (store, tile, projection), and the scalars its
        launch passes (value, type) with the indices among them of those that change from
        step to step: every other scalar the program holds (tasks.fixed_scalars), unless
        programs differing only in held values grew past FIXED_VARIANTS."""
        squeeze = tuple(s.squeeze for s in self.slots)
        steps = tuple(self.steps)
        if self.windows:
            n = len(self.slots)
            steps = tuple(replace(st, slots=tuple(i if i >= 0 else n - 1 - i for i in st.slots))
                          for st in steps)
        program = Program(steps, tuple(s.access for s in self.slots),
                          squeeze if any(squeeze) else (), windows=tuple(self.windows),
                          grid=self.grid if any(st.gathers for st in steps) else ())
        slots = [(s.store, s.tile, s.proj) for s in self.slots]
        if not self.scalars:
            return program, slots, [], []
        fixed = fixed_scalars(self.scalars, self.dynamic)
        held = replace(program, fixed=fixed)
        variants = _FIXED_VARIANTS.setdefault(program, set())
        if held not in variants:
            if len(variants) >= FIXED_VARIANTS:   # a scalar that moves but is not dynamic
                return program, slots, list(self.scalars), list(self.dynamic)
            variants.add(held)
        passed = [i for i, f in enumerate(fixed) if f is PASSED]
        renumber = {i: k for k, i in enumerate(passed)}
        return (held, slots, [self.scalars[i] for i in passed],
                [(renumber[i], kind) for i, kind in self.dynamic])

    def submit(self, rt: Any, built: Built, uid: int = -1) -> None:
        """Submit the group as one task; `built`: its `program()`."""
        program, slots, scalars, _dynamic = built
        with placed(self.view):
            submit_program(rt, program, slots, scalars, self.grid, uid=uid)


class FusionQueue:
    """The group being collected; launches join it while they can, else it is submitted and
    a new one starts. `flush` submits what is pending (before any read, fill of a store the
    group uses, or launch that cannot fuse)."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.pending: FusedGroup | None = None
        self.tasks = 0          # tasks submitted (each group one)
        self.launches = 0       # launches they carried
        # a profiler (executor.profile.Profiler) while one is on: labels each step, ids tasks
        self.profiler: Any = None
        # a step being recorded (executor.replay.Recorder): each task submitted is noted
        self.recorder: Any = None
        # what the host is issuing (operator name, phase): set by the executor as it goes;
        # kept per step while profiling or recording
        self.label: tuple[Any, str] = (None, "host")

    def add(self, kernel: Any, bound: Sequence[BoundArg], reduced: frozenset[str],
            scalars: Sequence[tuple[Any, type]], grid: tuple[int, ...], view: MachineView,
            guards: int = 0, dynamic: Sequence[tuple[int, str]] = (),
            gathers: Sequence[tuple[int, int]] = ()) -> bool:
        """Add the launch to the group being collected, or to a new one; False (with nothing
        pending) where it cannot form a group even alone (one store under two tilings): it
        must go as a task of its own. The last `guards` of `bound` are its guard stores
        (Step.guards), read whole; `dynamic`: (index in `scalars`, kind) of the scalars that
        change from step to step (executor.replay); `gathers`: (parameter index, index in
        `bound`) of each parameter read with the sum of the points' partial sums in that
        argument (Step.gathers)."""
        g = self.pending
        plan = None
        if g is not None and g.grid == grid and g.view == view:
            plan = g.plan(bound)
        if plan is None:
            self.flush()
            g = FusedGroup(grid, view)
            plan = g.plan(bound)
            if plan is None:
                return False
            self.pending = g
        g.add(kernel, bound, reduced, scalars, plan, guards, dynamic, gathers)
        if self.profiler is not None or self.recorder is not None:
            g.labels.append(self.label)
        self.launches += 1
        return True

    def uses(self, store: Any) -> bool:
        return self.pending is not None and self.pending.uses(store)

    def flush(self) -> None:
        g, self.pending = self.pending, None
        if g is not None and g.steps:
            p = self.profiler
            built = g.program()
            if self.recorder is not None:
                self.recorder.task(*built, g.grid, g.view, list(g.labels))
            if p is None:
                g.submit(self.rt, built)
            else:  # the host's time submitting it: its first step's operator's
                label = p.label
                p.switch(g.labels[0][0], "submit")
                g.submit(self.rt, built, p.task(g.labels))
                p.switch(*label)
            self.tasks += 1
