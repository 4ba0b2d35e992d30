"""Weight initializers with Keras 3's names, defaults and fan rules (pure numpy)."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Keras' fan-in/fan-out: the last two dims are (in, out); leading dims are the receptive field."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _variance_scaling(shape: tuple[int, ...], rng: np.random.Generator, scale: float, mode: str,
                      distribution: str) -> np.ndarray:
    fan_in, fan_out = fans(shape)
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    var = scale / max(1.0, n)
    if distribution == "uniform":
        limit = math.sqrt(3.0 * var)
        return rng.uniform(-limit, limit, shape)
    if distribution == "truncated_normal":
        std = math.sqrt(var) / 0.87962566103423978
        return _truncated(rng, shape, 0.0, std)
    return rng.normal(0.0, math.sqrt(var), shape)


def _truncated(rng: np.random.Generator, shape: tuple[int, ...], mean: float, std: float) -> np.ndarray:
    out = rng.normal(0.0, 1.0, shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.normal(0.0, 1.0, int(bad.sum()))
        bad = np.abs(out) > 2.0
    return mean + std * out


_INITIALIZERS: dict[str, Callable[..., np.ndarray]] = {
    "zeros": lambda shape, rng: np.zeros(shape),
    "ones": lambda shape, rng: np.ones(shape),
    "constant": lambda shape, rng, value=0.0: np.full(shape, value),
    "random_uniform": lambda shape, rng, minval=-0.05, maxval=0.05: rng.uniform(minval, maxval, shape),
    "random_normal": lambda shape, rng, mean=0.0, stddev=0.05: rng.normal(mean, stddev, shape),
    "truncated_normal": lambda shape, rng, mean=0.0, stddev=0.05: _truncated(rng, shape, mean, stddev),
    "glorot_uniform": lambda shape, rng: _variance_scaling(shape, rng, 1.0, "fan_avg", "uniform"),
    "glorot_normal": lambda shape, rng: _variance_scaling(shape, rng, 1.0, "fan_avg", "truncated_normal"),
    "he_uniform": lambda shape, rng: _variance_scaling(shape, rng, 2.0, "fan_in", "uniform"),
    "he_normal": lambda shape, rng: _variance_scaling(shape, rng, 2.0, "fan_in", "truncated_normal"),
    "lecun_uniform": lambda shape, rng: _variance_scaling(shape, rng, 1.0, "fan_in", "uniform"),
    "lecun_normal": lambda shape, rng: _variance_scaling(shape, rng, 1.0, "fan_in", "truncated_normal"),
}
_ALIASES = {"xavier_uniform": "glorot_uniform", "xavier_normal": "glorot_normal",
            "uniform": "random_uniform", "normal": "random_normal"}


def names() -> list[str]:
    return sorted(_INITIALIZERS) + sorted(_ALIASES)


def check(name: str) -> str:
    """The canonical name of an initializer, or a clear error."""
    key = _ALIASES.get(name, name)
    if key not in _INITIALIZERS:
        raise ValueError(f"unknown initializer {name!r}; known: {', '.join(names())}")
    return key


def initialize(name: str, shape: tuple[int, ...], dtype: Any, rng: np.random.Generator,
               **kwargs: Any) -> np.ndarray:
    return np.asarray(_INITIALIZERS[check(name)](tuple(shape), rng, **kwargs), dtype=dtype)
