"""keras.layers.Conv2DTranspose: a strided transposed 2-D convolution with a fused activation.

The kernel is (kh, kw, filters, in_channels) and the bias (filters,), as in Keras; padding
"valid" or "same" and output_padding (None, or less than the strides) give Keras' output size
and window; data_format None means channels_last. dilation_rate other than 1, regularizers and
constraints are not supported: passing one raises a clear error rather than silently ignoring
it.
"""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion import initializers
from unity_legion.keras.layers.conv2d import conv_config, reject_unsupported
from unity_legion.keras.layers.layer import Layer, check_positive_int, op_errors
from unity_legion.operators.base import Operator
from unity_legion.operators.conv2d_transpose import Conv2DTranspose as Conv2DTransposeOp
from unity_legion.operators.spatial import pair
from unity_legion.types import TensorShape


class Conv2DTranspose(Layer):
    weight_names = ("kernel", "bias")

    def __init__(self, filters: int, kernel_size: Any, strides: Any = (1, 1),
                 padding: str = "valid", output_padding: Any = None,
                 data_format: str | None = None, dilation_rate: Any = (1, 1),
                 activation: Any = None, use_bias: bool = True,
                 kernel_initializer: str = "glorot_uniform", bias_initializer: str = "zeros",
                 kernel_regularizer: Any = None, bias_regularizer: Any = None,
                 activity_regularizer: Any = None, kernel_constraint: Any = None,
                 bias_constraint: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive_int("Conv2DTranspose", "filters", filters)
        reject_unsupported("Conv2DTranspose", kernel_regularizer, bias_regularizer,
                           activity_regularizer, kernel_constraint, bias_constraint)
        with op_errors("Conv2DTranspose"):
            if pair(dilation_rate, "dilation_rate", "Conv2DTranspose") != (1, 1):
                raise ValueError(f"Conv2DTranspose: dilation_rate={dilation_rate!r} is not "
                                 f"supported (only 1)")
            self._op = Conv2DTransposeOp(filters, kernel_size, strides, padding, output_padding,
                                         data_format, activation, bool(use_bias),
                                         initializers.check(kernel_initializer),
                                         initializers.check(bias_initializer))

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return self._op

    def get_config(self) -> dict[str, Any]:
        op = self._op
        return super().get_config() | conv_config(
            op, output_padding=op.output_padding, data_format=op.data_format,
            dilation_rate=(1, 1))
