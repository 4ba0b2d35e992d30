"""Keras merge layers Add, Subtract and Multiply over inputs of one shape.

A kernel has a fixed list of store parameters, so n inputs are combined as a chain: one launch
y = x0 op x1, then y op= x_i in place for each further input.

Parallel forms: "sample" (the batch) and "features" (ATTRIBUTE: the last dim, for inputs of rank
>= 2); every store is split alike, since each output element reads only its own position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from .base import (Arg, In, InOut, Launch, Operator, OperatorError, Out, ParallelDim, TasoName,
                   TensorShape, dx, dy, features_dims, kernel, same_float, x, y)

_UFUNC = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply}


@kernel
def combine(a: In, b: In, y: Out, fn: str) -> None:
    _UFUNC[fn](a, b, out=y)


@kernel
def combine_into(y: InOut, b: In, fn: str) -> None:
    _UFUNC[fn](y, b, out=y)


@kernel
def copy_grad(dy: In, dx: Out, negate: bool) -> None:
    if negate:
        np.negative(dy, out=dx)
    else:
        dx[...] = dy


class _Merge(Operator):
    """Shared shape rule and forward; subclasses give the ufunc name and the backward."""

    fn: ClassVar[str]
    min_inputs: ClassVar[int] = 2
    max_inputs: ClassVar[int | None] = None

    num_inputs = None
    elementwise = True

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        n = len(inputs)
        if n < self.min_inputs or (self.max_inputs is not None and n > self.max_inputs):
            want = (f"exactly {self.min_inputs}" if self.max_inputs == self.min_inputs
                    else f"at least {self.min_inputs}")
            raise OperatorError(f"{self.op_type}: needs {want} inputs, got {n}")
        dims = {s.dims for s in inputs}
        if len(dims) != 1:
            raise OperatorError(f"{self.op_type}: all inputs must have the same shape, got "
                                f"{', '.join(str(s) for s in inputs)}")
        same_float(inputs, self.op_type)
        return (inputs[0],)

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return features_dims(inputs[0])

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        r = inputs[0].rank
        launches = [Launch(combine, {"a": Arg.by_features(x(0), r), "b": Arg.by_features(x(1), r),
                                     "y": Arg.by_features(y(0), r)}, {"fn": self.fn})]
        for i in range(2, len(inputs)):
            launches.append(Launch(combine_into, {"y": Arg.by_features(y(0), r),
                                                  "b": Arg.by_features(x(i), r)}, {"fn": self.fn}))
        return launches


def _copy(i: int, r: int, negate: bool = False) -> Launch:
    return Launch(copy_grad, {"dy": Arg.by_features(dy(0), r), "dx": Arg.by_features(dx(i), r)},
                  {"negate": negate})


@dataclass(frozen=True)
class Add(_Merge):
    op_type = "add"
    fn = "add"
    taso_names = (TasoName("OP_EW_ADD"),)

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(), (TensorShape((4, 6)), TensorShape((4, 6)))),
            (cls(), (TensorShape((4, 5, 6)), TensorShape((4, 5, 6)))),
        )

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        r = inputs[0].rank
        return [_copy(i, r) for i, need in enumerate(needs_input_grad) if need]


@dataclass(frozen=True)
class Subtract(_Merge):
    op_type = "subtract"
    fn = "subtract"
    max_inputs = 2
    taso_names = (TasoName("OP_EW_SUB"),)

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(), (TensorShape((4, 6)), TensorShape((4, 6)))),
        )

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        r = inputs[0].rank
        return [_copy(i, r, negate=(i == 1)) for i, need in enumerate(needs_input_grad) if need]


@dataclass(frozen=True)
class Multiply(_Merge):
    op_type = "multiply"
    fn = "multiply"
    taso_names = (TasoName("OP_EW_MUL"),)

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(), (TensorShape((4, 6)), TensorShape((4, 6)))),
        )

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        # d x_i = d_out * prod_{j != i} x_j, as a chain (no division: inputs may hold zeros)
        r = inputs[0].rank
        launches = []
        for i, need in enumerate(needs_input_grad):
            if not need:
                continue
            others = [j for j in range(len(inputs)) if j != i]
            launches.append(Launch(combine, {"a": Arg.by_features(dy(0), r),
                                             "b": Arg.by_features(x(others[0]), r),
                                             "y": Arg.by_features(dx(i), r)}, {"fn": "multiply"}))
            for j in others[1:]:
                launches.append(Launch(combine_into, {"y": Arg.by_features(dx(i), r),
                                                      "b": Arg.by_features(x(j), r)},
                                       {"fn": "multiply"}))
        return launches
