"""Layout operators without arithmetic: Permute (Keras Permute) and Identity (Keras Identity).

Permute reorders the non-batch dims: `dims` is Keras' 1-based permutation of 1..rank-1 (the batch
stays dim 0), y = x.transpose((0,) + dims); backward transposes d_out by the inverse permutation.
Identity copies forward and backward. Both are per sample, so any batch split works unchanged.

Parallel forms: "sample" and "features" (ATTRIBUTE: the input's last dim; a copy is per position,
so both stores are split along that dim, wherever Permute moves it in the output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .base import (FEATURES, Arg, In, Launch, Operator, OperatorError, Out, ParallelDim, Ref,
                   TasoName, TensorShape, dx, dy, features_dims, kernel, x, y)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


@kernel
def permute_copy(x: In, y: Out, perm: str) -> None:
    y[...] = x.transpose(_ints(perm))


@kernel
def identity_copy(x: In, y: Out) -> None:
    y[...] = x


def check_permutation(dims: Any) -> tuple[int, ...]:
    """Keras' dims: a tuple holding each of 1..len(dims) once."""
    try:
        items = tuple(dims)
    except TypeError:
        raise OperatorError(f"permute: dims must be a tuple of integers, got {dims!r}") from None
    if any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) for d in items):
        raise OperatorError(f"permute: dims must be a tuple of integers, got {dims!r}")
    items = tuple(int(d) for d in items)
    if not items or sorted(items) != list(range(1, len(items) + 1)):
        raise OperatorError(f"permute: dims {items} is not a permutation of 1..{len(items)} "
                            f"(indices start at 1: the batch dim 0 stays in place)")
    return items


@dataclass(frozen=True)
class Permute(Operator):
    dims: tuple[int, ...]

    op_type = "permute"
    num_inputs = 1

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls((2, 1)), (TensorShape((4, 5, 6)),)),
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", check_permutation(self.dims))

    @property
    def perm(self) -> tuple[int, ...]:
        return (0,) + self.dims

    @property
    def inverse(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.argsort(self.perm))

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        if s.rank != len(self.dims) + 1:
            raise OperatorError(f"permute: dims {self.dims} permute {len(self.dims)} dims, but "
                                f"the input {s} has {s.rank - 1} non-batch dims")
        return (s.with_dims(tuple(s.dims[p] for p in self.perm)),)

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return 0

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return features_dims(inputs[0])

    def _in_arg(self, ref: Ref, r: int) -> Arg:
        return Arg.by_features(ref, r)

    def _out_arg(self, ref: Ref, r: int) -> Arg:
        """The input's last dim sits at output position inverse[r - 1]."""
        return Arg.by_sample(ref, r, {self.inverse[r - 1]: FEATURES})

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        r = inputs[0].rank
        return [Launch(permute_copy, {"x": self._in_arg(x(0), r), "y": self._out_arg(y(0), r)},
                       {"perm": ",".join(map(str, self.perm))})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        r = inputs[0].rank
        return [Launch(permute_copy, {"x": self._out_arg(dy(0), r), "y": self._in_arg(dx(0), r)},
                       {"perm": ",".join(map(str, self.inverse))})]


@dataclass(frozen=True)
class Identity(Operator):
    """y = x (any dtype); a named pass-through node a strategy may still place or re-split."""

    op_type = "identity"
    num_inputs = 1
    elementwise = True
    taso_names = (TasoName("OP_IDENTITY"),)

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(), (TensorShape((4, 6)),)),
            (cls(), (TensorShape((4, 5, 6)),)),
        )

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        if inputs[0].rank < 1:
            raise OperatorError(f"identity: the input needs a batch dimension, got {inputs[0]}")
        return (inputs[0],)

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return 0

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return features_dims(inputs[0])

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        r = inputs[0].rank
        return [Launch(identity_copy, {"x": Arg.by_features(x(0), r),
                                       "y": Arg.by_features(y(0), r)})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        r = inputs[0].rank
        return [Launch(identity_copy, {"x": Arg.by_features(dy(0), r),
                                       "y": Arg.by_features(dx(0), r)})]
