"""Batch normalization (Keras BatchNormalization) over every axis but the feature `axis`.

    training:  mean, var = moments of the WHOLE batch (biased variance, as Keras)
    inference: mean, var = moving_mean, moving_variance
    y = (x - mean) / sqrt(var + epsilon) * gamma + beta

The batch is split over processors, yet the statistics must be those of the whole batch, so
they travel through one small float64 saved tensor "stats" (5, C), zeroed by the executor
before every forward (SavedSpec zero=True) and filled by ADD reductions over the pieces:

    row 0  count        elements per channel    (training forward; stays 0 at inference)
    row 1  sum x                                (training forward)
    row 2  sum x^2                              (training forward)
    row 3  sum dy                               (backward)
    row 4  sum dy * x                           (backward)

Forward in training: a moments launch (each piece adds its sums), then a launch normalising
each piece with the whole-batch mean and variance. At inference only the normalising launch runs
and, seeing count 0, uses the moving statistics; backward likewise follows whichever way forward
ran (count > 0: batch statistics, whose dependence on x adds the usual mean terms to dx).
Backward: a launch adding the pieces' sums of dy and dy*x, then a launch computing each piece's
dx from them that also turns the sums into d_gamma = sum(dy * x_hat) = rstd * (sum(dy*x) - mean
* sum(dy)) and d_beta = sum(dy), added by the points of the first batch tile only (every point
has the whole sums; the others add nothing, so a sum over points is exact). With gamma or beta
absent, or no input gradient, that last part is a launch of its own (one point per piece of
channels): a launch over channels alone runs on one point, which in a split over samples ends
the fused group twice.

Kernels: the moments and the backward sums of a channels-last float piece are one compiled
pass each (operators/_jit.py), centred on a pivot (the piece's first row) and accumulated in
float64; other pieces (a GPU's, other layouts or dtypes) take ATen's cascade sums centred on the
piece's mean, and its batch-norm weight gradient centred on the first samples' mean. The
normalisation and dx are one or two fused per-channel multiply-adds in ATen; the sums reach
"stats" in float64. The per-channel arithmetic between the sums and ATen's passes (mean and
1/sqrt(var + eps), scale and shift, dx's coefficients, gamma's and beta's gradients) is one
compiled loop each on CPU pieces: the numpy expressions' float64 operations in their order
(bit-equal), run without the interpreter's lock that those small numpy calls held (and the
other processors of a task then waited for).

Parallel forms: "sample", and "channels" (ATTRIBUTE: the feature axis; each channel's
statistics are its own, so the input, the "stats" columns and every per-channel weight are
split alike and no launch needs another piece's channels).

The moving statistics are non-trainable weights updated as Keras does,
moving = moving * momentum + batch_stat * (1 - momentum) (biased batch variance), by
`state_updates`, which the executor runs only for training steps it applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from unity_legion.types import DataType

from . import _jit
from ._aten import array, aten, view
from .base import (Arg, DimKind, In, InOut, Launch, Operator, OperatorError, Origin, Out,
                   ParallelDim, Ref, SavedSpec, Sum, TensorShape, WeightSpec, dw, dx, dy, kernel,
                   sample_dim, saved, w, x, y)

CHANNELS = "channels"  # launch axis: the feature (channel) axis

_COUNT, _SUM, _SUMSQ, _SUM_DY, _SUM_DYX = range(5)


def _other_axes(ndim: int, axis: int) -> tuple[int, ...]:
    return tuple(d for d in range(ndim) if d != axis)


def _bcast(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast against the input."""
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def _mean_rstd(stats: np.ndarray, moving_mean: np.ndarray, moving_variance: np.ndarray,
               epsilon: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """(mean, 1/sqrt(var + eps), from_batch) in float64: the batch's statistics when forward
    gathered them, else the moving ones."""
    n = stats[_COUNT, 0]
    if n > 0:
        mean = stats[_SUM] / n
        var = np.maximum(stats[_SUMSQ] / n - mean * mean, 0.0)
    else:
        mean = moving_mean.astype(np.float64)
        var = moving_variance.astype(np.float64)
    return mean, 1.0 / np.sqrt(var + epsilon), bool(n > 0)


def _channels_second(torch: Any, a: np.ndarray, axis: int) -> Any | None:
    """A piece as the (N, C, ...) tensor ATen's batch norm reads (a view), or None where its
    layout is not one ATen's batch norm kernels take as they are: (N, C), or an image batch
    contiguous in NCHW or NHWC."""
    t = view(a).movedim(axis, 1)
    if t.dim() == 2 or (t.dim() == 4 and (
            t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last))):
        return t
    return None


