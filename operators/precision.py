"""Half-precision pieces (mixed precision): how a 16-bit store meets the kernels.

Representation (why): Legate 25.11 has float16 stores but no bfloat16 type (legate.core.types
lists float16, float32, float64, the integers, complex; no bfloat16), and neither numpy nor CuPy
has bfloat16 arithmetic. So
  - FLOAT16 activations live in float16 stores;
  - BFLOAT16 activations live in uint16 stores holding the bfloat16 bit pattern (the upper half
    of the float32 with the same value, rounded to nearest even). The bytes are genuinely half:
    what the memory check, the cost model and the data movement between processors see.
No store of ours is uint16 for any other reason (DataType has no UINT16), so a uint16 piece
always means bfloat16.

Compute (why): the task body widens each half piece to a float32 working array, runs the
kernels on float32, and rounds every half piece a kernel wrote back to its 16 bits right after
that kernel (also between the kernels of a fused task, so fusion never changes a result). This
is what bf16/fp16 hardware and libraries do per operator: a tensor-core product reads 16-bit
operands and accumulates in float32, and ATen's CPU kernels for BFloat16/Half compute in float
(`opmath_type`) and round the result; one kernel = one rounding of its outputs. Every kernel
therefore runs unchanged on CPU (numpy, ATen) and GPU (CuPy) pieces, and no kernel needs a
bfloat16 path of its own. The conversions are plain integer bit operations, so they run on
numpy and CuPy arrays alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_U16 = np.dtype(np.uint16)
_F16 = np.dtype(np.float16)


def is_half_piece(a: Any) -> bool:
    """Whether a store piece holds half-precision values (bfloat16 bits or float16)."""
    dt = a.dtype
    return dt == _U16 or dt == _F16


def bf16_to_f32(bits: Any) -> Any:
    """bfloat16 bit patterns (uint16) as float32 values (exact)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_bf16(values: Any) -> Any:
    """float32 values rounded to the nearest bfloat16 (ties to even; NaN stays NaN, overflow
    becomes inf as the hardware's conversion does), as uint16 bit patterns."""
    u = values.astype(np.float32, copy=False).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    out = rounded.astype(np.uint16)
    nan = values != values
    if nan.any():   # a NaN with only low mantissa bits would round to inf: keep it a NaN
        out[nan] = np.uint16(0x7FC0)
    return out


def widen(piece: Any) -> Any:
    """A float32 working copy of a half piece's values."""
    if piece.dtype == _U16:
        return bf16_to_f32(piece)
    return piece.astype(np.float32)


def narrow_into(piece: Any, work: Any) -> None:
    """Store float32 `work` into the half piece (rounded to its precision)."""
    if piece.dtype == _U16:
        piece[...] = f32_to_bf16(work)
    else:
        with np.errstate(over="ignore"):   # beyond float16's range is inf, as on the hardware
            piece[...] = work.astype(_F16)


def round_in_place(piece_dtype: Any, work: Any) -> None:
    """Round float32 `work` to the precision of a piece of `piece_dtype`, keeping float32."""
    if piece_dtype == _U16:
        work[...] = bf16_to_f32(f32_to_bf16(work))
    else:
        with np.errstate(over="ignore"):   # (overflow to inf: what loss scaling detects)
            work[...] = work.astype(_F16).astype(np.float32)


def to_storage(values: np.ndarray, storage: np.dtype) -> np.ndarray:
    """A host array of values as a store of `storage` dtype holds them (bfloat16: bits)."""
    if np.dtype(storage) == _U16:
        return f32_to_bf16(np.asarray(values, dtype=np.float32))
    return np.asarray(values, dtype=storage)


def as_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 values (already bfloat16 values: read from a bfloat16 store) as a numpy array of
    ml_dtypes' bfloat16, what Keras 3 returns for a bfloat16 tensor (`predict`,
    `keras.ops.convert_to_numpy`). Exact: the bits are the upper half of each float32."""
    import ml_dtypes   # (installed with Keras; imported here: kernels never need it)

    bits = f32_to_bf16(np.ascontiguousarray(values, dtype=np.float32))
    return bits.view(ml_dtypes.bfloat16)


def from_storage(piece: np.ndarray) -> np.ndarray:
    """A host copy of a store's values (bfloat16 bits -> float32; others as they are)."""
    if piece.dtype == _U16:
        return bf16_to_f32(piece)
    return piece
