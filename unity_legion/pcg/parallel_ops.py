"""The parallel operators of the PCG: each changes how one tensor is cut over devices. Pure Python.

| operator          | shape effect                        | on Legate                                  |
|-------------------|-------------------------------------|--------------------------------------------|
| Partition(dim, k) | shard degree of `dim` x k           | the consumer reads a finer tiling          |
| Combine(dim, k)   | shard degree of `dim` / k (gather)  | the consumer reads a coarser tiling        |
| Replicate(k)      | copy degree x k                     | the consumer reads the store on each point |
| Reduce(k)         | sum degree / k (add partial sums)   | the producer writes with ADD reduction     |
| Pipeline(m)       | the sample dim / m (one micro-batch)| staged launches over micro-batch slices    |
| Batch(m)          | the sample dim x m (re-batch)       | the micro-batches' pieces, side by side    |

`bytes_moved(shape)` is the volume that crosses devices when the operator runs on `shape`, placing
each group of new pieces so that one of them sits where its source piece is (a block placement):
a Partition keeps 1/k of the data local, a Replicate sends k - 1 copies, a Combine or a Reduce
receives k - 1 pieces per output piece. The cost model turns volumes into time on a topology.
Pipeline and Batch move nothing: they cut a step's batch into micro-batches that run one after
another and put them back together (unity_legion/pcg/pipeline.py: stages on device subsets).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar

from unity_legion.types.parallel_tensor import (ParallelShapeError, ParallelTensorShape, ShardDim,
                                                _check_degree)


@dataclass(frozen=True)
class ParallelOp:
    """Base of the parallel operators; `infer` checks that the operator applies."""

    op_type: ClassVar[str] = "parallel"

    def infer(self, shape: ParallelTensorShape) -> ParallelTensorShape:
        raise NotImplementedError

    def bytes_moved(self, shape: ParallelTensorShape) -> int:
        raise NotImplementedError

    def backward_op(self) -> "ParallelOp":
        """The operator that carries gradients back: Partition and Combine swap, and so do
        Replicate and Reduce (the gradient of copies is the sum of the copies' gradients)."""
        raise NotImplementedError

    def describe(self) -> str:
        # fields(), not __dataclass_fields__: the latter also lists the ClassVar op_type
        return f"{self.op_type}({', '.join(str(getattr(self, f.name)) for f in fields(self))})"


@dataclass(frozen=True)
class Partition(ParallelOp):
    dim: int
    degree: int

    op_type = "partition"

    def __post_init__(self) -> None:
        _check_degree(self.degree, "partition")

    def infer(self, shape: ParallelTensorShape) -> ParallelTensorShape:
        if not 0 <= self.dim < shape.rank:
            raise ParallelShapeError(f"partition: dimension {self.dim} is out of range for {shape}")
        try:
            return shape.with_degree(self.dim, shape.dims[self.dim].degree * self.degree)
        except ParallelShapeError as exc:
            raise ParallelShapeError(f"partition({self.dim}, {self.degree}) of {shape}: {exc}") from None

    def bytes_moved(self, shape: ParallelTensorShape) -> int:
        out = self.infer(shape)
        return shape.num_pieces * (self.degree - 1) * out.piece_bytes()

    def backward_op(self) -> "Combine":
        return Combine(self.dim, self.degree)


@dataclass(frozen=True)
class Combine(ParallelOp):
    dim: int
    degree: int

    op_type = "combine"

    def __post_init__(self) -> None:
        _check_degree(self.degree, "combine")

    def infer(self, shape: ParallelTensorShape) -> ParallelTensorShape:
        if not 0 <= self.dim < shape.rank:
            raise ParallelShapeError(f"combine: dimension {self.dim} is out of range for {shape}")
        have = shape.dims[self.dim].degree
        if have % self.degree:
            raise ParallelShapeError(f"combine({self.dim}, {self.degree}) of {shape}: dimension "
                                     f"{self.dim} is cut in {have}, not a multiple of {self.degree}")
        return shape.with_degree(self.dim, have // self.degree)

    def bytes_moved(self, shape: ParallelTensorShape) -> int:
        out = self.infer(shape)
        return out.num_pieces * (self.degree - 1) * shape.piece_bytes()

    def backward_op(self) -> Partition:
        return Partition(self.dim, self.degree)


@dataclass(frozen=True)
class Replicate(ParallelOp):
    degree: int

    op_type = "replicate"

    def __post_init__(self) -> None:
        _check_degree(self.degree, "replicate")

    def infer(self, shape: ParallelTensorShape) -> ParallelTensorShape:
        return shape.with_replicas(copy_degree=shape.copy_degree * self.degree)

    def bytes_moved(self, shape: ParallelTensorShape) -> int:
        return shape.num_pieces * (self.degree - 1) * shape.piece_bytes()

    def backward_op(self) -> "Reduce":
        return Reduce(self.degree)


@dataclass(frozen=True)
class Reduce(ParallelOp):
    degree: int

    op_type = "reduce"

    def __post_init__(self) -> None:
        _check_degree(self.degree, "reduce")

    def infer(self, shape: ParallelTensorShape) -> ParallelTensorShape:
        if shape.sum_degree % self.degree:
            raise ParallelShapeError(f"reduce({self.degree}) of {shape}: the sum degree "
                                     f"{shape.sum_degree} is not a multiple of {self.degree}")
        return shape.with_replicas(sum_degree=shape.sum_degree // self.degree)

    def bytes_moved(self, shape: ParallelTensorShape) -> int:
        out = self.infer(shape)
        return out.num_pieces * (self.degree - 1) * shape.piece_bytes()

    def backward_op(self) -> Replicate:
        return Replicate(self.degree)


def _check_sample_dim(shape: ParallelTensorShape, what: str) -> None:
    if shape.rank == 0:
        raise ParallelShapeError(f"{what}: a scalar has no sample dimension to micro-batch")


@dataclass(frozen=True)
class Pipeline(ParallelOp):
    """The sample dimension (dim 0) cut into `micro_batches` slices that flow one after another
    through the stages: the shape a stage sees is one micro-batch, with the same shard degrees."""

    micro_batches: int

    op_type = "pipeline"

    def __post_init__(self) -> None:
        _check_degree(self.micro_batches, "pipeline")

    def infer(self, shape: ParallelTensorShape) -> ParallelTensorShape:
        what = f"pipeline({self.micro_batches}) of {shape}"
        _check_sample_dim(shape, what)
        size, degree = shape.dims[0].size, shape.dims[0].degree
        if self.micro_batches > size:
            raise ParallelShapeError(f"{what}: {self.micro_batches} micro-batches exceed the "
                                     f"batch of {size}")
        if size % self.micro_batches:
            raise ParallelShapeError(f"{what}: {self.micro_batches} micro-batches do not divide "
                                     f"the batch of {size}")
        micro = size // self.micro_batches
        if degree > micro:
            raise ParallelShapeError(f"{what}: a micro-batch of {micro} samples cannot be cut "
                                     f"{degree} ways")
        return replace(shape, dims=(ShardDim(micro, degree),) + shape.dims[1:])

    def bytes_moved(self, shape: ParallelTensorShape) -> int:
        self.infer(shape)
        return 0   # slices in time of pieces that stay where they are

    def backward_op(self) -> "Batch":
        return Batch(self.micro_batches)


@dataclass(frozen=True)
class Batch(ParallelOp):
    """The inverse of Pipeline: `micro_batches` micro-batches side by side as one batch."""

    micro_batches: int

    op_type = "batch"

    def __post_init__(self) -> None:
        _check_degree(self.micro_batches, "batch")

    def infer(self, shape: ParallelTensorShape) -> ParallelTensorShape:
        _check_sample_dim(shape, f"batch({self.micro_batches}) of {shape}")
        first = shape.dims[0]
        return replace(shape, dims=(ShardDim(first.size * self.micro_batches, first.degree),)
                       + shape.dims[1:])

    def bytes_moved(self, shape: ParallelTensorShape) -> int:
        self.infer(shape)
        return 0

    def backward_op(self) -> Pipeline:
        return Pipeline(self.micro_batches)


@dataclass(frozen=True)
class FusedParallelOp(ParallelOp):
    """A chain of parallel operators applied in order, costed as one data movement."""

    ops: tuple[ParallelOp, ...]

    op_type = "fused_parallel"

    def __post_init__(self) -> None:
        if not self.ops or any(isinstance(op, FusedParallelOp) for op in self.ops):
            raise ParallelShapeError("fused_parallel: needs a non-empty chain of plain parallel "
                                     "operators")

    def infer(self, shape: ParallelTensorShape) -> ParallelTensorShape:
        for op in self.ops:
            shape = op.infer(shape)
        return shape

    def bytes_moved(self, shape: ParallelTensorShape) -> int:
        total = 0
        for op in self.ops:
            total += op.bytes_moved(shape)
            shape = op.infer(shape)
        return total

    def backward_op(self) -> "FusedParallelOp":
        return FusedParallelOp(tuple(op.backward_op() for op in reversed(self.ops)))

    def describe(self) -> str:
        return " -> ".join(op.describe() for op in self.ops)


def convertible(src: ParallelTensorShape, dst: ParallelTensorShape) -> bool:
    """Whether `conversion(src, dst)` exists (it raises exactly when one of these fails)."""
    return (src.sizes == dst.sizes and src.dtype == dst.dtype
            and src.sum_degree % dst.sum_degree == 0 and dst.copy_degree % src.copy_degree == 0)


def conversion(src: ParallelTensorShape, dst: ParallelTensorShape) -> tuple[ParallelOp, ...]:
    """Parallel operators that turn `src` into `dst` (the same logical tensor), in the order that
    moves least: sum the partials, combine dimensions cut too finely, partition dimensions cut too
    coarsely, then add copies. Empty when the shapes already agree. A degree that does not divide
    the other is gathered whole and cut again. Copies are only ever added: a consumer that needs
    fewer copies than exist reads one of them, which is a different producer shape, not a
    conversion."""
    if src.sizes != dst.sizes or src.dtype != dst.dtype:
        raise ParallelShapeError(f"cannot convert {src} into {dst}: different tensors")
    if src.sum_degree % dst.sum_degree:
        raise ParallelShapeError(f"cannot convert {src} into {dst}: partial sums cannot be "
                                 f"created by moving data")
    if dst.copy_degree % src.copy_degree:
        raise ParallelShapeError(f"cannot convert {src} into {dst}: copy degree "
                                 f"{src.copy_degree} does not divide {dst.copy_degree}")
    ops: list[ParallelOp] = []
    if src.sum_degree != dst.sum_degree:
        ops.append(Reduce(src.sum_degree // dst.sum_degree))
    for d, (a, b) in enumerate(zip(src.degrees, dst.degrees)):
        if a > 1 and a != b and (a % b == 0 or b % a):
            ops.append(Combine(d, a // b if a % b == 0 else a))
    for d, (a, b) in enumerate(zip(src.degrees, dst.degrees)):
        have = a if (a == b or b % a == 0) else (b if a % b == 0 else 1)
        if b != have:
            ops.append(Partition(d, b // have))
    if dst.copy_degree != src.copy_degree:
        ops.append(Replicate(dst.copy_degree // src.copy_degree))
    return tuple(ops)
