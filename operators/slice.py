"""Basic indexing of the non-batch axes: `x[:, 1:5]`, `x[..., 0]`, `x[:, ::2, -1]` on a symbolic
tensor (start, stop and a positive step per non-batch axis; an integer index drops its axis).

Backward writes d_out into the selected elements of a zeroed d_in.

Parallel form: "sample" (the batch axis is never sliced: `x[0]` inside a model is refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .base import (Arg, In, Launch, Operator, OperatorError, Out, TensorShape, dx, dy, kernel, x,
                   y)


def _index(spec: str) -> tuple[slice, ...]:
    """The numpy index of a kernel piece: the whole batch, then start:stop:step per axis."""
    parts = [slice(None)]
    for item in spec.split(";") if spec else []:
        a, b, c = (int(v) for v in item.split(","))
        parts.append(slice(a, b, c))
    return tuple(parts)


@kernel
def slice_forward(x: In, y: Out, spec: str) -> None:
    y[...] = x[_index(spec)].reshape(y.shape)


@kernel
def slice_backward(dy: In, dx: Out, spec: str) -> None:
    dx[...] = 0
    sel = dx[_index(spec)]
    dx[_index(spec)] = dy.reshape(sel.shape)


@dataclass(frozen=True)
class Slice(Operator):
    """`slices`: (start, stop, step) per non-batch axis, as given by Python (None allowed);
    `drop`: the non-batch axes (1-based) indexed by an integer, removed from the output."""

    slices: tuple[tuple[int | None, int | None, int | None], ...]
    drop: tuple[int, ...] = ()

    op_type = "slice"
    num_inputs = 1

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(((None, None, None), (1, 5, None))), (TensorShape((4, 3, 6)),)),
            (cls(((None, None, None), (0, 1, None)), drop=(2,)), (TensorShape((4, 3, 6)),)),
        )

    def resolved(self, s: TensorShape) -> tuple[tuple[int, int, int], ...]:
        if len(self.slices) != s.rank - 1:
            raise OperatorError(f"slice: {len(self.slices)} indices for the {s.rank - 1} non-batch "
                                f"axes of {s.dims}")
        out = []
        for (a, b, c), n in zip(self.slices, s.dims[1:]):
            if c is not None and c <= 0:
                raise OperatorError(f"slice: step {c} is not supported; use a positive step")
            start, stop, step = slice(a, b, c).indices(n)
            out.append((start, max(stop, start), step))
        return tuple(out)

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        dims: list[int | None] = [s.dims[0]]
        for axis, (a, b, c) in enumerate(self.resolved(s), start=1):
            n = len(range(a, b, c))
            if n == 0:
                raise OperatorError(f"slice: axis {axis} of {s.dims} selects nothing")
            if axis in self.drop:
                continue
            dims.append(n)
        return (s.with_dims(tuple(dims)),)

    def _spec(self, s: TensorShape) -> str:
        return ";".join(f"{a},{b},{c}" for a, b, c in self.resolved(s))

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return 0

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        s = inputs[0]
        r = self.infer_outputs(inputs)[0].rank
        return [Launch(slice_forward, {"x": Arg.by_sample(x(0), s.rank), "y": Arg.by_sample(y(0), r)},
                       {"spec": self._spec(s)})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        s = inputs[0]
        r = self.infer_outputs(inputs)[0].rank
        return [Launch(slice_backward, {"dy": Arg.by_sample(dy(0), r),
                                        "dx": Arg.by_sample(dx(0), s.rank)},
                       {"spec": self._spec(s)})]
