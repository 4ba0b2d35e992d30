"""Split (tf.split / torch.split) along one non-batch axis into several outputs.

`splits` is either a count of equal parts or a list of part sizes (one entry may be -1: the rest
of the axis). Forward is one launch per output, each copying its slab of the input. Backward
assembles d_in from the outputs' gradients one slab per launch: the first writes (Out), the
others update in place (InOut) so earlier slabs survive. An output nobody consumes still gets a
gradient (the executor feeds zeros), so every slab of d_in is written.

Parallel forms: "sample", and an ATTRIBUTE axis over one other dim (the last one that is not the
split axis; rank >= 3), which every output shares. The split axis itself is never split: it is
whole in every piece, so global offsets are local ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .base import (In, InOut, KeepsAxisWhole, Launch, Operator, OperatorError, Out, TasoName,
                   TensorShape, dx, dy, kernel, normalize_axis, x, y)


def _slab(axis: int, start: int, size: int) -> tuple[slice, ...]:
    return (slice(None),) * axis + (slice(start, start + size),)


@kernel
def split_forward(x: In, y: Out, axis: int, start: int) -> None:
    y[...] = x[_slab(axis, start, y.shape[axis])]


@kernel
def split_backward_first(dy: In, dx: Out, axis: int, start: int) -> None:
    dx[_slab(axis, start, dy.shape[axis])] = dy


@kernel
def split_backward_next(dx: InOut, dy: In, axis: int, start: int) -> None:
    dx[_slab(axis, start, dy.shape[axis])] = dy


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_splits(splits: object) -> int | tuple[int, ...]:
    """A positive count of equal parts, or a non-empty list of positive sizes with at most one
    -1 (tf.split's `num_or_size_splits`)."""
    if _is_int(splits):
        if splits <= 0:
            raise OperatorError(f"split: the number of splits must be a positive integer, got "
                                f"{splits!r}")
        return int(splits)
    if not isinstance(splits, (list, tuple)) or not splits:
        raise OperatorError(f"split: num_or_size_splits must be a positive integer or a non-empty "
                            f"list of sizes, got {splits!r}")
    if any(not _is_int(s) or (s <= 0 and s != -1) for s in splits):
        raise OperatorError(f"split: sizes {list(splits)} must be positive integers (one may be "
                            f"-1)")
    if sum(1 for s in splits if s == -1) > 1:
        raise OperatorError(f"split: sizes {list(splits)} may contain -1 only once")
    return tuple(int(s) for s in splits)


@dataclass(frozen=True)
class Split(KeepsAxisWhole, Operator):
    splits: int | tuple[int, ...]
    axis: int = -1

    op_type = "split"
    num_inputs = 1
    taso_names = (TasoName("OP_SPLIT"),)

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(2, -1), (TensorShape((4, 6)),)),
            (cls(2, -1), (TensorShape((4, 5, 6)),)),
            (cls(2, 1), (TensorShape((4, 6, 5)),)),
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", check_splits(self.splits))
        if not _is_int(self.axis):
            raise OperatorError(f"split: axis must be an integer, got {self.axis!r}")
        object.__setattr__(self, "axis", int(self.axis))

    def resolved_axis(self, rank: int) -> int:
        a = normalize_axis(self.axis, rank, "split")
        if a == 0:
            raise OperatorError(f"split: axis {self.axis} is the batch axis of a rank-{rank} input; "
                                f"split along a non-batch axis (1..{rank - 1} or -1)")
        return a

    def sizes(self, s: TensorShape) -> tuple[int, tuple[int, ...]]:
        """The split axis of input `s` and the size of each part along it."""
        if s.rank < 2:
            raise OperatorError(f"split: the input needs a non-batch axis, got {s}")
        a = self.resolved_axis(s.rank)
        n = s.dims[a]
        if isinstance(self.splits, int):
            if n % self.splits:
                raise OperatorError(f"split: axis {a} of input {s} has size {n}, which does not "
                                    f"divide into {self.splits} equal parts")
            return a, (n // self.splits,) * self.splits
        known = sum(d for d in self.splits if d != -1)
        if -1 in self.splits:
            if known >= n:
                raise OperatorError(f"split: sizes {list(self.splits)} leave nothing for the -1 "
                                    f"part of axis {a} of size {n} (input {s})")
            return a, tuple(n - known if d == -1 else d for d in self.splits)
        if known != n:
            raise OperatorError(f"split: sizes {list(self.splits)} add up to {known}, but axis {a} "
                                f"of input {s} has size {n}")
        return a, self.splits

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        a, sizes = self.sizes(s)
        return tuple(s.with_dims(s.dims[:a] + (k,) + s.dims[a + 1:]) for k in sizes)

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return 0

    def _starts(self, s: TensorShape) -> tuple[int, list[int]]:
        a, sizes = self.sizes(s)
        return a, [int(v) for v in np.cumsum((0,) + sizes[:-1])]

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        r = inputs[0].rank
        a, starts = self._starts(inputs[0])
        return [Launch(split_forward, {"x": self._arg(x(0), r), "y": self._arg(y(i), r)},
                       {"axis": a, "start": start}) for i, start in enumerate(starts)]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        r = inputs[0].rank
        a, starts = self._starts(inputs[0])
        return [Launch(split_backward_first if i == 0 else split_backward_next,
                       {"dy": self._arg(dy(i), r), "dx": self._arg(dx(0), r)},
                       {"axis": a, "start": start}) for i, start in enumerate(starts)]
