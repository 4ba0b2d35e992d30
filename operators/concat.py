"""Concatenate (Keras Concatenate) along one non-batch axis.

A kernel has a fixed list of store parameters, so forward is one launch per input, each writing
its slab of the output: the first writes (Out), the others update in place (InOut) so earlier
slabs survive. Backward copies each needed slab of d_out into d_in.

Parallel forms: "sample", and an ATTRIBUTE axis over one other dim (the last one that is not the
concatenation axis; rank >= 3), which every input shares. The concatenation axis itself is never
split: it is whole in every piece, so global offsets are local ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .base import (In, InOut, KeepsAxisWhole, Launch, Operator, OperatorError, Out, TasoName,
                   TensorShape, dx, dy, kernel, normalize_axis, x, y)


def _slab(rank: int, axis: int, start: int, size: int) -> tuple[slice, ...]:
    return (slice(None),) * axis + (slice(start, start + size),)


@kernel
def concat_first(x: In, y: Out, axis: int, start: int) -> None:
    y[_slab(y.ndim, axis, start, x.shape[axis])] = x


@kernel
def concat_next(y: InOut, x: In, axis: int, start: int) -> None:
    y[_slab(y.ndim, axis, start, x.shape[axis])] = x


@kernel
def concat_slice(dy: In, dx: Out, axis: int, start: int) -> None:
    dx[...] = dy[_slab(dy.ndim, axis, start, dx.shape[axis])]


@dataclass(frozen=True)
class Concat(KeepsAxisWhole, Operator):
    axis: int = -1

    op_type = "concatenate"
    num_inputs = None
    taso_names = (TasoName("OP_CONCAT"),)

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(-1), (TensorShape((4, 6)), TensorShape((4, 2)))),
            (cls(-1), (TensorShape((4, 5, 6)), TensorShape((4, 5, 2)))),
            (cls(1), (TensorShape((4, 5, 6)), TensorShape((4, 3, 6)))),
        )

    def __post_init__(self) -> None:
        if isinstance(self.axis, bool) or not isinstance(self.axis, (int, np.integer)):
            raise OperatorError(f"concatenate: axis must be an integer, got {self.axis!r}")
        object.__setattr__(self, "axis", int(self.axis))

    def resolved_axis(self, rank: int) -> int:
        a = normalize_axis(self.axis, rank, "concatenate")
        if a == 0:
            raise OperatorError(f"concatenate: axis {self.axis} is the batch axis of rank-{rank} "
                                f"inputs; concatenate along a non-batch axis (1..{rank - 1} or -1)")
        return a

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        shapes = ", ".join(str(s) for s in inputs)
        ranks = {s.rank for s in inputs}
        if len(ranks) != 1:
            raise OperatorError(f"concatenate: inputs must have the same rank, got {shapes}")
        rank = ranks.pop()
        if rank < 2:
            raise OperatorError(f"concatenate: inputs need a non-batch axis, got {shapes}")
        a = self.resolved_axis(rank)
        if len({s.dtype for s in inputs}) != 1:
            raise OperatorError(f"concatenate: inputs have different dtypes: {shapes}")
        first = inputs[0].dims
        for s in inputs[1:]:
            for d in range(rank):
                if d != a and s.dims[d] != first[d]:
                    raise OperatorError(f"concatenate: inputs must match in every dimension "
                                        f"except the concatenation axis {a}, got {shapes}")
        total = sum(s.dims[a] for s in inputs)
        return (inputs[0].with_dims(first[:a] + (total,) + first[a + 1:]),)

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return 0

    def _offsets(self, inputs: Sequence[TensorShape]) -> tuple[int, list[int]]:
        a = self.resolved_axis(inputs[0].rank)
        starts, at = [], 0
        for s in inputs:
            starts.append(at)
            at += s.dims[a]
        return a, starts

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        r = inputs[0].rank
        a, starts = self._offsets(inputs)
        launches = []
        for i, start in enumerate(starts):
            k = concat_first if i == 0 else concat_next
            launches.append(Launch(k, {"x": self._arg(x(i), r), "y": self._arg(y(0), r)},
                                   {"axis": a, "start": start}))
        return launches

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        r = inputs[0].rank
        a, starts = self._offsets(inputs)
        return [Launch(concat_slice, {"dy": self._arg(dy(0), r), "dx": self._arg(dx(i), r)},
                       {"axis": a, "start": starts[i]})
                for i, need in enumerate(needs_input_grad) if need]
