"""keras.layers.Activation: applies an activation function elementwise (softmax: last axis)."""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.activation import Activation as ActivationOp
from unity_legion.operators.activation import check_activation
from unity_legion.operators.base import Operator
from unity_legion.types import TensorShape


class Activation(Layer):
    def __init__(self, activation: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.activation = check_activation(activation)

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return ActivationOp(self.activation)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"activation": self.activation}
