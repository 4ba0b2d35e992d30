"""Tensors that do not come from the data, broadcast over the batch: a layer's own weight
(`Layer.add_weight`, operator Parameter) and keras.ops.arange (operator Range).

Every tensor of the graph carries the batch as dim 0 (that is what every parallel form splits),
so a source takes one batch-carrying input, reads only its batch size, and writes (batch,) +
its own shape: each sample gets a copy. Downstream operators then treat it as any activation; a
Parameter's gradient is the sum of its output gradient over the batch (a Sum reduction over
sample pieces). The input gets a zero gradient: its values are never read.

Parallel form: "sample" (each point writes the copies of its samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .base import (Arg, In, Launch, Operator, OperatorError, Out, Sum, TensorShape, WeightSpec,
                   dw, dx, dy, kernel, w, y)
from ._aten import xp
from unity_legion.types import DataType


@kernel
def broadcast_weight(w: In, y: Out) -> None:
    y[...] = w[None]


@kernel
def weight_grad(dy: In, dw: Sum) -> None:
    dw += dy.sum(axis=0)


@kernel
def fill_range(y: Out, start: float, step: float) -> None:
    # xp: the piece's own array module (numpy, or cupy in a GPU variant)
    values = start + step * xp(y).arange(y.shape[1], dtype=np.float64)
    y[...] = values.astype(y.dtype)[None]


@kernel
def zero_grad(dx: Out) -> None:
    dx[...] = 0


def _zero_input_grad(inputs: Sequence[TensorShape], needs: Sequence[bool]) -> list[Launch]:
    return [Launch(zero_grad, {"dx": Arg.by_sample(dx(0), inputs[0].rank)})] if needs[0] else []


def _check_batch_input(what: str, inputs: Sequence[TensorShape]) -> TensorShape:
    if len(inputs) != 1:
        raise OperatorError(f"{what} takes one input (whose batch size it copies), got {len(inputs)}")
    if inputs[0].rank < 1:
        raise OperatorError(f"{what}: the input needs a batch dimension")
    return inputs[0]


@dataclass(frozen=True)
class Parameter(Operator):
    """A weight of `shape`, copied for every sample of the batch."""

    shape: tuple[int, ...]
    initializer: str = "zeros"
    init_args: tuple[tuple[str, Any], ...] = ()
    trainable: bool = True
    dtype: DataType = DataType.FLOAT32

    op_type = "parameter"
    num_inputs = 1

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls((5, 6), "glorot_uniform"), (TensorShape((4, 3)),)),
        )

    def __post_init__(self) -> None:
        try:
            dims = tuple(int(d) for d in self.shape)
        except (TypeError, ValueError):
            raise OperatorError(f"parameter: shape must be a tuple of integers, got "
                                f"{self.shape!r}") from None
        if any(d <= 0 for d in dims):
            raise OperatorError(f"parameter: shape {dims} must hold positive integers")
        object.__setattr__(self, "shape", dims)

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        s = _check_batch_input("parameter", inputs)
        return (TensorShape((s.dims[0],) + self.shape, self.dtype),)

    def weights(self, inputs: Sequence[TensorShape]) -> tuple[WeightSpec, ...]:
        return (WeightSpec("value", TensorShape(self.shape, self.dtype), self.initializer,
                           self.init_args, self.trainable),)

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return 0

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        r = len(self.shape) + 1
        return [Launch(broadcast_weight, {"w": Arg(w("value"), (None,) * (r - 1)),
                                          "y": Arg.by_sample(y(0), r)})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        r = len(self.shape) + 1
        return [Launch(weight_grad, {"dy": Arg.by_sample(dy(0), r),
                                     "dw": Arg(dw("value"), (None,) * (r - 1))})] + \
            _zero_input_grad(inputs, needs_input_grad)


@dataclass(frozen=True)
class Range(Operator):
    """start, start + step, ... (`length` values) for every sample: keras.ops.arange."""

    start: float
    step: float
    length: int
    dtype: DataType = DataType.INT32

    op_type = "range"
    num_inputs = 1

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(0, 1, 6, DataType.FLOAT32), (TensorShape((4, 3)),)),
        )

    def __post_init__(self) -> None:
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length <= 0:
            raise OperatorError(f"arange: the range must hold at least one value, got "
                                f"length {self.length!r}")
        if self.step == 0:
            raise OperatorError("arange: step must not be 0")

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        s = _check_batch_input("range", inputs)
        return (TensorShape((s.dims[0], self.length), self.dtype),)

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return 0

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        return [Launch(fill_range, {"y": Arg.by_sample(y(0), 2)},
                       {"start": float(self.start), "step": float(self.step)})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        return _zero_input_grad(inputs, needs_input_grad)
