"""Loss functions: per-sample loss and, in the same launch, the gradient of the batch mean.

Refs: x(0) the prediction, x(1) the target, y(0) the per-sample loss (batch,), dx(0) the gradient
with respect to the prediction, already scaled by 1/batch (the mean over the whole batch).
Formulas follow Keras 3 (probabilities are renormalised and clipped to [eps, 1-eps]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ._aten import xp
from .base import (Arg, In, Launch, OperatorError, Out, TensorShape, dx, kernel, x, y)
from unity_legion.types import DataType

EPSILON = 1e-7  # Keras' backend epsilon


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _prob_grad(p: np.ndarray, onehot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Loss and gradient of -sum(t * log(clip(p / sum(p)))) with respect to p (Keras semantics)."""
    s = p.sum(axis=-1, keepdims=True)
    q = p / s
    c = np.clip(q, EPSILON, 1.0 - EPSILON)
    loss = -(onehot * np.log(c)).sum(axis=-1)
    g = np.where((q > EPSILON) & (q < 1.0 - EPSILON), -onehot / c, 0.0)  # d loss / d q
    # q = p / s:  d q_j / d p_i = (delta_ij - q_j) / s
    grad = (g - (g * q).sum(axis=-1, keepdims=True)) / s
    return loss, grad


def _onehot(labels: np.ndarray, classes: int, dtype: np.dtype) -> np.ndarray:
    # a comparison with 0..classes-1 (CuPy labels give a CuPy one-hot; labels are in range,
    # checked before launch)
    return (labels[..., None].astype(np.int64) == xp(labels).arange(classes)).astype(dtype)


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1)


