"""keras.layers.Dot: the per-sample dot product of two tensors along one axis of each.

Keras semantics (batch_dot) for inputs of equal rank 2 or 3: `axes` is an int (the same axis of
both) or a pair, negative axes count from the end, the batch axis 0 cannot be contracted. Rank 2:
(b, k) . (b, k) -> (b, 1). Rank 3: x (b, p, q) . y (b, r, s) contracting x's axes[0] with y's
axes[1] -> (b, x's other dim, y's other dim). Both map to one BatchMatmul (operators/matmul.py)
with the operands' transposes folded in; normalize=True L2-normalises both along their axes
first (cosine proximity).
"""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.base import Operator, OperatorError
from unity_legion.operators.matmul import BatchMatmul
from unity_legion.types import TensorShape


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class Dot(Layer):
    num_inputs = None  # a list of two inputs

    def __init__(self, axes: int | Sequence[int], normalize: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not _is_int(axes):
            if not isinstance(axes, (list, tuple)):
                raise TypeError(f"Dot: axes must be an integer or a pair of integers, got "
                                f"{axes!r}")
            if len(axes) != 2 or not all(_is_int(a) for a in axes):
                raise ValueError(f"Dot: axes must be an integer or a pair of integers, got "
                                 f"{axes!r}")
        self.axes = axes if _is_int(axes) else tuple(axes)
        self.normalize = bool(normalize)

    def resolved_axes(self, shapes: Sequence[TensorShape]) -> tuple[int, int]:
        pair = (self.axes, self.axes) if _is_int(self.axes) else self.axes
        out = []
        for which, (a, s) in enumerate(zip(pair, shapes)):
            if not -s.rank <= a < s.rank:
                raise OperatorError(f"Dot: axis {a} is out of range for input {which} {s} of "
                                    f"rank {s.rank}")
            if a % s.rank == 0:
                raise OperatorError(f"Dot: axis {a} of input {which} {s} is the batch axis; "
                                    f"the dot product is taken per sample over non-batch axes")
            out.append(a % s.rank)
        return out[0], out[1]

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        if len(input_shapes) != 2:
            raise OperatorError(f"Dot takes a list of 2 inputs, got {len(input_shapes)}")
        a, b = input_shapes
        if a.rank != b.rank or a.rank not in (2, 3):
            raise OperatorError(f"Dot supports two inputs of rank 2 or two of rank 3, got {a} and "
                                f"{b}")
        ax, ay = self.resolved_axes(input_shapes)
        if a.dims[ax] != b.dims[ay]:
            raise OperatorError(f"Dot: incompatible input shapes: axis values {a.dims[ax]} (at "
                                f"axis {ax}) != {b.dims[ay]} (at axis {ay}); inputs {a} and {b}")
        # canonical x: (b, m, k), contracted axis last; y: (b, k, n), contracted axis first
        return BatchMatmul(transpose_a=a.rank == 3 and ax == 1,
                           transpose_b=b.rank == 3 and ay == 2, normalize=self.normalize)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"axes": self.axes, "normalize": self.normalize}
