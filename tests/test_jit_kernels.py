"""The compiled normalisation loops (operators/_jit.py) against float64 references and against
the ATen paths the same kernels take for pieces the loops do not take (a strided view)."""

from __future__ import annotations

import numpy as np
import pytest

from unity_legion.operators import _jit
from unity_legion.operators.batch_norm import batch_norm_backward_sums, batch_norm_moments
from unity_legion.operators.layer_norm import (layer_norm_backward, layer_norm_backward_input,
                                               layer_norm_forward)


def _strided(a: np.ndarray) -> np.ndarray:
    """The same values in a piece the compiled loops refuse (not C-contiguous)."""
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    view = wide[..., ::2]
    assert not _jit.fits(view)
    return view


@pytest.mark.parametrize("mean", [0.0, 1e3])
def test_batch_norm_sums_are_exact_around_a_large_mean(mean: float) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, 5, 5, 7)) + mean).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    assert _jit.fits(x, dy)
    x64, g64 = x.astype(np.float64).reshape(-1, 7), dy.astype(np.float64).reshape(-1, 7)
    var = x64.var(axis=0)
    # the loops sum in float64; ATen's path in float32 (cascade sums, centred)
    for piece_x, piece_dy, rtol in ((x, dy, 1e-12), (_strided(x), _strided(dy), 1e-6)):
        stats = np.zeros((5, 7))
        batch_norm_moments.fn(piece_x, stats, 3)
        batch_norm_backward_sums.fn(piece_x, piece_dy, stats, 3)
        n = stats[0, 0]
        assert n == 150
        got_var = stats[2] / n - (stats[1] / n) ** 2
        np.testing.assert_allclose(stats[1] / n, x64.mean(axis=0), rtol=rtol)
        np.testing.assert_allclose(got_var, var, rtol=1e3 * rtol)   # centred: no lost digits
        np.testing.assert_allclose(stats[3], g64.sum(axis=0), rtol=rtol, atol=1e3 * rtol)
        np.testing.assert_allclose(stats[4], (g64 * x64).sum(axis=0), rtol=10 * rtol,
                                   atol=1e3 * rtol * (1 + mean))


def _layer_norm_reference(x, gamma, beta, dy, eps):
    x64 = x.astype(np.float64)
    m = x64.mean(-1, keepdims=True)
    r = 1 / np.sqrt(((x64 - m) ** 2).mean(-1, keepdims=True) + eps)
    xh = (x64 - m) * r
    g = dy * gamma
    dx = r * (g - g.mean(-1, keepdims=True) - xh * (g * xh).mean(-1, keepdims=True))
    other = tuple(range(x.ndim - 1))
    return xh * gamma + beta, m, r, dx, (dy * xh).sum(other), dy.sum(other)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_loops_equal_reference_and_aten(dtype) -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3, 70, 33)) * 2 + 5).astype(dtype)   # 210 rows: 3+ blocks
    dy = rng.standard_normal(x.shape).astype(dtype)
    gamma, beta = rng.standard_normal(33).astype(dtype), rng.standard_normal(33).astype(dtype)
    want = _layer_norm_reference(x, gamma, beta, dy, 1e-5)
    tol = 2e-5 if dtype == np.float32 else 1e-10
    for piece_x, piece_dy in ((x, dy), (_strided(x), _strided(dy))):
        y, dx = np.empty_like(x), np.empty_like(x)
        mean, rstd = np.empty((3, 70, 1), dtype), np.empty((3, 70, 1), dtype)
        layer_norm_forward.fn(piece_x, gamma, beta, y, mean, rstd, "2", 1e-5, True, True)
        dgamma, dbeta = np.ones(33, dtype), np.zeros(33, dtype)  # sums add to what is there
        layer_norm_backward.fn(piece_x, gamma, mean, rstd, piece_dy, dx, dgamma, dbeta, "2")
        for got, ref in zip((y, mean, rstd, dx, dgamma - 1, dbeta), want):
            np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
        # the input gradient alone, without gamma
        layer_norm_backward_input.fn(piece_x, gamma, mean, rstd, piece_dy, dx, "2", False)
        _, _, _, want_dx, _, _ = _layer_norm_reference(x, 1.0, 0.0, dy, 1e-5)
        np.testing.assert_allclose(dx, want_dx, rtol=tol, atol=tol)


def test_a_non_finite_input_stays_non_finite() -> None:
    """The loops' fast-math flags assume nothing about finiteness: a NaN or an infinity in a
    piece reaches the step's finiteness check."""
    x = np.ones((4, 8), np.float32)
    x[1, 3] = np.nan
    x[2, 5] = np.inf
    y, mean, rstd = np.empty_like(x), np.empty((4, 1), np.float32), np.empty((4, 1), np.float32)
    ones, zeros = np.ones(8, np.float32), np.zeros(8, np.float32)
    layer_norm_forward.fn(x, ones, zeros, y, mean, rstd, "1", 1e-5, True, True)
    assert np.isfinite(y[[0, 3]]).all() and not np.isfinite(y[1]).any()
    assert not np.isfinite(y[2]).all()
    stats = np.zeros((5, 8))
    batch_norm_moments.fn(x, stats, 1)
    assert np.isnan(stats[1, 3]) and not np.isfinite(stats[2, 5])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", ["sgd", "momentum", "nesterov", "adam"])
