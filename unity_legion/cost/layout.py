"""Which device holds which piece of a tensor: derived from an operator's launch grid and its
machine view, as the executor launches it. Pure Python.

The executor launches an operator over a grid of points: one grid dimension per launch axis of
degree > 1, in the order the axes first appear among the launch's arguments, points row-major,
point i on `MachineView.point_devices(points)[i]`. An argument's dim split by axis `a` takes its
tile from the point's index along `a`; the point's index along the axes that do not split the
argument tells its replica (a copy of an input or weight, or a partial sum of an output). So
the devices that exchange pieces in a collective (the replicas of one weight tile, the partial
sums of one output tile) follow from the grid and the view.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from unity_legion.operators.base import Launch, Operator, Ref, RefKind
from unity_legion.types import OpConfig, ParallelTensorShape, TensorShape, effective_degree

# (device, tile index per dim, replica index)
Piece = tuple[int, tuple[int, ...], int]

# (degrees, replicas, pieces) -> a small int, Layout.pattern
_PATTERNS: dict[tuple, int] = {}


@dataclass(frozen=True, eq=False)
class Layout:
    """A tensor's parallel shape and where its pieces live. (Compared and hashed by value, the
    hash computed once: layouts key the cost tables.)"""

    shape: ParallelTensorShape
    pieces: tuple[Piece, ...]
    pattern: int = field(init=False, repr=False)      # interned (degrees, replicas, pieces)
    nbytes: float = field(init=False, repr=False)     # the whole tensor's
    piece_bytes: float = field(init=False, repr=False)
    piece_devices: tuple[int, ...] = field(init=False, repr=False)   # per piece, its device

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.shape, self.pieces)))
        # what a transfer's pattern depends on (not the sizes: bytes scale it), interned
        key = (self.shape.degrees, self.shape.replicas, self.pieces)
        object.__setattr__(self, "pattern", _PATTERNS.setdefault(key, len(_PATTERNS)))
        object.__setattr__(self, "nbytes", float(self.shape.num_bytes()))
        object.__setattr__(self, "piece_bytes", float(self.shape.piece_bytes()))
        object.__setattr__(self, "piece_devices", tuple(p[0] for p in self.pieces))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined,no-any-return]

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Layout) and self._hash == other._hash  # type: ignore[attr-defined]
                and self.shape == other.shape and self.pieces == other.pieces)

    @property
    def devices(self) -> tuple[int, ...]:
        return tuple(sorted({p[0] for p in self.pieces}))

    def groups(self) -> list[tuple[int, ...]]:
        """Per tile, the distinct devices holding one of its replicas (copies or partial sums):
        the devices that all-reduce a weight's gradient, or sum an output's partials."""
        by_tile: dict[tuple[int, ...], set[int]] = defaultdict(set)
        for dev, tile, _ in self.pieces:
            by_tile[tile].add(dev)
        return [tuple(sorted(v)) for _, v in sorted(by_tile.items())]

    def tile_ids(self) -> np.ndarray:
        """Per piece, its tile's row-major number (computed once)."""
        ids = self.__dict__.get("_tile_ids")
        if ids is None:
            ids = np.zeros(len(self.pieces), dtype=np.int64)
            for k, deg in enumerate(self.shape.degrees):
                ids = ids * deg + np.array([p[1][k] for p in self.pieces], dtype=np.int64)
            object.__setattr__(self, "_tile_ids", ids)
        return ids

    def shifted(self, by: int) -> "Layout":
        return Layout(self.shape, tuple((d + by, t, r) for d, t, r in self.pieces))


def whole(shape: ParallelTensorShape, device: int = 0) -> Layout:
    """An unsplit tensor on one device (a graph input as the executor attaches it)."""
    return Layout(shape, ((device, (0,) * shape.rank, 0),))


