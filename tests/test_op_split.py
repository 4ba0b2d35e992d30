"""Split vs PyTorch (torch.split): equal counts, uneven size lists, a -1 size, every non-batch
axis, forced uneven batch splits, unused outputs (zero gradient), the Keras layer in models with
several outputs, and its errors."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from op_check import FixedSplitExecutor, check_op_outputs, randn
from unity_legion import keras
from unity_legion.keras.layers import Dense, Flatten, Input, Reshape, Split
from unity_legion.operators.base import OperatorError
from unity_legion.operators.split import Split as SplitOp
from unity_legion.types import TensorShape


def _torch_split(sizes: list[int], axis: int):
    return lambda t: torch.split(t, sizes, dim=axis)


@pytest.mark.parametrize("shape,splits,axis,sizes", [
    ((13, 6), 3, 1, [2, 2, 2]),
    ((3, 7), [2, 5], -1, [2, 5]),
    ((7, 5, 3), [1, 4], 1, [1, 4]),
    ((1, 5, 9), [4, -1, 2], 2, [4, 3, 2]),
    ((9, 5, 3), [1, 1, 1], -1, [1, 1, 1]),
    ((3, 4, 5, 3), [3, -1], -2, [3, 2]),
    ((13, 2, 3, 5), 2, 1, [1, 1]),
    ((3, 5), 1, 1, [5]),
])
def test_split_matches_torch(shape: tuple[int, ...], splits, axis: int, sizes: list[int]) -> None:
    rng = np.random.default_rng(sum(shape))
    run = check_op_outputs(SplitOp(splits, axis), [randn(rng, *shape)], _torch_split(sizes, axis))
    a = axis % len(shape)
    assert [o.shape[a] for o in run.outputs] == sizes


@pytest.mark.parametrize("batch,degree", [(7, 3), (13, 4), (5, 5), (3, 2)])
def test_split_forced_batch_splits(batch: int, degree: int) -> None:
    rng = np.random.default_rng(batch)
    check_op_outputs(SplitOp([2, 1, 4], 2), [randn(rng, batch, 3, 7)], _torch_split([2, 1, 4], 2),
                     executor=partial(FixedSplitExecutor, degree=degree))


@pytest.mark.parametrize("used", [[1], [0, 2], [2]])
def test_split_unused_outputs_get_zero_gradient(used: list[int]) -> None:
    rng = np.random.default_rng(3)
    x = randn(rng, 7, 3, 5)
    run = check_op_outputs(SplitOp([2, 2, 1], 2), [x], _torch_split([2, 2, 1], 2), used=used,
                           executor=partial(FixedSplitExecutor, degree=3))
    starts = [0, 2, 4, 5]
    for k in range(3):
        slab = run.input_grads[0][:, :, starts[k]:starts[k + 1]]
        if k in used:
            np.testing.assert_array_equal(slab, run.output_grads[used.index(k)])
        else:
            assert not slab.any(), f"unused output {k} must contribute a zero gradient"


def test_split_layer_shapes_and_config() -> None:
    a, b = Split([1, -1], axis=1)(Input((5, 3)))
    assert a.shape == (None, 1, 3) and b.shape == (None, 4, 3)
    parts = Split(3)(Input((2, 6)))
    assert [p.shape for p in parts] == [(None, 2, 2)] * 3
    (one,) = Split(1, axis=-2)(Input((4, 2)))   # always a list, even of one tensor
    assert one.shape == (None, 4, 2)
    layer = Split((2, 3), name="my_split")
    assert layer.get_config() == {"name": "my_split", "trainable": True,
                                  "num_or_size_splits": [2, 3], "axis": -1}
    assert layer.num_inputs == 1 and layer.count_params() == 0


def _torch_dense(x: torch.Tensor, kernel: np.ndarray, bias: np.ndarray) -> torch.Tensor:
    return x @ torch.from_numpy(kernel) + torch.from_numpy(bias)


def test_split_in_a_model_with_an_unused_output() -> None:
    """Only the first part feeds a Dense; the rest is unused. predict, one SGD step and fit all
    match torch / stay finite."""
    rng = np.random.default_rng(5)
    x_in = Input((5, 4))
    first, _rest = Split([2, -1], axis=1)(x_in)
    dense = Dense(3)
    model = keras.Model(x_in, dense(Flatten()(first)))
    x = randn(rng, 13, 5, 4)
    y = randn(rng, 13, 3)
    kernel, bias = dense.get_weights()
    assert kernel.shape == (8, 3) and bias.shape == (3,)

    tk = torch.tensor(kernel, requires_grad=True)
    tb = torch.tensor(bias, requires_grad=True)
    pred = torch.from_numpy(x)[:, :2, :].reshape(13, -1) @ tk + tb
    np.testing.assert_allclose(model.predict(x, batch_size=5, verbose=0), pred.detach().numpy(),
                               rtol=1e-4, atol=1e-5)

    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    loss = model.train_on_batch(x, y)
    t_loss = torch.mean((pred - torch.from_numpy(y)) ** 2)
    t_loss.backward()
    np.testing.assert_allclose(loss, t_loss.item(), rtol=1e-4)
    new_kernel, new_bias = dense.get_weights()
    np.testing.assert_allclose(new_kernel, kernel - 0.1 * tk.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new_bias, bias - 0.1 * tb.grad.numpy(), rtol=1e-4, atol=1e-6)

    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert all(np.isfinite(history.history["loss"]))


def test_split_outputs_as_model_outputs() -> None:
    """Both parts are model outputs (one directly, one through a Dense): predict returns both,
    fit trains with one loss per output."""
    rng = np.random.default_rng(6)
    x_in = Input((7,))
    a, b = Split([3, 4])(x_in)
    dense = Dense(2, activation="tanh")
    model = keras.Model(x_in, [a, dense(b)])
    x = randn(rng, 9, 7)
    got_a, got_b = model.predict(x, batch_size=4, verbose=0)
    np.testing.assert_array_equal(got_a, x[:, :3])
    kernel, bias = dense.get_weights()
    np.testing.assert_allclose(got_b, np.tanh(x[:, 3:] @ kernel + bias), rtol=1e-4, atol=1e-5)
    model.compile(optimizer="adam", loss=["mse", "mse"])
    history = model.fit(x, [randn(rng, 9, 3), randn(rng, 9, 2)], batch_size=4, epochs=2, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    assert not np.allclose(dense.get_weights()[0], kernel)


def test_bert_style_first_token() -> None:
    """models/bert.py's use: the first token of a sequence, as (batch, hidden)."""
    rng = np.random.default_rng(7)
    x_in = Input((5, 3))
    first, _ = Split([1, 4], axis=1)(x_in)
    model = keras.Model(x_in, Reshape((3,))(first))
    x = randn(rng, 7, 5, 3)
    np.testing.assert_array_equal(model.predict(x, verbose=0), x[:, 0, :])


