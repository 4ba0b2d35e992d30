"""Submit one operator launch as a Legate manual task over explicitly tiled stores."""

from __future__ import annotations

from typing import Any, Mapping

from legate.core import ReductionOpKind, constant, dimension

from unity_legion.executor.tasks import legate_task, scalar_type
from unity_legion.operators.base import Arg, Launch, Role, ceil_div
from unity_legion.pcg.parallel_tensor import effective_degree  # noqa: F401 (re-exported)


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


def _partitioned(store: Any, arg: Arg, axes: list[str], degrees: Mapping[str, int],
                 what: str) -> tuple[Any, tuple[Any, ...] | None]:
    """The store (whole) or its tiling, and the projection from launch points to tiles. A dim
    whose axis is not in `axes` (degree 1) is whole."""
    if not any(a in axes for a in arg.split):
        return store, None
    shape = tuple(store.shape)
    if len(arg.split) != len(shape):
        raise LaunchError(f"{what}: split {arg.split} does not match store of shape {shape}")
    tile = []
    proj = []
    for d, (size, axis) in enumerate(zip(shape, arg.split)):
        if axis not in axes:
            tile.append(max(size, 1))
            proj.append(constant(0))
        else:
            deg = degrees[axis]
            tile.append(max(ceil_div(size, deg), 1))
            if ceil_div(size, tile[-1]) != deg and size > 0:
                raise LaunchError(f"{what}: dim {d} of size {size} does not tile into {deg} pieces")
            proj.append(dimension(axes.index(axis)))
    return store.partition_by_tiling(tuple(tile)), tuple(proj)


def reduced_outputs(launch: Launch, degrees: Mapping[str, int]) -> frozenset[str]:
    """Outputs that several points of the launch write: their split misses a launch axis whose
    degree is above 1 (each point then writes a partial sum, added by an ADD reduction into a
    store the caller has zeroed). An in-place store cannot be shared so; that is an error."""
    axes = [a for a in launch_axes(launch) if degrees.get(a, 1) > 1]
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


def submit(rt: Any, launch: Launch, stores: Mapping[Any, Any], degrees: Mapping[str, int],
           reduced: frozenset[str] | None = None) -> None:
    """Launch `launch` with its refs bound to `stores`, over a grid given by `degrees` per axis.
    Outputs in `reduced` (default: `reduced_outputs`) are written by ADD reduction: the caller
    must have zeroed them."""
    if reduced is None:
        reduced = reduced_outputs(launch, degrees)
    t = legate_task(launch.kernel, reduced)
    # Axes of degree 1 drop out of the grid: fewer launch dimensions, the same pieces.
    axes = [a for a in launch_axes(launch) if degrees.get(a, 1) > 1]
    grid = tuple(degrees[a] for a in axes) or (1,)
    mt = rt.create_manual_task(t.library, t.task_id, grid)
    parts = {}
    for name, _role in launch.kernel.stores:
        arg = launch.args[name]
        parts[name] = _partitioned(stores[arg.ref], arg, axes, degrees,
                                   f"{launch.kernel.name}({name}={arg.ref})")
    # Legate binds inputs, outputs, reductions to the task's parameters of each kind in order.
    for name, role in launch.kernel.stores:
        if role in (Role.INPUT, Role.INOUT):
            _add(mt.add_input, *parts[name])
    for name, role in launch.kernel.stores:
        if role in (Role.OUTPUT, Role.INOUT) and name not in reduced:
            _add(mt.add_output, *parts[name])
    for name, role in launch.kernel.stores:
        if role is Role.SUM or name in reduced:
            part, proj = parts[name]
            if proj is None:
                mt.add_reduction(part, ReductionOpKind.ADD)
            else:
                mt.add_reduction(part, ReductionOpKind.ADD, proj)
    for name, py_type in launch.kernel.scalars:
        mt.add_scalar_arg(launch.scalars[name], scalar_type(py_type))
    rt.submit(mt)


def _add(method: Any, part: Any, proj: Any) -> None:
    if proj is None:
        method(part)
    else:
        method(part, proj)
