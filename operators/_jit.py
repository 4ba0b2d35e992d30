"""Numba-compiled loops for the normalisations and the SGD and Adam updates, where ATen or numpy
needs several passes.

A batch norm's statistics must be exact enough that a split batch equals the whole one, so ATen
could only give them as centred cascade sums (a sum, a subtraction into a new tensor, a square,
another sum: four passes and an allocation, 1.3 ms for a ResNeXt block's 4 MB input where
PyTorch's whole batch-norm forward takes 0.9 ms); a layer norm's ATen kernels return new tensors
that must be copied into the output pieces, and its input and weight gradients are two calls.
Here each is one pass over its piece, accumulated in float64, writing straight into the output
pieces (`scripts/bench_kernels.py`, against PyTorch's whole op: batch norm's forward 2.1x ->
1.1x, layer norm's forward 1.7x -> ~1.1x, its backward 2.2x -> ~0.8x).

Only what is worth it: contiguous float32/float64 numpy pieces (the CPU variants; a GPU piece,
another dtype or a strided view takes the kernel's ATen path). numba is imported and each loop
compiled on its first call (importing the operators stays cheap); compiled code is cached on
disk (`cache=True`), and the loops release the GIL (`nogil`) so Legate's CPU processors run
them side by side.
"""

from __future__ import annotations

import math  # math.sqrt in the loops: the IEEE square root, inline
import pickle
import threading
from typing import Any, Callable

import numpy as np

_lock = threading.Lock()
_JIT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def fits(*arrays: Any) -> bool:
    """Whether the compiled loops take these pieces: C-contiguous numpy float32/float64."""
    return all(type(a) is np.ndarray and a.dtype in _JIT_DTYPES and a.flags.c_contiguous
               for a in arrays)


class _Lazy:
    """A function compiled by numba on its first call, with the `fastmath` flags given (LLVM's
    names, as numba takes them)."""

    __slots__ = ("_py", "_fastmath", "_compiled")

    def __init__(self, py: Callable[..., Any], fastmath: frozenset[str]) -> None:
        self._py, self._fastmath, self._compiled = py, fastmath, None

    def __call__(self, *args: Any) -> Any:
        fn = self._compiled
        if fn is None:
            fn = self._compile(cache=True)
        try:
            return fn(*args)
        except (ImportError, EOFError, pickle.UnpicklingError):
            # numba's on-disk cache could not be loaded (written by a process that imported
            # this module under another name, or cut short): compile afresh, uncached. Raised
            # inside a task, it would abort the whole process from inside Legion.
            return self._compile(cache=False)(*args)

    def _compile(self, cache: bool) -> Any:
        with _lock:
            if self._compiled is None or not cache:
                import numba

                self._compiled = numba.njit(nogil=True, cache=cache,
                                            fastmath=set(self._fastmath) or False)(self._py)
            return self._compiled


def _jit(fastmath: frozenset[str] = frozenset()) -> Callable[[Callable[..., Any]], _Lazy]:
    return lambda py: _Lazy(py, fastmath)


# ---------------------------------------------------------------------------------------------
# batch norm: per-column sums over rows (a (rows, channels) view of a channels-last piece)
# ---------------------------------------------------------------------------------------------

# batch norm's per-channel host arithmetic (a few numpy calls on vectors of channels each,
# a microsecond or two apiece while holding the interpreter's lock, which a task's other
# processors then wait for): the same float64 operations in the same order, compiled, nogil.
# Rows of "stats": 0 count, 1 sum x, 2 sum x^2, 3 sum dy, 4 sum dy x (operators/batch_norm.py).

