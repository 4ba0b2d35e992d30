"""Elementwise arithmetic and comparisons between tensors of different shapes, numpy-style:
keras.ops.add / subtract / multiply / divide / maximum / minimum / greater / ... and Python's
operators on symbolic tensors.

Both inputs carry the batch as dim 0 (a tensor that has none, a weight or a constant, is
broadcast over the batch before it gets here, see source.py); the other dims broadcast
right-aligned, as numpy's do. An input's gradient is d_out times its local derivative, summed
over the dims it was broadcast along. Comparisons give bool tensors and no gradient.

Parallel forms: "sample" (each point takes a piece of the batch of every store) and, where
every input has the output's last dim (none is broadcast along it, e.g. a bias added after a
Megatron-split Linear), "features" (ATTRIBUTE: that last dim, split alike in every store). A dim
broadcast from size 1 is never split: its gradient would be a partial sum per point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from .base import (FEATURES, Arg, In, Launch, Operator, OperatorError, Out, ParallelDim, Ref,
                   TensorShape, dx, dy, features_dims, kernel, sample_dim, x, y)
from unity_legion.types import DataType

ARITHMETIC = ("add", "subtract", "multiply", "divide", "maximum", "minimum")
COMPARISONS = ("greater", "greater_equal", "less", "less_equal", "equal", "not_equal")

_UFUNC = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide,
          "maximum": np.maximum, "minimum": np.minimum, "greater": np.greater,
          "greater_equal": np.greater_equal, "less": np.less, "less_equal": np.less_equal,
          "equal": np.equal, "not_equal": np.not_equal}


def align(a: np.ndarray, rank: int) -> np.ndarray:
    """A piece (batch first) viewed at `rank` dims: size-1 dims inserted after the batch, so
    that its other dims line up with the output's from the right."""
    return a.reshape(a.shape[:1] + (1,) * (rank - a.ndim) + a.shape[1:])


def unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`g` (output-shaped) summed back onto an input piece of `shape` (batch first)."""
    # shape arithmetic only: no host array (g may be a device piece, and a piece-sized
    # temporary was allocated here before just to read its aligned shape)
    shape = tuple(shape)
    target = shape[:1] + (1,) * (g.ndim - len(shape)) + shape[1:]
    axes = tuple(i for i in range(1, g.ndim) if target[i] == 1 and g.shape[i] != 1)
    return (g.sum(axis=axes, keepdims=True) if axes else g).reshape(shape)


def broadcast_rest(what: str, shapes: Sequence[TensorShape]) -> tuple[int | None, tuple[int, ...]]:
    """The batch and the broadcast non-batch dims of `shapes`, or an error naming them."""
    batches = {s.dims[0] for s in shapes} - {None}
    if len(batches) > 1:
        raise OperatorError(f"{what}: inputs have different batch sizes {sorted(batches)}")
    if any(s.rank < 1 for s in shapes):
        raise OperatorError(f"{what}: every input needs a batch dimension")
    try:
        rest = np.broadcast_shapes(*(s.dims[1:] for s in shapes))
    except ValueError:
        raise OperatorError(f"{what}: shapes {', '.join(str(s.dims) for s in shapes)} do not "
                            f"broadcast together (non-batch dims align from the right)") from None
    return (batches.pop() if batches else None), tuple(int(d) for d in rest)


@kernel
def binary_forward(a: In, b: In, y: Out, fn: str) -> None:
    r = y.ndim
    _UFUNC[fn](align(a, r), align(b, r), out=y)


@kernel
def binary_backward(a: In, b: In, dy: In, dx: Out, fn: str, which: int) -> None:
    r = dy.ndim
    A, B = align(a, r), align(b, r)
    if fn == "add":
        g = dy
    elif fn == "subtract":
        g = dy if which == 0 else -dy
    elif fn == "multiply":
        g = dy * (B if which == 0 else A)
    elif fn == "divide":
        g = dy / B if which == 0 else -dy * A / (B * B)
    else:  # maximum / minimum: the gradient goes to the chosen input, split evenly on ties
        pick = np.greater if fn == "maximum" else np.less
        mine, other = (A, B) if which == 0 else (B, A)
        g = dy * (pick(mine, other) + 0.5 * (mine == other))
    dx[...] = unbroadcast(g.astype(dx.dtype, copy=False), dx.shape)


@dataclass(frozen=True)
class Binary(Operator):
    fn: str = "add"

    op_type = "binary"
    num_inputs = 2
    FNS: ClassVar[tuple[str, ...]] = ARITHMETIC + COMPARISONS

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls("divide"), (TensorShape((4, 5, 6)), TensorShape((4, 1, 6)))),
            (cls("add"), (TensorShape((4, 5, 6)), TensorShape((4, 6)))),
        )

    def __post_init__(self) -> None:
        if self.fn not in self.FNS:
            raise OperatorError(f"binary: unknown function {self.fn!r}; known: {self.FNS}")

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        a, b = inputs
        if a.dtype != b.dtype:
            raise OperatorError(f"{self.fn}: inputs have different dtypes {a.dtype.value} and "
                                f"{b.dtype.value}; cast one first (keras.ops.cast)")
        if self.fn in ARITHMETIC and a.dtype == DataType.BOOL:
            raise OperatorError(f"{self.fn}: bool inputs; cast them to a number type first")
        if self.fn == "divide" and not a.dtype.is_float:
            raise OperatorError("divide: integer inputs; cast them to float first")
        batch, rest = broadcast_rest(self.fn, inputs)
        dtype = DataType.BOOL if self.fn in COMPARISONS else a.dtype
        return (TensorShape((batch,) + rest, dtype),)

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        out = self.infer_outputs(inputs)[0]
        return features_dims(out) if _features_whole(inputs, out) else (sample_dim(out),)

    def _arg(self, ref: Ref, s: TensorShape, inputs: Sequence[TensorShape]) -> Arg:
        out = self.infer_outputs(inputs)[0]
        split = _features_whole(inputs, out) and out.rank >= 2
        return Arg.by_sample(ref, s.rank, {-1: FEATURES} if split else None)

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        out = self.infer_outputs(inputs)[0]
        return [Launch(binary_forward, {"a": self._arg(x(0), inputs[0], inputs),
                                        "b": self._arg(x(1), inputs[1], inputs),
                                        "y": self._arg(y(0), out, inputs)}, {"fn": self.fn})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if self.fn in COMPARISONS:
            return []
        out = self.infer_outputs(inputs)[0]
        common = {"a": self._arg(x(0), inputs[0], inputs), "b": self._arg(x(1), inputs[1], inputs),
                  "dy": self._arg(dy(0), out, inputs)}
        return [Launch(binary_backward, common | {"dx": self._arg(dx(i), inputs[i], inputs)},
                       {"fn": self.fn, "which": i})
                for i, need in enumerate(needs_input_grad) if need]


def _features_whole(inputs: Sequence[TensorShape], out: TensorShape) -> bool:
    """Whether every input has the output's last dim (>= rank 2), so FEATURES may split it."""
    return out.rank >= 2 and all(s.rank >= 2 and s.dims[-1] == out.dims[-1] for s in inputs)


