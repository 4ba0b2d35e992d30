"""Metrics by Keras 3 name. "accuracy" resolves against the loss, as Keras does."""

from __future__ import annotations

from typing import Any

from unity_legion.operators.losses import (CategoricalCrossentropy, LossFunction,
                                           SparseCategoricalCrossentropy)
from unity_legion.operators.metrics import Metric

_KINDS = {
    "sparse_categorical_accuracy": "sparse_accuracy",
    "categorical_accuracy": "categorical_accuracy",
    "binary_accuracy": "binary_accuracy",
    "mse": "squared_error", "mean_squared_error": "squared_error",
    "mae": "absolute_error", "mean_absolute_error": "absolute_error",
}
NAMES = sorted(_KINDS) + ["accuracy", "acc"]


def get(identifier: Any, loss: LossFunction) -> Metric:
    if isinstance(identifier, Metric):
        return identifier
    if not isinstance(identifier, str):
        raise ValueError(f"unknown metric {identifier!r}; use one of {', '.join(NAMES)}")
    if identifier in ("accuracy", "acc"):
        if isinstance(loss, SparseCategoricalCrossentropy):
            kind = "sparse_accuracy"
        elif isinstance(loss, CategoricalCrossentropy):
            kind = "categorical_accuracy"
        else:
            kind = "binary_accuracy"
        return Metric(identifier, kind=kind)
    if identifier not in _KINDS:
        raise ValueError(f"unknown metric {identifier!r}; known: {', '.join(NAMES)}")
    return Metric(identifier, kind=_KINDS[identifier])


def named(kind: str, name: str) -> Metric:
    """The metric Keras' class of snake-case name `kind` computes, reported as `name` (a
    metric object in a config: keras.metrics.SparseCategoricalAccuracy(name="acc"))."""
    if kind not in _KINDS:
        raise ValueError(f"unknown metric {kind!r}; known: {', '.join(sorted(_KINDS))}")
    return Metric(name, kind=_KINDS[kind])
