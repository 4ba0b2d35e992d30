"""Concatenate along non-batch axes vs PyTorch, and its shape errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from op_check import check_op, randn
from unity_legion.keras.layers import Concatenate, Input
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
