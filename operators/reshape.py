"""Flatten and Reshape (Keras semantics): per-sample reshapes, so each piece of a batch split is
reshaped on its own. Forward and backward are the same copy kernel with the roles swapped.

Parallel forms: "sample", and an ATTRIBUTE axis over dim 1 when the input and the output share
it (e.g. (B, T, C) -> (B, T, H, D)): a row-major reshape then maps every block of dim-1 rows
onto the same block, so both stores split alike. Other non-batch splits would not line up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .base import (Arg, In, Launch, Operator, OperatorError, Out, ParallelDim, Ref, TensorShape,
                   attribute_axis, attribute_dims, dx, dy, kernel, x, y)


@kernel
def reshape_copy(x: In, y: Out) -> None:
    y[...] = x.reshape(y.shape)


@kernel
def flatten_channels_first(x: In, y: Out) -> None:
    # Keras' channels_first Flatten moves the channel dim (1) last before flattening
    y[...] = np.moveaxis(x, 1, -1).reshape(y.shape)


@kernel
def unflatten_channels_first(dy: In, dx: Out) -> None:
    moved = (dx.shape[0],) + dx.shape[2:] + (dx.shape[1],)
    dx[...] = np.moveaxis(dy.reshape(moved), -1, 1)


def _per_sample(s: TensorShape) -> int:
    return math.prod(s.dims[1:])  # non-batch dims are always known


class _PerSampleReshape(Operator):
    """Shared launches: output and input split by samples; no weights."""

    num_inputs = 1
    reshape_only = True

    def bytes_accessed(self, inputs: Sequence[TensorShape]) -> int:
        return 2 * inputs[0].num_bytes()

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return 0

    def _kept_axis(self, inputs: Sequence[TensorShape]) -> str | None:
        """The ATTRIBUTE axis over dim 1, if the input and the output share that dim."""
        s, (out,) = inputs[0], self.infer_outputs(inputs)
        if s.rank >= 2 and out.rank >= 2 and s.dims[1] == out.dims[1]:
            return attribute_axis(1, s.rank)
        return None

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return attribute_dims(inputs[0], None if self._kept_axis(inputs) is None else 1)

    def _arg(self, ref: Ref, rank: int, inputs: Sequence[TensorShape]) -> Arg:
        axis = self._kept_axis(inputs)  # named after the input's dim 1, in either store
        return Arg.by_sample(ref, rank, None if axis is None else {1: axis})

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        (out,) = self.infer_outputs(inputs)
        return [Launch(reshape_copy, {"x": self._arg(x(0), inputs[0].rank, inputs),
                                      "y": self._arg(y(0), out.rank, inputs)})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        (out,) = self.infer_outputs(inputs)
        # the same kernel, reading d_out in the output's shape and writing d_in in the input's
        return [Launch(reshape_copy, {"x": self._arg(dy(0), out.rank, inputs),
                                      "y": self._arg(dx(0), inputs[0].rank, inputs)})]


@dataclass(frozen=True)
class Flatten(_PerSampleReshape):
    """(B, d1, d2, ...) -> (B, d1*d2*...); (B,) -> (B, 1) as in Keras."""

    channels_first: bool = False

    op_type = "flatten"

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(), (TensorShape((4, 5, 6)),)),
        )

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        if s.rank < 1:
            raise OperatorError(f"flatten: the input needs a batch dimension, got {s}")
        return (s.with_dims((s.dims[0], _per_sample(s))),)

    def _permutes(self, s: TensorShape) -> bool:
        return self.channels_first and s.rank > 2

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        if not self._permutes(inputs[0]):
            return super().forward(inputs, training)
        return [Launch(flatten_channels_first, {"x": self._arg(x(0), inputs[0].rank, inputs),
                                                "y": self._arg(y(0), 2, inputs)})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0] or not self._permutes(inputs[0]):
            return super().backward(inputs, needs_input_grad)
        return [Launch(unflatten_channels_first, {"dy": self._arg(dy(0), 2, inputs),
                                                  "dx": self._arg(dx(0), inputs[0].rank, inputs)})]


def check_target_shape(target_shape: Any) -> tuple[int, ...]:
    """Keras' target_shape: per-sample dims (no batch), positive integers and at most one -1."""
    if isinstance(target_shape, (int, np.integer)) and not isinstance(target_shape, bool):
        target_shape = (target_shape,)
    try:
        dims = tuple(target_shape)
    except TypeError:
        raise OperatorError(f"reshape: target_shape must be a tuple of integers, got "
                            f"{target_shape!r}") from None
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or (d <= 0 and d != -1):
            raise OperatorError(f"reshape: target_shape {dims} must hold positive integers and at "
                                f"most one -1")
    if sum(1 for d in dims if d == -1) > 1:
        raise OperatorError(f"reshape: target_shape {dims} may contain -1 only once")
    return tuple(int(d) for d in dims)


@dataclass(frozen=True)
class Reshape(_PerSampleReshape):
    """(B, ...) -> (B, *target_shape); target_shape excludes the batch and may hold one -1."""

    target_shape: tuple[int, ...]

    op_type = "reshape"

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls((3, 2)), (TensorShape((4, 6)),)),
            (cls((5, 3, 2)), (TensorShape((4, 5, 6)),)),
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_shape", check_target_shape(self.target_shape))

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        if s.rank < 1:
            raise OperatorError(f"reshape: the input needs a batch dimension, got {s}")
        n = _per_sample(s)
        known = math.prod(d for d in self.target_shape if d != -1)
        if -1 in self.target_shape:
            if n % known:
                raise OperatorError(f"reshape: cannot reshape input {s} ({n} values per sample) into "
                                    f"target_shape {self.target_shape}: {n} is not a multiple of "
                                    f"{known}")
            dims = tuple(n // known if d == -1 else d for d in self.target_shape)
        else:
            if known != n:
                raise OperatorError(f"reshape: total size must be unchanged: input {s} has {n} "
                                    f"values per sample, target_shape {self.target_shape} has "
                                    f"{known}")
            dims = self.target_shape
        return (s.with_dims((s.dims[0],) + dims),)
