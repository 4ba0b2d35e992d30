"""The Activation operator (and its Keras layer) vs PyTorch for every function."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from op_check import check_op, randn
from unity_legion.keras.layers import Activation, Input
from unity_legion.operators.activation import NAMES
from unity_legion.operators.activation import Activation as ActivationOp

TORCH_FN = {"linear": lambda t: t * 1, "relu": torch.relu, "tanh": torch.tanh,
            "sigmoid": torch.sigmoid, "gelu": F.gelu, "softmax": lambda t: torch.softmax(t, -1)}


def test_every_activation_has_a_reference() -> None:
    assert set(NAMES) == set(TORCH_FN)


@pytest.mark.parametrize("fn", sorted(TORCH_FN))
@pytest.mark.parametrize("shape", [(13, 6), (3, 4, 5)])
def test_activation_matches_torch(fn: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(fn) + len(shape))
    check_op(ActivationOp(fn), [randn(rng, *shape) * 3], TORCH_FN[fn])


def test_activation_layer() -> None:
    out = Activation("relu")(Input((4, 2)))
    assert out.shape == (None, 4, 2)
    layer = Activation(None)
    assert layer.activation == "linear"
    assert layer.get_config()["activation"] == "linear"


def test_activation_layer_errors() -> None:
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        Activation("swish")
    with pytest.raises(ValueError, match="needs an input of rank >= 2"):
        Activation("softmax")(Input(batch_size=None, shape=()))
    with pytest.raises(ValueError, match="floating-point"):
        Activation("relu")(Input((3,), dtype="int32"))
