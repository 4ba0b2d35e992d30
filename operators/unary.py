"""Elementwise math of one tensor, with an optional constant: keras.ops.exp / log / sqrt /
square / abs / negative, and Python's operators between a symbolic tensor and a number
(x * 0.5 is "scale", x + 1 "shift", 1 - x "rsub", 1 / x "rdiv", x ** 2 "power", x > 0
"greater": comparisons give bool tensors and no gradient).

Parallel forms: "sample" and "features" (ATTRIBUTE: the last dim, above rank 1): each output
element reads only its own input element.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np

from .base import (Arg, In, Launch, Operator, OperatorError, Out, ParallelDim, TensorShape, dx,
                   dy, features_dims, kernel, x, y)
from unity_legion.types import DataType

# name -> (forward(x, c), d out / d x (x, out, c))
_TABLE: dict[str, tuple[Callable[[np.ndarray, float], np.ndarray],
                        Callable[[np.ndarray, np.ndarray, float], np.ndarray]]] = {
    "exp": (lambda v, c: np.exp(v), lambda v, o, c: o),
    "log": (lambda v, c: np.log(v), lambda v, o, c: 1.0 / v),
    "sqrt": (lambda v, c: np.sqrt(v), lambda v, o, c: 0.5 / o),
    "square": (lambda v, c: v * v, lambda v, o, c: 2.0 * v),
    "abs": (lambda v, c: np.abs(v), lambda v, o, c: np.sign(v)),
    "negative": (lambda v, c: -v, lambda v, o, c: -np.ones_like(v)),
    "scale": (lambda v, c: v * c, lambda v, o, c: np.full_like(v, c)),
    "shift": (lambda v, c: v + c, lambda v, o, c: np.ones_like(v)),
    "rsub": (lambda v, c: c - v, lambda v, o, c: -np.ones_like(v)),
    "rdiv": (lambda v, c: c / v, lambda v, o, c: -o / v),
    "power": (lambda v, c: np.power(v, c), lambda v, o, c: c * np.power(v, c - 1)),
}
# comparisons with the constant: bool outputs, no gradient
_COMPARE: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "greater": np.greater, "greater_equal": np.greater_equal, "less": np.less,
    "less_equal": np.less_equal, "equal": np.equal, "not_equal": np.not_equal}
NAMES = tuple(sorted(_TABLE) + sorted(_COMPARE))


@kernel
def unary_forward(x: In, y: Out, fn: str, c: float) -> None:
    if fn in _COMPARE:
        y[...] = _COMPARE[fn](x, x.dtype.type(c))
    else:
        y[...] = _TABLE[fn][0](x, y.dtype.type(c))


@kernel
def unary_backward(x: In, y: In, dy: In, dx: Out, fn: str, c: float) -> None:
    dx[...] = dy * _TABLE[fn][1](x, y, dx.dtype.type(c))


@dataclass(frozen=True)
class Unary(Operator):
    fn: str = "exp"
    c: float = 0.0   # the constant of scale / shift / rsub / rdiv / power

    op_type = "unary"
    num_inputs = 1
    elementwise = True
    FNS: ClassVar[tuple[str, ...]] = NAMES

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls("exp"), (TensorShape((4, 6)),)),
            (cls("scale", 0.5), (TensorShape((4, 5, 6)),)),
        )

    def __post_init__(self) -> None:
        if self.fn not in NAMES:
            raise OperatorError(f"unary: unknown function {self.fn!r}; known: {NAMES}")
        object.__setattr__(self, "c", float(self.c))

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        if not s.dtype.is_float:
            raise OperatorError(f"{self.fn}: expects a floating-point input, got {s.dtype.value}; "
                                f"cast it first (keras.ops.cast)")
        if s.rank < 1:
            raise OperatorError(f"{self.fn}: the input needs a batch dimension")
        return (TensorShape(s.dims, DataType.BOOL) if self.fn in _COMPARE else s,)

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return features_dims(inputs[0])

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        r = inputs[0].rank
        return [Launch(unary_forward, {"x": Arg.by_features(x(0), r),
                                       "y": Arg.by_features(y(0), r)},
                       {"fn": self.fn, "c": self.c})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0] or self.fn in _COMPARE:
            return []
        r = inputs[0].rank
        return [Launch(unary_backward, {"x": Arg.by_features(x(0), r), "y": Arg.by_features(y(0), r),
                                        "dy": Arg.by_features(dy(0), r),
                                        "dx": Arg.by_features(dx(0), r)},
                       {"fn": self.fn, "c": self.c})]
