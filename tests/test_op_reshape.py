"""Flatten and Reshape vs PyTorch, and their errors."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from op_check import FixedSplitExecutor, check_op, randn
from unity_legion import keras
from unity_legion.keras.layers import Dense, Flatten, Input, Reshape
from unity_legion.operators.base import OperatorError
from unity_legion.operators.reshape import Flatten as FlattenOp
from unity_legion.operators.reshape import Reshape as ReshapeOp


@pytest.mark.parametrize("shape", [(13,), (1, 6), (3, 4, 5), (9, 2, 3, 4)])
def test_flatten(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape))
    run = check_op(FlattenOp(), [randn(rng, *shape)], lambda t: t.reshape(shape[0], -1))
    assert run.outputs[0].shape == (shape[0], int(np.prod(shape[1:])))


@pytest.mark.parametrize("shape", [(13, 3, 4), (3, 2, 3, 4)])
def test_flatten_channels_first(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    perm = (0,) + tuple(range(2, len(shape))) + (1,)
    check_op(FlattenOp(channels_first=True), [randn(rng, *shape)],
             lambda t: t.permute(*perm).reshape(shape[0], -1))


@pytest.mark.parametrize("shape,target,expect", [
    ((13, 12), (3, 4), (3, 4)),
    ((3, 2, 6), (-1,), (12,)),
    ((9, 2, 6), (4, -1), (4, 3)),
    ((1, 24), (2, 3, -1), (2, 3, 4)),
])
def test_reshape(shape: tuple[int, ...], target: tuple[int, ...], expect: tuple[int, ...]) -> None:
    rng = np.random.default_rng(2)
    run = check_op(ReshapeOp(target), [randn(rng, *shape)],
                   lambda t: t.reshape((shape[0],) + expect))
    assert run.outputs[0].shape == (shape[0],) + expect


def test_layers_shapes() -> None:
    assert Flatten()(Input((2, 3, 4))).shape == (None, 24)
    assert Flatten(data_format="channels_first")(Input((2, 3))).shape == (None, 6)
    assert Reshape((4, -1))(Input((2, 6))).shape == (None, 4, 3)
    assert Reshape(target_shape=[6])(Input((2, 3))).shape == (None, 6)


def test_reshape_errors() -> None:
    with pytest.raises(ValueError, match=r"total size must be unchanged: input \(None, 4, 6\) has "
                                         r"24 values per sample, target_shape \(5, 5\) has 25"):
        Reshape((5, 5))(Input((4, 6)))
    with pytest.raises(ValueError, match="24 is not a multiple of 5"):
        Reshape((5, -1))(Input((4, 6)))
    with pytest.raises(ValueError, match="-1 only once"):
        Reshape((-1, -1))
    with pytest.raises(ValueError, match="positive integers"):
        Reshape((0, 3))
    with pytest.raises(ValueError, match="tuple of integers"):
        Reshape(None)
    with pytest.raises(OperatorError, match="positive integers"):
        ReshapeOp((2.5,))
    with pytest.raises(ValueError, match="data_format must be one of"):
        Flatten(data_format="nchw")


@pytest.mark.parametrize("shape,target,expect,degree", [
    ((7, 3, 10), (-1, 5), (6, 5), 3),
    ((13, 2, 3, 5), (5, -1, 3), (5, 2, 3), 4),
    ((5, 21), (7, 1, -1), (7, 1, 3), 5),
    ((3, 4, 1), (-1,), (4,), 2),
])
def test_reshape_minus_one_forced_batch_splits(shape: tuple[int, ...], target: tuple[int, ...],
                                               expect: tuple[int, ...], degree: int) -> None:
    """A -1 target under uneven batch splits: each piece reshapes its own samples."""
    rng = np.random.default_rng(degree)
    check_op(ReshapeOp(target), [randn(rng, *shape)], lambda t: t.reshape((shape[0],) + expect),
             executor=partial(FixedSplitExecutor, degree=degree))


def test_reshape_minus_one_in_a_trained_model() -> None:
    """(None, 6, 5) -> Reshape((-1, 3)) -> (None, 10, 3) -> Flatten -> Dense: predict and one SGD
    step match torch; fit stays finite."""
    rng = np.random.default_rng(8)
    inp = Input((6, 5))
    r = Reshape((-1, 3))(inp)
    assert r.shape == (None, 10, 3)
    dense = Dense(2)
    model = keras.Model(inp, dense(Flatten()(r)))
    x, y = randn(rng, 9, 6, 5), randn(rng, 9, 2)
    kernel, bias = dense.get_weights()
    tk, tb = torch.tensor(kernel, requires_grad=True), torch.tensor(bias, requires_grad=True)
    pred = torch.from_numpy(x).reshape(9, 10, 3).reshape(9, 30) @ tk + tb
    np.testing.assert_allclose(model.predict(x, batch_size=4, verbose=0), pred.detach().numpy(),
                               rtol=1e-4, atol=1e-5)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.train_on_batch(x, y)
    torch.mean((pred - torch.from_numpy(y)) ** 2).backward()
    np.testing.assert_allclose(dense.get_weights()[0], kernel - 0.1 * tk.grad.numpy(), rtol=1e-4,
                               atol=1e-6)
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert all(np.isfinite(history.history["loss"]))


def test_reshape_minus_one_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"cannot reshape input \(None, 3, 5\) \(15 values per "
                                         r"sample\) into target_shape \(-1, 4\): 15 is not a "
                                         r"multiple of 4"):
        Reshape((-1, 4))(Input((3, 5)))
    with pytest.raises(ValueError, match=r"target_shape \(-1, 3, -1\) may contain -1 only once"):
        Reshape((-1, 3, -1))
    with pytest.raises(OperatorError, match="-1 only once"):
        ReshapeOp((-1, -1))
    with pytest.raises(ValueError, match="positive integers and at most one -1"):
        Reshape((-2, 3))
    assert Reshape(-1)(Input((2, 3))).shape == (None, 6)
    assert Reshape([-1, 1])(Input((4,))).shape == (None, 4, 1)
    assert Reshape((-1,), name="r").get_config() == {"name": "r", "trainable": True,
                                                      "target_shape": (-1,)}