def test_split_errors() -> None:
    with pytest.raises(ValueError, match="does not divide into 4 equal parts"):
        Split(4)(Input((6,)))
    with pytest.raises(ValueError, match=r"sizes \[2, 3\] add up to 5, but axis 1 of input "
                                         r"\(None, 6\) has size 6"):
        Split([2, 3])(Input((6,)))
    with pytest.raises(ValueError, match="leave nothing for the -1 part"):
        Split([6, -1])(Input((6,)))
    with pytest.raises(ValueError, match="-1 only once"):
        Split([-1, 2, -1])
    with pytest.raises(ValueError, match="must be positive integers"):
        Split([2, 0])
    with pytest.raises(ValueError, match="must be positive integers"):
        Split([2.0, 4])
    with pytest.raises(ValueError, match="number of splits must be a positive integer"):
        Split(0)
    with pytest.raises(ValueError, match="positive integer or a non-empty list"):
        Split([])
    with pytest.raises(ValueError, match="positive integer or a non-empty list"):
        Split("2")
    with pytest.raises(ValueError, match="axis must be an integer"):
        Split(2, axis=1.0)
    with pytest.raises(ValueError, match="batch axis"):
        Split(2, axis=0)(Input((4,)))
    with pytest.raises(ValueError, match="batch axis"):
        Split(2, axis=-3)(Input((4, 2)))
    with pytest.raises(ValueError, match="axis 3 is out of range for a tensor of rank 3"):
        Split(2, axis=3)(Input((4, 2)))
    with pytest.raises(TypeError, match=r"Split: unknown argument\(s\) 'bogus'"):
        Split(2, bogus=1)
    with pytest.raises(OperatorError, match="needs a non-batch axis"):
        SplitOp(1).infer_outputs([TensorShape((None,))])


def test_sibling_outputs_keep_separate_names_and_metrics() -> None:
    """Two outputs of one Split layer as model outputs: each has its own name, loss and metric."""
    rng = np.random.default_rng(8)
    x_in = Input((5,))
    split = Split([2, 3], name="parts")
    a, b = split(x_in)
    model = keras.Model(x_in, [a, b])
    assert model.output_names == ["parts_0", "parts_1"]
    model.compile(optimizer="sgd", loss={"parts_0": "mse", "parts_1": "mse"}, metrics=["mae"])
    x = randn(rng, 6, 5)
    logs = model.evaluate(x, [np.zeros((6, 2), np.float32), np.zeros((6, 3), np.float32)],
                          verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["parts_0_mae"], np.abs(x[:, :2]).mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["parts_1_mae"], np.abs(x[:, 2:]).mean(), rtol=1e-5)
