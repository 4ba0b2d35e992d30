"""keras.layers.Conv1D: a grouped, strided, dilated 1-D convolution with a fused activation.

The kernel is (kernel_size, in_channels / groups, filters) and the bias (filters,), as in Keras;
padding "valid", "same" or "causal" (all the padding before: an output never reads later
positions); data_format None means channels_last. As in Keras, strides > 1 together with
dilation_rate > 1 is refused. Regularizers and constraints are not supported: passing one
raises a clear error rather than silently ignoring it.
"""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion import initializers
from unity_legion.keras.layers.conv2d import (conv_config, refuse_strided_dilation,
                                              reject_unsupported)
from unity_legion.keras.layers.layer import Layer, check_positive_int, op_errors
from unity_legion.operators.base import Operator
from unity_legion.operators.one_d import Conv1D as Conv1DOp
from unity_legion.types import TensorShape


class Conv1D(Layer):
    weight_names = ("kernel", "bias")

    def __init__(self, filters: int, kernel_size: Any, strides: Any = 1,
                 padding: str = "valid", data_format: str | None = None,
                 dilation_rate: Any = 1, groups: int = 1, activation: Any = None,
                 use_bias: bool = True, kernel_initializer: str = "glorot_uniform",
                 bias_initializer: str = "zeros", kernel_regularizer: Any = None,
                 bias_regularizer: Any = None, activity_regularizer: Any = None,
                 kernel_constraint: Any = None, bias_constraint: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive_int("Conv1D", "filters", filters)
        check_positive_int("Conv1D", "groups", groups)
        reject_unsupported("Conv1D", kernel_regularizer, bias_regularizer, activity_regularizer,
                           kernel_constraint, bias_constraint)
        with op_errors("Conv1D"):
            # the operator normalises and checks every argument once, as Keras does at creation
            self._op = Conv1DOp(filters, kernel_size, strides, padding, data_format,
                                dilation_rate, groups, activation, bool(use_bias),
                                initializers.check(kernel_initializer),
                                initializers.check(bias_initializer))
        refuse_strided_dilation("Conv1D", self._op.strides, self._op.dilation_rate)

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return self._op

    def get_config(self) -> dict[str, Any]:
        op = self._op
        return super().get_config() | conv_config(
            op, lambda v: (v,), data_format=op.data_format, dilation_rate=(op.dilation_rate,),
            groups=op.groups)
