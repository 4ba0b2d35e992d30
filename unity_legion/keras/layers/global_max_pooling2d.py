"""keras.layers.GlobalMaxPooling2D: the maximum over H and W of each channel, (batch, C), or
(batch, 1, 1, C) / (batch, C, 1, 1) with keepdims; data_format None means channels_last."""

from __future__ import annotations

from unity_legion.keras.layers.pooling import _GlobalPooling
from unity_legion.operators.global_max_pool import GlobalMaxPool2D


class GlobalMaxPooling2D(_GlobalPooling):
    op_class = GlobalMaxPool2D