@_jit()
def bn_add_moments(x: np.ndarray, stats: np.ndarray) -> None:
    """stats[0..2] += the count, sum x and sum x^2 per column of x (rows, channels), from
    sums of d = x - p around the pivot p = the first row (so the squares keep the spread's
    digits): sum x = sum d + n p, sum x^2 = sum d^2 + 2 p sum d + n p^2."""
    rows, cols = x.shape
    n = np.float64(rows)
    for j in range(cols):
        stats[0, j] += n
    if rows == 0:
        return
    p = np.empty(cols)
    for j in range(cols):
        p[j] = np.float64(x[0, j])
    a1 = np.zeros(cols)
    a2 = np.zeros(cols)
    for i in range(rows):
        for j in range(cols):
            d = x[i, j] - p[j]
            a1[j] += d
            a2[j] += d * d
    for j in range(cols):
        stats[1, j] += a1[j] + n * p[j]
        stats[2, j] += (a2[j] + 2.0 * p[j] * a1[j]) + n * p[j] * p[j]


@_jit()
def bn_add_grad_sums(g: np.ndarray, x: np.ndarray, stats: np.ndarray) -> None:
    """stats[3] += sum g, stats[4] += sum g x per column, as sum g (x - p) + p sum g around
    the pivot p = the first row of x."""
    rows, cols = x.shape
    if rows == 0:
        return
    p = np.empty(cols)
    for j in range(cols):
        p[j] = np.float64(x[0, j])
    a1 = np.zeros(cols)
    a2 = np.zeros(cols)
    for i in range(rows):
        for j in range(cols):
            gv = np.float64(g[i, j])
            a1[j] += gv
            a2[j] += gv * (x[i, j] - p[j])
    for j in range(cols):
        stats[3, j] += a1[j]
        stats[4, j] += a2[j] + p[j] * a1[j]


@_jit()
def bn_mean_rstd(stats: np.ndarray, moving_mean: np.ndarray, moving_variance: np.ndarray,
                 epsilon: float, mean: np.ndarray, rstd: np.ndarray) -> bool:
    """mean and 1/sqrt(var + eps) per channel in float64: the batch's (biased variance) when
    the count is positive, else the moving statistics; whether they were the batch's."""
    cols = mean.shape[0]
    n = stats[0, 0]
    batch = n > 0
    for j in range(cols):
        if batch:
            m = stats[1, j] / n
            v = stats[2, j] / n - m * m
            if v < 0.0:   # (NaN stays NaN, as np.maximum keeps it)
                v = 0.0
        else:
            m = np.float64(moving_mean[j])
            v = np.float64(moving_variance[j])
        mean[j] = m
        rstd[j] = 1.0 / math.sqrt(v + epsilon)
    return batch


@_jit()
def bn_scale_shift(mean: np.ndarray, rstd: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                   scale: bool, center: bool, a: np.ndarray, b: np.ndarray) -> None:
    """y = x * a + b per channel: a = rstd (* gamma), b = (beta) - mean * a."""
    for j in range(mean.shape[0]):
        aj = rstd[j] * np.float64(gamma[j]) if scale else rstd[j]
        bj = np.float64(beta[j]) - mean[j] * aj if center else -mean[j] * aj
        a[j] = aj
        b[j] = bj


@_jit()
def bn_grad_coefficients(stats: np.ndarray, mean: np.ndarray, rstd: np.ndarray,
                         gamma: np.ndarray, scale: bool, from_batch: bool, g: np.ndarray,
                         c0: np.ndarray, neg_c1: np.ndarray) -> None:
    """dx = c0 + dy * g - x * c1 per channel, g = rstd (* gamma); with batch statistics
    c1 = g rstd mean(dy x_hat), c0 = g (mean rstd mean(dy x_hat) - mean(dy)), else 0."""
    for j in range(mean.shape[0]):
        gj = rstd[j] * np.float64(gamma[j]) if scale else rstd[j]
        g[j] = gj
        if from_batch:
            n = stats[0, j]
            mean_dy = stats[3, j] / n
            mean_dy_xhat = rstd[j] * (stats[4, j] - mean[j] * stats[3, j]) / n
            c1 = gj * rstd[j] * mean_dy_xhat
            c0[j] = gj * (mean[j] * rstd[j] * mean_dy_xhat - mean_dy)
            neg_c1[j] = -c1
        else:
            c0[j] = 0.0
            neg_c1[j] = 0.0


