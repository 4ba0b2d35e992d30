"""Softmax over any non-batch axis or axes (Keras Softmax layer; the Activation operator's
softmax is over the last axis only).

    y = exp(x - max(x)) / sum(exp(x - max(x)))        over `axes`
    dx = y * (dy - sum(dy * y))                       (backward reads the output, saves nothing)

Kernels run ATen's softmax and its backward on views of their pieces (one axis, or trailing
axes merged into one); axes neither take a numpy path in float64.

The batch axis is never normalised over, so a batch split needs no communication.

Parallel forms: "sample", and an ATTRIBUTE axis over the last non-batch dim that is not
normalised (if any): every softmax group lies whole in one piece.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ._aten import Into, aten, view
from .base import (Arg, In, Launch, Operator, OperatorError, Out, ParallelDim, Ref, TensorShape,
                   attribute_dims, dx, dy, kernel, x, y)


def _axes(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _one_dim(ax: tuple[int, ...], *arrays: np.ndarray) -> tuple[list[Any], int] | None:
    """The arrays as tensors in which the softmax axes are one dim, and that dim: one axis as
    it is, several consecutive trailing axes merged (contiguous arrays); else None. The last
    array is the output: an `Into` (ATen's softmax writes a strided output as a dense one)."""
    *ins, out = arrays
    if len(ax) == 1:
        return [view(a) for a in ins] + [Into(out)], ax[0]
    ndim = arrays[0].ndim
    if ax == tuple(range(ndim - len(ax), ndim)) and all(a.flags.c_contiguous for a in arrays):
        return [view(a).flatten(ax[0]) for a in ins] + [Into(out, lambda t: t.flatten(ax[0]))], \
            ax[0]
    return None


@kernel
def softmax_forward(x: In, y: Out, axes: str) -> None:
    ax = _axes(axes)
    with aten() as torch:  # ATen's softmax, in x's precision
        found = _one_dim(ax, x, y)
        if found is not None:
            (xt, yt), d = found
            torch.ops.aten._softmax.out(xt, d, False, out=yt.t)
            yt.done()
            return
    z = x.astype(np.float64)
    z -= z.max(axis=ax, keepdims=True)
    e = np.exp(z)
    y[...] = e / e.sum(axis=ax, keepdims=True)


@kernel
def softmax_backward(y: In, dy: In, dx: Out, axes: str) -> None:
    ax = _axes(axes)
    with aten() as torch:
        found = _one_dim(ax, y, dy, dx)
        if found is not None:
            (yt, gt, dt), d = found
            torch.ops.aten._softmax_backward_data.out(gt, yt, d, gt.dtype, grad_input=dt.t)
            dt.done()
            return
    o, g = y.astype(np.float64), dy.astype(np.float64)
    dx[...] = o * (g - (g * o).sum(axis=ax, keepdims=True))


def check_softmax_axis(axis: Any) -> tuple[int, ...]:
    """Keras' axis: an int or a non-empty list/tuple of ints (resolved against a rank later)."""
    items = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    if not items or any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) for a in items):
        raise OperatorError(f"softmax: axis must be an integer or a non-empty list of integers, "
                            f"got {axis!r}")
    return tuple(int(a) for a in items)


@dataclass(frozen=True)
class Softmax(Operator):
    axes: tuple[int, ...] = (-1,)

    op_type = "softmax"
    num_inputs = 1

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(), (TensorShape((4, 6)),)),
            (cls(), (TensorShape((4, 5, 6)),)),
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", check_softmax_axis(self.axes))

    def resolved(self, s: TensorShape) -> tuple[int, ...]:
        out = []
        for a in self.axes:
            if not -s.rank <= a < s.rank:
                raise OperatorError(f"softmax: axis {a} is out of range for an input of rank "
                                    f"{s.rank} {s}")
            if a % s.rank == 0:
                raise OperatorError(f"softmax: axis {a} is the batch axis of {s}; use a "
                                    f"non-batch axis (1..{s.rank - 1} or negative)")
            out.append(a % s.rank)
        if len(set(out)) != len(out):
            raise OperatorError(f"softmax: axis {self.axes} repeats an axis of {s}")
        return tuple(sorted(out))

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        if not s.dtype.is_float:
            raise OperatorError(f"softmax: expects a floating-point input, got {s.dtype.value}")
        self.resolved(s)
        return (s,)

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return 5 * inputs[0].num_elements()

    def _axes_text(self, s: TensorShape) -> str:
        return ",".join(str(a) for a in self.resolved(s))

    def _free_dim(self, s: TensorShape) -> int | None:
        """The last non-batch dim not normalised over (the ATTRIBUTE axis splits it)."""
        free = [d for d in range(1, s.rank) if d not in self.resolved(s)]
        return free[-1] if free else None

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return attribute_dims(inputs[0], self._free_dim(inputs[0]))

    def _arg(self, ref: Ref, s: TensorShape) -> Arg:
        return Arg.by_attribute(ref, s.rank, self._free_dim(s))

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        s = inputs[0]
        return [Launch(softmax_forward, {"x": self._arg(x(0), s), "y": self._arg(y(0), s)},
                       {"axes": self._axes_text(s)})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        s = inputs[0]
        return [Launch(softmax_backward, {"y": self._arg(y(0), s), "dy": self._arg(dy(0), s),
                                          "dx": self._arg(dx(0), s)},
                       {"axes": self._axes_text(s)})]
