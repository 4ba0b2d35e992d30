"""Flatten and Reshape vs PyTorch, and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from op_check import check_op, randn
from unity_legion.keras.layers import Flatten, Input, Reshape
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
