"""keras.utils: seeding and label helpers."""

from __future__ import annotations

from typing import Any

import numpy as np

from unity_legion.keras.seed import set_global_seed


def set_random_seed(seed: int) -> None:
    """Seeds weight initialisation, shuffling and dropout. (numpy's global RNG is left alone:
    Legate warns that seeding it differently per rank breaks multi-rank runs.)"""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"set_random_seed: seed must be an integer, got {seed!r}")
    set_global_seed(int(seed))


def to_categorical(x: Any, num_classes: int | None = None) -> np.ndarray:
    labels = np.asarray(x, dtype=np.int64).reshape(-1)
    n = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.size and (labels.min() < 0 or labels.max() >= n):
        raise ValueError(f"to_categorical: labels must be in [0, {n})")
    out = np.zeros((labels.size, n), dtype=np.float32)
    out[np.arange(labels.size), labels] = 1.0
    return out.reshape(np.shape(x) + (n,)) if np.ndim(x) else out[0]
