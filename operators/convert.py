"""Changing what a tensor's values are, not its numbers' meaning: keras.ops.cast (Cast) and
keras.ops.one_hot (OneHot: integer classes -> 0/1 vectors along a new last axis).

A cast between float types passes its gradient back cast; to or from an integer or bool type
there is none (the executor asks for gradients of float tensors only). OneHot's input is an
integer tensor, so it has no gradient either.

Parallel forms: Cast "sample" and "features" (elementwise); OneHot "sample".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .base import (Arg, In, Launch, Operator, OperatorError, Out, ParallelDim, TensorShape, dx,
                   dy, features_dims, kernel, x, y)
from ._aten import xp
from unity_legion.types import DataType


@kernel
def cast_copy(x: In, y: Out) -> None:
    y[...] = x.astype(y.dtype)


@kernel
def one_hot_forward(x: In, y: Out) -> None:
    # an out-of-range class matches no column: an all-zero row, as Keras gives
    classes = xp(y).arange(y.shape[-1])
    y[...] = (x.astype(np.int64)[..., None] == classes).astype(y.dtype)


@dataclass(frozen=True)
class Cast(Operator):
    dtype: DataType = DataType.FLOAT32

    op_type = "cast"
    num_inputs = 1
    elementwise = True

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(DataType.FLOAT64), (TensorShape((4, 5, 6)),)),
        )

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        if inputs[0].rank < 1:
            raise OperatorError("cast: the input needs a batch dimension")
        return (TensorShape(inputs[0].dims, DataType.of(self.dtype)),)

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return 0

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return features_dims(inputs[0])

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        r = inputs[0].rank
        return [Launch(cast_copy, {"x": Arg.by_features(x(0), r), "y": Arg.by_features(y(0), r)})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0] or not DataType.of(self.dtype).is_float:
            return []
        r = inputs[0].rank
        return [Launch(cast_copy, {"x": Arg.by_features(dy(0), r), "y": Arg.by_features(dx(0), r)})]


@dataclass(frozen=True)
class OneHot(Operator):
    depth: int
    dtype: DataType = DataType.FLOAT32

    op_type = "one_hot"
    num_inputs = 1

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(5), (TensorShape((4, 6), DataType.INT32),)),
        )

    def __post_init__(self) -> None:
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth <= 0:
            raise OperatorError(f"one_hot: num_classes must be a positive integer, got "
                                f"{self.depth!r}")

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        if not s.dtype.is_integer:
            raise OperatorError(f"one_hot: expects integer class indices, got {s.dtype.value}; "
                                f"cast them first (keras.ops.cast(x, 'int32'))")
        return (TensorShape(s.dims + (self.depth,), DataType.of(self.dtype)),)

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        r = inputs[0].rank
        return [Launch(one_hot_forward, {"x": Arg.by_sample(x(0), r),
                                         "y": Arg.by_sample(y(0), r + 1)})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        return []