@_jit()
def bn_add_param_grads(stats: np.ndarray, mean: np.ndarray, rstd: np.ndarray,
                       dgamma: np.ndarray, dbeta: np.ndarray) -> None:
    """dgamma += rstd (sum dy x - mean sum dy), dbeta += sum dy (float64, then the
    gradients' own dtype)."""
    for j in range(mean.shape[0]):
        dgamma[j] = dgamma[j] + rstd[j] * (stats[4, j] - mean[j] * stats[3, j])
        dbeta[j] = dbeta[j] + stats[3, j]


# ---------------------------------------------------------------------------------------------
# per-row normalisation (layer norm: a (rows, features) view, features last)
# ---------------------------------------------------------------------------------------------

# Rows are short (a layer's features), so they are summed in the pieces' own dtype, vectorised
# (reassociated, fused multiply-adds, reciprocals: no flag that assumes finite values, so a NaN
# still reaches the step's finiteness check), as ATen's layer norm sums them; the weight
# gradients' columns are summed over blocks of rows in that dtype, then in float64.
_ROW_MATH = frozenset({"reassoc", "nsz", "contract", "arcp"})
_BLOCK = 64


@_jit(_ROW_MATH)
def row_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float, scale: bool,
             center: bool, y: np.ndarray, mean: np.ndarray, rstd: np.ndarray) -> None:
    """y = (x - mean) * rstd (* gamma) (+ beta) per row, with the row's mean and
    1/sqrt(var + eps) (centred: two passes over the row, which stays in cache)."""
    rows, cols = x.shape
    zero = np.zeros(1, x.dtype)[0]
    eps = zero + epsilon
    for i in range(rows):
        s = zero
        for j in range(cols):
            s += x[i, j]
        m = s / cols
        v = zero
        for j in range(cols):
            d = x[i, j] - m
            v += d * d
        r = 1 / np.sqrt(v / cols + eps)
        mean[i] = m
        rstd[i] = r
        for j in range(cols):
            h = (x[i, j] - m) * r
            if scale:
                h = h * gamma[j]
            if center:
                h = h + beta[j]
            y[i, j] = h


@_jit(_ROW_MATH)
def row_norm_backward(x: np.ndarray, dy: np.ndarray, mean: np.ndarray, rstd: np.ndarray,
                      gamma: np.ndarray, scale: bool, dx: np.ndarray, dgamma: np.ndarray,
                      dbeta: np.ndarray) -> None:
    """dx of a row norm, and dgamma += sum dy * x_hat, dbeta += sum dy over the rows:
    dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)), g = dy (* gamma)."""
    rows, cols = x.shape
    zero = np.zeros(1, x.dtype)[0]
    total_g = np.zeros(cols)
    total_b = np.zeros(cols)
    block_g = np.zeros(cols, x.dtype)
    block_b = np.zeros(cols, x.dtype)
    x_hat = np.empty(cols, x.dtype)
    grad = np.empty(cols, x.dtype)
    for i in range(rows):
        m = mean[i]
        r = rstd[i]
        sg = zero
        sgx = zero
        for j in range(cols):
            h = (x[i, j] - m) * r
            d = dy[i, j]
            block_g[j] += d * h
            block_b[j] += d
            q = d * gamma[j] if scale else d
            x_hat[j] = h
            grad[j] = q
            sg += q
            sgx += q * h
        sg /= cols
        sgx /= cols
        for j in range(cols):
            dx[i, j] = r * (grad[j] - sg - x_hat[j] * sgx)
        if i % _BLOCK == _BLOCK - 1 or i == rows - 1:
            for j in range(cols):
                total_g[j] += block_g[j]
                total_b[j] += block_b[j]
                block_g[j] = 0
                block_b[j] = 0
    for j in range(cols):
        dgamma[j] += total_g[j]
        dbeta[j] += total_b[j]


