"""Submit one operator launch as a Legate manual task over explicitly tiled stores."""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from legate.core import ReductionOpKind, constant, dimension
from legate.core import types as ty

from unity_legion.executor.tasks import Program, program_task, scalar_type, single, slot_order
from unity_legion.operators.base import Arg, Launch, Role, ceil_div
from unity_legion.operators.spatial import Windowed
from unity_legion.types import effective_degree  # noqa: F401 (re-exported)

# Store types of half-precision values (bfloat16 as its bits in uint16: operators/precision.py),
# which no ADD reduction may target (see submit_program)
_HALF_TYPES = (ty.uint16, ty.float16)

# A box of launch points: (lower, upper) per launch-grid dim, upper exclusive.
Box = tuple[tuple[int, ...], tuple[int, ...]]


class LaunchError(ValueError):
    """A launch cannot be formed as asked (its degrees do not tile the stores)."""


def launch_axes(launch: Launch) -> list[str]:
    """Launch-grid axes in order of first appearance among the arguments."""
    axes: list[str] = []
    for arg in launch.args.values():
        for a in arg.split:
            if a is not None and a not in axes:
                axes.append(a)
    return axes


def grid_axes(launch: Launch, degrees: Mapping[str, int]) -> list[str]:
    """The axes of the launch grid: those of degree above 1 (the others drop out: fewer launch
    dimensions, the same pieces)."""
    return [a for a in launch_axes(launch) if degrees.get(a, 1) > 1]


