"""keras.layers.Conv2D: a grouped, strided, dilated 2-D convolution with a fused activation.

The kernel is (kh, kw, in_channels / groups, filters) and the bias (filters,), as in Keras;
data_format None means channels_last. As in Keras, strides > 1 together with dilation_rate > 1
is refused (the operator itself supports it). Regularizers and constraints are not supported:
passing one raises a clear error rather than silently ignoring it.
"""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion import initializers
from unity_legion.keras.layers.layer import Layer, check_positive_int
from unity_legion.operators.base import Operator, OperatorError
from unity_legion.operators.conv2d import Conv2D as Conv2DOp
from unity_legion.types import TensorShape


class Conv2D(Layer):
    weight_names = ("kernel", "bias")

    def __init__(self, filters: int, kernel_size: Any, strides: Any = (1, 1),
                 padding: str = "valid", data_format: str | None = None,
                 dilation_rate: Any = (1, 1), groups: int = 1, activation: Any = None,
                 use_bias: bool = True, kernel_initializer: str = "glorot_uniform",
                 bias_initializer: str = "zeros", kernel_regularizer: Any = None,
                 bias_regularizer: Any = None, activity_regularizer: Any = None,
                 kernel_constraint: Any = None, bias_constraint: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive_int("Conv2D", "filters", filters)
        check_positive_int("Conv2D", "groups", groups)
        unsupported = {"kernel_regularizer": kernel_regularizer,
                       "bias_regularizer": bias_regularizer,
                       "activity_regularizer": activity_regularizer,
                       "kernel_constraint": kernel_constraint, "bias_constraint": bias_constraint}
        for arg, value in unsupported.items():
            if value is not None:
                raise ValueError(f"Conv2D: {arg}={value!r} is not supported")
        try:
            # the operator normalises and checks every argument once, as Keras does at creation
            self._op = Conv2DOp(filters, kernel_size, strides, padding, data_format, dilation_rate,
                                groups, activation, bool(use_bias),
                                initializers.check(kernel_initializer),
                                initializers.check(bias_initializer))
        except OperatorError as exc:
            raise ValueError(f"Conv2D: {exc}") from None
        if max(self._op.strides) > 1 and max(self._op.dilation_rate) > 1:
            raise ValueError(f"Conv2D: strides > 1 is not supported together with dilation_rate "
                             f"> 1 (as in Keras); got strides={self._op.strides}, "
                             f"dilation_rate={self._op.dilation_rate}")

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return self._op

    def get_config(self) -> dict[str, Any]:
        op = self._op
        return super().get_config() | {
            "filters": op.filters, "kernel_size": op.kernel_size, "strides": op.strides,
            "padding": op.padding, "data_format": op.data_format,
            "dilation_rate": op.dilation_rate, "groups": op.groups, "activation": op.activation,
            "use_bias": op.use_bias, "kernel_initializer": op.kernel_initializer,
            "bias_initializer": op.bias_initializer}
