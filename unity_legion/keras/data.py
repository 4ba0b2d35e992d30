"""Checking and batching the arrays given to fit/evaluate/predict, before anything launches."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from unity_legion.types import TensorShape


def as_list(data: Any, names: Sequence[str], what: str) -> list[np.ndarray]:
    """Arrays for each named model input/output: one array, a list/tuple, or a dict by name."""
    if isinstance(data, dict):
        missing = [n for n in names if n not in data]
        extra = [k for k in data if k not in names]
        if missing or extra:
            raise ValueError(f"{what}: dict keys {sorted(data)} do not match the model's {what} "
                             f"names {list(names)}")
        items = [data[n] for n in names]
    elif isinstance(data, (list, tuple)) and len(names) > 1:
        items = list(data)
    else:
        items = [data]
    if len(items) != len(names):
        raise ValueError(f"{what}: the model has {len(names)} {what}(s) {list(names)}, "
                         f"got {len(items)} array(s)")
    out = []
    for n, a in zip(names, items):
        try:
            arr = np.asarray(a)
        except Exception as exc:  # ragged lists and the like
            raise ValueError(f"{what} {n!r}: cannot be read as an array: {exc}") from None
        out.append(arr)
    return out


def check_features(arrays: Sequence[np.ndarray], shapes: Sequence[TensorShape],
                   names: Sequence[str]) -> list[np.ndarray]:
    """Each input's per-sample shape and dtype fit the model's Input; float inputs become the
    input's float dtype, integer inputs stay integers."""
    out = []
    for arr, shape, name in zip(arrays, shapes, names):
        want = shape.dims[1:]
        if arr.ndim != shape.rank or any(w is not None and w != g for w, g in zip(want, arr.shape[1:])):
            raise ValueError(f"input {name!r}: expected data of shape (batch, "
                             f"{', '.join(str(d) for d in want)}), got an array of shape {arr.shape}")
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"input {name!r}: expected numeric data, got dtype {arr.dtype}")
        if shape.dtype.is_float:
            arr = arr.astype(shape.dtype.numpy, copy=False)
        else:
            if arr.dtype.kind == "f":
                if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                    raise ValueError(f"input {name!r}: expects integers ({shape.dtype.value}), got "
                                     f"non-integral floating-point data")
            arr = arr.astype(shape.dtype.numpy, copy=False)
        out.append(arr)
    return out


def check_lengths(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray] | None) -> int:
    lengths = {len(a) for a in xs} | ({len(a) for a in ys} if ys else set())
    if len(lengths) != 1:
        raise ValueError(f"x and y must have the same number of samples; got lengths "
                         f"x={[len(a) for a in xs]}" + (f", y={[len(a) for a in ys]}" if ys else ""))
    n = lengths.pop()
    if n == 0:
        raise ValueError("no samples given (arrays of length 0)")
    return n


def check_batch_size(batch_size: Any) -> int:
    if batch_size is None:
        return 32
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def split_validation(xs: list[np.ndarray], ys: list[np.ndarray], fraction: float
                     ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Keras' validation_split: the last `fraction` of the samples, taken before shuffling."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {fraction}")
    n = len(xs[0])
    cut = int(n * (1.0 - fraction))
    if cut <= 0 or cut >= n:
        raise ValueError(f"validation_split={fraction} leaves no training or no validation samples "
                         f"out of {n}")
    return [a[:cut] for a in xs], [a[:cut] for a in ys], [a[cut:] for a in xs], [a[cut:] for a in ys]
