"""Dropout: y = x * mask / (1 - rate) in training with a mask that depends only on the seed and
the global element index (not on the batch split), identity at inference."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from op_check import FixedSplitExecutor, randn, run_op
from unity_legion.executor.executor import GraphExecutor
from unity_legion.keras.layers import Dropout, Input
from unity_legion.operators.base import OperatorError
from unity_legion.operators.dropout import Dropout as DropoutOp
from unity_legion.operators.dropout import dropout_forward, keep_mask
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.types import TensorShape


def _nonzero(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Inputs away from 0, so that y != 0 exactly where the mask keeps an element."""
    x = randn(rng, *shape)
    return np.where(x >= 0, x + 0.5, x - 0.5).astype(np.float32)


@pytest.mark.parametrize("batch,rate", [(1, 0.5), (3, 0.2), (13, 0.3), (9, 0.9)])
def test_training_scales_kept_elements(batch: int, rate: float) -> None:
    rng = np.random.default_rng(batch)
    run = run_op(DropoutOp(rate), [_nonzero(rng, batch, 4, 5)])
    x, y, g, dx = run.inputs[0], run.outputs[0], run.output_grads[0], run.input_grads[0]
    keep = y != 0
    scale = np.float32(1.0 / (1.0 - rate))
    np.testing.assert_allclose(y, x * keep * scale, rtol=1e-6)
    np.testing.assert_allclose(dx, g * keep * scale, rtol=1e-6)


def test_kept_fraction_near_one_minus_rate() -> None:
    rng = np.random.default_rng(0)
    for rate in (0.1, 0.5, 0.8):
        run = run_op(DropoutOp(rate), [_nonzero(rng, 64, 2048)])
        kept = float((run.outputs[0] != 0).mean())  # 131072 draws: std < 0.0015
        assert abs(kept - (1.0 - rate)) < 0.01, (rate, kept)
        keep = run.outputs[0] != 0
        np.testing.assert_allclose(run.input_grads[0],
                                   run.output_grads[0] * keep / np.float32(1 - rate), rtol=1e-6)


def test_mask_independent_of_batch_split() -> None:
    rng = np.random.default_rng(3)
    x = _nonzero(rng, 13, 3, 4)
    masks = []
    for degree in (1, 2, 3, 5, 13):
        run = run_op(DropoutOp(0.4), [x], seed=11, executor=partial(FixedSplitExecutor, degree=degree))
        masks.append(run.outputs[0] != 0)
    for m in masks[1:]:
        np.testing.assert_array_equal(m, masks[0])
    assert 0 < masks[0].mean() < 1


def test_kernel_pieces_equal_whole() -> None:
    """The kernel run serially over any pieces (also split on a non-batch dim) with their origins
    reproduces the whole-tensor mask."""
    rng = np.random.default_rng(4)
    x = _nonzero(rng, 7, 6, 5)
    kw = {"seed": 123, "salt": 9, "rate": 0.5}
    for noise in ("7,6,5", "7,1,5", "1,6,1"):
        whole_y, whole_m = np.empty_like(x), np.empty_like(x)
        dropout_forward(x=x, y=whole_y, mask=whole_m, origin=(0, 0, 0), noise=noise, **kw)
        y = np.empty_like(x)
        m = np.empty_like(x)
        for b0, b1, c0, c1 in [(0, 3, 0, 4), (0, 3, 4, 6), (3, 7, 0, 1), (3, 7, 1, 6)]:
            piece_y, piece_m = np.empty_like(x[b0:b1, c0:c1]), np.empty_like(x[b0:b1, c0:c1])
            dropout_forward(x=x[b0:b1, c0:c1], y=piece_y, mask=piece_m, origin=(b0, c0, 0),
                            noise=noise, **kw)
            y[b0:b1, c0:c1], m[b0:b1, c0:c1] = piece_y, piece_m
        np.testing.assert_array_equal(y, whole_y)
        np.testing.assert_array_equal(m, whole_m)
        assert set(np.unique(m)) == {0.0, 2.0}


