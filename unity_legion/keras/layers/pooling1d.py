"""keras.layers.MaxPooling1D, AveragePooling1D, GlobalAveragePooling1D, GlobalMaxPooling1D.

As their 2-D forms: strides None means the pool size, "same" pads with TF's rule, max pooling
never picks a padding position, average pooling divides by the real positions in each window;
global pooling reduces the length, keeping it as 1 with keepdims. data_format None means
channels_last.
"""

from __future__ import annotations

from typing import Any

from unity_legion.keras.layers.pooling import _GlobalPooling, _Pooling
from unity_legion.operators.one_d import GlobalAvgPool1D, GlobalMaxPool1D, Pool1D


class _Pooling1D(_Pooling):
    op_class = Pool1D

    def __init__(self, pool_size: Any = 2, strides: Any = None, padding: str = "valid",
                 data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(pool_size, strides, padding, data_format, **kwargs)

    @staticmethod
    def config_ints(v: Any) -> Any:
        return (v,)   # the operator keeps an int, Keras a 1-tuple


class MaxPooling1D(_Pooling1D):
    mode = "max"


class AveragePooling1D(_Pooling1D):
    mode = "avg"

    def __init__(self, pool_size: Any, strides: Any = None, padding: str = "valid",
                 data_format: str | None = None, **kwargs: Any) -> None:
        # Keras gives AveragePooling1D no default pool size (MaxPooling1D's is 2)
        super().__init__(pool_size, strides, padding, data_format, **kwargs)


class GlobalAveragePooling1D(_GlobalPooling):
    op_class = GlobalAvgPool1D


class GlobalMaxPooling1D(_GlobalPooling):
    op_class = GlobalMaxPool1D
