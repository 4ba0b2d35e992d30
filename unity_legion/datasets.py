"""Data sets that ship inside installed packages (no download at run time)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def digits(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """scikit-learn's 8x8 handwritten digits (1797 images, bundled with the package), pixels scaled
    to [0, 1], a stratified held-out test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed,
                                              stratify=y)
    return Split(x_tr, y_tr, x_te, y_te)


def as_images(x: np.ndarray, size: int, channels: int = 3) -> np.ndarray:
    """Flat 8x8 digits as (n, size, size, channels) images: each pixel repeated to a block
    (nearest-neighbour resize), the grey value copied to every channel."""
    side = int(round(np.sqrt(x.shape[1])))
    if side * side != x.shape[1]:
        raise ValueError(f"as_images: {x.shape[1]} features are not a square image")
    rows = np.minimum(np.arange(size) * side // size, side - 1)
    img = x.reshape(-1, side, side)[:, rows][:, :, rows]
    return np.repeat(img[..., None], channels, axis=-1).astype(np.float32)
