"""keras.layers.ZeroPadding2D: zero rows and columns around every image.

padding: an int (all sides), a pair (symmetric height, symmetric width) or
((top, bottom), (left, right)); data_format None means channels_last.
"""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.base import Operator, OperatorError
from unity_legion.operators.padding import ZeroPad2D, check_pads
from unity_legion.types import TensorShape


class ZeroPadding2D(Layer):
    def __init__(self, padding: Any = (1, 1), data_format: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            pt, pb, pl, pr = check_pads(padding, "ZeroPadding2D")
            self._op = ZeroPad2D((pt, pb, pl, pr), data_format)
        except OperatorError as exc:
            raise ValueError(str(exc)) from None

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return self._op

    def get_config(self) -> dict[str, Any]:
        pt, pb, pl, pr = self._op.pads
        return super().get_config() | {"padding": ((pt, pb), (pl, pr)),
                                       "data_format": self._op.data_format}
