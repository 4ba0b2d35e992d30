"""The seed that weights, shuffling and dropout are drawn from (keras.utils.set_random_seed).

A module of its own, below the model and its trainer, which both read it."""

from __future__ import annotations

# Weights are drawn from this seed unless keras.utils.set_random_seed() changes it. A fixed
# default keeps every rank of a multi-rank job on identical initial weights.
_GLOBAL_SEED = [1337]


def set_global_seed(seed: int) -> None:
    _GLOBAL_SEED[0] = int(seed)


def global_seed() -> int:
    return _GLOBAL_SEED[0]
