"""keras.layers.Dropout: zeroes a fraction `rate` of inputs in training, scaling the rest by
1/(1-rate); identity at inference.

`seed` (Keras compatibility) is mixed into the operator's per-step seed as a salt: layers with
different seeds draw different masks in the same step. Reproducibility across runs comes from the
executor's seed (the per-step seeds it hands out), with or without this argument.
"""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.base import Operator, OperatorError
from unity_legion.operators.dropout import Dropout as DropoutOp
from unity_legion.operators.dropout import check_rate
from unity_legion.types import TensorShape


class Dropout(Layer):
    def __init__(self, rate: float, noise_shape: Sequence[int | None] | None = None,
                 seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            self.rate = check_rate(rate)
            # build the operator once to validate noise_shape and seed early, as Keras does
            probe = DropoutOp(self.rate, None if noise_shape is None else tuple(noise_shape),
                              0 if seed is None else seed)
        except (OperatorError, TypeError) as exc:
            raise ValueError(f"Dropout: {exc}") from None
        self.noise_shape = probe.noise_shape
        self.seed = seed

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return DropoutOp(self.rate, self.noise_shape, 0 if self.seed is None else self.seed)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"rate": self.rate, "noise_shape": self.noise_shape,
                                       "seed": self.seed}
