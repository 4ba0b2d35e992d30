"""Embedding vs PyTorch (repeated indices in backward), the bag mode (combiner "sum"/"mean") vs
F.embedding_bag, index validation, and the Keras layer (alone and in small trained models)."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from op_check import FixedSplitExecutor, check_op, randn, run_op
from unity_legion import keras
from unity_legion.keras.layers import Concatenate, Dense, Embedding, Flatten, Input
from unity_legion.operators.base import OperatorError
from unity_legion.operators.embedding import Embedding as EmbeddingOp
from unity_legion.types import DataType


@pytest.mark.parametrize("dtype,shape", [(np.int32, (13, 7)), (np.int64, (3, 2, 5)),
                                         (np.int64, (1, 4)), (np.int32, (9,))])
def test_embedding_matches_torch(dtype: type, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape))
    idx = rng.integers(0, 5, size=shape).astype(dtype)
    idx.flat[:3] = 4  # certainly repeated indices: the weight gradient must accumulate them
    run = check_op(EmbeddingOp(5, 3), [idx],
                   lambda i, embeddings: F.embedding(i.long(), embeddings))
    assert run.outputs[0].shape == shape + (3,)
    assert run.input_grads[0] is None


def test_embedding_float64_table() -> None:
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 11, size=(13, 6)).astype(np.int64)
    run = check_op(EmbeddingOp(11, 4, dtype=DataType.FLOAT64), [idx],
                   lambda i, embeddings: F.embedding(i.long(), embeddings), rtol=1e-12, atol=1e-12)
    assert run.outputs[0].dtype == np.float64


def test_float_indices_are_cast_and_get_zero_gradient() -> None:
    rng = np.random.default_rng(2)
    idx = rng.integers(0, 6, size=(9, 4)).astype(np.float32)
    run = run_op(EmbeddingOp(6, 2), [idx])
    np.testing.assert_array_equal(run.outputs[0], run.weights["embeddings"][idx.astype(np.int64)])
    np.testing.assert_array_equal(run.input_grads[0], np.zeros_like(idx))


def test_check_input_values() -> None:
    op = EmbeddingOp(10, 4)
    op.check_input_values(0, np.array([[0, 9], [3, 3]], dtype=np.int32))
    with pytest.raises(OperatorError, match=r"index 10 is out of range \[0, 10\) \(input_dim=10\)"):
        op.check_input_values(0, np.array([[0, 10]]))
    with pytest.raises(OperatorError, match=r"index -1 is out of range \[0, 10\)"):
        op.check_input_values(0, np.array([[-1, 2]], dtype=np.int64))
    with pytest.raises(OperatorError, match="NaN or infinity"):
        op.check_input_values(0, np.array([[np.nan]]))
    with pytest.raises(OperatorError, match="expects integer indices"):
        op.check_input_values(0, np.array([["a"]]))
    op.check_input_values(0, np.zeros((0, 3), dtype=np.int32))


def test_embedding_layer() -> None:
    layer = Embedding(10, 4)
    out = layer(Input((3,), dtype="int32"))
    assert out.shape == (None, 3, 4)
    assert out.dtype == "float32"
    (spec,) = layer.op.weights(layer.input_shapes)
    assert spec.name == "embeddings" and spec.shape.dims == (10, 4)
    assert spec.initializer == "random_uniform"
    assert layer.count_params() == 40
    assert Embedding(5, 2, embeddings_initializer="normal").embeddings_initializer == "random_normal"


def test_embedding_layer_errors() -> None:
    with pytest.raises(ValueError, match="input_dim must be a positive integer"):
        Embedding(0, 4)
    with pytest.raises(ValueError, match="output_dim must be a positive integer"):
        Embedding(4, 2.5)
    with pytest.raises(ValueError, match="unknown initializer 'bogus'"):
        Embedding(4, 2, embeddings_initializer="bogus")
    with pytest.raises(ValueError, match="mask_zero=True is not supported"):
        Embedding(4, 2, mask_zero=True)
    with pytest.raises(ValueError, match="expects integer indices, got bool"):
        Embedding(4, 2)(Input((3,), dtype="bool"))
    with pytest.raises(OperatorError, match="floating-point"):
        EmbeddingOp(4, 2, dtype=DataType.INT32)


# ---------------------------------------------------------------------------------------------
# Bag mode: combiner="sum" / "mean" over the last input axis
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("dtype,shape,degree", [(np.int64, (13, 5), None), (np.int32, (3, 1), None),
                                                (np.int64, (1, 4), None), (np.int32, (7, 3), 3),
                                                (np.int64, (10, 7), 4)])
def test_embedding_bag_matches_torch(mode: str, dtype: type, shape: tuple[int, int],
                                     degree: int | None) -> None:
    rng = np.random.default_rng(shape[0] * 10 + shape[1])
    idx = rng.integers(0, 6, size=shape).astype(dtype)
    idx.flat[:2] = 5  # a repeated index (within the first bag when bags have 2+ entries)
    kwargs = {} if degree is None else {"executor": partial(FixedSplitExecutor, degree=degree)}
    run = check_op(EmbeddingOp(6, 3, combiner=mode), [idx],
                   lambda i, embeddings: F.embedding_bag(i.long(), embeddings, mode=mode), **kwargs)
    assert run.outputs[0].shape == (shape[0], 3)
    assert run.input_grads[0] is None


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_embedding_bag_rank3_input(mode: str) -> None:
    """(batch, fields, bag) -> (batch, fields, output_dim): the bag is always the last axis."""
    rng = np.random.default_rng(4)
    idx = rng.integers(0, 7, size=(5, 3, 4)).astype(np.int64)

    def ref(i: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        bags = F.embedding_bag(i.long().reshape(-1, 4), embeddings, mode=mode)
        return bags.reshape(5, 3, 2)

    run = check_op(EmbeddingOp(7, 2, combiner=mode), [idx], ref,
                   executor=partial(FixedSplitExecutor, degree=2))
    assert run.outputs[0].shape == (5, 3, 2)


def test_embedding_bag_float64_and_float_indices() -> None:
    rng = np.random.default_rng(5)
    idx = rng.integers(0, 9, size=(11, 3)).astype(np.int64)
    check_op(EmbeddingOp(9, 4, dtype=DataType.FLOAT64, combiner="mean"), [idx],
             lambda i, embeddings: F.embedding_bag(i.long(), embeddings, mode="mean"),
             rtol=1e-12, atol=1e-12)
    fidx = idx.astype(np.float32)
    run = run_op(EmbeddingOp(9, 4, combiner="sum"), [fidx])
    np.testing.assert_allclose(run.outputs[0], run.weights["embeddings"][idx].sum(axis=1),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(run.input_grads[0], np.zeros_like(fidx))


def test_embedding_bag_costs() -> None:
    from unity_legion.types import TensorShape
    s = TensorShape((8, 5), DataType.INT64)
    op = EmbeddingOp(100, 4, combiner="sum")
    assert op.infer_outputs([s])[0].dims == (8, 4)
    assert op.flops([s]) == 8 * 5 * 4
    assert op.bytes_accessed([s]) == 8 * 5 * 8 + 8 * 5 * 4 * 4 + 8 * 4 * 4
    assert EmbeddingOp(100, 4).flops([s]) == 0


def _dlrm_like(combiner: str | None, bag: int) -> tuple[keras.Model, Dense, Embedding]:
    dense_in = Input((3,))
    ids = Input((bag,), dtype="int64")
    emb = Embedding(11, 4, combiner=combiner)
    vec = emb(ids)
    if combiner is None:
        vec = Flatten()(vec)
    top = Dense(2)
    return keras.Model([dense_in, ids], top(Concatenate()([dense_in, vec]))), top, emb


@pytest.mark.parametrize("combiner,bag", [("sum", 3), ("mean", 2), ("sum", 1), (None, 2)])
def test_embedding_in_a_trained_model(combiner: str | None, bag: int) -> None:
    """Dense features and a (bag of) looked-up vector(s) concatenated into a Dense: predict and one
    SGD step match torch (the table's gradient included); fit runs with finite loss."""
    rng = np.random.default_rng(bag)
    model, top, emb = _dlrm_like(combiner, bag)
    xd = randn(rng, 13, 3)
    ids = rng.integers(0, 11, size=(13, bag)).astype(np.int64)
    ids[:3, 0] = 7  # the same row in several samples
    y = randn(rng, 13, 2)
    (table,) = emb.get_weights()
    kernel, bias = top.get_weights()
    assert table.shape == (11, 4) and kernel.shape == (3 + 4 * (bag if combiner is None else 1), 2)

    t_table = torch.tensor(table, requires_grad=True)
    t_kernel = torch.tensor(kernel, requires_grad=True)
    t_bias = torch.tensor(bias, requires_grad=True)
    t_ids = torch.from_numpy(ids)
    vec = (F.embedding(t_ids, t_table).reshape(13, -1) if combiner is None
           else F.embedding_bag(t_ids, t_table, mode=combiner))
    pred = torch.cat([torch.from_numpy(xd), vec], 1) @ t_kernel + t_bias
    np.testing.assert_allclose(model.predict([xd, ids], batch_size=5, verbose=0),
                               pred.detach().numpy(), rtol=1e-4, atol=1e-5)

    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    loss = model.train_on_batch([xd, ids], y)
    t_loss = torch.mean((pred - torch.from_numpy(y)) ** 2)
    t_loss.backward()
    np.testing.assert_allclose(loss, t_loss.item(), rtol=1e-4)
    np.testing.assert_allclose(emb.get_weights()[0], table - 0.5 * t_table.grad.numpy(),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(top.get_weights()[0], kernel - 0.5 * t_kernel.grad.numpy(),
                               rtol=1e-4, atol=1e-6)

    history = model.fit([xd, ids], y, batch_size=4, epochs=2, verbose=0)
    assert all(np.isfinite(history.history["loss"]))


def test_out_of_range_bag_index_is_reported_before_launch() -> None:
    model, _, emb = _dlrm_like("sum", 3)
    model.compile(optimizer="sgd", loss="mse")
    ids = np.zeros((5, 3), dtype=np.int64)
    ids[4, 2] = 11
    before = emb.get_weights()[0]
    with pytest.raises(ValueError, match=r"to layer '[a-z_0-9]+': embedding: input index 11 is out "
                                         r"of range \[0, 11\)"):
        model.fit([np.zeros((5, 3), np.float32), ids], np.zeros((5, 2), np.float32), verbose=0)
    with pytest.raises(ValueError, match=r"input index -2 is out of range"):
        model.predict([np.zeros((5, 3), np.float32), ids - 2], verbose=0)
    np.testing.assert_array_equal(emb.get_weights()[0], before)


def test_embedding_bag_layer_and_errors() -> None:
    layer = Embedding(10, 4, combiner="mean", name="bag")
    assert layer(Input((6,), dtype="int64")).shape == (None, 4)
    assert layer.get_config()["combiner"] == "mean"
    assert Embedding(10, 4).get_config()["combiner"] is None
    assert Embedding(10, 4, combiner="sum")(Input((2, 6), dtype="int32")).shape == (None, 2, 4)
    with pytest.raises(ValueError, match=r"combiner must be one of \(None, 'sum', 'mean'\), got "
                                         r"'max'"):
        Embedding(10, 4, combiner="max")
    with pytest.raises(ValueError, match=r"reduces the last input axis \(the bag\), so the input "
                                         r"needs shape \(batch, ..., bag\)"):
        Embedding(10, 4, combiner="sum")(Input((), dtype="int64"))
    with pytest.raises(OperatorError, match="combiner must be one of"):
        EmbeddingOp(10, 4, combiner="sqrtn")
