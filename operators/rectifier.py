"""The rectifier with Keras ReLU's arguments (keras.layers.ReLU, LeakyReLU):

    y = min(x, max_value) where x > threshold, else 0;  minus negative_slope * max(threshold - x, 0)

(max_value None: no ceiling). This is Keras' formula for every combination of the arguments
(threshold >= 0, negative_slope >= 0, max_value >= 0), LeakyReLU being threshold 0 and no
ceiling: x where x > 0, else negative_slope * x. The gradient is 1 where threshold < x <=
max_value, negative_slope where x < threshold, 0 elsewhere (PyTorch's choice at the kinks).

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
def rectifier_forward(x: In, y: Out, threshold: float, negative_slope: float, has_max: bool,
                      max_value: float) -> None:
    with aten() as torch:
        xt = view(x)
        top = xt.clamp(max=max_value) if has_max else xt
        out = Into(y)
        torch.where(xt > threshold, top, xt.new_zeros(()), out=out.t)
        if negative_slope:
            out.t.sub_(torch.clamp_min(threshold - xt, 0) * negative_slope)
        out.done()


@kernel
def rectifier_backward(x: In, dy: In, dx: Out, threshold: float, negative_slope: float,
                       has_max: bool, max_value: float) -> None:
    with aten() as torch:
        xt, g = view(x), view(dy)
        slope = (xt > threshold)
        if has_max:
            slope &= xt <= max_value
        d = slope.to(g.dtype)
        if negative_slope:
            d += (xt < threshold).to(g.dtype) * negative_slope
        out = Into(dx)
        torch.mul(g, d, out=out.t)
        out.done()


def _number(value: Any, what: str, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise OperatorError(f"relu: {what} must be a number, got {value!r}")
    if value < 0:
        raise OperatorError(f"relu: {what} must not be negative, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ReLU(_FloatElementwise):
    max_value: float | None = None
    negative_slope: float = 0.0
    threshold: float = 0.0

    op_type = "relu"
    cost_family = Activation.cost_family   # memory-bound elementwise work, as the activations

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(6.0, 0.1, 0.5), (TensorShape((4, 6)),)),
            (cls(negative_slope=0.3), (TensorShape((4, 5, 6)),)),
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_value", _number(self.max_value, "max_value", True))
        object.__setattr__(self, "negative_slope", _number(self.negative_slope, "negative_slope"))
        object.__setattr__(self, "threshold", _number(self.threshold, "threshold"))

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return 4 * inputs[0].num_elements()

    def _scalars(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "negative_slope": self.negative_slope,
                "has_max": self.max_value is not None,
                "max_value": 0.0 if self.max_value is None else self.max_value}

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        return self._launch(inputs, rectifier_forward, ("x", "y"), self._scalars())

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        return self._launch(inputs, rectifier_backward, ("x", "dy", "dx"), self._scalars())