def launch_grid(launch: Launch, degrees: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(degrees[a] for a in grid_axes(launch, degrees)) or (1,)


def _windows(arg: Arg) -> tuple[tuple[int, str, Any], ...]:
    return arg.windows if isinstance(arg, Windowed) else ()


def window_axes(launch: Launch, degrees: Mapping[str, int]) -> list[str]:
    """Grid axes along which some argument is read through windows (its tile plus halo)."""
    axes = grid_axes(launch, degrees)
    used = {axis for arg in launch.args.values() for _d, axis, _r in _windows(arg)}
    return [a for a in axes if a in used]


def launch_boxes(launch: Launch, degrees: Mapping[str, int]) -> list[Box] | None:
    """How the launch must be issued: None, as one launch over its whole grid; else one launch
    per box, a box per tile of the axes some argument is read through windows along (each
    launch slices that argument to its tile's window). Boxes come in row-major order."""
    axes = grid_axes(launch, degrees)
    wax = window_axes(launch, degrees)
    if not wax:
        return None
    grid = launch_grid(launch, degrees)
    boxes = []
    for tiles in itertools.product(*(range(degrees[a]) for a in wax)):
        at = dict(zip(wax, tiles))
        lower = tuple(at.get(a, 0) for a in axes)
        upper = tuple(at[a] + 1 if a in at else g for a, g in zip(axes, grid))
        boxes.append((lower, upper))
    return boxes


def partitioned_reductions(launch: Launch, degrees: Mapping[str, int],
                           reduced: frozenset[str]) -> bool:
    """Whether some store the launch reduces into (ADD) is tiled by a grid axis: then launches
    of parts of the grid each reduce into some of its tiles."""
    axes = grid_axes(launch, degrees)
    return any((role is Role.SUM or name in reduced)
               and any(a in axes for a in launch.args[name].split)
               for name, role in launch.kernel.stores)


def box_points(box: Box) -> list[tuple[int, ...]]:
    """The launch points of a box, row-major."""
    return list(itertools.product(*(range(lo, hi) for lo, hi in zip(*box))))


def _windowed(store: Any, arg: Arg, axes: list[str], degrees: Mapping[str, int],
              box: Box | None, what: Any) -> Any:
    """The store sliced, along each windowed dim whose axis is in the grid, to the window the
    box's tile of that axis needs (the box fixes that axis to one tile). Without a box the
    store is read whole along those dims, as the argument's split says (always correct: a
    kernel tells a whole piece from a window by its size)."""
    if box is None:
        return store
    for d, axis, reach in _windows(arg):
        if axis not in axes:
            continue
        k = axes.index(axis)
        if box[1][k] - box[0][k] != 1:
            raise LaunchError(f"{what}: read through windows along {axis!r}, the launch must "
                              f"fix that axis to one tile")
        lo, hi = reach.tile_span(degrees[axis], box[0][k])
        store = store.slice(d, slice(lo, hi))
    return store


# A projection from launch points to a store's tiles: per store dim, the launch-grid dim that
# picks its tile, or None (the dim is whole: constant 0). None for the whole projection: the
# store is not partitioned (broadcast to every point).
Projection = tuple[int | None, ...]


@dataclass(frozen=True)
class BoundArg:
    """One store argument of a launch as Legate receives it: the store (sliced to its window
    where read through one), its tile shape and projection (both None: the whole store)."""

    name: str                     # the kernel's parameter
    role: Role
    reduced: bool                 # an OUTPUT several points write: an ADD reduction
    store: Any
    tile: tuple[int, ...] | None
    proj: Projection | None
    # > 0: `store` holds one partial sum per launch point, stacked along this many leading
    # dims (the kernel sees its point's piece without them and adds into it): read-write,
    # no Legion reduction (see GraphExecutor._partial)
    squeeze: int = 0
    # (offset, shape): the kernel sees this window of the piece's last dim, reshaped, not the
    # whole piece (a bank of small sums shared by several stores: GraphExecutor._banked)
    window: tuple[int, tuple[int, ...]] | None = None

    @property
    def is_reduction(self) -> bool:
        return not self.squeeze and (self.role is Role.SUM or self.reduced)

    @property
    def reads(self) -> bool:
        return self.squeeze > 0 or self.role in (Role.INPUT, Role.INOUT)

    @property
    def writes(self) -> bool:
        return self.squeeze > 0 or (self.role in (Role.OUTPUT, Role.INOUT) and not self.reduced)


def _partitioned(shape: tuple[int, ...], arg: Arg, axes: list[str], degrees: Mapping[str, int],
                 what: Any) -> tuple[tuple[int, ...] | None, Projection | None]:
    """The tile shape and projection of a store of `shape` as `arg` splits it (None, None:
    whole). A dim whose axis is not in `axes` (degree 1) is whole."""
    if not any(a in axes for a in arg.split):
        return None, None
    if len(arg.split) != len(shape):
        raise LaunchError(f"{what}: split {arg.split} does not match store of shape {shape}")
    tile = []
    proj: list[int | None] = []
    for d, (size, axis) in enumerate(zip(shape, arg.split)):
        if axis not in axes:
            tile.append(max(size, 1))
            proj.append(None)
        else:
            deg = degrees[axis]
            tile.append(max(ceil_div(size, deg), 1))
            if ceil_div(size, tile[-1]) != deg and size > 0:
                raise LaunchError(f"{what}: dim {d} of size {size} does not tile into {deg} pieces")
            proj.append(axes.index(axis))
    return tuple(tile), tuple(proj)


def legate_partition(store: Any, tile: tuple[int, ...] | None, proj: Projection | None
                     ) -> tuple[Any, tuple[Any, ...] | None]:
    """The Legate partition and projection functor tuple of a bound argument (cached per
    store and tiling until the executor's next call, as store_dims: a fused task's slots and
    the step's launches ask for the same ones again)."""
    if tile is None or proj is None:
        return store, None
    key = (id(store), tile, proj)
    hit = _PARTS.get(key)
    if hit is None:
        hit = _PARTS[key] = (store, store.partition_by_tiling(tile), _functors(proj))
    return hit[1], hit[2]


@functools.lru_cache(maxsize=1024)
def _functors(proj: Projection) -> tuple[Any, ...]:
    return tuple(constant(0) if g is None else dimension(g) for g in proj)


def reduced_outputs(launch: Launch, degrees: Mapping[str, int]) -> frozenset[str]:
    """Outputs that several points of the launch write: their split misses a launch axis whose
    degree is above 1 (each point then writes a partial sum, added by an ADD reduction into a
    store the caller has zeroed). An in-place store cannot be shared so; that is an error."""
    axes = grid_axes(launch, degrees)
    out = set()
    for name, role in launch.kernel.stores:
        if role in (Role.OUTPUT, Role.INOUT):
            missing = [a for a in axes if a not in launch.args[name].split]
            if missing and role is Role.INOUT:
                raise LaunchError(f"{launch.kernel.name}: in-place argument {name!r} is not split "
                                  f"by launch axes {missing}; several points would update it")
            if missing:
                out.add(name)
    return frozenset(out)


def in_kernel_order(launch: Launch, names: frozenset[str]) -> list[str]:
    """`names` in the order of the kernel's stores. Anything that issues Legate operations per
    name must iterate this, never the set: a set of strings iterates in an order that depends on
    the process's hash seed, which differs between ranks, and ranks that issue the same
    operations in different orders diverge (Legion aborts, e.g. `Assertion DIM == dim` when one
    rank fills a rank-3 store while the other fills a rank-1 one)."""
    return [name for name, _role in launch.kernel.stores if name in names]


class _What:
    """An argument's name for error messages, formatted only when one is raised."""

    __slots__ = ("launch", "name")

    def __init__(self, launch: Launch, name: str) -> None:
        self.launch, self.name = launch, name

    def __str__(self) -> str:
        return f"{self.launch.kernel.name}({self.name}={self.launch.args[self.name].ref})"


# Store shapes by id(store), each with its store (alive while cached, so no other store takes
# its id). Reading a Legate store's shape costs microseconds (3-5 us per `shape[d]`, measured)
# and a step asks tens of thousands of times (inception_v3: ~7,000 launches' worth); the
# executor forgets the cache at the start of each call, when no task can be pending on the
# stores it releases.
_DIMS: dict[int, tuple[Any, tuple[int, ...]]] = {}
# (id(store), tile, projection) -> (the store, its tiling partition, projection functors)
_PARTS: dict[tuple, tuple[Any, Any, tuple[Any, ...]]] = {}


def store_dims(store: Any) -> tuple[int, ...]:
    """`tuple(store.shape)`, cached (see _DIMS)."""
    hit = _DIMS.get(id(store))
    if hit is None:
        hit = _DIMS[id(store)] = (store, tuple(store.shape))
    return hit[1]


def forget_store_dims() -> None:
    _DIMS.clear()
    _PARTS.clear()


def bind(launch: Launch, stores: Mapping[Any, Any], degrees: Mapping[str, int],
         reduced: frozenset[str] | None = None, box: Box | None = None) -> list[BoundArg]:
    """The launch's store arguments bound to `stores` over the grid `degrees` gives (the
    points of `box`, when given, for windows), in the kernel's order."""
    if reduced is None:
        reduced = reduced_outputs(launch, degrees)
    axes = grid_axes(launch, degrees)
    bound = []
    for name, role in launch.kernel.stores:
        arg = launch.args[name]
        what = _What(launch, name)
        store = stores[arg.ref]
        if isinstance(arg, Windowed) and arg.windows:
            if role is not Role.INPUT:
                raise LaunchError(f"{what}: only an input can be read through windows")
            store = _windowed(store, arg, axes, degrees, box, what)
        tile, proj = _partitioned(store_dims(store), arg, axes, degrees, what)
        bound.append(BoundArg(name, role, name in reduced, store, tile, proj))
    return bound


def submit(rt: Any, launch: Launch, stores: Mapping[Any, Any], degrees: Mapping[str, int],
           reduced: frozenset[str] | None = None, box: Box | None = None, uid: int = -1,
           guards: Sequence[Any] = ()) -> None:
    """Launch `launch` with its refs bound to `stores`, over a grid given by `degrees` per axis
    (only the points of `box`, when given). Outputs in `reduced` (default: `reduced_outputs`)
    are written by ADD reduction: the caller must have zeroed them. `guards`: stores read
    whole that must be all finite for the kernel to run (tasks.Step.guards)."""
    if reduced is None:
        reduced = reduced_outputs(launch, degrees)
    bound = bind(launch, stores, degrees, reduced, box)
    scalars = [(launch.scalars[n], t) for n, t in launch.kernel.scalars]
    submit_program(rt, single(launch.kernel, reduced, len(guards)),
                   [(b.store, b.tile, b.proj) for b in bound] + [(g, None, None) for g in guards],
                   scalars, launch_grid(launch, degrees), box, uid)


def submit_program(rt: Any, program: Program, slots: Sequence[tuple[Any, Any, Any]],
                   scalars: Sequence[tuple[Any, type]], grid: tuple[int, ...],
                   box: Box | None = None, uid: int = -1) -> None:
    """Launch `program` over `grid` (only the points of `box`, when given) with its slots bound
    to (store, tile, projection) each and its scalars (value, Python type) in order. `uid` >= 0:
    its tasks record their kernels' intervals under that id (tasks.TRACE)."""
    for i in slot_order(program.access)[2]:   # the reductions
        if slots[i][0].type in _HALF_TYPES:
            step = next(st for st in program.steps if i in st.slots)
            name = step.kernel.stores[step.slots.index(i)][0]
            raise LaunchError(
                f"{step.kernel.name}: an ADD reduction into the half-precision store "
                f"{name!r} ({slots[i][0].type}): Legion would add bfloat16 bit patterns as "
                f"integers (or round float16 at every fold); reduce into a float32 store and "
                f"narrow after (GraphExecutor._launch stages them so)")
    issue_task(rt, program_task(program), program.access, prepared_parts(slots), scalars, grid,
               box, uid, bool(program.grid))


def prepared_parts(slots: Sequence[tuple[Any, Any, Any]]) -> list[tuple[Any, Any]]:
    """Each slot's (store, tile, projection) as the (partition, functors) a launch adds."""
    return [legate_partition(*slot) for slot in slots]


def issue_task(rt: Any, task: Any, access: Sequence[Any], parts: Sequence[tuple[Any, Any]],
               scalars: Sequence[tuple[Any, type]], grid: tuple[int, ...],
               box: Box | None = None, uid: int = -1, meets: bool = False,
               launch: int = -1) -> None:
    """Launch registered `task` over `grid` (only the points of `box`, when given) with its
    slots' partitions `parts` (prepared_parts), by their `access`, and its scalars. `meets`:
    its points exchange partial sums (Program.grid): they run at once, under a number of
    their own (the task's last scalar). `launch`: the number of a recorded launch, issued
    with the same partitions at every replay (its points keep their pieces' origins); -1
    for one issued once."""
    reads, writes, reduces = slot_order(tuple(access))
    if box is None:
        mt = rt.create_manual_task(task.library, task.task_id, grid)
    else:
        # A launch domain of a single point along one dim runs as a single task that maps
        # every store whole, its partitions ignored (measured, Legate 25.11); with a trailing
        # dim of extent 1 it stays an index launch whose points take their tiles.
        lower, upper = _box_of(box, grid)
        mt = rt.create_manual_task(task.library, task.task_id, upper + (1,), lower + (0,))
    # Legate binds inputs, outputs, reductions to the task's parameters of each kind in order.
    for i in reads:
        _add(mt.add_input, *parts[i])
    for i in writes:
        _add(mt.add_output, *parts[i])
    for i in reduces:
        part, proj = parts[i]
        if proj is None:
            mt.add_reduction(part, ReductionOpKind.ADD)
        else:
            mt.add_reduction(part, ReductionOpKind.ADD, proj)
    for value, py_type in scalars:
        mt.add_scalar_arg(value, scalar_type(py_type))
    mt.add_scalar_arg(uid, scalar_type(int))
    mt.add_scalar_arg(launch, scalar_type(int))
    if meets:
        mt.add_scalar_arg(next(_MEETING_NUMBERS), scalar_type(int))
        mt.set_concurrent(True)
    rt.submit(mt)


# numbers of launches whose points meet (tasks.gathered): unique in the process
_MEETING_NUMBERS = itertools.count()


def _box_of(box: Box, grid: Sequence[int]) -> Box:
    lower, upper = tuple(box[0]), tuple(box[1])
    if len(lower) != len(upper) or (lower and len(lower) != len(grid)) or any(
            not 0 <= lo < hi <= g for lo, hi, g in zip(lower, upper, grid)):
        raise LaunchError(f"launch box {box} does not fit the launch grid {tuple(grid)}")
    return (lower, upper) if lower else ((0,), (1,))


def _add(method: Any, part: Any, proj: Any) -> None:
    if proj is None:
        method(part)
    else:
        method(part, proj)
