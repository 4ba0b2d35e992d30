"""Rescaling (keras.layers.Rescaling): y = x * scale + offset, with scalar scale and offset in
the input's precision (Keras multiplies, then adds: the same two roundings).

Kernels run PyTorch's ATen operators on views of the pieces. Parallel forms: "sample" and
"features" (ATTRIBUTE: the last dim): elementwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .activation import Activation, _FloatElementwise
from .base import In, Launch, Operator, OperatorError, Out, TensorShape, kernel
from ._aten import Into, aten, view


@kernel
def rescale_forward(x: In, y: Out, scale: float, offset: float) -> None:
    with aten() as torch:
        out = Into(y)
        torch.mul(view(x), scale, out=out.t)
        if offset:
            out.t.add_(offset)
        out.done()


@kernel
def rescale_backward(dy: In, dx: Out, scale: float) -> None:
    with aten() as torch:
        out = Into(dx)
        torch.mul(view(dy), scale, out=out.t)
        out.done()


def _scalar(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise OperatorError(f"rescale: {what} must be a number (a per-channel array is not "
                            f"supported), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Rescale(_FloatElementwise):
    scale: float = 1.0
    offset: float = 0.0

    op_type = "rescale"
    cost_family = Activation.cost_family   # memory-bound elementwise work, as the activations

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(1 / 255), (TensorShape((2, 4, 4, 3)),)),
            (cls(2.0, -1.0), (TensorShape((4, 6)),)),
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _scalar(self.scale, "scale"))
        object.__setattr__(self, "offset", _scalar(self.offset, "offset"))

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return 2 * inputs[0].num_elements()

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        return self._launch(inputs, rescale_forward, ("x", "y"),
                            {"scale": self.scale, "offset": self.offset})

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        return self._launch(inputs, rescale_backward, ("dy", "dx"), {"scale": self.scale})
