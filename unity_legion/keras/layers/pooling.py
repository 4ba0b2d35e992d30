"""keras.layers.MaxPooling2D, AveragePooling2D and GlobalAveragePooling2D.

Windows, strides (None: the pool size) and padding follow Keras: "same" pads with TF's rule;
max pooling never picks a padding pixel and average pooling divides by the number of real pixels
in each window. data_format None means channels_last.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.base import Operator, OperatorError
from unity_legion.operators.pooling import GlobalAvgPool2D, Pool2D
from unity_legion.types import TensorShape


class _Pooling2D(Layer):
    mode: ClassVar[str]

    def __init__(self, pool_size: Any = (2, 2), strides: Any = None, padding: str = "valid",
                 data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            self._op = Pool2D(self.mode, pool_size, strides, padding, data_format)
        except OperatorError as exc:
            raise ValueError(f"{type(self).__name__}: {exc}") from None

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return self._op

    def get_config(self) -> dict[str, Any]:
        op = self._op
        return super().get_config() | {"pool_size": op.pool_size, "strides": op.strides,
                                       "padding": op.padding, "data_format": op.data_format}


class MaxPooling2D(_Pooling2D):
    mode = "max"


class AveragePooling2D(_Pooling2D):
    mode = "avg"


class GlobalAveragePooling2D(Layer):
    def __init__(self, data_format: str | None = None, keepdims: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            self._op = GlobalAvgPool2D(data_format, keepdims)
        except OperatorError as exc:
            raise ValueError(f"GlobalAveragePooling2D: {exc}") from None

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return self._op

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"data_format": self._op.data_format,
                                       "keepdims": self._op.keepdims}
