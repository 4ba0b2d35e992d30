"""keras.layers.Dense: Linear followed by an optional activation (fused into one layer)."""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion import initializers
from unity_legion.keras.layers.layer import Layer, check_positive_int
from unity_legion.operators.activation import check_activation
from unity_legion.operators.base import Operator
from unity_legion.operators.linear import Linear
from unity_legion.types import TensorShape


class Dense(Layer):
    weight_names = ("kernel", "bias")

    def __init__(self, units: int, activation: Any = None, use_bias: bool = True,
                 kernel_initializer: str = "glorot_uniform", bias_initializer: str = "zeros",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = check_positive_int("Dense", "units", units)
        self.activation = check_activation(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.check(kernel_initializer)
        self.bias_initializer = initializers.check(bias_initializer)

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return Linear(self.units, self.use_bias, self.kernel_initializer, self.bias_initializer,
                      activation=self.activation)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"units": self.units, "activation": self.activation,
                                       "use_bias": self.use_bias,
                                       "kernel_initializer": self.kernel_initializer,
                                       "bias_initializer": self.bias_initializer}
