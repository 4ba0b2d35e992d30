"""Helpers shared by the 2-D spatial operators (convolution, pooling, zero padding).

Argument normalisation with Keras' conventions (an int or a pair; data_format channels_last or
channels_first; padding "valid" or "same" with TF's rule), output-size arithmetic, the views
kernels use to work in (batch, H, W, C) order whatever the tensor's layout, and the halo reads of
the spatial splits (`Reach`, `Windowed`): a point reads its tile's window of a store, not the
whole image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ._aten import xp
from .base import (SAMPLE, Arg, DimKind, OperatorError, ParallelDim, Ref, TensorShape, ceil_div,
                   sample_dim)

DATA_FORMATS = ("channels_last", "channels_first")
PADDINGS = ("valid", "same")
CAUSAL = "causal"  # Keras Conv1D's: all the padding before (an output never reads later inputs)
CHANNELS = "channels"  # launch axis of the per-channel operators: the channel dim of the images


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def positive_int(value: Any, what: str, op: str) -> int:
    """A positive integer attribute (a filter or group count) as an int."""
    if not _is_int(value) or value <= 0:
        raise OperatorError(f"{op}: {what} must be a positive integer, got {value!r}")
    return int(value)


def pair(value: Any, what: str, op: str, minimum: int = 1) -> tuple[int, int]:
    """An int or a 2-sequence of ints (each >= minimum) as a pair."""
    if _is_int(value):
        vals: tuple[Any, ...] = (value, value)
    else:
        try:
            vals = tuple(value)
        except TypeError:
            raise OperatorError(f"{op}: {what} must be an integer or a tuple of 2 integers, "
                                f"got {value!r}") from None
        if len(vals) != 2 or not all(_is_int(v) for v in vals):
            raise OperatorError(f"{op}: {what} must be an integer or a tuple of 2 integers, "
                                f"got {value!r}")
    if any(v < minimum for v in vals):
        adj = "positive" if minimum == 1 else f">= {minimum}"
        raise OperatorError(f"{op}: {what} must be {adj}, got {value!r}")
    return int(vals[0]), int(vals[1])


def check_data_format(value: Any, op: str) -> str:
    fmt = "channels_last" if value is None else value
    if not isinstance(fmt, str) or fmt.lower() not in DATA_FORMATS:
        raise OperatorError(f"{op}: data_format must be 'channels_last' or 'channels_first', "
                            f"got {value!r}")
    return fmt.lower()


def check_padding(value: Any, op: str, causal: bool = False) -> str:
    """"valid" or "same" (and "causal" where the operator takes it), lower-cased."""
    allowed = PADDINGS + ((CAUSAL,) if causal else ())
    if not isinstance(value, str) or value.lower() not in allowed:
        also = " (or 'causal')" if causal else ""
        raise OperatorError(f"{op}: padding must be 'valid' or 'same'{also}, got {value!r}")
    return value.lower()


def spatial_dims(s: TensorShape, data_format: str, op: str) -> tuple[int, int, int]:
    """(H, W, C) of a rank-4 image batch, checked."""
    if s.rank != 4:
        raise OperatorError(f"{op}: expects a rank-4 input (batch, "
                            f"{'H, W, C' if data_format == 'channels_last' else 'C, H, W'}), got {s}")
    if not s.dtype.is_float:
        raise OperatorError(f"{op}: expects a floating-point input, got {s.dtype.value}")
    if data_format == "channels_last":
        h, w_, c = s.dims[1:]
    else:
        c, h, w_ = s.dims[1:]
    if any(d is None for d in (h, w_, c)):
        raise OperatorError(f"{op}: the spatial and channel dimensions of {s} must be known")
    return h, w_, c  # type: ignore[return-value]


def image_shape(s: TensorShape, data_format: str, h: int, w_: int, c: int) -> TensorShape:
    dims = (s.dims[0], h, w_, c) if data_format == "channels_last" else (s.dims[0], c, h, w_)
    return s.with_dims(dims)


def out_size_and_pads(size: int, k: int, stride: int, dilation: int, padding: str, op: str,
                      what: str) -> tuple[int, int, int]:
    """(output size, pad before, pad after) along one spatial dim; TF's rule for "same" (the odd
    pad goes after); "causal" pads span - 1 before (Keras: "valid" on the left-padded input)."""
    span = (k - 1) * dilation + 1
    if padding == CAUSAL:
        return ceil_div(size, stride), span - 1, 0
    if padding == "same":
        out = ceil_div(size, stride)
        total = max((out - 1) * stride + span - size, 0)
        return out, total // 2, total - total // 2
    if span > size:
        dil = f" (dilated to {span})" if dilation > 1 else ""
        raise OperatorError(f"{op}: {what} {k}{dil} is larger than the input ({size}) with "
                            f"padding='valid'")
    return (size - span) // stride + 1, 0, 0


def nhwc(a: np.ndarray, channels_first: bool) -> np.ndarray:
    """A (batch, H, W, C) view of a piece stored channels_last or channels_first."""
    return a.transpose(0, 2, 3, 1) if channels_first else a


def parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",")) if text else ()


def parse_hw(text: str) -> tuple[int, int]:
    """(rows, columns) from a kernel scalar written by `join_ints`."""
    h, w = parse_ints(text)
    return h, w


def join_ints(values: Sequence[int]) -> str:
    return ",".join(str(int(v)) for v in values)


def tap(i: int, j: int, sh: int, sw: int, dh: int, dw: int, ho: int, wo: int
        ) -> tuple[slice, slice, slice, slice]:
    """The NHWC slice of a padded input that kernel tap (i, j) meets over all output positions."""
    return (slice(None), slice(i * dh, i * dh + sh * (ho - 1) + 1, sh),
            slice(j * dw, j * dw + sw * (wo - 1) + 1, sw), slice(None))


def pad_nhwc(x: np.ndarray, pads: Sequence[int], value: float = 0.0) -> np.ndarray:
    """x (NHWC) padded by (top, bottom, left, right) with `value`; x itself when no pad."""
    pt, pb, pl, pr = pads
    if not (pt or pb or pl or pr):
        return x
    b, h, w_, c = x.shape
    out = xp(x).empty((b, h + pt + pb, w_ + pl + pr, c), dtype=x.dtype)
    if pt:
        out[:, :pt] = value
    if pb:
        out[:, h + pt:] = value
    if pl:
        out[:, pt:pt + h, :pl] = value
    if pr:
        out[:, pt:pt + h, w_ + pl:] = value
    out[:, pt:pt + h, pl:pl + w_] = x
    return out


def channel_dim(data_format: str) -> int:
    """The channel dim of a rank-4 image batch."""
    return 1 if data_format == "channels_first" else 3


def channel_dims(s: TensorShape, data_format: str, op: str) -> tuple[ParallelDim, ...]:
    """SAMPLE and CHANNELS (ATTRIBUTE) for an operator that is per channel of its images `s`."""
    return (sample_dim(s), ParallelDim(CHANNELS, DimKind.ATTRIBUTE,
                                       spatial_dims(s, data_format, op)[2]))


def by_channel(ref: Ref, rank: int, data_format: str) -> Arg:
    """An image batch (rank 4) or a (batch, C) tensor split by samples and channels."""
    if rank == 2:
        return Arg(ref, (SAMPLE, CHANNELS))
    return Arg.by_sample(ref, 4, {channel_dim(data_format): CHANNELS})


# ---------------------------------------------------------------------------------------------
# Halo reads under a spatial split
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reach:
    """Along one spatial dim: which positions of a store a tile of a launch axis needs.

    The axis tiles `size` positions as the executor tiles a dim (pieces of ceil(size / degree));
    a window of `k` taps, `stride`, `dilation` and `pad` (before) links them to the `extent`
    positions of the store read. forward: the axis tiles outputs and the store is the input
    (output o reads inputs o * stride - pad + i * dilation, i < k); else the axis tiles inputs and
    the store holds outputs (the outputs whose windows reach the tile, as `sources`)."""

    size: int
    extent: int
    k: int
    stride: int
    dilation: int
    pad: int
    forward: bool

    def span(self, t0: int, t1: int) -> tuple[int, int]:
        """The positions [lo, hi) of the store that tile [t0, t1) needs, clipped to the store;
        never empty (a tile that needs nothing gets one position it ignores: a store piece
        cannot be empty)."""
        if self.forward:
            lo = t0 * self.stride - self.pad
            hi = (t1 - 1) * self.stride + (self.k - 1) * self.dilation + 1 - self.pad
            lo, hi = max(lo, 0), min(hi, self.extent)
        else:
            sl = sources(t0, t1, self.extent, self.k, self.stride, self.dilation, self.pad)
            lo, hi = sl.start, sl.stop
        if hi <= lo:
            lo = min(max(lo, 0), self.extent - 1)
            hi = lo + 1
        return lo, hi

    def tile_span(self, degree: int, index: int) -> tuple[int, int]:
        """The store positions tile `index` of `degree` (the executor's tiling of `size`) needs."""
        tile = ceil_div(self.size, degree)
        t0 = index * tile
        return self.span(t0, min(self.size, t0 + tile))


@dataclass(frozen=True)
class Windowed(Arg):
    """A store argument read through windows: along each dim in `windows` (dim, launch axis,
    reach) a point gets only the positions its tile of that axis needs (its tile plus the halo
    of the window), not the whole dim. The split says None there: to the PCG the store is still
    read whole by the axis' points (the executor slices each point's window out of it)."""

    windows: tuple[tuple[int, str, Reach], ...] = ()


def sources(r0: int, r1: int, out_size: int, k: int, stride: int, dilation: int, pad: int
            ) -> slice:
    """The output positions whose windows reach input positions [r0, r1) along one dim (output
    o reads inputs o * stride - pad + i * dilation, i < k): what an input tile's gradient
    needs of d_out."""
    lo = max(0, ceil_div(r0 + pad - (k - 1) * dilation, stride))
    hi = min(out_size, (r1 - 1 + pad) // stride + 1)
    return slice(lo, max(lo, hi))


def piece_start(piece: int, whole: int, lo: int) -> int:
    """Where a store piece of `piece` positions starts along a dim of `whole` positions, when it
    is either the whole dim or exactly the window [lo, ...) a `Reach` gave (a point reads a
    window sliced out of the store, whose coordinates start at 0 again): equal sizes can only
    mean the whole dim (a window inside it as long starts at 0)."""
    return 0 if piece == whole else lo