@kernel
def where_forward(c: In, a: In, b: In, y: Out) -> None:
    r = y.ndim
    np.copyto(y, np.where(align(c, r).astype(bool), align(a, r), align(b, r)))


@kernel
def where_backward(c: In, dy: In, dx: Out, which: int) -> None:
    keep = align(c, dy.ndim).astype(bool)
    g = np.where(keep, dy, 0) if which == 1 else np.where(keep, 0, dy)
    dx[...] = unbroadcast(g.astype(dx.dtype), dx.shape)


@dataclass(frozen=True)
class Where(Operator):
    """keras.ops.where(condition, x1, x2): x1 where the condition holds (nonzero), else x2;
    the three broadcast as Binary's inputs do."""

    op_type = "where"
    num_inputs = 3

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(), (TensorShape((4, 5, 6), DataType.BOOL), TensorShape((4, 5, 6)),
                     TensorShape((4, 6)))),
        )

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        c, a, b = inputs
        if c.dtype.is_float:
            raise OperatorError(f"where: the condition is {c.dtype.value}; make it a bool tensor "
                                f"(a comparison such as x > 0)")
        if a.dtype != b.dtype:
            raise OperatorError(f"where: x1 and x2 have different dtypes {a.dtype.value} and "
                                f"{b.dtype.value}; cast one first (keras.ops.cast)")
        batch, rest = broadcast_rest("where", inputs)
        return (TensorShape((batch,) + rest, a.dtype),)

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        r = self.infer_outputs(inputs)[0].rank
        return [Launch(where_forward, {"c": Arg.by_sample(x(0), inputs[0].rank),
                                       "a": Arg.by_sample(x(1), inputs[1].rank),
                                       "b": Arg.by_sample(x(2), inputs[2].rank),
                                       "y": Arg.by_sample(y(0), r)})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        r = self.infer_outputs(inputs)[0].rank
        out = []
        for i in (1, 2):
            if needs_input_grad[i]:
                out.append(Launch(where_backward, {"c": Arg.by_sample(x(0), inputs[0].rank),
                                                   "dy": Arg.by_sample(dy(0), r),
                                                   "dx": Arg.by_sample(dx(i), inputs[i].rank)},
                                  {"which": i}))
        return out
