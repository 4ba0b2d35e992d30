"""Tensor shapes and data types of the computation graph (no parallelism yet)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class DataType(enum.Enum):
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"
    # The half precisions of mixed-precision training (keras.mixed_precision): activations and
    # their gradients only; weights and optimizer state stay FLOAT32 (`master`).
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype values of this type are exchanged in on the host. numpy has no
        bfloat16: BFLOAT16 values travel as float32 (every bfloat16 is exactly a float32);
        the store itself holds the 16-bit pattern (`storage`)."""
        if self is DataType.BFLOAT16:
            return np.dtype(np.float32)
        return np.dtype(self.value)

    @property
    def storage(self) -> np.dtype:
        """The numpy dtype of a store's piece: BFLOAT16 is stored as its bits in uint16 (Legate
        25.11 has no bfloat16 type; see operators/precision.py), every other type as itself."""
        if self is DataType.BFLOAT16:
            return np.dtype(np.uint16)
        return np.dtype(self.value)

    @property
    def itemsize(self) -> int:
        return self.storage.itemsize

    @property
    def is_float(self) -> bool:
        return self in (DataType.FLOAT32, DataType.FLOAT64, DataType.FLOAT16, DataType.BFLOAT16)

    @property
    def is_half(self) -> bool:
        """A 16-bit float: mixed precision's compute type."""
        return self in (DataType.FLOAT16, DataType.BFLOAT16)

    @property
    def master(self) -> "DataType":
        """The type weights (and their gradients and optimizer state) are kept in for an
        operator computing in this type: FLOAT32 for the half types (Keras' variable_dtype)."""
        return DataType.FLOAT32 if self.is_half else self

    @property
    def is_integer(self) -> bool:
        return self in (DataType.INT32, DataType.INT64)

    @classmethod
    def of(cls, value: object) -> "DataType":
        """The DataType of a string, numpy dtype or DataType."""
        if isinstance(value, DataType):
            return value
        if isinstance(value, str) and value in cls._value2member_map_:
            return cls(value)   # "bfloat16": not a numpy dtype name
        if getattr(value, "name", None) == "bfloat16":   # ml_dtypes' / torch's bfloat16
            return cls.BFLOAT16
        try:
            return cls(np.dtype(value).name)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"unsupported dtype {value!r}; expected one of "
                             f"{[d.value for d in cls]}") from exc


# The batch dimension of a graph built by a Keras model is unknown until data arrives.
Dim = int | None


@dataclass(frozen=True)
class TensorShape:
    """Dims of a tensor; dims[0] may be None (the batch, bound at run time)."""

    dims: tuple[Dim, ...]
    dtype: DataType = DataType.FLOAT32

    def __post_init__(self) -> None:
        for i, d in enumerate(self.dims):
            if d is not None and (not isinstance(d, (int, np.integer)) or d < 0):
                raise ValueError(f"dimension {i} of shape {self.dims} must be a "
                                 f"non-negative integer or None, got {d!r}")
        object.__setattr__(self, "dims", tuple(None if d is None else int(d) for d in self.dims))

    @property
    def rank(self) -> int:
        return len(self.dims)

    @property
    def is_concrete(self) -> bool:
        return all(d is not None for d in self.dims)

    def num_elements(self) -> int:
        if not self.is_concrete:
            raise ValueError(f"shape {self.dims} has an unknown dimension")
        n = 1
        for d in self.dims:
            n *= d  # type: ignore[operator]
        return n

    def num_bytes(self) -> int:
        return self.num_elements() * self.dtype.itemsize

    def with_batch(self, batch: int) -> "TensorShape":
        """This shape with an unknown leading (batch) dimension set to `batch`."""
        if self.rank and self.dims[0] is None:
            return TensorShape((batch,) + self.dims[1:], self.dtype)
        return self

    def with_dims(self, dims: tuple[Dim, ...]) -> "TensorShape":
        return TensorShape(dims, self.dtype)

    def __str__(self) -> str:
        inner = ", ".join("None" if d is None else str(d) for d in self.dims)
        return f"({inner}){'' if self.dtype is DataType.FLOAT32 else ':' + self.dtype.value}"
