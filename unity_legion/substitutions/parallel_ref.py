"""A numpy reference of parallel tensors: the pieces each device holds, and what each parallel
op does to them. Tests use it to check the chain algebra; dims must divide evenly by degrees.

A piece is keyed by (shard coordinate per dim..., sum index, copy index). The logical value is
the sum over sum indices of the assembled shards (every copy holds the same data).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from unity_legion.pcg.parallel_ops import (Combine, FusedParallelOp, ParallelOp, Partition, Reduce,
                                           Replicate)
from unity_legion.types import ParallelTensorShape, TensorShape

Key = tuple[int, ...]


@dataclass(frozen=True)
class PTensor:
    shape: ParallelTensorShape
    pieces: dict[Key, np.ndarray]


def distribute(x: np.ndarray, degrees: tuple[int, ...], sum_degree: int = 1, copy_degree: int = 1,
               rng: np.random.Generator | None = None) -> PTensor:
    """`x` cut by `degrees`, as `sum_degree` random partials that add up to it, `copy_degree`
    times."""
    rng = rng or np.random.default_rng(0)
    shape = ParallelTensorShape.of(TensorShape(x.shape), degrees, sum_degree, copy_degree)
    parts = [rng.normal(size=x.shape) for _ in range(sum_degree - 1)]
    parts.append(x - sum(parts, np.zeros_like(x)))
    pieces: dict[Key, np.ndarray] = {}
    for coords in itertools.product(*(range(d) for d in degrees)):
        for s in range(sum_degree):
            block = _block(parts[s], coords, degrees)
            for c in range(copy_degree):
                pieces[coords + (s, c)] = block.copy()
    return PTensor(shape, pieces)


def _block(x: np.ndarray, coords: Key, degrees: tuple[int, ...]) -> np.ndarray:
    idx = []
    for d, (c, k) in enumerate(zip(coords, degrees)):
        if x.shape[d] % k:
            raise ValueError(f"dim {d} of size {x.shape[d]} does not divide by {k}")
        n = x.shape[d] // k
        idx.append(slice(c * n, (c + 1) * n))
    return x[tuple(idx)]


def value(t: PTensor) -> np.ndarray:
    """The logical tensor (checking that every copy agrees)."""
    degs = t.shape.degrees
    out = np.zeros(t.shape.sizes)
    for coords in itertools.product(*(range(d) for d in degs)):
        idx = tuple(slice(c * (n // k), (c + 1) * (n // k))
                    for c, n, k in zip(coords, t.shape.sizes, degs))
        for s in range(t.shape.sum_degree):
            ref = t.pieces[coords + (s, 0)]
            for c in range(1, t.shape.copy_degree):
                if not np.array_equal(t.pieces[coords + (s, c)], ref):
                    raise AssertionError(f"copies of piece {coords + (s,)} differ")
            out[idx] += ref
    return out


def run(op: ParallelOp, t: PTensor) -> PTensor:
    """Apply one parallel op piece by piece (as devices would)."""
    if isinstance(op, FusedParallelOp):
        for o in op.ops:
            t = run(o, t)
        return t
    out_shape = op.infer(t.shape)
    r = t.shape.rank
    new: dict[Key, np.ndarray] = {}
    if isinstance(op, Partition):
        for key, p in t.pieces.items():
            for j, part in enumerate(np.split(p, op.degree, axis=op.dim)):
                k = list(key)
                k[op.dim] = key[op.dim] * op.degree + j
                new[tuple(k)] = part
    elif isinstance(op, Combine):
        groups: dict[Key, list[tuple[int, np.ndarray]]] = {}
        for key, p in t.pieces.items():
            k = list(key)
            k[op.dim] = key[op.dim] // op.degree
            groups.setdefault(tuple(k), []).append((key[op.dim] % op.degree, p))
        for k, ps in groups.items():
            new[k] = np.concatenate([p for _, p in sorted(ps, key=lambda x: x[0])], axis=op.dim)
    elif isinstance(op, Replicate):
        for key, p in t.pieces.items():
            for j in range(op.degree):
                new[key[:r + 1] + (key[r + 1] * op.degree + j,)] = p.copy()
    elif isinstance(op, Reduce):
        for key, p in t.pieces.items():
            k = key[:r] + (key[r] // op.degree, key[r + 1])
            new[k] = new[k] + p if k in new else p.copy()
    else:
        raise TypeError(f"no reference for {op!r}")
    return PTensor(out_shape, new)


def run_chain(chain, t: PTensor) -> PTensor:
    for op in chain:
        t = run(op, t)
    return t


def reduce_copies(t: PTensor, k: int) -> PTensor:
    """FlexFlow's reading of Reduction after Replicate: sum groups of k COPIES. On an unsplit
    replicated tensor this gives k times the value: Replicate -> Reduce is a scaling."""
    if t.shape.copy_degree % k:
        raise ValueError(f"copy degree {t.shape.copy_degree} does not divide by {k}")
    r = t.shape.rank
    new: dict[Key, np.ndarray] = {}
    for key, p in t.pieces.items():
        kk = key[:r + 1] + (key[r + 1] // k,)
        new[kk] = new[kk] + p if kk in new else p.copy()
    return PTensor(t.shape.with_replicas(copy_degree=t.shape.copy_degree // k), new)
