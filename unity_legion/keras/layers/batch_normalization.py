"""keras.layers.BatchNormalization: normalise each feature over the batch (and any other axes).

In training it uses the statistics of the whole batch, however the batch is split over
processors (Keras' synchronized=True; the argument is accepted for compatibility), and after
every applied training step moves moving_mean / moving_variance towards them with `momentum`;
at inference it uses the moving statistics. Weights in Keras' order: gamma, beta (if scale /
center), moving_mean, moving_variance (the last two non-trainable). Only a single feature axis is
supported; regularizers, constraints and renormalisation are not.
"""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion import initializers
from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.base import Operator, OperatorError
from unity_legion.operators.batch_norm import BatchNorm
from unity_legion.types import TensorShape


class BatchNormalization(Layer):
    float32_inside = True   # Keras 3 upcasts the inputs under a half policy (Layer.op_dtype)
    weight_names = ("gamma", "beta", "moving_mean", "moving_variance")

    def __init__(self, axis: int = -1, momentum: float = 0.99, epsilon: float = 1e-3,
                 center: bool = True, scale: bool = True, beta_initializer: str = "zeros",
                 gamma_initializer: str = "ones", moving_mean_initializer: str = "zeros",
                 moving_variance_initializer: str = "ones", beta_regularizer: Any = None,
                 gamma_regularizer: Any = None, beta_constraint: Any = None,
                 gamma_constraint: Any = None, synchronized: bool = False,
                 renorm: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        unsupported = {"beta_regularizer": beta_regularizer,
                       "gamma_regularizer": gamma_regularizer,
                       "beta_constraint": beta_constraint, "gamma_constraint": gamma_constraint,
                       "renorm": renorm or None}
        for arg, value in unsupported.items():
            if value is not None:
                raise ValueError(f"BatchNormalization: {arg}={value!r} is not supported")
        if isinstance(axis, (list, tuple)) and len(axis) == 1:
            axis = axis[0]
        try:
            self._op = BatchNorm(axis, momentum, epsilon, bool(center), bool(scale),
                                 initializers.check(beta_initializer),
                                 initializers.check(gamma_initializer),
                                 initializers.check(moving_mean_initializer),
                                 initializers.check(moving_variance_initializer))
        except OperatorError as exc:
            raise ValueError(f"BatchNormalization: {exc}") from None
        self.synchronized = bool(synchronized)

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return self._op

    def get_config(self) -> dict[str, Any]:
        op = self._op
        return super().get_config() | {
            "axis": op.axis, "momentum": op.momentum, "epsilon": op.epsilon,
            "center": op.center, "scale": op.scale, "beta_initializer": op.beta_initializer,
            "gamma_initializer": op.gamma_initializer,
            "moving_mean_initializer": op.moving_mean_initializer,
            "moving_variance_initializer": op.moving_variance_initializer,
            "synchronized": self.synchronized}
