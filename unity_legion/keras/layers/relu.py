"""keras.layers.ReLU and LeakyReLU, with Keras' arguments and checks.

ReLU(max_value=None, negative_slope=0.0, threshold=0.0): x where threshold < x (up to
max_value), else negative_slope * (x - threshold); LeakyReLU(negative_slope=0.3) is its
threshold-0, no-ceiling case. A ReLU with its defaults builds the plain relu Activation (which
the substitutions can fuse into a preceding Dense or Conv2D); any other builds the rectifier
operator (operators/rectifier.py).
"""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.activation import Activation as ActivationOp
from unity_legion.operators.base import Operator, OperatorError
from unity_legion.operators.rectifier import ReLU as ReLUOp
from unity_legion.types import TensorShape


def _rectifier(layer: str, max_value: Any, negative_slope: Any, threshold: Any) -> ReLUOp:
    try:
        return ReLUOp(max_value, negative_slope, threshold)
    except OperatorError as exc:
        raise ValueError(f"{layer}: {str(exc).split(': ', 1)[-1]}") from None


class ReLU(Layer):
    def __init__(self, max_value: float | None = None, negative_slope: float = 0.0,
                 threshold: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._op = _rectifier("ReLU", max_value, negative_slope, threshold)

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        op = self._op
        if op.max_value is None and op.negative_slope == 0 and op.threshold == 0:
            return ActivationOp("relu")
        return op

    def get_config(self) -> dict[str, Any]:
        op = self._op
        return super().get_config() | {"max_value": op.max_value,
                                       "negative_slope": op.negative_slope,
                                       "threshold": op.threshold}


class LeakyReLU(Layer):
    def __init__(self, negative_slope: float = 0.3, **kwargs: Any) -> None:
        if "alpha" in kwargs:  # Keras 3 still takes the old name
            negative_slope = kwargs.pop("alpha")
        super().__init__(**kwargs)
        self._op = _rectifier("LeakyReLU", None, negative_slope, 0.0)

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return self._op

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"negative_slope": self._op.negative_slope}
