"""keras.layers.Concatenate: joins a list of tensors along `axis` (any axis but the batch)."""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.base import Operator, OperatorError
from unity_legion.operators.concat import Concat
from unity_legion.types import TensorShape


class Concatenate(Layer):
    num_inputs = None  # a list of inputs

    def __init__(self, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            self.axis = Concat(axis).axis
        except OperatorError as exc:
            raise ValueError(f"Concatenate: {exc}") from None

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return Concat(self.axis)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"axis": self.axis}
