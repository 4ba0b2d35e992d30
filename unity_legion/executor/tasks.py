"""Turn operator kernels into registered Legate tasks: one kernel, or a fused group of kernels
run one after another on each point's pieces (FlexFlow's FusedOp), registered once per shape.

A task is a `Program`: steps (a kernel and the task store each of its parameters names) over
store slots, each slot with one access (read, write, read-write or ADD reduction) for the whole
task. The body converts every slot to a numpy view once, then runs the kernels in order: a slot
a step writes is what a later step reads, on the same piece, without going back to Legate.

Every task has a CPU and a GPU variant, registered here for every program (one path: a new
operator's kernels get both without being listed anywhere). The GPU variant is the same body
with the slots converted to CuPy arrays over the stores' framebuffer memory instead
(executor/gpu.py): the kernels' source is one. `VARIANTS` records what each registered task got.
"""

from __future__ import annotations

import enum
import inspect
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from legate.core import VariantCode
from legate.core import types as ty
from legate.core.task import (ADD, InputStore, OutputStore, ReductionStore, PyTask,
                              VariantInvoker)

from unity_legion.operators.base import Kernel, PieceOrigin, Role
from unity_legion.operators.precision import is_half_piece, narrow_into, round_in_place, widen

_P = inspect.Parameter.POSITIONAL_OR_KEYWORD

_SCALAR_TYPE = {int: ty.int64, float: ty.float64, bool: ty.bool_, str: ty.string_type}

# element types whose pieces numpy takes over DLPack (numpy refuses Legate's float16 there)
_DLPACK_CODES = frozenset(t.code for t in (ty.float32, ty.float64, ty.int32, ty.int64, ty.int8,
                                           ty.uint8, ty.uint16))