@kernel
def sparse_ce(pred: In, labels: In, loss: Out, dpred: Out, from_logits: bool, scale: float,
              with_grad: bool) -> None:
    # Row by row: only the label's entry of a row enters its loss, so no one-hot matrix is
    # made (at 128 x 512 the one-hot formulas took 2.5 ms; this is a pass or two).
    m = xp(pred)
    z = pred.reshape(-1, pred.shape[-1])
    rows = m.arange(z.shape[0])
    lab = labels.reshape(-1).astype(np.int64, copy=False)
    inner = max(z.shape[0] // max(loss.shape[0], 1), 1)
    k = scale / inner
    g = dpred.reshape(z.shape) if with_grad else None
    if g is not None and not m.may_share_memory(g, dpred):
        g = m.empty(z.shape, dpred.dtype)   # (a piece that reshapes only by copying)
    if from_logits:
        e = z.astype(np.float64)
        e -= e.max(axis=-1, keepdims=True)
        at = e[rows, lab]
        m.exp(e, out=e)
        total = e.sum(axis=-1)
        per = m.log(total) - at
        if g is not None:   # softmax - onehot
            e *= (k / total)[:, None]
            e[rows, lab] -= k
            g[...] = e
    else:
        # Keras: q = p / sum(p) clipped to [eps, 1 - eps], loss -log(q at the label); the
        # gradient flows through the label's q only, where the clip does not hold it
        total = z.sum(axis=-1, dtype=np.float64)
        q = z[rows, lab].astype(np.float64) / total
        c = m.clip(q, EPSILON, 1.0 - EPSILON)
        per = -m.log(c)
        if g is not None:
            d = m.where((q > EPSILON) & (q < 1.0 - EPSILON), -1.0 / c, 0.0)   # d loss / d q
            # d q / d p_i = ([i == label] - q) / sum(p)
            g[...] = ((-d * q / total) * k)[:, None]
            g[rows, lab] = (d - d * q) / total * k
    if g is not None and not m.may_share_memory(g, dpred):
        dpred[...] = g.reshape(dpred.shape)
    loss[...] = per.reshape(loss.shape[0], -1).mean(axis=-1)


@kernel
def categorical_ce(pred: In, target: In, loss: Out, dpred: Out, from_logits: bool, scale: float,
                   with_grad: bool) -> None:
    p = pred.reshape(-1, pred.shape[-1]).astype(np.float64)
    t = target.reshape(-1, target.shape[-1]).astype(np.float64)
    if from_logits:
        ls = _log_softmax(p)
        per = -(t * ls).sum(axis=-1)
        grad = np.exp(ls) * t.sum(axis=-1, keepdims=True) - t
    else:
        per, grad = _prob_grad(p, t)
    loss[...] = per.reshape(loss.shape[0], -1).mean(axis=-1)
    if with_grad:
        inner = per.size // max(loss.shape[0], 1)
        dpred[...] = (grad * (scale / max(inner, 1))).reshape(dpred.shape)


@kernel
def mean_squared_error(pred: In, target: In, loss: Out, dpred: Out, scale: float,
                       with_grad: bool) -> None:
    d = _rows(pred).astype(np.float64) - _rows(target).astype(np.float64)
    loss[...] = (d * d).mean(axis=-1)
    if with_grad:
        dpred[...] = (2.0 * d * (scale / d.shape[-1])).reshape(dpred.shape)


@dataclass(frozen=True)
class LossFunction:
    """Base: name, the target it expects, and its launch."""

    name: ClassVar[str] = "loss"

    def check(self, pred: TensorShape, target: TensorShape) -> None:
        raise NotImplementedError

    def target_shape(self, pred: TensorShape) -> TensorShape:
        raise NotImplementedError

    def prepare_target(self, pred: TensorShape, target: np.ndarray) -> np.ndarray:
        """The target array checked against the prediction (shape, dtype, values) and cast to what
        the kernel reads; a clear OperatorError otherwise. Runs on numpy before any launch."""
        if target.dtype.kind not in "biuf":
            raise OperatorError(f"{self.name}: targets must be numeric, got dtype {target.dtype}")
        if not np.all(np.isfinite(target)):
            raise OperatorError(f"{self.name}: targets contain NaN or infinite values")
        # targets in float32 under a half-precision prediction (Keras computes losses in float32)
        cast = target.astype(pred.dtype.master.numpy, copy=False)
        self.check(pred, TensorShape((None,) + cast.shape[1:], pred.dtype.master))
        return cast

    def launch(self, pred: TensorShape, target: TensorShape, batch_total: int,
               with_grad: bool) -> Launch:
        raise NotImplementedError

    def _args(self, pred: TensorShape, target: TensorShape) -> dict[str, Arg]:
        return {"pred": Arg.by_sample(x(0), pred.rank),
                "loss": Arg.by_sample(y(0), 1),
                "dpred": Arg.by_sample(dx(0), pred.rank)}


@dataclass(frozen=True)
class SparseCategoricalCrossentropy(LossFunction):
    from_logits: bool = False
    name: ClassVar[str] = "sparse_categorical_crossentropy"

    def target_shape(self, pred: TensorShape) -> TensorShape:
        return TensorShape(pred.dims[:-1], DataType.INT64)

    def check(self, pred: TensorShape, target: TensorShape) -> None:
        if pred.rank < 2:
            raise OperatorError(f"{self.name}: predictions must be (batch, ..., classes), got {pred}")
        if target.dims[1:] not in (pred.dims[1:-1], pred.dims[1:-1] + (1,)):
            raise OperatorError(f"{self.name}: labels of shape {target} do not fit predictions {pred}; "
                                f"expected integer labels of shape {pred.dims[:-1]}")
        if not target.dtype.is_integer:
            raise OperatorError(f"{self.name}: labels must be integers, got {target.dtype.value}")

    def prepare_target(self, pred: TensorShape, target: np.ndarray) -> np.ndarray:
        if target.dtype.kind not in "biuf":
            raise OperatorError(f"{self.name}: labels must be integers, got dtype {target.dtype}")
        if target.dtype.kind == "f":
            if not np.all(np.isfinite(target)) or np.any(target != np.round(target)):
                raise OperatorError(f"{self.name}: labels must be integer class indices, got "
                                    f"non-integral values")
        labels = target.astype(np.int64, copy=False)
        self.check(pred, TensorShape((None,) + labels.shape[1:], DataType.INT64))
        classes = pred.dims[-1]
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            bad = labels[(labels < 0) | (labels >= classes)]
            raise OperatorError(f"{self.name}: labels must be in [0, {classes}) for predictions with "
                                f"{classes} classes; got {bad.size} out of range (e.g. {int(bad[0])})")
        return labels

    def launch(self, pred: TensorShape, target: TensorShape, batch_total: int,
               with_grad: bool) -> Launch:
        return Launch(sparse_ce, self._args(pred, target) | {"labels": Arg.by_sample(x(1), target.rank)},
                      {"from_logits": self.from_logits, "scale": 1.0 / batch_total,
                       "with_grad": with_grad})


@dataclass(frozen=True)
class CategoricalCrossentropy(LossFunction):
    from_logits: bool = False
    name: ClassVar[str] = "categorical_crossentropy"

    def target_shape(self, pred: TensorShape) -> TensorShape:
        return pred

    def check(self, pred: TensorShape, target: TensorShape) -> None:
        if pred.rank < 2 or target.dims[1:] != pred.dims[1:]:
            raise OperatorError(f"{self.name}: targets of shape {target} do not fit predictions {pred}; "
                                f"expected one-hot targets of shape {pred.dims}")

    def launch(self, pred: TensorShape, target: TensorShape, batch_total: int,
               with_grad: bool) -> Launch:
        return Launch(categorical_ce, self._args(pred, target) | {"target": Arg.by_sample(x(1), target.rank)},
                      {"from_logits": self.from_logits, "scale": 1.0 / batch_total,
                       "with_grad": with_grad})


@dataclass(frozen=True)
class MeanSquaredError(LossFunction):
    name: ClassVar[str] = "mean_squared_error"

    def target_shape(self, pred: TensorShape) -> TensorShape:
        return pred

    def check(self, pred: TensorShape, target: TensorShape) -> None:
        if target.dims[1:] != pred.dims[1:] and not (pred.rank == 2 and pred.dims[1] == 1 and target.rank == 1):
            raise OperatorError(f"{self.name}: targets of shape {target} do not fit predictions {pred}")

    def launch(self, pred: TensorShape, target: TensorShape, batch_total: int,
               with_grad: bool) -> Launch:
        return Launch(mean_squared_error, self._args(pred, target) | {"target": Arg.by_sample(x(1), target.rank)},
                      {"scale": 1.0 / batch_total, "with_grad": with_grad})


LOSSES: dict[str, type[LossFunction]] = {
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
}
