"""Reductions over non-batch axes: keras.ops.sum / mean / max (keepdims or not).

Backward spreads d_out back over the reduced axes: as is for sum, divided by the count for mean,
and for max onto the elements equal to the maximum (split evenly between ties, as torch.amax).

Parallel form: "sample" only: a point holds whole rows of every reduced axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from .base import (Arg, In, Launch, Operator, OperatorError, Out, TensorShape, dx, dy, kernel, x,
                   y)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",")) if text else ()


@kernel
def reduce_forward(x: In, y: Out, fn: str, axes: str) -> None:
    ax = _ints(axes)
    if fn == "sum":
        v = x.sum(axis=ax, keepdims=True)
    elif fn == "mean":
        v = x.mean(axis=ax, keepdims=True)
    else:
        v = x.max(axis=ax, keepdims=True)
    y[...] = v.reshape(y.shape)


@kernel
def reduce_backward(x: In, dy: In, dx: Out, fn: str, axes: str) -> None:
    ax = _ints(axes)
    kept = tuple(1 if i in ax else n for i, n in enumerate(x.shape))
    g = dy.reshape(kept)
    if fn == "sum":
        dx[...] = np.broadcast_to(g, x.shape)
    elif fn == "mean":
        count = int(np.prod([x.shape[a] for a in ax]))
        dx[...] = np.broadcast_to(g / count, x.shape)
    else:
        hit = x == x.max(axis=ax, keepdims=True)
        dx[...] = hit * (g / hit.sum(axis=ax, keepdims=True))


@dataclass(frozen=True)
class Reduce(Operator):
    fn: str = "sum"
    axes: Any = (-1,)           # non-batch axes (negative count from the end)
    keepdims: bool = False

    op_type = "reduce"
    num_inputs = 1
    FNS: ClassVar[tuple[str, ...]] = ("sum", "mean", "max")

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls("mean", (1,)), (TensorShape((4, 5, 6)),)),
            (cls("sum", (-1,), keepdims=True), (TensorShape((4, 5, 6)),)),
        )

    def __post_init__(self) -> None:
        if self.fn not in self.FNS:
            raise OperatorError(f"reduce: unknown function {self.fn!r}; known: {self.FNS}")
        axes = (self.axes,) if isinstance(self.axes, int) else self.axes
        try:
            axes = tuple(int(a) for a in axes)
        except (TypeError, ValueError):
            raise OperatorError(f"{self.fn}: axis must be an integer or a tuple of integers, got "
                                f"{self.axes!r}") from None
        if not axes:
            raise OperatorError(f"{self.fn}: no axis to reduce")
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "keepdims", bool(self.keepdims))

    def resolved(self, s: TensorShape) -> tuple[int, ...]:
        out = set()
        for a in self.axes:
            if not -s.rank <= a < s.rank:
                raise OperatorError(f"{self.fn}: axis {a} is out of range for {s.dims}")
            if a % s.rank == 0:
                raise OperatorError(f"{self.fn}: axis {a} is the batch axis of {s.dims}; only "
                                    f"non-batch axes can be reduced inside a model")
            out.add(a % s.rank)
        return tuple(sorted(out))

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        if self.fn != "max" and not s.dtype.is_float:
            raise OperatorError(f"{self.fn}: expects a floating-point input, got {s.dtype.value}")
        axes = self.resolved(s)
        dims = tuple((1 if i in axes else d) for i, d in enumerate(s.dims)
                     if self.keepdims or i not in axes)
        return (s.with_dims(dims),)

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        s = inputs[0]
        out = self.infer_outputs(inputs)[0]
        return [Launch(reduce_forward, {"x": Arg.by_sample(x(0), s.rank),
                                        "y": Arg.by_sample(y(0), out.rank)},
                       {"fn": self.fn, "axes": ",".join(map(str, self.resolved(s)))})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        s = inputs[0]
        out = self.infer_outputs(inputs)[0]
        return [Launch(reduce_backward, {"x": Arg.by_sample(x(0), s.rank),
                                         "dy": Arg.by_sample(dy(0), out.rank),
                                         "dx": Arg.by_sample(dx(0), s.rank)},
                       {"fn": self.fn, "axes": ",".join(map(str, self.resolved(s)))})]
