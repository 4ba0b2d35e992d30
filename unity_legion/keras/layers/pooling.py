"""keras.layers.MaxPooling2D, AveragePooling2D and GlobalAveragePooling2D.

Windows, strides (None: the pool size) and padding follow Keras: "same" pads with TF's rule;
max pooling never picks a padding pixel and average pooling divides by the number of real pixels
in each window. data_format None means channels_last.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

from unity_legion.keras.layers.layer import Layer, op_errors
from unity_legion.operators.base import Operator
from unity_legion.operators.pooling import GlobalAvgPool2D, Pool2D
from unity_legion.types import TensorShape


class _Pooling(Layer):
    """A windowed pooling layer, 1-D or 2-D: its operator class (called with the mode and Keras'
    arguments) and how Keras writes the operator's pool_size and strides in the config."""

    mode: ClassVar[str]
    op_class: ClassVar[Callable[..., Operator]]

    def __init__(self, pool_size: Any, strides: Any = None, padding: str = "valid",
                 data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with op_errors(type(self).__name__):
            self._op = self.op_class(self.mode, pool_size, strides, padding, data_format)

    @staticmethod
    def config_ints(v: Any) -> Any:
        return v

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return self._op

    def get_config(self) -> dict[str, Any]:
        op, ints = self._op, self.config_ints
        return super().get_config() | {"pool_size": ints(op.pool_size), "strides": ints(op.strides),
                                       "padding": op.padding, "data_format": op.data_format}


class _Pooling2D(_Pooling):
    op_class = Pool2D

    def __init__(self, pool_size: Any = (2, 2), strides: Any = None, padding: str = "valid",
                 data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(pool_size, strides, padding, data_format, **kwargs)


class MaxPooling2D(_Pooling2D):
    mode = "max"


class AveragePooling2D(_Pooling2D):
    mode = "avg"


class _GlobalPooling(Layer):
    """A global pooling layer (1-D or 2-D): its operator class and Keras' arguments."""

    op_class: ClassVar[type[Operator]]

    def __init__(self, data_format: str | None = None, keepdims: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with op_errors(type(self).__name__):
            self._op = self.op_class(data_format, keepdims)

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return self._op

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"data_format": self._op.data_format,
                                       "keepdims": self._op.keepdims}


class GlobalAveragePooling2D(_GlobalPooling):
    op_class = GlobalAvgPool2D
