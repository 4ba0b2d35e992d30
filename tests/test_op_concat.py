"""Concatenate along non-batch axes vs PyTorch, and its shape errors."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from op_check import FixedSplitExecutor, check_op, randn
from unity_legion import keras
from unity_legion.keras.layers import Concatenate, Dense, Flatten, Input, Split
from unity_legion.operators.concat import Concat


@pytest.mark.parametrize("axis,sizes,batch", [
    (1, [(2, 5), (3, 5)], 13),
    (2, [(4, 1), (4, 3), (4, 2)], 3),
    (-1, [(4, 2), (4, 5)], 1),
    (-2, [(1, 3), (6, 3), (2, 3)], 9),
])
def test_concat_rank3(axis: int, sizes: list[tuple[int, int]], batch: int) -> None:
    rng = np.random.default_rng(batch)
    xs = [randn(rng, batch, *s) for s in sizes]
    run = check_op(Concat(axis), xs, lambda *ts: torch.cat(ts, axis))
    assert run.outputs[0].shape[axis] == sum(s[axis] for s in [x.shape for x in xs])


def test_concat_rank2_single_and_many() -> None:
    rng = np.random.default_rng(0)
    check_op(Concat(), [randn(rng, 13, 4)], lambda t: torch.cat([t], -1))
    xs = [randn(rng, 13, k) for k in (1, 2, 3, 4)]
    check_op(Concat(1), xs, lambda *ts: torch.cat(ts, 1))


def test_concat_layer() -> None:
    out = Concatenate()([Input((3, 2)), Input((3, 5))])
    assert out.shape == (None, 3, 7)
    assert Concatenate(axis=1)([Input((3, 2)), Input((4, 2))]).shape == (None, 7, 2)


def test_concat_errors() -> None:
    with pytest.raises(ValueError, match="batch axis"):
        Concatenate(axis=0)([Input((3,)), Input((3,))])
    with pytest.raises(ValueError, match="batch axis"):
        Concatenate(axis=-3)([Input((3, 2)), Input((3, 2))])
    with pytest.raises(ValueError, match="axis 3 is out of range for a tensor of rank 3"):
        Concatenate(axis=3)([Input((3, 2)), Input((3, 2))])
    with pytest.raises(ValueError, match=r"except the concatenation axis 2, got \(None, 3, 2\), "
                                         r"\(None, 4, 2\)"):
        Concatenate()([Input((3, 2)), Input((4, 2))])
    with pytest.raises(ValueError, match="same rank"):
        Concatenate()([Input((3, 2)), Input((3,))])
    with pytest.raises(ValueError, match="different dtypes"):
        Concatenate()([Input((3,)), Input((3,), dtype="float64")])
    with pytest.raises(ValueError, match="axis must be an integer"):
        Concatenate(axis="last")
    with pytest.raises(ValueError, match="takes a list of inputs"):
        Concatenate()(Input((3,)))


@pytest.mark.parametrize("axis,batch,degree", [(1, 7, 3), (2, 13, 4), (3, 5, 5), (-1, 10, 4),
                                               (-3, 3, 2), (-2, 9, 3)])
def test_concat_rank4_every_axis_forced_batch_splits(axis: int, batch: int, degree: int) -> None:
    """Every non-batch axis of rank-4 inputs with uneven sizes along it, under uneven batch
    splits (more pieces than processors)."""
    rng = np.random.default_rng(batch)
    base = [2, 3, 4]
    shapes = []
    for k in (1, 3, 2):
        s = list(base)
        s[axis % 4 - 1] = k
        shapes.append((batch, *s))
    check_op(Concat(axis), [randn(rng, *s) for s in shapes], lambda *ts: torch.cat(ts, axis),
             executor=partial(FixedSplitExecutor, degree=degree))


def test_concat_same_tensor_twice() -> None:
    """One tensor fed to two inputs: its gradient is the sum of both slabs' gradients."""
    rng = np.random.default_rng(3)
    check_op(Concat(1), [randn(rng, 7, 3, 2)], lambda t: torch.cat([t, t], 1), input_ids=[0, 0],
             executor=partial(FixedSplitExecutor, degree=3))


def test_split_then_concatenate_in_a_trained_model() -> None:
    """Split a sequence, concatenate the parts in another order on the feature axis, Dense on
    top: predict matches numpy/torch, one SGD step matches torch, fit stays finite."""
    rng = np.random.default_rng(4)
    inp = Input((4, 3))
    a, b = Split([1, 3], axis=1)(inp)
    b1, b2 = Split([2, 1], axis=1)(b)
    joined = Concatenate(axis=2)([b2, a])                        # (None, 1, 6)
    cat_seq = Concatenate(axis=1)([b1, a, b2])                   # (None, 4, 3); a used twice
    dense = Dense(2)
    model = keras.Model(inp, [dense(Flatten()(joined)), cat_seq])
    x, y = randn(rng, 11, 4, 3), randn(rng, 11, 2)
    kernel, bias = dense.get_weights()
    out, seq = model.predict(x, batch_size=4, verbose=0)
    ref_joined = np.concatenate([x[:, 3:4], x[:, 0:1]], axis=2)
    np.testing.assert_allclose(out, ref_joined.reshape(11, 6) @ kernel + bias, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_array_equal(seq, np.concatenate([x[:, 1:3], x[:, 0:1], x[:, 3:4]], axis=1))

    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=["mse", "mse"], loss_weights=[1.0, 0.0])
    model.train_on_batch(x, [y, np.zeros((11, 4, 3), np.float32)])
    tk, tb = torch.tensor(kernel, requires_grad=True), torch.tensor(bias, requires_grad=True)
    pred = torch.from_numpy(ref_joined.reshape(11, 6)) @ tk + tb
    torch.mean((pred - torch.from_numpy(y)) ** 2).backward()
    np.testing.assert_allclose(dense.get_weights()[0], kernel - 0.1 * tk.grad.numpy(), rtol=1e-4,
                               atol=1e-6)
    history = model.fit(x, [y, x], batch_size=4, epochs=2, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
