"""keras.layers.UpSampling2D: each pixel repeated size[0] x size[1] times (interpolation
"nearest"; "bilinear" and the others are refused with a clear error); data_format None means
channels_last."""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.base import Operator, OperatorError
from unity_legion.operators.upsampling import UpSampling2D as UpSampling2DOp
from unity_legion.types import TensorShape


class UpSampling2D(Layer):
    def __init__(self, size: Any = (2, 2), data_format: str | None = None,
                 interpolation: str = "nearest", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            self._op = UpSampling2DOp(size, data_format, interpolation)
        except OperatorError as exc:
            raise ValueError(f"UpSampling2D: {str(exc).split(': ', 1)[-1]}") from None

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return self._op

    def get_config(self) -> dict[str, Any]:
        op = self._op
        return super().get_config() | {"size": op.size, "data_format": op.data_format,
                                       "interpolation": op.interpolation}
