"""Optimizer update rules as kernels over a parameter, its gradient and its slots (in place).

Formulas follow Keras 3: decoupled weight decay (w -= lr * wd * w) before the update; SGD with
momentum keeps a velocity; Adam keeps m and v with the bias correction folded into the step size.
Refs: w("param") the parameter, dw("param") its gradient, saved(slot) each slot; all split alike:
by rows (ROWS) by default, or along any dims the caller names (`split`, e.g. the executor's
"w<d>" axes tiling a weight as its operator tiles it, so the slots live where the weight's
pieces live).
Every rule zeroes the gradient it consumed, so the next step's ADD reductions start from zero
without a separate fill (a fill is a launch, and launches are what multi-rank steps pay for).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from . import _jit
from .base import Arg, InOut, Launch, Ref, RefKind, Sum, consumes, kernel

ROWS = "param_rows"  # launch axis: the parameter's leading dimension, split over processors


# The kernels work in place and use the consumed gradient as scratch space: a 4096x4096 update
# then makes no temporary arrays (it is memory-bound), and the gradient ends zeroed as promised.
# SGD's and Adam's rules run as one compiled pass over float pieces whose rows are contiguous
# (operators/_jit.py: the same float operations in the same order, half the memory traffic);
# a GPU's, a half dtype's or a piece strided within rows take numpy's ops.


def _decay(param: np.ndarray, lr: float, weight_decay: float) -> None:
    if weight_decay:
        param *= 1.0 - lr * weight_decay


@consumes("grad")
@kernel
def sgd_update(param: InOut, grad: InOut, lr: float, weight_decay: float) -> None:
    _decay(param, lr, weight_decay)
    rows = _jit.row_views(param, grad)
    if rows is not None:
        _jit.sgd_step(*rows, param.dtype.type(lr))
        return
    grad *= lr
    param -= grad
    grad[...] = 0


@consumes("grad")
@kernel
def sgd_momentum_update(param: InOut, grad: InOut, velocity: InOut, lr: float, momentum: float,
                        nesterov: bool, weight_decay: float) -> None:
    _decay(param, lr, weight_decay)
    rows = _jit.row_views(param, grad, velocity)
    if rows is not None:
        kind = param.dtype.type
        _jit.momentum_step(*rows, kind(lr), kind(momentum), nesterov)
        return
    grad *= lr
    velocity *= momentum
    velocity -= grad
    if nesterov:  # w += momentum * v - lr * g
        param -= grad
        grad[...] = velocity
        grad *= momentum
    else:
        grad[...] = velocity
    param += grad
    grad[...] = 0


@consumes("grad")
@kernel
def adam_update(param: InOut, grad: InOut, m: InOut, v: InOut, lr: float, beta_1: float,
                beta_2: float, epsilon: float, step: int, weight_decay: float) -> None:
    _decay(param, lr, weight_decay)
    alpha = lr * np.sqrt(1.0 - beta_2 ** step) / (1.0 - beta_1 ** step)
    rows = _jit.row_views(param, grad, m, v)
    if rows is not None:
        kind = param.dtype.type
        _jit.adam_step(*rows, float(alpha), kind(beta_1), kind(1.0 - beta_1), kind(beta_2),
                       kind(1.0 - beta_2), kind(epsilon))
        return
    m *= beta_1
    m += (1.0 - beta_1) * grad          # m += (g - m) * (1 - beta_1)
    np.square(grad, out=grad)
    v *= beta_2
    grad *= 1.0 - beta_2
    v += grad                           # v += (g^2 - v) * (1 - beta_2)
    np.sqrt(v, out=grad)
    grad += epsilon
    np.divide(m, grad, out=grad)
    grad *= alpha
    param -= grad
    grad[...] = 0


@consumes("grad")
@kernel
def rmsprop_update(param: InOut, grad: InOut, velocity: InOut, lr: float, rho: float, epsilon: float,
                   weight_decay: float) -> None:
    _decay(param, lr, weight_decay)
    velocity *= rho
    velocity += (1.0 - rho) * np.square(grad)
    denominator = np.sqrt(velocity)
    denominator += epsilon
    grad /= denominator
    grad *= lr
    param -= grad
    grad[...] = 0


Split = tuple[str | None, ...]


def rows_split(rank: int) -> Split:
    """The default split of an update: the leading dim by ROWS (nothing for a scalar)."""
    return (ROWS,) + (None,) * (rank - 1) if rank else ()


def weight_axis(dim: int) -> str:
    """The launch axis of an update that tiles dim `dim` of its weight (as its operator does)."""
    return f"w{dim}"


def _rows(ref: Ref, rank: int, split: Split | None = None) -> Arg:
    """`ref` split by `split` (default: rows); every store of an update is split alike."""
    split = rows_split(rank) if split is None else tuple(split)
    if len(split) not in (0, rank):
        raise ValueError(f"an update split {split} does not match a rank-{rank} parameter")
    return Arg(ref, split) if any(split) else Arg(ref)


PARAM = Ref(RefKind.WEIGHT, "param")
GRAD = Ref(RefKind.GRAD_WEIGHT, "param")


def slot(name: str) -> Ref:
    return Ref(RefKind.SAVED, name)


@dataclass(frozen=True)
class UpdateRule:
    """Base: which slots the rule keeps per parameter, and its launch for one step."""

    slots: ClassVar[tuple[str, ...]] = ()

    def launch(self, rank: int, lr: float, step: int, split: Split | None = None) -> Launch:
        """The update of a rank-`rank` parameter; `split` names the launch axis (or None)
        tiling each dim of the parameter, its gradient and its slots (default: rows)."""
        raise NotImplementedError


@dataclass(frozen=True)
class SGDRule(UpdateRule):
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    @property
    def slots(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("velocity",) if self.momentum else ()

    def launch(self, rank: int, lr: float, step: int, split: Split | None = None) -> Launch:
        if not self.momentum:
            return Launch(sgd_update, {"param": _rows(PARAM, rank, split),
                                       "grad": _rows(GRAD, rank, split)},
                          {"lr": lr, "weight_decay": self.weight_decay})
        return Launch(sgd_momentum_update,
                      {"param": _rows(PARAM, rank, split), "grad": _rows(GRAD, rank, split),
                       "velocity": _rows(slot("velocity"), rank, split)},
                      {"lr": lr, "momentum": self.momentum, "nesterov": self.nesterov,
                       "weight_decay": self.weight_decay})


@dataclass(frozen=True)
class AdamRule(UpdateRule):
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    weight_decay: float = 0.0

    slots: ClassVar[tuple[str, ...]] = ("m", "v")

    def launch(self, rank: int, lr: float, step: int, split: Split | None = None) -> Launch:
        if step < 1:  # step 0 would make the bias correction 0/0: NaN in every weight
            raise ValueError(f"adam: step must count from 1 (Keras' iterations + 1), got {step}")
        return Launch(adam_update,
                      {"param": _rows(PARAM, rank, split), "grad": _rows(GRAD, rank, split),
                       "m": _rows(slot("m"), rank, split), "v": _rows(slot("v"), rank, split)},
                      {"lr": lr, "beta_1": self.beta_1, "beta_2": self.beta_2,
                       "epsilon": self.epsilon, "step": step, "weight_decay": self.weight_decay})


@dataclass(frozen=True)
class RMSpropRule(UpdateRule):
    rho: float = 0.9
    epsilon: float = 1e-7
    weight_decay: float = 0.0

    slots: ClassVar[tuple[str, ...]] = ("velocity",)

    def launch(self, rank: int, lr: float, step: int, split: Split | None = None) -> Launch:
        return Launch(rmsprop_update,
                      {"param": _rows(PARAM, rank, split), "grad": _rows(GRAD, rank, split),
                       "velocity": _rows(slot("velocity"), rank, split)},
                      {"lr": lr, "rho": self.rho, "epsilon": self.epsilon,
                       "weight_decay": self.weight_decay})


# ---------------------------------------------------------------------------------------------
# Dynamic loss scaling (keras.mixed_precision.LossScaleOptimizer)
# ---------------------------------------------------------------------------------------------

FINITE = Ref(RefKind.SAVED, "grads_finite")


@kernel
def unscale_grad(grad: InOut, finite: Sum, inv_scale: float) -> None:
    """Divide a loss-scaled gradient by the scale, and add to `finite` 0 times its sum (in
    float64, where no sum of float32 values overflows): `finite` stays 0 while every gradient
    is finite and becomes NaN otherwise, so the updates can be guarded by it as by the loss."""
    grad *= np.float32(inv_scale)
    finite[...] += 0.0 * grad.sum(dtype=np.float64)


def unscale_launch(rank: int, scale: float) -> Launch:
    """Unscale one weight's gradient (GRAD) and fold its finiteness into FINITE (one point:
    cheap next to the update, and the same on every strategy)."""
    return Launch(unscale_grad, {"grad": Arg(GRAD, (None,) * rank), "finite": Arg(FINITE, (None,))},
                  {"inv_scale": 1.0 / scale})
