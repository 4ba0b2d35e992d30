"""Training steps re-issued from a recording of an earlier step of the same kind.

Walking the graph to issue a step costs the host far more than the Legate operations it ends in:
binding every launch's stores to tiles, forming fused groups, zeroing what is reduced into
(inception_v3 at batch 32 on one CPU: ~1,500 launches in 264 tasks, ~400 ms of host Python a
step against ~20% of that inside Legate; measured with py-spy). Every step of one kind issues
the same operations on the same stores, so the executor records them once (`Recorder`: each
fused task, lone launch and fill, in issue order) and later steps re-issue the recording
(`StepTrace.replay`) without walking the graph.

What may differ between two steps of one kind, and how a replay gets it:
- the batch's stores (inputs, then targets: attached or sliced anew each step): recorded by
  position (`Recorder.feed`), their partitions made again;
- dropout seeds, the learning rate and the optimizer's step count: scalars recorded with their
  kind (`DYNAMIC_*`), taken anew; seeds are drawn from the executor's stream in the order the
  walk draws them, so a replayed step equals a walked one bit for bit.
Everything else that shapes a step is the recording's key (GraphExecutor._trace_key).

A replay also binds fewer stores: a store that one fused task alone uses in the step, writing it
and then reading it (an activation its backward consumes, a gradient passed between its steps;
never a result, a weight or the batch), is that task's own temporary in the replays
(`Recorder.finish`, tasks.Access.LOCAL), allocated once per processor thread and kept. Legion
analyses and maps every bound store for every point (~8 us each here) and Legate wraps each
before the first kernel (~12 us): a fused step binds hundreds. The walked step that was
recorded keeps them all bound, as the measuring code's steps do. A step
that creates a store (the first of its kind) is not kept: the next one is. Whatever replaces a
store a recording names (a weight set, optimizer state, a plan, frozen weights) drops them all.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

from unity_legion.executor.launcher import issue_task, prepared_parts, store_dims, submit
from unity_legion.executor.tasks import Access, Program, program_task
from unity_legion.mappers.placement import placed
from unity_legion.operators.base import Launch, Role
from unity_legion.types import MachineView

# numbers of recorded launches (_Task.number)
_LAUNCH_NUMBERS = itertools.count()

# the kinds of scalars that change from step to step (GraphExecutor._dynamic names them)
DYNAMIC_SEED = "seed"
DYNAMIC_LR = "lr"
DYNAMIC_STEP = "step"
DYNAMIC_BOX = "box"       # the step's box its losses and metrics are posted to (posted.py)


@dataclass
class _Task:
    """A fused group's task: its slots' partitions (a feed's made again at each replay)."""

    task: Any                                      # program_task(program)
    program: Program
    parts: list[tuple[Any, Any]]
    feeds: tuple[tuple[int, int, Any, Any], ...]   # (slot, feed index, tile, projection)
    scalars: list[tuple[Any, type]]
    dynamic: tuple[tuple[int, str], ...]          # (scalar index, kind)
    grid: tuple[int, ...]
    view: MachineView
    labels: list[Any]                              # per step: (operator name, phase)
    # per slot while recording: (id of the store, its dims, numpy dtype name, tile); () after
    slot_info: tuple[tuple[int, tuple[int, ...], str, Any], ...] = ()
    # this launch's number among every recorded one in the process (launcher.issue_task):
    # its points keep their pieces' origins under it, the same at every replay
    number: int = field(default_factory=lambda: next(_LAUNCH_NUMBERS))

    @property
    def access(self) -> tuple[Access, ...]:
        return self.program.access

    def store_ids(self) -> list[int]:
        return [info[0] for info in self.slot_info]

    def localized(self, private: Callable[[int], bool]) -> _Task:
        """This task with every slot that only it uses in the step (`private(store id)`), that
        it writes before any read and reads again, and whose pieces have one shape on every
        point, made a temporary of its own (Access.LOCAL): no store bound for it."""
        program, info = self.program, self.slot_info
        if not info:
            return self
        read_after = _read_after_write(program)
        local = []
        for i, (sid, dims, dtype, tile) in enumerate(info):
            if (program.access[i] is not Access.WRITE or i not in read_after
                    or (program.squeeze and program.squeeze[i]) or not private(sid)):
                continue
            piece = _uniform_piece(dims, tile)
            if piece is not None and dtype:
                local.append((i, piece, dtype))
        if not local:
            return replace(self, slot_info=())
        slots = {i for i, _p, _d in local}
        access = tuple(Access.LOCAL if i in slots else a for i, a in enumerate(program.access))
        new = replace(program, access=access, local=tuple(local))
        parts = [(None, None) if i in slots else p for i, p in enumerate(self.parts)]
        return replace(self, task=program_task(new), program=new, parts=parts, slot_info=())

    def issue(self, rt: Any, fresh: Sequence[Any], value: Callable[[str], Any],
              profiler: Any) -> None:
        parts = self.parts
        if self.feeds:
            parts = list(parts)
            for slot, k, tile, proj in self.feeds:
                parts[slot] = prepared_parts([(fresh[k], tile, proj)])[0]
        scalars = self.scalars
        if self.dynamic:
            scalars = list(scalars)
            for i, kind in self.dynamic:
                scalars[i] = (value(kind), scalars[i][1])
        with _profiled(profiler, self.labels) as uid, placed(self.view):
            issue_task(rt, self.task, self.access, parts, scalars, self.grid, uid=uid,
                       meets=bool(self.program.grid), launch=self.number)


@dataclass
class _Launch:
    """A launch issued as a task of its own (read through windows, or not fusable): issued
    again through the launcher, the batch's stores and the dynamic scalars put in."""

    launch: Launch
    refs: dict[Any, Any]
    feeds: tuple[tuple[Any, int], ...]             # (ref, feed index)
    dynamic: tuple[tuple[str, str], ...]           # (scalar name, kind)
    degrees: dict[str, int]
    reduced: frozenset[str]
    box: Any
    view: MachineView
    guards: tuple[Any, ...]
    label: Any

    def store_ids(self) -> list[int]:
        return [id(s) for s in self.refs.values() if s is not None] + [id(g) for g in self.guards]

    def issue(self, rt: Any, fresh: Sequence[Any], value: Callable[[str], Any],
              profiler: Any) -> None:
        refs = self.refs
        if self.feeds:
            refs = dict(refs)
            for ref, k in self.feeds:
                refs[ref] = fresh[k]
        launch = self.launch
        if self.dynamic:
            launch = Launch(launch.kernel, launch.args, dict(launch.scalars)
                            | {name: value(kind) for name, kind in self.dynamic})
        with _profiled(profiler, [self.label]) as uid, placed(self.view):
            submit(rt, launch, refs, self.degrees, self.reduced, self.box, uid, self.guards)


@dataclass
class _Fill:
    store: Any
    value: Any

    def store_ids(self) -> list[int]:
        return [id(self.store)]

    def issue(self, rt: Any, fresh: Sequence[Any], value: Callable[[str], Any],
              profiler: Any) -> None:
        self.store.fill(self.value)


def _read_after_write(program: Program) -> set[int]:
    """The slots some step of `program` reads after an earlier step wrote them (none that a
    kernel locates by its store: Kernel.wants_origin)."""
    written: set[int] = set()
    out: set[int] = set()
    located: set[int] = set()
    for step in program.steps:
        pairs = list(zip(step.kernel.stores, step.slots))
        out.update(slot for (_n, role), slot in pairs
                   if role is not Role.OUTPUT and slot in written)
        out.update(slot for slot in step.guards if slot in written)
        written.update(slot for (_n, role), slot in pairs if role is not Role.INPUT)
        if step.kernel.wants_origin:
            located.update(step.slots)
    return out - located


def _numpy_dtype(store: Any) -> str:
    """The numpy name of a store's element type ("" where numpy has none: stays bound)."""
    try:
        return str(store.type.to_numpy_dtype())
    except (TypeError, ValueError, NotImplementedError):
        return ""


def _uniform_piece(dims: tuple[int, ...], tile: Any) -> tuple[int, ...] | None:
    """The shape of every point's piece of a store of `dims` tiled by `tile` (None: whole),
    or None where the tiles at the edge are smaller."""
    if tile is None:
        return dims
    piece = []
    for n, t in zip(dims, tile):
        if t < n and n % t:
            return None
        piece.append(min(t, n))
    return tuple(piece)


@contextlib.contextmanager
def _profiled(profiler: Any, labels: list[Any]) -> Iterator[int]:
    """The host's time submitting a task counts as its first step's operator's (as a walked
    step's submits do); yields the task's profiling id (executor.profile.Profiler), or -1
    where no profiler is on."""
    if profiler is None:
        yield -1
        return
    label = profiler.label
    profiler.switch(labels[0][0], "submit")
    try:
        yield profiler.task(labels)
    finally:
        profiler.switch(*label)


@dataclass
class StepTrace:
    """One step's operations in issue order, what it returns (the stores read back after it)
    and the executor state it leaves (GraphExecutor applies both)."""

    ops: list[Any]
    feeds: int
    tasks: int
    launches: int
    result: Any = None
    end_state: Any = None
    # id(store) -> (store, key) of the stores its tasks post to the step's box (posted.py)
    posts: dict[int, tuple[Any, int]] = field(default_factory=dict)

    def replay(self, rt: Any, fresh: Sequence[Any], value: Callable[[str], Any],
               profiler: Any = None) -> None:
        """Issue the step again: `fresh` the batch's stores (in recording order), `value` the
        dynamic scalar of a kind, `profiler` (executor.profile.Profiler) if one is on."""
        if len(fresh) != self.feeds:
            raise RuntimeError(f"step trace: recorded with {self.feeds} batch stores, "
                               f"replayed with {len(fresh)}")
        for op in self.ops:
            op.issue(rt, fresh, value, profiler)

    def local_programs(self) -> list[Program]:
        """The programs of its tasks that keep temporaries of their own."""
        return [op.program for op in self.ops if isinstance(op, _Task) and op.program.local]


@dataclass
class Recorder:
    """Collects a step's operations as the executor issues them."""

    ops: list[Any] = field(default_factory=list)
    feed_ids: dict[int, int] = field(default_factory=dict)
    feed_stores: list[Any] = field(default_factory=list)
    created: bool = False      # a store was created: the step is not kept
    tasks: int = 0
    launches: int = 0

    def feed(self, store: Any) -> None:
        self.feed_ids[id(store)] = len(self.feed_stores)
        self.feed_stores.append(store)   # alive while recording: its id names no other store

    def fill(self, store: Any, value: Any) -> None:
        self._check_not_feed(store)
        self.ops.append(_Fill(store, value))

    def task(self, program: Any, slots: Sequence[tuple[Any, Any, Any]],
             scalars: Sequence[tuple[Any, type]], dynamic: Sequence[tuple[int, str]],
             grid: tuple[int, ...], view: MachineView, labels: list[Any]) -> None:
        feeds = tuple((i, self.feed_ids[id(s)], tile, proj)
                      for i, (s, tile, proj) in enumerate(slots) if id(s) in self.feed_ids)
        # (a batch store's partition is made at each replay: the recording keeps no batch
        # store alive, whose buffer goes at the next call)
        parts = [(None, None) if id(s) in self.feed_ids else part
                 for (s, _t, _p), part in zip(slots, prepared_parts(slots))]
        info = tuple((id(s), store_dims(s), _numpy_dtype(s), tile) for s, tile, _p in slots)
        self.ops.append(_Task(program_task(program), program, parts, feeds, list(scalars),
                              tuple(dynamic), grid, view, labels, info))
        self.tasks += 1
        self.launches += len(labels)

    def launch(self, launch: Launch, refs: dict[Any, Any], dynamic: dict[str, str],
               degrees: dict[str, int], reduced: frozenset[str], box: Any, view: MachineView,
               guards: Sequence[Any], label: Any) -> None:
        feeds = tuple((ref, self.feed_ids[id(s)]) for ref, s in refs.items()
                      if id(s) in self.feed_ids)
        for g in guards:
            self._check_not_feed(g)
        dyn = tuple((name, kind) for name, kind in dynamic.items() if name in launch.scalars)
        kept = {ref: (None if id(s) in self.feed_ids else s) for ref, s in refs.items()}
        self.ops.append(_Launch(launch, kept, feeds, dyn, dict(degrees), reduced, box,
                                view, tuple(guards), label))
        self.launches += 1

    def _check_not_feed(self, store: Any) -> None:
        if id(store) in self.feed_ids:   # (the executor never fills or guards a batch store)
            self.created = True

    def finish(self, result: Any, end_state: Any, kept: Sequence[Any] = (),
               localize: bool = False) -> StepTrace | None:
        """The recording as a trace, or None where the step may not be replayed. `localize`:
        a store that one task alone uses in the step, writes and then reads (an activation
        the task's backward consumes, a gradient passed between its steps) becomes that task's
        own temporary in the replays (Access.LOCAL): Legion then neither analyses nor maps it
        and Legate binds one store less per point (both costs per store and point; a fused
        step binds hundreds). `kept`: stores read after the step (its results, state carried
        to the next step), never made temporaries."""
        if self.created:
            return None
        if localize:
            keep = {id(s) for s in kept} | set(self.feed_ids)
            uses = Counter(sid for op in self.ops for sid in op.store_ids())
            self.ops = [op.localized(lambda sid: uses[sid] == 1 and sid not in keep)
                        if isinstance(op, _Task) else op for op in self.ops]
        return StepTrace(self.ops, len(self.feed_stores), self.tasks, self.launches, result,
                         end_state)

