"""keras.layers.LayerNormalization: per sample, normalise over `axis` (an int or a list of
non-batch axes), then scale by gamma and shift by beta.

Weights (Keras' get_weights order): gamma, then beta, each shaped like the normalised dims. A list
of axes is taken in increasing order (Keras keeps an unsorted list's order for the weights' shape;
sorted lists, the usual case, agree). rms_scaling, regularizers and constraints are not supported:
passing them raises a clear error rather than silently ignoring them.
"""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion import initializers
from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.base import Operator, OperatorError
from unity_legion.operators.layer_norm import LayerNorm
from unity_legion.types import TensorShape


class LayerNormalization(Layer):
    float32_inside = True   # Keras 3 upcasts the inputs under a half policy (Layer.op_dtype)
    weight_names = ("gamma", "beta")

    def __init__(self, axis: int | Sequence[int] = -1, epsilon: float = 1e-3, center: bool = True,
                 scale: bool = True, rms_scaling: bool = False, beta_initializer: str = "zeros",
                 gamma_initializer: str = "ones", beta_regularizer: Any = None,
                 gamma_regularizer: Any = None, beta_constraint: Any = None,
                 gamma_constraint: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        unsupported = {"rms_scaling": rms_scaling, "beta_regularizer": beta_regularizer,
                       "gamma_regularizer": gamma_regularizer, "beta_constraint": beta_constraint,
                       "gamma_constraint": gamma_constraint}
        for arg, value in unsupported.items():
            if value:
                raise ValueError(f"LayerNormalization: {arg}={value!r} is not supported")
        try:
            probe = LayerNorm(axis, epsilon, bool(center), bool(scale),
                              initializers.check(gamma_initializer),
                              initializers.check(beta_initializer))
        except OperatorError as exc:
            raise ValueError(f"LayerNormalization: {exc}") from None
        self.axis = axis if isinstance(axis, int) else list(axis)
        self._op_args = probe

    @property
    def epsilon(self) -> float:
        return self._op_args.epsilon

    @property
    def center(self) -> bool:
        return self._op_args.center

    @property
    def scale(self) -> bool:
        return self._op_args.scale

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return self._op_args

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {
            "axis": self.axis, "epsilon": self.epsilon, "center": self.center,
            "scale": self.scale, "beta_initializer": self._op_args.beta_initializer,
            "gamma_initializer": self._op_args.gamma_initializer}
