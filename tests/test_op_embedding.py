"""Embedding vs PyTorch (repeated indices in backward), index validation, and the Keras layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

from op_check import check_op, run_op
from unity_legion.keras.layers import Embedding, Input
from unity_legion.operators.base import OperatorError
from unity_legion.operators.embedding import Embedding as EmbeddingOp
from unity_legion.pcg.tensor import DataType


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
