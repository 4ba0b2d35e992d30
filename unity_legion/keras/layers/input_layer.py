"""keras.Input: a symbolic input tensor (the batch dimension is left unknown)."""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion.keras.layers.layer import KerasTensor, unique_name
from unity_legion.types import DataType, TensorShape


class InputSpec(KerasTensor):
    """The tensor returned by `Input`: a graph input rather than a layer's output."""


def Input(shape: Sequence[int | None] | int = None, batch_size: int | None = None,
          dtype: Any = None, name: str | None = None, **kwargs: Any) -> KerasTensor:
    if kwargs:
        raise TypeError(f"Input: unknown argument(s) {', '.join(repr(k) for k in kwargs)}")
    if shape is None:
        raise ValueError("Input: shape is required, e.g. Input(shape=(784,))")
    if isinstance(shape, int):
        shape = (shape,)
    dims = tuple(shape)
    for d in dims:
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d <= 0):
            raise ValueError(f"Input: shape {dims} must contain positive integers or None")
    dt = DataType.of(dtype) if dtype is not None else DataType.FLOAT32
    return InputSpec(TensorShape((batch_size,) + dims, dt), None, (), 0,
                     name or unique_name("input_layer"))
