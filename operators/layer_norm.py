"""Layer normalization (Keras LayerNormalization): per sample, normalise over `axes`, then scale
by gamma and shift by beta (both shaped like the normalised dims).

    mean, var = moments(x, axes)                 (biased variance, as Keras)
    y = (x - mean) / sqrt(var + epsilon) * gamma + beta

The normalised axes never include the batch, so every piece of a sample split holds whole
normalisation groups and forward needs no communication. Forward keeps the per-group mean and
1/sqrt(var + eps) (saved "mean", "rstd", shaped like the input with size 1 on the normalised
axes); backward recomputes x_hat from them. The weight gradients are sums over all other axes
(batch included), so they are ADD reductions over sample pieces.

Parallel forms: "sample", and an ATTRIBUTE axis over the last non-batch dim that is not
normalised (if any; e.g. the positions of a (batch, positions, features) input): groups stay
whole in every piece; gamma and beta span only the normalised dims, so they are read whole and
their gradients are ADD reductions over that axis as over samples.

Kernels: where the normalised dims are the last ones (the usual case), a contiguous float
piece is normalised by one compiled pass per row, and its input and weight gradients are one
more (operators/_jit.py; statistics in float64, written straight into the pieces); other pieces
of that form (a GPU's, half dtypes) run PyTorch's ATen layer norm on views of them; other axes
take a numpy path.

Axes are kept sorted: gamma and beta have the normalised dims in increasing axis order (Keras
reshapes an unsorted list's parameters in its given order; sorting avoids that corner).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from . import _jit
from ._aten import aten, view
from .base import (Arg, In, Launch, Operator, OperatorError, Out, ParallelDim, Ref, SavedSpec, Sum,
                   TensorShape, WeightSpec, attribute_dims, dw, dx, dy, kernel, saved, w, x, y)


def _axes(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _param_view(p: np.ndarray, ndim: int, axes: tuple[int, ...]) -> np.ndarray:
    """gamma/beta (dims of `axes` in order) reshaped to broadcast against the input."""
    shape = [1] * ndim
    for a, n in zip(axes, p.shape):
        shape[a] = n
    return p.reshape(shape)


def _x_hat(x: np.ndarray, mean: np.ndarray, rstd: np.ndarray) -> np.ndarray:
    """The normalised input, in float64 (the statistics' float32 rounding is all that is lost)."""
    return (x.astype(np.float64) - mean) * rstd.astype(np.float64)


def _trailing(ax: tuple[int, ...], ndim: int) -> tuple[int, ...] | None:
    """The normalised dims when they are the last ones (ATen's layer norm normalises trailing
    dims), else None."""
    return ax if ax == tuple(range(ndim - len(ax), ndim)) else None


def _contiguous(*arrays: np.ndarray) -> bool:
    return all(a.flags.c_contiguous for a in arrays)


def _rows(a: np.ndarray, ax: tuple[int, ...]) -> np.ndarray:
    """A contiguous piece normalised over its trailing `ax` as (groups, group size)."""
    size = math.prod(a.shape[a.ndim - len(ax):])   # (np.prod: ~5 us a call)
    return a.reshape(-1, size)


def _param_vector(p: np.ndarray, present: bool, rows: np.ndarray) -> np.ndarray:
    """gamma or beta flat for the compiled loops; an absent one (its stand-in piece is never
    read) as one row of zeros, so the loops see one type either way."""
    return p.reshape(-1) if present else np.zeros(rows.shape[1], rows.dtype)


@kernel
def layer_norm_forward(x: In, gamma: In, beta: In, y: Out, mean: Out, rstd: Out, axes: str,
                       epsilon: float, scale: bool, center: bool) -> None:
    ax = _axes(axes)
    if _trailing(ax, x.ndim) and _jit.fits(x, y, mean, rstd):  # one compiled pass per row
        rows = _rows(x, ax)
        _jit.row_norm(rows, _param_vector(gamma, scale, rows), _param_vector(beta, center, rows),
                      epsilon, scale, center, y.reshape(rows.shape), mean.reshape(-1),
                      rstd.reshape(-1))
        return
    if _trailing(ax, x.ndim) and _contiguous(x, mean, rstd):
        with aten() as torch:  # ATen: statistics accumulated in double, centred
            out, m, r = torch.ops.aten.native_layer_norm(
                view(x), x.shape[x.ndim - len(ax):], view(gamma) if scale else None,
                view(beta) if center else None, epsilon)
            view(y).copy_(out)
            view(mean).copy_(m.view(mean.shape))
            view(rstd).copy_(r.view(rstd.shape))
        return
    # other axes: numpy, moments in float64 (float32 sums over large groups lose digits)
    x64 = x.astype(np.float64)
    m = x64.mean(axis=ax, keepdims=True)
    c = x64 - m
    r = 1.0 / np.sqrt(np.mean(c * c, axis=ax, keepdims=True) + epsilon)
    mean[...] = m
    rstd[...] = r
    out = c * r
    if scale:
        out *= _param_view(gamma, x.ndim, ax)
    if center:
        out += _param_view(beta, x.ndim, ax)
    y[...] = out


@kernel
def layer_norm_backward_input(x: In, gamma: In, mean: In, rstd: In, dy: In, dx: Out, axes: str,
                              scale: bool) -> None:
    _input_grad(x, gamma, mean, rstd, dy, dx, _axes(axes), scale)


def _input_grad(x: np.ndarray, gamma: np.ndarray, mean: np.ndarray, rstd: np.ndarray,
                dy: np.ndarray, dx: np.ndarray, ax: tuple[int, ...], scale: bool) -> None:
    if _trailing(ax, x.ndim) and _jit.fits(x, mean, rstd, dy, dx):
        rows = _rows(x, ax)
        unused = np.zeros(rows.shape[1])  # the weight gradients' sums, not wanted here
        _jit.row_norm_backward(rows, dy.reshape(rows.shape), mean.reshape(-1), rstd.reshape(-1),
                               _param_vector(gamma, scale, rows), scale,
                               dx.reshape(rows.shape), unused, unused.copy())
        return
    if _trailing(ax, x.ndim) and _contiguous(x, mean, rstd, dy):
        with aten() as torch:
            d, _, _ = torch.ops.aten.native_layer_norm_backward(
                view(dy), view(x), x.shape[x.ndim - len(ax):], view(mean), view(rstd),
                view(gamma) if scale else None, None, [True, False, False])
            view(dx).copy_(d)
        return
    xh = _x_hat(x, mean, rstd)
    g = dy.astype(np.float64)
    if scale:
        g *= _param_view(gamma, x.ndim, ax)
    dx[...] = rstd * (g - g.mean(axis=ax, keepdims=True)
                      - xh * (g * xh).mean(axis=ax, keepdims=True))


@kernel
def layer_norm_backward(x: In, gamma: In, mean: In, rstd: In, dy: In, dx: Out, dgamma: Sum,
                        dbeta: Sum, axes: str) -> None:
    """dx, and the piece's part of the gamma and beta gradients, in one pass (gamma and beta
    both present)."""
    ax = _axes(axes)
    if _trailing(ax, x.ndim) and _jit.fits(x, mean, rstd, dy, dx, gamma, dgamma, dbeta):
        rows = _rows(x, ax)
        _jit.row_norm_backward(rows, dy.reshape(rows.shape), mean.reshape(-1), rstd.reshape(-1),
                               gamma.reshape(-1), True, dx.reshape(rows.shape),
                               dgamma.reshape(-1), dbeta.reshape(-1))
        return
    _input_grad(x, gamma, mean, rstd, dy, dx, ax, True)
    _add_param_grads(x, mean, rstd, dy, dgamma, dbeta, ax)


def _other_axes(ndim: int, ax: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in range(ndim) if d not in ax)


def _add_param_grads(x: np.ndarray, mean: np.ndarray, rstd: np.ndarray, dy: np.ndarray,
                     dgamma: np.ndarray | None, dbeta: np.ndarray | None, ax: tuple[int, ...]
                     ) -> None:
    """dgamma += sum dy * x_hat, dbeta += sum dy over every dim but the normalised ones."""
    if _trailing(ax, x.ndim) and _contiguous(x, mean, rstd, dy):
        with aten() as torch:
            # the gradients' pieces stand in for the weight and bias: only their shapes are read
            stand_in = view(dgamma if dgamma is not None else dbeta)
            _, gg, gb = torch.ops.aten.native_layer_norm_backward(
                view(dy), view(x), x.shape[x.ndim - len(ax):], view(mean), view(rstd),
                stand_in, stand_in, [False, dgamma is not None, dbeta is not None])
            if dgamma is not None:
                view(dgamma).add_(gg.view(dgamma.shape))
            if dbeta is not None:
                view(dbeta).add_(gb.view(dbeta.shape))
        return
    other = _other_axes(x.ndim, ax)
    if dgamma is not None:
        dgamma += (dy * _x_hat(x, mean, rstd)).sum(axis=other).reshape(dgamma.shape)
    if dbeta is not None:
        dbeta += dy.sum(axis=other).reshape(dbeta.shape)


@kernel
def layer_norm_backward_gamma_beta(x: In, mean: In, rstd: In, dy: In, dgamma: Sum, dbeta: Sum,
                                   axes: str) -> None:
    _add_param_grads(x, mean, rstd, dy, dgamma, dbeta, _axes(axes))


@kernel
def layer_norm_backward_gamma(x: In, mean: In, rstd: In, dy: In, dgamma: Sum, axes: str) -> None:
    _add_param_grads(x, mean, rstd, dy, dgamma, None, _axes(axes))


@kernel
def layer_norm_backward_beta(dy: In, dbeta: Sum, axes: str) -> None:
    other = _other_axes(dy.ndim, _axes(axes))
    with aten() as torch:
        view(dbeta).add_(torch.sum(view(dy), other).view(dbeta.shape))


def check_axes(axis: Any, what: str) -> tuple[int, ...]:
    """An int or a non-empty list of distinct ints (not yet resolved against a rank)."""
    items = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    if not items:
        raise OperatorError(f"{what}: axis must be an integer or a non-empty list of integers")
    for a in items:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise OperatorError(f"{what}: axis must be an integer or a list of integers, got "
                                f"{axis!r}")
    return tuple(int(a) for a in items)


def resolve_axes(axes: Sequence[int], rank: int, what: str) -> tuple[int, ...]:
    """Non-negative, sorted, distinct, never the batch axis 0."""
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise OperatorError(f"{what}: axis {a} is out of range for an input of rank {rank}")
        r = a % rank
        if r == 0:
            raise OperatorError(f"{what}: axis {a} is the batch axis; normalise over non-batch "
                                f"axes (1..{rank - 1} or negative)")
        out.append(r)
    if len(set(out)) != len(out):
        raise OperatorError(f"{what}: axis {tuple(axes)} repeats an axis")
    return tuple(sorted(out))


@dataclass(frozen=True)
class LayerNorm(Operator):
    axes: tuple[int, ...] = (-1,)
    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True
    gamma_initializer: str = "ones"
    beta_initializer: str = "zeros"

    op_type = "layer_norm"
    num_inputs = 1

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(), (TensorShape((4, 6)),)),
            (cls(), (TensorShape((4, 5, 6)),)),
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", check_axes(self.axes, self.op_type))
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, (int, float, np.floating)) \
                or not float(self.epsilon) > 0:
            raise OperatorError(f"{self.op_type}: epsilon must be a positive number, got "
                                f"{self.epsilon!r}")
        object.__setattr__(self, "epsilon", float(self.epsilon))

    def resolved(self, s: TensorShape) -> tuple[int, ...]:
        return resolve_axes(self.axes, s.rank, self.op_type)

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        if s.rank < 2:
            raise OperatorError(f"{self.op_type}: input must have rank >= 2 (batch, ...), got {s}")
        if not s.dtype.is_float:
            raise OperatorError(f"{self.op_type}: expects a floating-point input, got "
                                f"{s.dtype.value}")
        self.resolved(s)
        return (s,)

    def _param_shape(self, s: TensorShape) -> TensorShape:
        return TensorShape(tuple(s.dims[a] for a in self.resolved(s)), s.dtype)

    def weights(self, inputs: Sequence[TensorShape]) -> tuple[WeightSpec, ...]:
        (s,) = inputs
        p = self._param_shape(s)
        ws = []
        if self.scale:
            ws.append(WeightSpec("gamma", p, self.gamma_initializer))
        if self.center:
            ws.append(WeightSpec("beta", p, self.beta_initializer))
        return tuple(ws)

    def _stat_shape(self, s: TensorShape) -> TensorShape:
        ax = self.resolved(s)
        return s.with_dims(tuple(1 if d in ax else n for d, n in enumerate(s.dims)))

    def saved(self, inputs: Sequence[TensorShape]) -> tuple[SavedSpec, ...]:
        st = self._stat_shape(inputs[0])
        return (SavedSpec("mean", st), SavedSpec("rstd", st))

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        # mean, centre, square, variance, normalise, scale, shift: about 8 per element
        return 8 * inputs[0].num_elements()

    def _axes_text(self, s: TensorShape) -> str:
        return ",".join(str(a) for a in self.resolved(s))

    def _free_dim(self, s: TensorShape) -> int | None:
        """The last non-batch dim not normalised over (the ATTRIBUTE axis splits it)."""
        ax = self.resolved(s)
        free = [d for d in range(1, s.rank) if d not in ax]
        return free[-1] if free else None

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return attribute_dims(inputs[0], self._free_dim(inputs[0]))

    def _arg(self, ref: Ref, s: TensorShape) -> Arg:
        """The input, output, their gradients and the statistics: all split alike."""
        return Arg.by_attribute(ref, s.rank, self._free_dim(s))

    def _param(self, name: str, s: TensorShape) -> Arg:
        """gamma or beta; an absent one is stood in for by the input's own piece (already an
        input of the launch, so nothing is broadcast for it), which the kernel never reads."""
        present = self.scale if name == "gamma" else self.center
        return Arg(w(name)) if present else self._arg(x(0), s)

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        (s,) = inputs
        return [Launch(layer_norm_forward, {
            "x": self._arg(x(0), s), "gamma": self._param("gamma", s),
            "beta": self._param("beta", s),
            "y": self._arg(y(0), s), "mean": self._arg(saved("mean"), s),
            "rstd": self._arg(saved("rstd"), s)},
            {"axes": self._axes_text(s), "epsilon": self.epsilon, "scale": self.scale,
             "center": self.center})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        (s,) = inputs
        axes = self._axes_text(s)
        stats = {"mean": self._arg(saved("mean"), s), "rstd": self._arg(saved("rstd"), s)}
        d_out = self._arg(dy(0), s)
        if needs_input_grad[0] and self.scale and self.center:  # one pass for all three
            return [Launch(layer_norm_backward, stats | {
                "x": self._arg(x(0), s), "gamma": Arg(w("gamma")), "dy": d_out,
                "dx": self._arg(dx(0), s), "dgamma": Arg(dw("gamma")), "dbeta": Arg(dw("beta"))},
                {"axes": axes})]
        launches = []
        if needs_input_grad[0]:
            launches.append(Launch(layer_norm_backward_input, stats | {
                "x": self._arg(x(0), s), "gamma": self._param("gamma", s),
                "dy": d_out, "dx": self._arg(dx(0), s)}, {"axes": axes, "scale": self.scale}))
        xs = stats | {"x": self._arg(x(0), s), "dy": d_out}
        if self.scale and self.center:
            launches.append(Launch(layer_norm_backward_gamma_beta,
                                   xs | {"dgamma": Arg(dw("gamma")), "dbeta": Arg(dw("beta"))},
                                   {"axes": axes}))
        elif self.scale:
            launches.append(Launch(layer_norm_backward_gamma, xs | {"dgamma": Arg(dw("gamma"))},
                                   {"axes": axes}))
        elif self.center:
            launches.append(Launch(layer_norm_backward_beta,
                                   {"dy": d_out, "dbeta": Arg(dw("beta"))}, {"axes": axes}))
        return launches