def test_optimizer_loops_are_bitwise_numpy(rule: str, dtype) -> None:
    """One compiled pass gives exactly what numpy's in-place ops give (the path a strided piece
    takes), weight decay included, and zeroes the gradient."""
    from unity_legion.operators.optimizers import adam_update, sgd_momentum_update, sgd_update

    rng = np.random.default_rng(2)
    start = [rng.standard_normal((37, 5)).astype(dtype) for _ in range(4)]
    start[3] = np.abs(start[3])   # Adam's second moment

    def run(pieces):
        p, g, v, w = pieces
        for step, lr in enumerate((0.1, 0.037), 1):
            g[...] = start[1] * lr
            if rule == "sgd":
                sgd_update.fn(p, g, lr, 0.01)
            elif rule == "adam":
                adam_update.fn(p, g, v, w, lr, 0.9, 0.999, 1e-7, step, 0.01)
            else:
                sgd_momentum_update.fn(p, g, v, lr, 0.9, rule == "nesterov", 0.01)
            assert not g.any()
        return p, v, w

    fast = run([a.copy() for a in start])
    slow = run([_strided(a) for a in start])
    # a tile of a split by output features: rows contiguous, strided between them
    tiles = [np.zeros((37, 12), dtype)[:, 3:8] for _ in start]
    for t, a in zip(tiles, start):
        t[...] = a
    assert _jit.row_views(*tiles) is not None and _jit.row_views(*[_strided(a) for a in start]) is None
    tiled = run(tiles)
    # the weight and its gradient tiles, the optimizer's slots contiguous (as a split by
    # output features leaves them: every piece's rows must line up, seen wrong once)
    mixed = tiles[:2] + [a.copy() for a in start[2:]]
    for t, a in zip(mixed, start):
        t[...] = a
    assert _jit.row_views(*mixed) is not None
    mixed_run = run(mixed)
    assert _jit.fits(*[a.copy() for a in start])
    for a, b, c, d in zip(fast, slow, tiled, mixed_run):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(c, b)
        np.testing.assert_array_equal(d, b)


def test_a_numba_cache_that_cannot_be_loaded_is_compiled_afresh() -> None:
    """A cache written under another module name fails to unpickle on load (seen: a script
    that imported `operators._jit` directly); inside a task that error would abort the
    process, so the loop is compiled again without the cache."""
    def add_one(a):
        return a + 1

    lazy = _jit._Lazy(add_one, frozenset())

    def broken(*args):
        raise ModuleNotFoundError("No module named 'operators'")
    lazy._compiled = broken
    assert lazy(1) == 2
    assert lazy._compiled is not broken and lazy(2) == 3


@pytest.mark.parametrize("batch", [True, False], ids=["batch-statistics", "moving"])
@pytest.mark.parametrize("scale,center", [(True, True), (True, False), (False, True)])
def test_batch_norm_coefficients_compiled_equal_numpy(batch: bool, scale: bool,
                                                      center: bool, monkeypatch) -> None:
    """Batch norm's per-channel arithmetic (statistics to scale and shift, dx coefficients,
    gamma and beta gradients) compiled gives the numpy path's numbers, bit for bit: the same
    float64 operations in the same order."""
    from unity_legion.operators.batch_norm import (batch_norm_backward_input,
                                                   batch_norm_backward_input_params,
                                                   batch_norm_forward)
    from unity_legion.operators.base import PieceOrigin

    rng = np.random.default_rng(1)
    c = 6
    x = (rng.standard_normal((4, 3, 3, c)) * 2 + 0.5).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    gamma, beta = (rng.standard_normal(c).astype(np.float32) for _ in range(2))
    mm = rng.standard_normal(c).astype(np.float32)
    mv = (rng.random(c) + 0.5).astype(np.float32)
    stats = np.zeros((5, c))
    if batch:
        batch_norm_moments.fn(x, stats, 3)
        batch_norm_backward_sums.fn(x, dy, stats, 3)

    def run() -> list[np.ndarray]:
        y, dx, dx2 = (np.empty_like(x) for _ in range(3))
        dg, db = np.full(c, 0.25, np.float32), np.full(c, -0.5, np.float32)
        batch_norm_forward.fn(x, stats, gamma, beta, mm, mv, y, 3, 1e-3, scale, center)
        batch_norm_backward_input.fn(x, dy, stats, gamma, mm, mv, dx, 3, 1e-3, scale)
        batch_norm_backward_input_params.fn(x, dy, stats, gamma, mm, mv, dx2, dg, db,
                                            PieceOrigin((0, 0, 0, 0), {}), 3, 1e-3)
        return [y, dx, dx2, dg, db]

    compiled = run()
    monkeypatch.setattr(_jit, "fits", lambda *a: False)
    for got, want in zip(compiled, run()):
        np.testing.assert_array_equal(got, want)
