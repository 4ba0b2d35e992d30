"""keras.layers.Permute: reorders the non-batch dims; `dims` is 1-based (the batch stays first),
e.g. Permute((2, 1)) turns (batch, a, b) into (batch, b, a)."""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.base import Operator, OperatorError
from unity_legion.operators.permute import Permute as PermuteOp
from unity_legion.operators.permute import check_permutation
from unity_legion.types import TensorShape


class Permute(Layer):
    def __init__(self, dims: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            self.dims = check_permutation(dims)
        except OperatorError as exc:
            raise ValueError(f"Permute: {exc}") from None

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return PermuteOp(self.dims)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"dims": self.dims}
