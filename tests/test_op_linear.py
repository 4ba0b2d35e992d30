"""Linear (Dense) through the executor vs PyTorch: every fused activation, with and without bias,
rank-2 and rank-3 inputs, uneven batch splits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from op_check import check_op, randn
from unity_legion.operators.base import OperatorError
from unity_legion.operators.linear import Linear

TORCH_ACT = {"linear": lambda t: t, "relu": torch.relu, "tanh": torch.tanh,
             "sigmoid": torch.sigmoid, "gelu": F.gelu, "softmax": lambda t: torch.softmax(t, -1)}
BATCHES = (1, 3, 9, 13)
CASES = [(act, bias, rank, BATCHES[i % len(BATCHES)])
         for i, (act, bias, rank) in enumerate(itertools.product(sorted(TORCH_ACT), (True, False),
                                                                 (2, 3)))]


@pytest.mark.parametrize("act,use_bias,rank,batch", CASES)
def test_linear_matches_torch(act: str, use_bias: bool, rank: int, batch: int) -> None:
    rng = np.random.default_rng(batch * 7 + rank)
    shape = (batch, 7) if rank == 2 else (batch, 3, 7)

    def ref(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        z = x @ kernel
        return TORCH_ACT[act](z + bias if bias is not None else z)

    run = check_op(Linear(5, use_bias, activation=act), [randn(rng, *shape)], ref)
    assert run.outputs[0].shape == shape[:-1] + (5,)
    assert set(run.weight_grads) == ({"kernel", "bias"} if use_bias else {"kernel"})


def test_linear_rejects_bad_arguments() -> None:
    with pytest.raises(OperatorError, match="units must be a positive integer"):
        Linear(0)
    with pytest.raises(ValueError, match="unknown activation"):
        Linear(3, activation="swish")
