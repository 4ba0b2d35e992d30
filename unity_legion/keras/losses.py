"""Losses with Keras 3's names: classes, functions (by name) and `get`."""

from __future__ import annotations

from typing import Any

import numpy as np

from unity_legion.operators import losses as ops
from unity_legion.types import DataType, TensorShape


class Loss:
    """A Keras-style loss object; `spec` is the operator-level loss the executor runs."""

    def __init__(self, spec: ops.LossFunction, name: str) -> None:
        self.spec = spec
        self.name = name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"


class SparseCategoricalCrossentropy(Loss):
    def __init__(self, from_logits: bool = False, name: str = "sparse_categorical_crossentropy") -> None:
        super().__init__(ops.SparseCategoricalCrossentropy(bool(from_logits)), name)


class CategoricalCrossentropy(Loss):
    def __init__(self, from_logits: bool = False, name: str = "categorical_crossentropy") -> None:
        super().__init__(ops.CategoricalCrossentropy(bool(from_logits)), name)


class MeanSquaredError(Loss):
    def __init__(self, name: str = "mean_squared_error") -> None:
        super().__init__(ops.MeanSquaredError(), name)


def _per_sample(spec: ops.LossFunction, y_true: Any, y_pred: Any) -> np.ndarray:
    """Evaluate a loss on numpy arrays with the executor's own kernel (no Legate involved)."""
    pred = np.asarray(y_pred, dtype=np.float32)
    target = np.asarray(y_true)
    launch = spec.launch(TensorShape(pred.shape), TensorShape(target.shape, DataType.of(target.dtype)),
                         len(pred), with_grad=False)
    names = [n for n, _ in launch.kernel.stores]
    out = np.zeros(len(pred))
    launch.kernel(**{names[0]: pred, names[1]: target, "loss": out, "dpred": np.empty_like(pred)},
                  **launch.scalars)
    return out


def sparse_categorical_crossentropy(y_true: Any, y_pred: Any, from_logits: bool = False) -> np.ndarray:
    return _per_sample(ops.SparseCategoricalCrossentropy(from_logits), y_true, y_pred)


def categorical_crossentropy(y_true: Any, y_pred: Any, from_logits: bool = False) -> np.ndarray:
    return _per_sample(ops.CategoricalCrossentropy(from_logits), y_true, y_pred)


def mean_squared_error(y_true: Any, y_pred: Any) -> np.ndarray:
    return _per_sample(ops.MeanSquaredError(), y_true, y_pred)


mse = mean_squared_error

_BY_NAME: dict[str, type[Loss]] = {
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
}
_FUNCTIONS = {sparse_categorical_crossentropy: SparseCategoricalCrossentropy,
              categorical_crossentropy: CategoricalCrossentropy,
              mean_squared_error: MeanSquaredError}


def get(identifier: Any) -> Loss:
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]()
    if callable(identifier) and identifier in _FUNCTIONS:
        return _FUNCTIONS[identifier]()
    raise ValueError(f"unknown loss {identifier!r}; known: {', '.join(sorted(_BY_NAME))} "
                     f"or a Loss object")
