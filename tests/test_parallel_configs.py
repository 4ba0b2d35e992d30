"""Every operator under every legal parallel configuration up to 4 points (batch, features,
heads, ...) computes what its serial run computes: outputs, input and weight gradients (1e-5)."""

from __future__ import annotations

import numpy as np
import pytest

from op_check import randn
from parallel_check import check_configs, legal_configs
from unity_legion.operators.linear import Linear

RNG = np.random.default_rng(0)

CASES = {
    "linear_bias": (Linear(6), [randn(RNG, 7, 5)]),
    "linear_no_bias_rank3": (Linear(5, use_bias=False), [randn(RNG, 3, 4, 6)]),
    "linear_relu": (Linear(7, activation="relu"), [randn(RNG, 5, 3)]),
    "linear_softmax": (Linear(4, activation="softmax"), [randn(RNG, 6, 3)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_legal_configuration_equals_serial(name: str) -> None:
    op, inputs = CASES[name]
    configs = check_configs(op, inputs)
    assert len(configs) >= 3


def test_linear_axes() -> None:
    assert {"sample", "out", "in"} == {a for c in legal_configs(Linear(6), [randn(RNG, 7, 5)])
                                       for a in c}
    # a fused activation cannot run on partial sums: no split of the input features
    assert all("in" not in c for c in legal_configs(Linear(6, activation="relu"),
                                                    [randn(RNG, 7, 5)]))
