"""keras.layers.Rescaling: y = x * scale + offset, scale and offset numbers (a per-channel
array is refused with a clear error)."""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.base import Operator, OperatorError
from unity_legion.operators.rescale import Rescale
from unity_legion.types import TensorShape


class Rescaling(Layer):
    def __init__(self, scale: float, offset: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            self._op = Rescale(scale, offset)
        except OperatorError as exc:
            raise ValueError(f"Rescaling: {str(exc).split(': ', 1)[-1]}") from None

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return self._op

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"scale": self._op.scale, "offset": self._op.offset}
