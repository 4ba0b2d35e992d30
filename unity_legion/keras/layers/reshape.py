"""keras.layers.Reshape: (batch, ...) -> (batch, *target_shape); one entry may be -1."""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.base import Operator, OperatorError
from unity_legion.operators.reshape import Reshape as ReshapeOp
from unity_legion.operators.reshape import check_target_shape
from unity_legion.types import TensorShape


class Reshape(Layer):
    def __init__(self, target_shape: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            self.target_shape = check_target_shape(target_shape)
        except OperatorError as exc:
            raise ValueError(f"Reshape: {exc}") from None

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return ReshapeOp(self.target_shape)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"target_shape": self.target_shape}
