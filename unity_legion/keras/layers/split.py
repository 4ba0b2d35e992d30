"""keras.layers.Split: one tensor -> a list of tensors along `axis` (tf.split semantics).

`num_or_size_splits` is a count of equal parts or a list of sizes (one may be -1). Calling the
layer always returns a list, even of one tensor, so `a, b = Split(2)(x)` reads the same for
every count. Any output may go unused; it then contributes a zero gradient.
"""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion.keras.layers.layer import KerasTensor, Layer
from unity_legion.operators.base import Operator, OperatorError
from unity_legion.operators.split import Split as SplitOp
from unity_legion.types import TensorShape


class Split(Layer):
    def __init__(self, num_or_size_splits: int | Sequence[int], axis: int = -1,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            op = SplitOp(num_or_size_splits, axis)
        except OperatorError as exc:
            raise ValueError(f"Split: {exc}") from None
        self.num_or_size_splits = op.splits if isinstance(op.splits, int) else list(op.splits)
        self.axis = op.axis

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return SplitOp(self.num_or_size_splits if isinstance(self.num_or_size_splits, int)
                       else tuple(self.num_or_size_splits), self.axis)

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> list[KerasTensor]:
        out = super().__call__(inputs, *args, **kwargs)
        return out if isinstance(out, list) else [out]

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"num_or_size_splits": self.num_or_size_splits,
                                       "axis": self.axis}