def spread(shape: ParallelTensorShape, devices: Sequence[int]) -> Layout:
    """`shape`'s tiles row-major over `devices`, one per device in order (replicas innermost)."""
    reps = shape.sum_degree * shape.copy_degree
    tiles = list(itertools.product(*(range(d) for d in shape.degrees)))
    pieces = []
    for i, (tile, r) in enumerate(itertools.product(tiles, range(reps))):
        pieces.append((devices[i * len(devices) // (len(tiles) * reps)], tuple(tile), r))
    return Layout(shape, tuple(pieces))


def launch_axes(launch: Launch) -> list[str]:
    """Launch axes in the order they first appear among the arguments (the executor's grid)."""
    axes: list[str] = []
    for arg in launch.args.values():
        for a in arg.split:
            if a is not None and a not in axes:
                axes.append(a)
    return axes


def arg_layout(op: Operator, inputs: Sequence[TensorShape], config: OpConfig, ref: Ref,
               shape: ParallelTensorShape) -> Layout:
    """Where the pieces of `op`'s argument `ref` (an input, output or weight; `shape`: its
    parallel shape under `config`) live: the first forward launch that uses it, as the PCG's
    shapes come from it. Not used by any launch: whole on the view's first device."""
    grid = _grid_pieces(op, tuple(inputs), config.degrees, ref, shape.degrees)
    if grid is None:
        return whole(shape, config.view.start)
    points, tiles = grid
    where = config.view.point_devices(points)
    return Layout(shape, tuple((w, t, r) for w, (t, r) in zip(where, tiles)))


@functools.lru_cache(maxsize=1 << 18)
def _grid_pieces(op: Operator, inputs: tuple[TensorShape, ...], degrees: tuple[tuple[str, int], ...],
                 ref: Ref, shard: tuple[int, ...]
                 ) -> tuple[int, tuple[tuple[tuple[int, ...], int], ...]] | None:
    """The launch's points and, per point (row-major), the (tile, replica) of `ref` it holds:
    the same wherever the view puts the points (the search asks for every placement of a
    candidate: worked out once). None: no launch uses `ref`."""
    found = _launch_of(op, inputs, ref)
    if found is None:
        return None
    axes, sizes, split = found
    given = dict(degrees)
    eff = {a: (given.get(a, 1) if sizes[a] is None else effective_degree(sizes[a],
                                                                        given.get(a, 1)))
           for a in axes}
    grid = [a for a in axes if eff[a] > 1]
    points = math.prod(eff[a] for a in grid)
    split = split or (None,) * len(shard)
    # per point (row-major over the grid): its index along each grid axis
    coords = np.indices([eff[a] for a in grid]).reshape(len(grid), points)
    pos = {a: i for i, a in enumerate(grid)}
    cols = [np.minimum(coords[pos[s]], deg - 1).tolist() if s in pos else [0] * points
            for s, deg in zip(split, shard)]
    rep = np.zeros(points, dtype=np.int64)
    for a in grid:                           # row-major over the axes not splitting it
        if a not in split:
            rep = rep * eff[a] + coords[pos[a]]
    tiles = list(zip(zip(*cols) if cols else [()] * points, rep.tolist()))
    return points, tuple(tiles)


@functools.lru_cache(maxsize=4096)
def _launch_of(op: Operator, inputs: tuple[TensorShape, ...], ref: Ref
               ) -> tuple[list[str], dict[str, int | None], tuple[str | None, ...]] | None:
    """The first forward launch using `ref`: its axes, each axis' extent (the first dim it
    splits, as the executor counts tiles) and how it splits `ref`'s dims."""
    outs = op.infer_outputs(list(inputs))
    stores: dict[Ref, TensorShape] = {}
    stores.update({Ref(RefKind.INPUT, i): s for i, s in enumerate(inputs)})
    stores.update({Ref(RefKind.OUTPUT, i): s for i, s in enumerate(outs)})
    stores.update({Ref(RefKind.WEIGHT, ws.name): ws.shape for ws in op.weights(list(inputs))})
    stores.update({Ref(RefKind.SAVED, sv.name): sv.shape for sv in op.saved(list(inputs))})
    for launch in op.forward(list(inputs), training=True):
        arg = next((a for a in launch.args.values() if a.ref == ref), None)
        if arg is None:
            continue
        axes = launch_axes(launch)
        sizes: dict[str, int | None] = {}
        for a in axes:
            size = next((stores[g.ref].dims[d] for g in launch.args.values()
                         if g.ref in stores for d, s in enumerate(g.split) if s == a), None)
            sizes[a] = size if isinstance(size, int) else None
        return axes, sizes, arg.split
    return None