# ---------------------------------------------------------------------------------------------
# optimizer updates: one pass over a weight's piece instead of numpy's three to five (each
# reads or writes the whole piece; the updates are memory-bound), in the same float operations
# in the same order, so the results are bitwise numpy's (scalars come in the weight's dtype)
# ---------------------------------------------------------------------------------------------

@_jit()
def adam_step(param: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray, alpha: float,
              beta_1: Any, one_minus_beta_1: Any, beta_2: Any, one_minus_beta_2: Any,
              epsilon: Any) -> None:
    """Keras' Adam (row views, see `row_views`): m = m * b1 + (1 - b1) * g;
    v = v * b2 + g^2 * (1 - b2); param -= m / (sqrt(v) + eps) * alpha, the last product in
    float64 as numpy takes it (alpha is a float64 scalar there); grad = 0."""
    rounded = np.empty(1, param.dtype)   # a store to it rounds to the weight's dtype
    for r in range(param.shape[0]):
        # each row is contiguous (row_views): these are views, and the loop vectorises
        p, gr = np.ascontiguousarray(param[r]), np.ascontiguousarray(grad[r])
        mr, vr = np.ascontiguousarray(m[r]), np.ascontiguousarray(v[r])
        for i in range(p.size):
            g = gr[i]
            mi = mr[i] * beta_1
            mi = mi + one_minus_beta_1 * g
            mr[i] = mi
            vi = vr[i] * beta_2
            vi = vi + (g * g) * one_minus_beta_2
            vr[i] = vi
            rounded[0] = (mi / (math.sqrt(vi) + epsilon)) * alpha
            p[i] = p[i] - rounded[0]
            gr[i] = 0


@_jit()
def sgd_step(param: np.ndarray, grad: np.ndarray, lr: Any) -> None:
    """param -= grad * lr; grad = 0 (row views)."""
    for r in range(param.shape[0]):
        p, g = np.ascontiguousarray(param[r]), np.ascontiguousarray(grad[r])   # views
        for i in range(p.size):
            p[i] = p[i] - g[i] * lr
            g[i] = 0


@_jit()
def momentum_step(param: np.ndarray, grad: np.ndarray, velocity: np.ndarray, lr: Any,
                  momentum: Any, nesterov: bool) -> None:
    """velocity = velocity * momentum - grad * lr; param += velocity, or with Nesterov
    param += velocity * momentum - grad * lr; grad = 0 (row views)."""
    for r in range(param.shape[0]):
        p, g = np.ascontiguousarray(param[r]), np.ascontiguousarray(grad[r])   # views
        vel_r = np.ascontiguousarray(velocity[r])
        for i in range(p.size):
            step = g[i] * lr
            vel = vel_r[i] * momentum - step
            vel_r[i] = vel
            if nesterov:
                p[i] = (p[i] - step) + vel * momentum
            else:
                p[i] = p[i] + vel
            g[i] = 0


def row_views(*pieces: Any) -> list[np.ndarray] | None:
    """2-D views, all of one shape, of same-shaped pieces for the update loops above: one row
    each where every piece is contiguous; otherwise the rows of the last dim, which must be
    contiguous in each (a weight's tile of a split by output features is strided by rows, its
    optimizer slots may not be: the loops run row by row, still one pass). None where the
    loops do not take them: not numpy float32/float64 of one dtype and shape, a last dim
    strided, or rows not viewable without a copy."""
    first = pieces[0]
    for p in pieces:
        if (type(p) is not np.ndarray or p.dtype not in _JIT_DTYPES or p.dtype != first.dtype
                or p.shape != first.shape):
            return None
    if all(p.flags.c_contiguous for p in pieces):
        return [p.reshape(1, -1) for p in pieces]
    if first.ndim == 0:
        return None
    views = []
    for p in pieces:
        if p.strides[-1] != p.itemsize:
            return None
        rows = p.reshape(-1, p.shape[-1])
        if not np.may_share_memory(rows, p):
            return None
        views.append(rows)
    return views
