"""keras.layers.Flatten: (batch, d1, d2, ...) -> (batch, d1*d2*...).

With data_format="channels_first" the channel axis (1) is moved last before flattening, as
Keras does, so the element order matches a channels_last model.
"""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.base import Operator
from unity_legion.operators.reshape import Flatten as FlattenOp
from unity_legion.types import TensorShape

_FORMATS = ("channels_last", "channels_first")


class Flatten(Layer):
    def __init__(self, data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        fmt = "channels_last" if data_format is None else str(data_format).lower()
        if fmt not in _FORMATS:
            raise ValueError(f"Flatten: data_format must be one of {_FORMATS} or None, "
                             f"got {data_format!r}")
        self.data_format = fmt

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return FlattenOp(channels_first=self.data_format == "channels_first")

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"data_format": self.data_format}
