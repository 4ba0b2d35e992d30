"""keras.layers.Conv2D: a grouped, strided, dilated 2-D convolution with a fused activation.

The kernel is (kh, kw, in_channels / groups, filters) and the bias (filters,), as in Keras;
data_format None means channels_last. As in Keras, strides > 1 together with dilation_rate > 1
is refused (the operator itself supports it). Regularizers and constraints are not supported:
passing one raises a clear error rather than silently ignoring it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from unity_legion import initializers
from unity_legion.keras.layers.layer import Layer, check_positive_int, op_errors
from unity_legion.operators.base import Operator
from unity_legion.operators.conv2d import Conv2D as Conv2DOp
from unity_legion.types import TensorShape

# What the convolution layers (Conv1D, Conv2D, Conv2DTranspose) take from Keras but refuse, in
# Keras' argument order: `reject_unsupported` reads their values in this order.
UNSUPPORTED = ("kernel_regularizer", "bias_regularizer", "activity_regularizer",
               "kernel_constraint", "bias_constraint")


def reject_unsupported(layer: str, *values: Any) -> None:
    """Refuse a regularizer or constraint (values in UNSUPPORTED's order) rather than silently
    ignoring it."""
    for arg, value in zip(UNSUPPORTED, values, strict=True):
        if value is not None:
            raise ValueError(f"{layer}: {arg}={value!r} is not supported")


def _ints(v: Any) -> tuple[int, ...]:
    return v if isinstance(v, tuple) else (v,)


def refuse_strided_dilation(layer: str, strides: Any, dilation_rate: Any) -> None:
    """As Keras: strides > 1 together with dilation_rate > 1 is refused (the operators support
    it). strides and dilation_rate are the operator's: an int (1-D) or a tuple."""
    if max(_ints(strides)) > 1 and max(_ints(dilation_rate)) > 1:
        raise ValueError(f"{layer}: strides > 1 is not supported together with dilation_rate "
                         f"> 1 (as in Keras); got strides={strides}, "
                         f"dilation_rate={dilation_rate}")


def conv_config(op: Any, ints: Callable[[Any], Any] = lambda v: v,
                **middle: Any) -> dict[str, Any]:
    """A convolution layer's own get_config entries, in Keras' order: `middle` (what differs
    between the layers) stands between padding and activation; `ints` gives kernel_size and
    strides Keras' form (a 1-D operator keeps ints, Keras tuples)."""
    return {"filters": op.filters, "kernel_size": ints(op.kernel_size),
            "strides": ints(op.strides), "padding": op.padding, **middle,
            "activation": op.activation, "use_bias": op.use_bias,
            "kernel_initializer": op.kernel_initializer,
            "bias_initializer": op.bias_initializer}


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
        reject_unsupported("Conv2D", kernel_regularizer, bias_regularizer, activity_regularizer,
                           kernel_constraint, bias_constraint)
        if isinstance(padding, str) and padding.lower() == "causal":  # Conv1D's only, as in Keras
            raise ValueError("Conv2D: padding must be 'valid' or 'same', got 'causal'")
        with op_errors("Conv2D"):
            # the operator normalises and checks every argument once, as Keras does at creation
            self._op = Conv2DOp(filters, kernel_size, strides, padding, data_format, dilation_rate,
                                groups, activation, bool(use_bias),
                                initializers.check(kernel_initializer),
                                initializers.check(bias_initializer))
        refuse_strided_dilation("Conv2D", self._op.strides, self._op.dilation_rate)

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return self._op

    def get_config(self) -> dict[str, Any]:
        op = self._op
        return super().get_config() | conv_config(
            op, data_format=op.data_format, dilation_rate=op.dilation_rate, groups=op.groups)
