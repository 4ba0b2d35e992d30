"""Metrics as per-sample values computed in a launch; the mean is taken at the edge.

Refs: x(0) prediction, x(1) target, y(0) per-sample value (batch,).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Arg, In, Launch, OperatorError, Out, TensorShape, kernel, x, y


def _per_sample(v: np.ndarray, n: int) -> np.ndarray:
    return v.reshape(n, -1).mean(axis=-1) if n else v.reshape(0)


@kernel
def sparse_accuracy(pred: In, labels: In, value: Out) -> None:
    hit = (pred.argmax(axis=-1) == labels.reshape(pred.shape[:-1])).astype(np.float64)
    value[...] = _per_sample(hit, value.shape[0])


@kernel
def categorical_accuracy(pred: In, target: In, value: Out) -> None:
    hit = (pred.argmax(axis=-1) == target.argmax(axis=-1)).astype(np.float64)
    value[...] = _per_sample(hit, value.shape[0])


@kernel
def binary_accuracy(pred: In, target: In, value: Out) -> None:
    hit = ((pred > 0.5) == (target.reshape(pred.shape) > 0.5)).astype(np.float64)
    value[...] = _per_sample(hit, value.shape[0])


@kernel
def squared_error(pred: In, target: In, value: Out) -> None:
    d = pred.astype(np.float64) - target.reshape(pred.shape)
    value[...] = _per_sample(d * d, value.shape[0])


@kernel
def absolute_error(pred: In, target: In, value: Out) -> None:
    d = pred.astype(np.float64) - target.reshape(pred.shape)
    value[...] = _per_sample(np.abs(d), value.shape[0])


@dataclass(frozen=True)
class Metric:
    """A per-sample metric kernel and the name it is reported under."""

    name: str
    kind: str = "sparse_accuracy"

    _KERNELS: ClassVar[dict] = {
        "sparse_accuracy": sparse_accuracy, "categorical_accuracy": categorical_accuracy,
        "binary_accuracy": binary_accuracy, "squared_error": squared_error,
        "absolute_error": absolute_error,
    }

    def __post_init__(self) -> None:
        if self.kind not in self._KERNELS:
            raise OperatorError(f"unknown metric kernel {self.kind!r}")

    def launch(self, pred: TensorShape, target: TensorShape) -> Launch:
        k = self._KERNELS[self.kind]
        names = [n for n, _ in k.stores]
        return Launch(k, {names[0]: Arg.by_sample(x(0), pred.rank),
                          names[1]: Arg.by_sample(x(1), target.rank),
                          "value": Arg.by_sample(y(0), 1)})
