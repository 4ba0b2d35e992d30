"""Add, Subtract, Multiply (Keras merge layers) vs PyTorch, and their shape errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from op_check import check_op, randn
from unity_legion.keras.layers import Add, Input, Multiply, Subtract
from unity_legion.operators.base import OperatorError
from unity_legion.operators.elementwise import Add as AddOp
from unity_legion.operators.elementwise import Multiply as MultiplyOp
from unity_legion.operators.elementwise import Subtract as SubtractOp
from unity_legion.types import DataType, TensorShape


@pytest.mark.parametrize("batch,n", [(1, 2), (3, 3), (13, 2), (9, 4)])
def test_add(batch: int, n: int) -> None:
    rng = np.random.default_rng(batch + n)
    xs = [randn(rng, batch, 4, 3) for _ in range(n)]
    check_op(AddOp(), xs, lambda *ts: sum(ts[1:], ts[0]))


@pytest.mark.parametrize("batch", [1, 13])
def test_subtract(batch: int) -> None:
    rng = np.random.default_rng(batch)
    check_op(SubtractOp(), [randn(rng, batch, 5), randn(rng, batch, 5)], lambda a, b: a - b)


@pytest.mark.parametrize("batch,n", [(3, 2), (13, 3), (9, 4)])
def test_multiply(batch: int, n: int) -> None:
    rng = np.random.default_rng(batch * n)
    xs = [randn(rng, batch, 2, 5) for _ in range(n)]

    def ref(*ts: torch.Tensor) -> torch.Tensor:
        out = ts[0]
        for t in ts[1:]:
            out = out * t
        return out

    run = check_op(MultiplyOp(), xs, ref)
    assert run.outputs[0].dtype == np.float32


def test_multiply_with_zeros_has_exact_gradients() -> None:
    rng = np.random.default_rng(5)
    a, b = randn(rng, 9, 6), randn(rng, 9, 6)
    a[::2] = 0.0  # a quotient-based gradient would produce NaN here
    check_op(MultiplyOp(), [a, b], lambda a, b: a * b)


def test_same_tensor_twice_accumulates_gradients() -> None:
    rng = np.random.default_rng(2)
    a = randn(rng, 13, 5)
    check_op(AddOp(), [a], lambda t: t + t, input_ids=[0, 0])
    check_op(MultiplyOp(), [a], lambda t: t * t, input_ids=[0, 0])
    check_op(SubtractOp(), [a], lambda t: t - t, input_ids=[0, 0])


def test_merge_layers_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"same shape, got \(None, 3\), \(None, 4\)"):
        Add()([Input((3,)), Input((4,))])
    with pytest.raises(ValueError, match=r"same shape.*\(None, 2, 3\)"):
        Multiply()([Input((2, 3)), Input((3, 2)), Input((2, 3))])
    with pytest.raises(ValueError, match="exactly 2 inputs, got 3"):
        Subtract()([Input((3,)), Input((3,)), Input((3,))])
    with pytest.raises(ValueError, match="at least 2 inputs, got 1"):
        Add()([Input((3,))])
    with pytest.raises(ValueError, match="takes a list of inputs"):
        Add()(Input((3,)))
    with pytest.raises(ValueError, match="different dtypes"):
        Add()([Input((3,)), Input((3,), dtype="float64")])
    with pytest.raises(OperatorError, match="floating-point"):
        AddOp().infer_outputs([TensorShape((None, 2), DataType.INT32)] * 2)


def test_merge_layers_output_shape() -> None:
    a, b = Input((4, 2)), Input((4, 2))
    assert Add()([a, b]).shape == (None, 4, 2)
    assert Subtract()([a, b]).shape == (None, 4, 2)
    assert Multiply()([a, b, a]).shape == (None, 4, 2)
