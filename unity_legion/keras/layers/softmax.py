"""keras.layers.Softmax: softmax over `axis` (an int or a list of non-batch axes; default -1).
The call-time `mask` argument is not supported (it raises a clear error)."""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.base import Operator, OperatorError
from unity_legion.operators.softmax import Softmax as SoftmaxOp
from unity_legion.operators.softmax import check_softmax_axis
from unity_legion.types import TensorShape


class Softmax(Layer):
    def __init__(self, axis: int | Sequence[int] = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            self._axes = check_softmax_axis(axis)
        except OperatorError as exc:
            raise ValueError(f"Softmax: {exc}") from None
        self.axis = axis if isinstance(axis, int) else list(axis)

    def __call__(self, inputs: Any, mask: Any = None, **kwargs: Any) -> Any:
        if mask is not None:
            raise ValueError(f"layer {self.name!r} (Softmax): the mask argument is not supported")
        return super().__call__(inputs, **kwargs)

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return SoftmaxOp(self._axes)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"axis": self.axis}