def _f64(t: Any) -> np.ndarray:
    return array(t.reshape(-1)).astype(np.float64)  # numpy, or CuPy for a GPU piece


def _centered_sums(torch: Any, xt: Any, other: tuple[int, ...], n: int, weight: Any = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Any layout: the piece's mean m (x's dtype), sum(x - m) and sum((x - m) * w) with
    w = weight, or x - m itself (sum of squares), in float64. Centring first keeps the sums'
    rounding relative to the spread of x, not to its mean (a variance taken as
    E[x^2] - E[x]^2 from plain sums loses every digit of a large mean)."""
    m = torch.sum(xt, other, keepdim=True).div_(n)
    c = xt - m
    s1 = torch.sum(c, other)
    c.mul_(c if weight is None else weight)
    s2 = torch.sum(c, other)
    return _f64(m), _f64(s1), _f64(s2)


def _pivoted_dot(torch: Any, gt: Any, xt: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p, sum g * (x - p), sum g) per channel in float64, for (N, C, ...) tensors in one pass
    of ATen's batch-norm weight gradient, with the pivot p = the first samples' mean of x: the
    products' rounding stays relative to the spread of x around p, not to its mean."""
    first = xt[:max(1, xt.shape[0] // 16)]
    pivot = first.mean([d for d in range(xt.dim()) if d != 1])
    _, dot, total = torch.ops.aten.native_batch_norm_backward(
        gt, xt, None, None, None, pivot, torch.ones_like(pivot), True, 0.0, [False, True, True])
    return _f64(pivot), _f64(dot), _f64(total)


@kernel
def batch_norm_moments(x: In, stats: Sum, axis: int) -> None:
    """The piece's count, sum x and sum x^2 per channel (float64), from ATen's cascade sums of
    x and of (x - m)^2 around the piece's mean m (as `_centered_sums`). ATen's batch-norm
    statistics of a channels_last batch accumulate in float (relative errors of 1e-6, which a
    deep network's batch norms over a few samples amplify a thousandfold)."""
    if axis == x.ndim - 1 and _jit.fits(x, stats):  # channels last: one compiled pass
        _jit.bn_add_moments(x.reshape(-1, x.shape[axis]), stats)
        return
    other = _other_axes(x.ndim, axis)
    n = x.size // x.shape[axis]
    stats[_COUNT] += n
    if n == 0:
        return
    with aten() as torch:
        xt = view(x)
        total = torch.sum(xt, other, keepdim=True)
        m = total / n
        c = xt - m
        c.mul_(c)
        m2 = torch.sum(c, other)
    total, m, m2 = _f64(total), _f64(m), _f64(m2)
    # sum x^2 = sum (x - m)^2 + 2 m sum x - n m^2, exactly so in float64 for this m: the
    # variance taken from these sums is that of the centred squares
    stats[_SUM] += total
    stats[_SUMSQ] += m2 + 2.0 * m * total - n * m * m


@kernel
def batch_norm_forward(x: In, stats: In, gamma: In, beta: In, moving_mean: In,
                       moving_variance: In, y: Out, axis: int, epsilon: float, scale: bool,
                       center: bool) -> None:
    if _jit.fits(stats, moving_mean, moving_variance, gamma, beta, x):
        c = len(gamma)
        mean, rstd = np.empty(c), np.empty(c)
        _jit.bn_mean_rstd(stats, moving_mean, moving_variance, epsilon, mean, rstd)
        a, b = np.empty(c, x.dtype), np.empty(c, x.dtype)
        _jit.bn_scale_shift(mean, rstd, gamma, beta, scale, center, a, b)
    else:
        mean, rstd, _ = _mean_rstd(stats, moving_mean, moving_variance, epsilon)
        a = rstd * gamma if scale else rstd                  # y = x * a + b, per channel
        b = (beta - mean * a) if center else -mean * a
        a, b = a.astype(x.dtype), b.astype(x.dtype)
    with aten() as torch:  # one pass: y = b + x * a
        torch.addcmul(view(_bcast(b, x.ndim, axis)), view(x), view(_bcast(a, x.ndim, axis)),
                      out=view(y))


@kernel
def batch_norm_backward_sums(x: In, dy: In, stats: Sum, axis: int) -> None:
    """The piece's sum dy and sum dy * x per channel (float64): sum dy (x - p) + p sum dy for a
    pivot p near the mean (`_pivoted_dot`), in one pass over x and dy, accumulated as
    PyTorch's own batch-norm backward accumulates them (gradients carry its rounding, not the
    forward statistics every later layer depends on)."""
    if axis == x.ndim - 1 and _jit.fits(x, dy, stats):  # channels last: one compiled pass
        c = x.shape[axis]
        _jit.bn_add_grad_sums(dy.reshape(-1, c), x.reshape(-1, c), stats)
        return
    other = _other_axes(x.ndim, axis)
    n = x.size // x.shape[axis]
    if n == 0:
        return
    with aten() as torch:
        xt, gt = _channels_second(torch, x, axis), _channels_second(torch, dy, axis)
        if xt is None or gt is None:
            gv = view(dy)
            sum_dy = _f64(torch.sum(gv, other))
            m, _, s_dyc = _centered_sums(torch, view(x), other, n, gv)
        else:
            m, s_dyc, sum_dy = _pivoted_dot(torch, gt, xt)
    stats[_SUM_DY] += sum_dy
    stats[_SUM_DYX] += s_dyc + m * sum_dy      # sum dy x = sum dy (x - m) + m sum dy


@kernel
def batch_norm_backward_input(x: In, dy: In, stats: In, gamma: In, moving_mean: In,
                              moving_variance: In, dx: Out, axis: int, epsilon: float,
                              scale: bool) -> None:
    _input_grad(x, dy, stats, gamma, moving_mean, moving_variance, dx, axis, epsilon, scale)


@kernel
def batch_norm_backward_input_params(x: In, dy: In, stats: In, gamma: In, moving_mean: In,
                                     moving_variance: In, dx: Out, dgamma: Sum, dbeta: Sum,
                                     origin: Origin, axis: int, epsilon: float) -> None:
    """dx as batch_norm_backward_input (gamma present), and d_gamma, d_beta added by the
    points whose piece starts the batch (the others add nothing: see the module doc)."""
    mean, rstd = _input_grad(x, dy, stats, gamma, moving_mean, moving_variance, dx, axis,
                             epsilon, True)
    if origin[0] == 0:
        if _jit.fits(stats, mean) and type(dgamma) is np.ndarray and type(dbeta) is np.ndarray:
            _jit.bn_add_param_grads(stats, mean, rstd, dgamma, dbeta)
        else:
            dgamma += _gamma_grad(stats, mean, rstd)
            dbeta += stats[_SUM_DY]


def _input_grad(x: np.ndarray, dy: np.ndarray, stats: np.ndarray, gamma: np.ndarray,
                moving_mean: np.ndarray, moving_variance: np.ndarray, dx: np.ndarray, axis: int,
                epsilon: float, scale: bool) -> tuple[np.ndarray, np.ndarray]:
    """dx; returns the (mean, rstd) it used (float64)."""
    if _jit.fits(stats, moving_mean, moving_variance, gamma, x):
        c = len(gamma)
        mean, rstd = np.empty(c), np.empty(c)
        from_batch = _jit.bn_mean_rstd(stats, moving_mean, moving_variance, epsilon, mean,
                                       rstd)
        g, c0, neg_c1 = np.empty(c, x.dtype), np.empty(c, x.dtype), np.empty(c, x.dtype)
        _jit.bn_grad_coefficients(stats, mean, rstd, gamma, scale, from_batch, g, c0, neg_c1)
    else:
        mean, rstd, from_batch = _mean_rstd(stats, moving_mean, moving_variance, epsilon)
        g = rstd * gamma if scale else rstd              # d y / d x_hat * d x_hat / d x
        if from_batch:
            n = stats[_COUNT]
            mean_dy = stats[_SUM_DY] / n
            mean_dy_xhat = rstd * (stats[_SUM_DYX] - mean * stats[_SUM_DY]) / n
            # dx = g * (dy - mean(dy) - x_hat * mean(dy * x_hat)), x_hat = (x - mean) * rstd
            c0 = (g * (mean * rstd * mean_dy_xhat - mean_dy)).astype(x.dtype)
            neg_c1 = (-(g * rstd * mean_dy_xhat)).astype(x.dtype)
        g = g.astype(x.dtype)
    per_channel = lambda v: view(_bcast(v, x.ndim, axis))  # noqa: E731
    with aten() as torch:
        out = view(dx)
        if not from_batch:
            torch.mul(view(dy), per_channel(g), out=out)
            return mean, rstd
        # dx = c0 + dy * g - x * c1: two passes
        torch.addcmul(per_channel(c0), view(dy), per_channel(g), out=out)
        out.addcmul_(view(x), per_channel(neg_c1))
    return mean, rstd


def _d_gamma(stats: np.ndarray, moving_mean: np.ndarray, moving_variance: np.ndarray,
             epsilon: float) -> np.ndarray:
    mean, rstd, _ = _mean_rstd(stats, moving_mean, moving_variance, epsilon)
    return _gamma_grad(stats, mean, rstd)


def _gamma_grad(stats: np.ndarray, mean: np.ndarray, rstd: np.ndarray) -> np.ndarray:
    """gamma's gradient from the backward sums and the statistics the forward used."""
    return rstd * (stats[_SUM_DYX] - mean * stats[_SUM_DY])


@kernel
def batch_norm_backward_gamma_beta(stats: In, moving_mean: In, moving_variance: In,
                                   dgamma: Sum, dbeta: Sum, epsilon: float) -> None:
    dgamma += _d_gamma(stats, moving_mean, moving_variance, epsilon)
    dbeta += stats[_SUM_DY]


@kernel
def batch_norm_backward_gamma(stats: In, moving_mean: In, moving_variance: In, dgamma: Sum,
                              epsilon: float) -> None:
    dgamma += _d_gamma(stats, moving_mean, moving_variance, epsilon)


@kernel
def batch_norm_backward_beta(stats: In, dbeta: Sum) -> None:
    dbeta += stats[_SUM_DY]


@kernel
def batch_norm_update_moving(stats: In, moving_mean: InOut, moving_variance: InOut,
                             momentum: float) -> None:
    n = stats[_COUNT, 0]
    if n <= 0:  # forward ran at inference: no batch statistics to learn from
        return
    mean = stats[_SUM] / n
    var = np.maximum(stats[_SUMSQ] / n - mean * mean, 0.0)
    moving_mean[...] = moving_mean * momentum + mean * (1.0 - momentum)
    moving_variance[...] = moving_variance * momentum + var * (1.0 - momentum)


def _number(value: Any, what: str, low: float, high: float | None = None) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if ok:
        v = float(value)
        ok = v >= low if high is None else low <= v <= high
    if not ok:
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise OperatorError(f"batch_norm: {what} must be a number {rng}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class BatchNorm(Operator):
    axis: int = -1
    momentum: float = 0.99
    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True
    beta_initializer: str = "zeros"
    gamma_initializer: str = "ones"
    moving_mean_initializer: str = "zeros"
    moving_variance_initializer: str = "ones"

    op_type = "batch_norm"
    num_inputs = 1
    inference_when_frozen = True
    batch_statistics = True

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(), (TensorShape((4, 6)),)),
            (cls(), (TensorShape((2, 8, 8, 3)),)),
        )

    def __post_init__(self) -> None:
        if isinstance(self.axis, bool) or not isinstance(self.axis, (int, np.integer)):
            raise OperatorError(f"batch_norm: axis must be an integer, got {self.axis!r}")
        object.__setattr__(self, "axis", int(self.axis))
        object.__setattr__(self, "momentum", _number(self.momentum, "momentum", 0.0, 1.0))
        epsilon = _number(self.epsilon, "epsilon", 0.0)
        if epsilon <= 0:
            raise OperatorError(f"batch_norm: epsilon must be positive, got {self.epsilon!r}")
        object.__setattr__(self, "epsilon", epsilon)
        object.__setattr__(self, "center", bool(self.center))
        object.__setattr__(self, "scale", bool(self.scale))

    def resolved_axis(self, s: TensorShape) -> int:
        if not -s.rank <= self.axis < s.rank:
            raise OperatorError(f"batch_norm: axis {self.axis} is out of range for an input of "
                                f"rank {s.rank} {s}")
        a = self.axis % s.rank
        if a == 0:
            raise OperatorError(f"batch_norm: axis {self.axis} is the batch axis; the feature "
                                f"axis must be one of 1..{s.rank - 1} (or negative)")
        return a

    def channels(self, s: TensorShape) -> int:
        return s.dims[self.resolved_axis(s)]  # type: ignore[return-value]

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        if s.rank < 2:
            raise OperatorError(f"batch_norm: input must have rank >= 2 (batch, ...), got {s}")
        if not s.dtype.is_float:
            raise OperatorError(f"batch_norm: expects a floating-point input, got {s.dtype.value}")
        if s.dims[self.resolved_axis(s)] is None:
            raise OperatorError(f"batch_norm: the feature dimension of {s} must be known")
        return (s,)

    def weights(self, inputs: Sequence[TensorShape]) -> tuple[WeightSpec, ...]:
        (s,) = inputs
        p = TensorShape((self.channels(s),), s.dtype)
        ws = []
        if self.scale:
            ws.append(WeightSpec("gamma", p, self.gamma_initializer))
        if self.center:
            ws.append(WeightSpec("beta", p, self.beta_initializer))
        ws.append(WeightSpec("moving_mean", p, self.moving_mean_initializer, trainable=False))
        ws.append(WeightSpec("moving_variance", p, self.moving_variance_initializer,
                             trainable=False))
        return tuple(ws)

    def saved(self, inputs: Sequence[TensorShape]) -> tuple[SavedSpec, ...]:
        return (SavedSpec("stats", TensorShape((5, self.channels(inputs[0])), DataType.FLOAT64),
                          zero=True),)

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        # moments (3 per element) and the normalisation (2 per element)
        return 5 * inputs[0].num_elements()

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        (s,) = inputs
        return (sample_dim(s), ParallelDim(CHANNELS, DimKind.ATTRIBUTE, self.channels(s)))

    def _act(self, ref: Ref, s: TensorShape) -> Arg:
        """An activation (input, output or gradient): split by samples and channels."""
        return Arg.by_sample(ref, s.rank, {self.resolved_axis(s): CHANNELS})

    @staticmethod
    def _channel(ref: Ref) -> Arg:
        """A per-channel weight or gradient (C,)."""
        return Arg(ref, (CHANNELS,))

    @staticmethod
    def _stats() -> Arg:
        return Arg(saved("stats"), (None, CHANNELS))

    def _moving(self) -> dict[str, Arg]:
        return {"moving_mean": self._channel(w("moving_mean")),
                "moving_variance": self._channel(w("moving_variance"))}

    def _param(self, name: str) -> Arg:
        """gamma or beta; an absent one is stood in for by moving_mean (already an argument),
        which the kernel never reads in its place."""
        present = self.scale if name == "gamma" else self.center
        return self._channel(w(name if present else "moving_mean"))

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        (s,) = inputs
        axis = self.resolved_axis(s)
        launches = []
        if training:
            launches.append(Launch(batch_norm_moments,
                                   {"x": self._act(x(0), s), "stats": self._stats()},
                                   {"axis": axis}))
        launches.append(Launch(batch_norm_forward, {
            "x": self._act(x(0), s), "stats": self._stats(),
            "gamma": self._param("gamma"), "beta": self._param("beta"),
            "y": self._act(y(0), s)} | self._moving(),
            {"axis": axis, "epsilon": self.epsilon, "scale": self.scale, "center": self.center}))
        return launches

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        (s,) = inputs
        axis = self.resolved_axis(s)
        if not (needs_input_grad[0] or self.scale or self.center):
            return []
        launches = [Launch(batch_norm_backward_sums,
                           {"x": self._act(x(0), s), "dy": self._act(dy(0), s),
                            "stats": self._stats()}, {"axis": axis})]
        stats = {"stats": self._stats()}
        eps = {"epsilon": self.epsilon}
        if needs_input_grad[0] and self.scale and self.center:
            # one launch over the batch: dx, and the gamma and beta gradients on the first
            # batch tile's points
            launches.append(Launch(batch_norm_backward_input_params, {
                "x": self._act(x(0), s), "dy": self._act(dy(0), s),
                "stats": self._stats(), "gamma": self._param("gamma"),
                "dx": self._act(dx(0), s), "dgamma": self._channel(dw("gamma")),
                "dbeta": self._channel(dw("beta"))} | self._moving(),
                {"axis": axis, "epsilon": self.epsilon}))
            return launches
        if self.scale and self.center:
            launches.append(Launch(batch_norm_backward_gamma_beta, stats | self._moving() | {
                "dgamma": self._channel(dw("gamma")), "dbeta": self._channel(dw("beta"))}, eps))
        elif self.scale:
            launches.append(Launch(batch_norm_backward_gamma, stats | self._moving() | {
                "dgamma": self._channel(dw("gamma"))}, eps))
        elif self.center:
            launches.append(Launch(batch_norm_backward_beta,
                                   stats | {"dbeta": self._channel(dw("beta"))}))
        # the input gradient last: it runs over the batch like the producer's backward that
        # follows it, so the executor fuses them (the per-channel launches above do not split
        # the batch)
        if needs_input_grad[0]:
            launches.append(Launch(batch_norm_backward_input, {
                "x": self._act(x(0), s), "dy": self._act(dy(0), s),
                "stats": self._stats(), "gamma": self._param("gamma"),
                "dx": self._act(dx(0), s)} | self._moving(),
                {"axis": axis, "epsilon": self.epsilon, "scale": self.scale}))
        return launches

    def state_updates(self, inputs: Sequence[TensorShape]) -> list[Launch]:
        return [Launch(batch_norm_update_moving, {"stats": self._stats()} | self._moving(),
                       {"momentum": self.momentum})]
