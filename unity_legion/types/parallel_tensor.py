"""Parallel tensor shapes: how a tensor of the PCG is cut into pieces over devices. Pure Python.

Per dimension a size and a shard degree (DTensor's Shard(dim)); beside the dimensions a replica
set: `sum_degree` partial copies that must be added to give the tensor (DTensor's Partial) and
`copy_degree` identical copies (DTensor's Replicate). A tensor with shard degrees d0..dn, sum
degree s and copy degree c lives in d0 * ... * dn * s * c pieces, one per device of its machine
view. Pieces of a dimension are tiles of ceil(size / degree) elements (the last one may be
shorter), as Legate's tiling makes them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

from unity_legion.types.tensor import DataType, TensorShape


class ParallelShapeError(ValueError):
    """A degree that cannot apply to a tensor (non-positive, larger than the dimension, ...)."""


def effective_degree(size: int, degree: int) -> int:
    """The number of tiles a tiling of `size` into ceil(size / degree) pieces yields (<= degree):
    Legate's tiling, so the executor, the PCG and the simulator all count pieces alike."""
    if size <= 0:
        return 1
    degree = max(1, min(degree, size))
    piece = -(-size // degree)
    return -(-size // piece)


def _check_degree(degree: int, what: str) -> None:
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ParallelShapeError(f"{what}: a degree must be a positive integer, got {degree!r}")


@dataclass(frozen=True)
class ShardDim:
    """One dimension: its logical size and into how many tiles it is cut."""

    size: int
    degree: int = 1

    def __post_init__(self) -> None:
        _check_degree(self.degree, f"dimension of size {self.size}")
        if self.size < 0:
            raise ParallelShapeError(f"a dimension size must be >= 0, got {self.size}")
        if self.size and self.degree > self.size:
            raise ParallelShapeError(f"cannot cut a dimension of size {self.size} into "
                                     f"{self.degree} pieces")

    @property
    def piece(self) -> int:
        """The size of the largest tile."""
        return -(-self.size // self.degree) if self.size else 0

    @property
    def tiles(self) -> int:
        """The number of non-empty tiles a tiling of `piece` yields (Legate's count)."""
        return -(-self.size // self.piece) if self.size else 1


@dataclass(frozen=True)
class ReplicaDims:
    sum_degree: int = 1    # partial sums: the tensor is the sum of these copies
    copy_degree: int = 1   # identical copies

    def __post_init__(self) -> None:
        _check_degree(self.sum_degree, "sum degree")
        _check_degree(self.copy_degree, "copy degree")


@dataclass(frozen=True)
class ParallelTensorShape:
    dims: tuple[ShardDim, ...]
    replicas: ReplicaDims = ReplicaDims()
    dtype: DataType = DataType.FLOAT32

    @classmethod
    def of(cls, shape: TensorShape, degrees: tuple[int, ...] | None = None, sum_degree: int = 1,
           copy_degree: int = 1) -> "ParallelTensorShape":
        """A concrete tensor shape with the given shard degrees (default: all 1)."""
        if not shape.is_concrete:
            raise ParallelShapeError(f"a parallel shape needs concrete dimensions, got {shape}")
        degrees = degrees or (1,) * shape.rank
        if len(degrees) != shape.rank:
            raise ParallelShapeError(f"{len(degrees)} degrees given for a rank-{shape.rank} "
                                     f"tensor {shape}")
        return cls(tuple(ShardDim(s, d) for s, d in zip(shape.dims, degrees)),  # type: ignore[arg-type]
                   ReplicaDims(sum_degree, copy_degree), shape.dtype)

    # --- views ----------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return len(self.dims)

    # cached (the instance is frozen): the search's cost tables read them millions of times
    @functools.cached_property
    def sizes(self) -> tuple[int, ...]:
        return tuple(d.size for d in self.dims)

    @functools.cached_property
    def degrees(self) -> tuple[int, ...]:
        return tuple(d.degree for d in self.dims)

    @property
    def shard_degree(self) -> int:
        return math.prod(self.degrees)

    @property
    def sum_degree(self) -> int:
        return self.replicas.sum_degree

    @property
    def copy_degree(self) -> int:
        return self.replicas.copy_degree

    @property
    def num_pieces(self) -> int:
        """Devices the tensor occupies: shard pieces times replicas."""
        return self.shard_degree * self.sum_degree * self.copy_degree

    @property
    def is_partial(self) -> bool:
        return self.sum_degree > 1

    def logical(self) -> TensorShape:
        return TensorShape(self.sizes, self.dtype)

    def piece_shape(self) -> TensorShape:
        """The largest piece one device holds."""
        return TensorShape(tuple(d.piece for d in self.dims), self.dtype)

    def num_bytes(self) -> int:
        return self.logical().num_bytes()

    def piece_bytes(self) -> int:
        return self.piece_shape().num_bytes()

    # --- changes --------------------------------------------------------------------------------
    def with_degree(self, dim: int, degree: int) -> "ParallelTensorShape":
        self._check_dim(dim)
        dims = list(self.dims)
        dims[dim] = ShardDim(dims[dim].size, degree)
        return replace(self, dims=tuple(dims))

    def with_replicas(self, sum_degree: int | None = None, copy_degree: int | None = None
                      ) -> "ParallelTensorShape":
        return replace(self, replicas=ReplicaDims(
            self.sum_degree if sum_degree is None else sum_degree,
            self.copy_degree if copy_degree is None else copy_degree))

    def _check_dim(self, dim: int) -> None:
        if not 0 <= dim < self.rank:
            raise ParallelShapeError(f"dimension {dim} is out of range for a rank-{self.rank} "
                                     f"tensor")

    def __str__(self) -> str:
        inner = ", ".join(f"{d.size}/{d.degree}" if d.degree > 1 else str(d.size) for d in self.dims)
        rep = []
        if self.sum_degree > 1:
            rep.append(f"sum={self.sum_degree}")
        if self.copy_degree > 1:
            rep.append(f"copy={self.copy_degree}")
        return f"[{inner}]" + (f"{{{', '.join(rep)}}}" if rep else "")