def aligned_empty(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """An uninitialised array aligned as Legate aligns its instances (64 bytes; numpy gives 16:
    with 16-byte-aligned temporaries bert's serial step measured 12% slower than with bound
    stores, aligned 3% faster)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    raw = np.empty(n + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    return raw[start:start + n].view(dt).reshape(shape)


_ALIGN = 64


def host_array(store: Any) -> np.ndarray:
    """A numpy view of a task's piece. DLPack costs ~1 us a store where `np.asarray` (the
    array interface) costs ~3 us, and a fused task binds dozens of stores per point."""
    if store.type.code in _DLPACK_CODES:
        return np.from_dlpack(store)
    return np.asarray(store)


class Access(enum.Enum):
    """How a task holds one store slot for all of its steps."""

    READ = "read"
    WRITE = "write"          # every step that reads it comes after one that wrote it
    READ_WRITE = "read_write"
    REDUCE = "reduce"        # ADD reduction: steps only add into it
    # a temporary of the task's own: written, then read, by its steps and by nothing else in
    # the step it belongs to; the body allocates it and no store is bound (Program.local)
    LOCAL = "local"

    __hash__ = object.__hash__   # by identity (C speed): programs are hashed per fused task

    @property
    def reads(self) -> bool:
        return self in (Access.READ, Access.READ_WRITE)

    @property
    def writes(self) -> bool:
        return self in (Access.WRITE, Access.READ_WRITE)


@dataclass(frozen=True)
class Step:
    """One kernel of a task: the slot of each of its store parameters (in the kernel's order)
    and which OUTPUT parameters several points write (run into a zeroed temporary, added)."""

    kernel: Kernel
    slots: tuple[int, ...]
    reduced: frozenset[str] = frozenset()
    # slots read whole that must hold only finite values for the step to run (a training
    # step's losses, guarding its updates: see GraphExecutor.train_step); () for none
    guards: tuple[int, ...] = ()
    # (parameter index, slot): that parameter's store plus the sum of every point's piece of
    # the slot (a store of partial sums, one piece per point), exchanged inside the task
    # (see `gathered`); () for none
    gathers: tuple[tuple[int, int], ...] = ()


class _Passed:
    """A scalar passed with each launch (Program.fixed)."""

    def __repr__(self) -> str:
        return "PASSED"


PASSED = _Passed()


def fixed_scalars(scalars: Sequence[tuple[Any, type]], dynamic: Sequence[tuple[int, str]]
                  ) -> tuple[Any, ...]:
    """Program.fixed for a fused task's `scalars` (value, type), of which those at the
    `dynamic` indices change from step to step: every other one is held by the program. Legate
    wraps each scalar a launch passes, on the issuing thread and again in every point of the
    task (~20 us of the interpreter's lock per point of a ResNeXt task, which passes hundreds:
    convolution geometries, epsilons, flags). Equal values of different types (1, 1.0,
    True) or signs (0.0, -0.0) make different programs; a NaN is passed."""
    moving = {i for i, _kind in dynamic}
    out = []
    for i, (value, t) in enumerate(scalars):
        if i in moving or value != value:   # (NaN: a program equal to nothing, itself included)
            out.append(PASSED)
        else:
            out.append((t.__name__, repr(value), value))
    return tuple(out)


@dataclass(frozen=True)
class Program:
    """The shape of a task: its steps and each slot's access. Hashable: one registration each."""

    steps: tuple[Step, ...]
    access: tuple[Access, ...]
    # per slot, how many leading dims of its piece the kernels do not see (a store of partial
    # sums, one per launch point: each point's piece has extent 1 there); () for none
    squeeze: tuple[int, ...] = ()
    # per LOCAL slot: (slot, its piece's shape, numpy dtype name): what the body allocates
    local: tuple[tuple[int, tuple[int, ...], str], ...] = ()
    # windows: slots numbered from len(access) on, each (slot, offset, shape): that part of
    # the slot's piece along its last dim, reshaped (several small sums in one bank store)
    windows: tuple[tuple[int, int, tuple[int, ...]], ...] = ()
    # the launch grid of a program whose steps gather partial sums across its points (Step.
    # gathers): its points must run at once (a concurrent launch); () for none
    grid: tuple[int, ...] = ()
    # per scalar of its steps (in scalar_params order): PASSED, or (type name, repr, value) of
    # a value the same at every launch of the program, which the body holds and no launch
    # passes (fixed_scalars); () for none fixed
    fixed: tuple[Any, ...] = ()

    def kernel_scalars(self) -> list[tuple[str, type]]:
        """(parameter name, type) of every scalar of its steps' kernels, held or passed, in
        order (`fixed` has one entry for each)."""
        return [(f"k{j}_{name}", t) for j, s in enumerate(self.steps)
                for name, t in s.kernel.scalars]

    def scalar_params(self) -> list[tuple[str, type]]:
        # the trailing "_uid": the profiler's id of the launch (-1: not profiled; see TRACE);
        # "_launch": the number of a recorded launch issued again at every replay (-1: a
        # launch issued once), under which its points keep their pieces' origins (program_
        # task); then, for a program that gathers, "_meet": the launch's number, which its
        # points meet under (launcher.issue_task draws it)
        every = self.kernel_scalars()
        if self.fixed:
            every = [param for param, f in zip(every, self.fixed) if f is PASSED]
        return every + [("_uid", int), ("_launch", int)] + (
            [("_meet", int)] if self.grid else [])

    @property
    def name(self) -> str:
        first = self.steps[0]
        base = first.kernel.name.replace(".", "_") + "".join(
            f"__sum_{n}" for n in sorted(first.reduced))
        return base if len(self.steps) == 1 else f"fused{len(self.steps)}__{base}"


def single(k: Kernel, reduced: frozenset[str] = frozenset(), guards: int = 0) -> Program:
    """The program of one kernel: a slot per store parameter (and `guards` slots read after
    them, see Step.guards)."""
    access = []
    for name, role in k.stores:
        if role is Role.SUM or name in reduced:
            access.append(Access.REDUCE)
        elif role is Role.INPUT:
            access.append(Access.READ)
        elif role is Role.OUTPUT:
            access.append(Access.WRITE)
        else:
            access.append(Access.READ_WRITE)
    n = len(k.stores)
    return Program((Step(k, tuple(range(n)), reduced, tuple(range(n, n + guards))),),
                   tuple(access) + (Access.READ,) * guards)


def legate_task(k: Kernel, reduced: frozenset[str] = frozenset()) -> Any:
    """A Legate task running kernel `k` on the local pieces of its stores. `reduced` names
    outputs that several points of the launch write (their split misses a launch axis, e.g.
    the partial sums of a Linear split by input features): the task gets them as ADD
    reductions, runs the kernel into a zeroed temporary and adds that, so kernels always
    assign their outputs and never need to know."""
    return program_task(single(k, reduced))


_registered = 0

# Task ids our library reserves. Every fused program is a task of its own, and Legate's core
# library (a PyTask's default) has room for ~1000 (measured, 25.11: "The scope ran out of IDs"
# at the 1001st): a process that trains a few dozen models under several plans reached it.
MAX_TASKS = 1 << 16


@cache
def task_library() -> Any:
    """The Legate library our tasks are registered in (made on first use, the same on every
    rank: each registers the same programs in the same order)."""
    from legate.core import ResourceConfig, get_legate_runtime

    lib, _created = get_legate_runtime().find_or_create_library(
        "unity_legion", config=ResourceConfig(max_tasks=MAX_TASKS, max_dyn_tasks=MAX_TASKS))
    return lib

# Points of one launch that sum partial sums inside the task (Step.gathers) meet here: they
# are threads of this process (one rank; the executor gathers only there), run at once (a
# concurrent launch), and a gather is a barrier between them (~30 us measured here, where a
# task boundary between the same launches costs ~0.4 ms and two tasks).
MEET_TIMEOUT_S = 300.0


class _Meeting:
    """The points of one launch: what each put down per gather, and who has left."""

    def __init__(self, points: int) -> None:
        self.barrier = threading.Barrier(points, timeout=MEET_TIMEOUT_S)
        self.pieces: dict[tuple[int, int], Any] = {}
        self.left = 0


_MEETINGS: dict[int, _Meeting] = {}
_MEETINGS_LOCK = threading.Lock()


def _meeting(number: int, points: int) -> _Meeting:
    with _MEETINGS_LOCK:
        m = _MEETINGS.get(number)
        if m is None:
            m = _MEETINGS[number] = _Meeting(points)
        return m


def _leave(number: int, m: _Meeting) -> None:
    with _MEETINGS_LOCK:
        m.left += 1
        if m.left == m.barrier.parties:
            del _MEETINGS[number]


def gathered(m: _Meeting, k: int, point: int, base: Any, piece: Any) -> Any:
    """`base` plus every point's `piece` of gather `k`, in point order (the same sum on every
    point, and the one GraphExecutor._settle later adds into the store)."""
    m.pieces[(k, point)] = piece.copy()
    try:
        m.barrier.wait()
    except threading.BrokenBarrierError:
        raise RuntimeError(
            f"a fused task's points did not all reach its partial-sum exchange within "
            f"{MEET_TIMEOUT_S:.0f} s (were they run at once?)") from None
    total = base.copy()
    for q in range(m.barrier.parties):
        total += m.pieces[(k, q)]
    return total


# Kernel intervals of profiled launches (uid >= 0), appended by the task bodies on their
# processors' threads (list.append is atomic under the GIL): (uid, step index, thread ident,
# start, end), time.perf_counter seconds. unity_legion.executor.profile reads and clears it.
TRACE: list[tuple[int, int, int, float, float]] = []


@cache
def slot_order(access: tuple[Access, ...]) -> tuple[tuple[int, ...], tuple[int, ...],
                                                    tuple[int, ...]]:
    """The slots a task binds as inputs (those it reads), outputs (those it writes) and
    reductions, each in slot order: the order of the task's parameters (program_task) and of
    the launch's arguments (launcher.submit_program)."""
    return (tuple(i for i, a in enumerate(access) if a.reads),
            tuple(i for i, a in enumerate(access) if a.writes),
            tuple(i for i, a in enumerate(access) if a is Access.REDUCE))


@cache
def program_task(program: Program) -> Any:
    """The registered Legate task that runs `program`. Legate binds a launch's inputs,
    outputs and reductions to the task's parameters of each kind in order: the executor adds
    the slots that read (slot order), then those that write, then the reductions, then the
    scalars in `scalar_params` order."""
    access = program.access
    reads, writes, reduces = slot_order(access)
    params = ([inspect.Parameter(f"r{i}", _P, annotation=InputStore) for i in reads]
              + [inspect.Parameter(f"w{i}", _P, annotation=OutputStore) for i in writes]
              + [inspect.Parameter(f"a{i}", _P, annotation=ReductionStore[ADD]) for i in reduces])
    scalars = program.scalar_params()
    params += [inspect.Parameter(n, _P, annotation=t) for n, t in scalars]
    signature = inspect.Signature(params, return_annotation=None)
    # the physical store a slot's array comes from: the written one where there is one (a
    # read-write slot maps one instance for both)
    source = {i: (f"w{i}" if a.writes else f"a{i}" if a is Access.REDUCE else f"r{i}")
              for i, a in enumerate(access)}
    steps = program.steps
    squeeze = program.squeeze
    grid = program.grid
    names = [p.name for p in params]
    position: dict[str, Any] = {name: i for i, name in enumerate(names)}
    # a held scalar's "position" is its value, boxed (_step_plan tells them apart)
    for (key, _t), f in zip(program.kernel_scalars(), program.fixed):
        if f is not PASSED:
            position[key] = _Held(f[2])
    plans = [_step_plan(j, step, position) for j, step in enumerate(steps)]
    # each slot's argument position (None: a temporary of the task's own), and the trailing
    # scalars'
    store_at = tuple(None if a is Access.LOCAL else position[source[i]]
                     for i, a in enumerate(access))
    uid_at, launch_at, meet_at = position["_uid"], position["_launch"], position.get("_meet")

    local = program.local
    # (slot, first, end, shape) per window: its bounds worked out once, not per task
    windows = tuple((base, offset, offset + math.prod(shape), shape)
                    for base, offset, shape in program.windows)
    n_access = len(access)
    # guard slots no step writes: each is checked once a task (a fused update task's every
    # step has the same guards, the step's losses)
    written = {slot for step in steps for (_n, role), slot in zip(step.kernel.stores, step.slots)
               if role is not Role.INPUT}
    fixed_guards = frozenset(g for step in steps for g in step.guards) - written
    # each processor thread's temporaries, kept from task to task: a fresh array of megabytes
    # is fresh pages for the kernel to fault in and zero at every step (an Inception step ran
    # 12% slower so); released with release_local_buffers
    buffers: dict[tuple[int, int], Any] = {}
    if local:
        LOCAL_BUFFERS[program] = buffers

    # (launch, point) -> its pieces' origins, found once for a recorded launch (a Legate
    # domain lookup costs ~10 us of the interpreter's lock; a replayed launch binds the same
    # tiles at every step): bounded, as recordings come and go
    origin_cache: dict[tuple[int, tuple[int, ...]], list[Any]] = {}

    def body(*args: Any, asarray: Any = host_array, empty: Any = aligned_empty,
             point: tuple[int, ...] | None = None, **kw: Any) -> None:
        # (_PositionalInvoker passes the parameters by position; Legate's own invoker, by name)
        if kw or len(args) != len(names):
            args = tuple(signature.bind(*args, **kw).arguments.values())
        stores = [None if at is None else args[at] for at in store_at]
        arrays = [None if s is None else asarray(s) for s in stores]
        if local:
            thread = threading.get_ident()
            for i, shape, dtype in local:
                buf = buffers.get((thread, i))
                if buf is None:
                    buf = buffers[(thread, i)] = empty(shape, dtype)
                arrays[i] = buf
        for i, k in enumerate(squeeze):
            if k:
                arrays[i] = arrays[i].reshape(arrays[i].shape[k:])
        # half-precision pieces: kernels run on float32 working copies, rounded back after
        # each kernel that writes them (operators/precision.py says why). Never a REDUCE slot:
        # Legion would fold its uint16 bits as integers (the executor stages half sums in
        # float32; launcher.submit_program refuses one)
        halves = {i: arrays[i] for i, a in enumerate(arrays) if is_half_piece(a)}
        for i, piece in halves.items():
            arrays[i] = widen(piece)
        launch = args[launch_at]
        keep = launch >= 0 and point is not None
        kept = origin_cache.get((launch, point)) if keep else None
        fresh = kept is None
        if fresh:
            # per slot its piece's origin, per step that wants them its kernel's origin
            # argument (where kept: every one looked up now, so that none refers to this
            # task's stores later)
            kept = ([None] * n_access, [None] * len(plans))
        origins, step_origins = kept
        for base, first, end, shape in windows:   # (splitting a contiguous dim: a view)
            piece = arrays[base]
            arrays.append(piece[..., first:end].reshape(piece.shape[:-1] + shape))
            if fresh:
                origins.append((0,) * (piece.ndim - 1 + len(shape)))
        if fresh and keep:
            if len(origin_cache) >= _ORIGINS_KEPT:
                origin_cache.clear()
            origin_cache[(launch, point)] = kept
        uid = args[uid_at]

        def origin_of_slot(slot: int) -> tuple[int, ...]:
            o = origins[slot]
            if o is None:   # (a Legate domain lookup: ~10 us; once a slot a task)
                lo = tuple(stores[slot].domain.lo)
                o = origins[slot] = lo[squeeze[slot]:] if squeeze else lo
            return o

        meeting = None
        if grid:
            number = args[meet_at]
            meeting = _meeting(number, math.prod(grid))
            k_gather = 0
            lead = len(grid)
            lo = point if point is not None else next(
                tuple(stores[slot].domain.lo)[:lead] for step in steps
                for _p, slot in step.gathers)
            member = 0   # this point's place among the launch's points
            for c, n in zip(lo, grid):
                member = member * n + c
        finite: dict[int, bool] = {}   # fixed_guards' checks
        for j, (step, fn, pairs, reduced, skeys, origin_slots, written, call_at) in enumerate(
                plans):
            if step.gathers:   # every point meets here, whatever the guards say
                sums = {}
                for p, slot in step.gathers:
                    sums[p] = gathered(meeting, k_gather, member, arrays[step.slots[p]],
                                       arrays[slot])
                    k_gather += 1
            if step.guards:
                ok = True
                for g in step.guards:
                    seen = finite.get(g)
                    if seen is None:
                        seen = bool(np.isfinite(arrays[g]).all())
                        if g in fixed_guards:
                            finite[g] = seen
                    if not seen:
                        ok = False
                        break
                if not ok:
                    # the step's loss is not finite: its update changes nothing but still
                    # zeroes the gradient it would have consumed
                    for (name, _role), slot in zip(step.kernel.stores, step.slots):
                        if name in step.kernel.consumes:
                            arrays[slot][...] = 0
                    continue
            if uid >= 0:
                t0 = time.perf_counter()
            origin = None
            if origin_slots is not None:
                origin = step_origins[j]
                if origin is None:
                    # every piece's origin looked up here, before the kernel: kept for the
                    # launch's later tasks (no lookup then refers to this task's stores), and
                    # never inside the kernel, whose time the cost model measures (a replayed
                    # step's kernels find them kept)
                    of = {n: origin_of_slot(s) for n, s in origin_slots.items()}
                    origin = step_origins[j] = PieceOrigin(of[pairs[0][0]], of)
            if call_at is not None:   # by position: no dictionary built
                call_at(arrays, args, origin)
            else:
                call = {name: arrays[slot] for name, slot in pairs}
                if reduced:
                    partial = []
                    for name, slot in reduced:
                        buf = np.zeros_like(arrays[slot])
                        partial.append((slot, buf))
                        call[name] = buf
                if step.gathers:
                    for p, _slot in step.gathers:
                        call[pairs[p][0]] = sums[p]
                for name, at in skeys:
                    call[name] = at.value if type(at) is _Held else args[at]
                if origin is not None:
                    call["origin"] = origin
                fn(**call)
                if reduced:
                    for slot, buf in partial:
                        arrays[slot] += buf
            if halves:
                for slot in written:
                    if slot in halves:
                        round_in_place(halves[slot].dtype, arrays[slot])
            if uid >= 0:
                TRACE.append((uid, j, threading.get_ident(), t0, time.perf_counter()))
        for i, piece in halves.items():
            if access[i] is not Access.READ and access[i] is not Access.LOCAL:
                narrow_into(piece, arrays[i])
        if meeting is not None:
            _leave(number, meeting)

    def gpu_body(*args: Any, **kw: Any) -> None:
        # the same body on device arrays, on this thread's stream (waited for at the end)
        from unity_legion.executor.gpu import OnDevice, device_array

        import cupy

        with OnDevice():
            body(*args, asarray=device_array, empty=cupy.empty, **kw)

    global _registered
    _registered += 1  # task names must be unique; programs of the same first kernel are not
    for fn in (body, gpu_body):
        fn.__signature__ = signature  # type: ignore[attr-defined]
        fn.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
    body.__name__ = body.__qualname__ = f"{program.name}__{_registered}"
    gpu_body.__name__ = gpu_body.__qualname__ = f"{program.name}__{_registered}__gpu"
    t = PyTask(func=body, variants=(VariantCode.CPU,), library=task_library(),
               invoker=_PositionalInvoker(body))
    t.gpu_variant(gpu_body)   # Legate refuses a variant whose signature differs from the CPU's
    VARIANTS[program] = ("cpu", "gpu")
    return t


# launches per program whose pieces' origins a body keeps (program_task)
_ORIGINS_KEPT = 256


class _PositionalInvoker(VariantInvoker):
    """Calls a program's body with its stores and scalars by position, in the order Legate
    binds them (inputs, outputs, reductions, scalars: the body's parameters are declared in
    that order, program_task). Legate's own invoker works out each parameter's kind from its
    annotation at every call (typing lookups per parameter) and passes all of them by name:
    ~30 us of the interpreter's lock per task of a few dozen arguments, paid by every point
    of every task."""

    def __call__(self, ctx: Any, func: Any) -> None:
        args = [a.data() for a in ctx.inputs]
        args += [a.data() for a in ctx.outputs]
        args += [a.data() for a in ctx.reductions]
        args += [s.value() for s in ctx.scalars]
        func(*args, point=tuple(ctx.task_index))


def _step_plan(j: int, step: Step, position: Mapping[str, int]) -> tuple[Any, ...]:
    """What the task body needs of step `j`, worked out once per program: (step, kernel
    function, (parameter, slot) of the stores passed as they are, those run into a zeroed
    temporary and added (Step.reduced), (parameter, argument position or _Held value) of its
    scalars, parameter -> slot of its stores when it wants their origins (else None), the
    slots it writes, and the kernel called by position (`_call_by_position`; None: by
    name))."""
    k = step.kernel
    named = list(zip((name for name, _r in k.stores), step.slots))
    pairs = tuple(named)   # (a reduced parameter's entry is replaced by its temporary)
    reduced = tuple((n, s) for n, s in named if n in step.reduced)
    skeys = tuple((name, position[f"k{j}_{name}"]) for name, _t in k.scalars)
    written = tuple(slot for (name, role), slot in zip(k.stores, step.slots)
                    if role is not Role.INPUT or name in step.reduced)
    call_at = None if reduced or step.gathers else _call_by_position(k, dict(named), skeys)
    return (step, k.fn, pairs, reduced, skeys, dict(pairs) if k.wants_origin else None,
            written, call_at)


@dataclass(frozen=True)
class _Held:
    """A scalar's value held by the program (Program.fixed), where a passed one has its
    argument position."""

    value: Any


def _call_by_position(k: Kernel, slots: dict[str, int],
                      scalars: tuple[tuple[str, Any], ...]) -> Any:
    """`k`'s function called with its arguments by position, taken straight from the body's
    arrays, the task's arguments and the origin: call(arrays, args, origin). A kernel call by
    name built a dictionary of a dozen entries and matched it to the parameters (~10% of a
    fused task's interpreter time). None where the parameters do not allow it."""
    try:
        params = inspect.signature(k.fn).parameters.values()
    except (TypeError, ValueError):
        return None
    at = dict(scalars)
    exprs = []
    held: list[Any] = []
    for p in params:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            return None
        if p.name in slots:
            exprs.append(f"a[{slots[p.name]}]")
        elif p.name in at and type(at[p.name]) is _Held:
            exprs.append(f"c[{len(held)}]")
            held.append(at[p.name].value)
        elif p.name in at:
            exprs.append(f"s[{at[p.name]}]")
        elif p.name == "origin" and k.wants_origin:
            exprs.append("o")
        else:
            return None
    namespace = {"fn": k.fn, "c": tuple(held)}
    exec(f"def call(a, s, o):\n    fn({', '.join(exprs)})\n", namespace)   # noqa: S102
    return namespace["call"]


# programs with task-local temporaries -> their processors' buffers (see program_task)
LOCAL_BUFFERS: dict[Program, dict[tuple[int, int], Any]] = {}


def release_local_buffers(programs: Any = None) -> None:
    """Free the temporaries kept for `programs` (None: all); a later task allocates anew."""
    for program in list(LOCAL_BUFFERS) if programs is None else programs:
        bufs = LOCAL_BUFFERS.get(program)
        if bufs is not None:
            bufs.clear()


# each registered program -> the variants its task was given (what scripts/check_gpu.py counts)
VARIANTS: dict[Program, tuple[str, ...]] = {}


def scalar_type(py_type: type) -> Any:
    return _SCALAR_TYPE[py_type]