def test_new_mask_each_step_and_salt() -> None:
    rng = np.random.default_rng(5)
    x = _nonzero(rng, 9, 50)
    g = ComputationGraph()
    i = g.add_input(TensorShape((None, 50)), "x")
    (a,) = g.add_node(DropoutOp(0.5, salt=1), [i], "a")
    (b,) = g.add_node(DropoutOp(0.5, salt=2), [i], "b")
    (c,) = g.add_node(DropoutOp(0.5, salt=1), [i], "c")
    ex = GraphExecutor(g, [a, b, c], seed=0, input_grads=True)
    grads = [np.ones_like(x)] * 3
    first = [o != 0 for o in ex.gradients({i: x}, grads)[0]]
    second = [o != 0 for o in ex.gradients({i: x}, grads)[0]]
    assert not np.array_equal(first[0], second[0]), "same mask in two steps"
    assert not np.array_equal(first[0], first[1]), "two layers share a mask"
    assert not np.array_equal(first[0], first[2]), "per-launch seeds differ, so masks should too"


def test_noise_shape_broadcasts() -> None:
    rng = np.random.default_rng(6)
    x = _nonzero(rng, 13, 8, 6)
    run = run_op(DropoutOp(0.5, (None, 1, 6)), [x])
    keep = run.outputs[0] != 0
    assert (keep == keep[:, :1, :]).all()                     # one decision per (sample, feature)
    np.testing.assert_allclose(run.input_grads[0], run.output_grads[0] * keep * 2, rtol=1e-6)
    run = run_op(DropoutOp(0.5, (1, 8, 1)), [x])
    keep = run.outputs[0] != 0
    assert (keep == keep[:1, :, :1]).all()                    # shared by all samples and features
    assert 0 < keep.mean() < 1


@pytest.mark.parametrize("batch", [1, 13])
def test_identity_at_inference(batch: int) -> None:
    rng = np.random.default_rng(7)
    run = run_op(DropoutOp(0.5), [randn(rng, batch, 5)], training=False)
    np.testing.assert_array_equal(run.outputs[0], run.inputs[0])
    np.testing.assert_array_equal(run.input_grads[0], run.output_grads[0])


def test_rate_zero_is_identity() -> None:
    rng = np.random.default_rng(8)
    run = run_op(DropoutOp(0.0), [randn(rng, 3, 5)])
    np.testing.assert_array_equal(run.outputs[0], run.inputs[0])


def test_keep_mask_is_broadcastable() -> None:
    m = keep_mask((4, 3, 2), (8, 0, 0), (20, 1, 2), seed=1, salt=0, rate=0.5)
    assert m.shape == (4, 1, 2)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_rate_out_of_range(rate: float) -> None:
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        Dropout(rate)
    with pytest.raises(OperatorError, match=r"rate must be in \[0, 1\)"):
        DropoutOp(rate)


def test_dropout_layer_errors() -> None:
    with pytest.raises(ValueError, match="rate must be a number"):
        Dropout("0.5")
    with pytest.raises(ValueError, match="positive integers or None"):
        Dropout(0.5, noise_shape=(None, 0))
    with pytest.raises(ValueError, match="seed must be an integer"):
        Dropout(0.5, seed="abc")
    with pytest.raises(ValueError, match="does not broadcast to the input"):
        Dropout(0.5, noise_shape=(None, 3, 5))(Input((4, 5)))
    with pytest.raises(ValueError, match="one entry per input dimension"):
        Dropout(0.5, noise_shape=(1, 5))(Input((4, 5)))
    with pytest.raises(ValueError, match="floating-point"):
        Dropout(0.5)(Input((4,), dtype="int64"))


def test_dropout_layer() -> None:
    layer = Dropout(0.25, noise_shape=[None, 1], seed=42)
    assert layer(Input((4,))).shape == (None, 4)
    assert layer.op == DropoutOp(0.25, (None, 1), 42)
    assert layer.get_config()["rate"] == 0.25
