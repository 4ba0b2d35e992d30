"""Conv2D (Keras Conv2D): a grouped, strided, dilated 2-D convolution with a fused activation.

Layouts follow Keras: the input is (batch, H, W, C) (channels_last, the default) or
(batch, C, H, W) (channels_first); the kernel is (kh, kw, C / groups, filters), the bias
(filters,). Output channel o belongs to group o // (filters / groups), which reads input channels
[g * C/groups, (g + 1) * C/groups) - the same grouping as TensorFlow and PyTorch.

Padding "same" is TensorFlow's: output size ceil(in / stride), total padding
max((out - 1) * stride + (k - 1) * dilation + 1 - in, 0), the odd pixel at the bottom / right.
"causal" (Keras Conv1D's, here along both dims: a 1-D convolution is this operator on a one-row
image, operators/one_d.py) pads (k - 1) * dilation before and nothing after.

Kernels run PyTorch's ATen convolution and its backward (oneDNN for float32, im2col for
float64) on views of (batch, H, W, C) pieces: NCHW tensors with channels_last strides, the
kernel (kh, kw, C / groups, filters) viewed as (filters, C / groups, kh, kw); ATen pads the
window itself where its padding is symmetric (else it reads a padded copy of the window), and
its results are copied into the output pieces (weight gradients added into their partial sums).
A 1x1 convolution that widens the channels writes its output in place with one matrix product
instead (ATen's new output would cost as much to copy as to compute). Under a spatial split a
point computes an output tile from the input window it needs (`Window`: strides, dilation and
padding), and that window (its tile plus the halo) is all it receives of the input. As in
Linear, a fused activation keeps the pre-activation (saved "preact") and backward turns d_out
into d_preact locally.

Parallel forms (launch axes): "sample" (the batch); "out" (PARAMETER: output channels, the
kernel's last dim and the bias; not with a fused softmax, which needs whole rows); "in"
(REDUCTION: input channels and the kernel's dim 2, each point making a partial sum of y; only
with groups == 1 and no fused activation; the bias is added, and its gradient counted, by the
points holding input channel 0). With groups == 1 the input is read whole by every "out" point
(d_in is then a partial sum). With groups > 1 "out" splits the input's channels too, so each
piece holds whole groups and runs the same grouped kernels locally; it is offered up to the
largest degree for which every degree tiles input and output channels into the same whole
groups (any degree for a depthwise convolution with one filter per channel).
"height" and "width" (ATTRIBUTE: the output's rows and columns, any kernel/stride/dilation/
padding; width not with a fused softmax over a channels_first output's last dim): the output,
preact and d_out are tiled; each point receives only the input window its output tile reads
(`Windowed` / `Reach`: the executor slices the tile plus its halo out of the input, one launch
per spatial tile; uneven tiles, strides, dilation and "same" padding change only the window's
bounds), and kernels find their tile's position from their Origin. The input gradient is tiled
by the same axes over the input's rows / columns, each point receiving only the d_out (preact, y)
region whose windows reach its tile and computing its tile from it (`input_grad_window`: the same sums,
in the same order, as unsplit: no overlapping windows to add up); the weight gradients are
partial sums over the tiles, each from its tile's input window (ADD reductions). The PCG still
describes the input as replicated along H and W (a Replicate before the convolution).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator, Sequence

import numpy as np

from . import activation as act
from .base import (Arg, DimKind, In, Launch, Operator, OperatorError, Origin, Out, ParallelDim, Ref,
                   SavedSpec, Sum, TasoName, TensorShape, WeightSpec, ceil_div, dw, dx, dy, kernel,
                   origin_of, sample_dim, saved, tile_count, w, x, y)
from ._aten import aten, mm, nchw, view, xp
from .spatial import (Reach, Windowed, channel_dim, check_data_format, check_padding, image_shape,
                      join_ints, nhwc, out_size_and_pads, pair, parse_hw, parse_ints, piece_start,
                      positive_int, sources, spatial_dims)

# Kernels hand ATen chunks of samples whose im2col matrices hold at most this many elements
# (bounds the scratch of one ATen call; paper-size images still run a few samples per call).
_CHUNK_ELEMENTS = 1 << 26
OUT, IN = "out", "in"  # launch axes: output channels, input (contracted) channels
HEIGHT, WIDTH = "height", "width"  # launch axes: the output's rows and columns (spatial tiles)


def spatial_axes(data_format: str) -> dict[int, str]:
    """The dims of a rank-4 image batch the spatial axes split (the output's H and W)."""
    return {2: HEIGHT, 3: WIDTH} if data_format == "channels_first" else {1: HEIGHT, 2: WIDTH}


def tile_start(origin: tuple[int, ...], channels_first: bool) -> tuple[int, int]:
    """(row, column) of an image piece's first pixel from its global origin."""
    return (origin[2], origin[3]) if channels_first else (origin[1], origin[2])


class Window:
    """The part of a (padded) NHWC input that an output tile reads: output rows [oh0, oh0 + ho)
    and columns [ow0, ow0 + wo) of a window (kh, kw) / stride (sh, sw) / dilation (dh, dw)
    reduction read padded rows [oh0 * sh, (oh0 + ho - 1) * sh + (kh - 1) * dh + 1) (and the
    same for columns). `shape` is the whole input's; a point's piece of it is either the whole
    input or exactly this window's part inside it (`Reach`: the executor slices it out), and
    `read` tells which from the piece's size."""

    def __init__(self, shape: tuple[int, ...], pads: tuple[int, ...], oh0: int, ow0: int,
                 ho: int, wo: int, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int) -> None:
        _, self.h, self.w, _ = shape
        pt, _, pl, _ = pads
        # the window in unpadded coordinates (may reach into the padding on either side)
        self.r0 = oh0 * sh - pt
        self.r1 = oh0 * sh + (ho - 1) * sh + (kh - 1) * dh + 1 - pt if ho else self.r0
        self.c0 = ow0 * sw - pl
        self.c1 = ow0 * sw + (wo - 1) * sw + (kw - 1) * dw + 1 - pl if wo else self.c0
        # the part of it inside the input
        self.a0, self.a1 = max(self.r0, 0), min(self.r1, self.h)
        self.b0, self.b1 = max(self.c0, 0), min(self.c1, self.w)

    @property
    def inside(self) -> bool:
        return self.r0 >= 0 and self.r1 <= self.h and self.c0 >= 0 and self.c1 <= self.w

    def _local(self) -> tuple[slice, slice, slice, slice]:
        return (slice(None), slice(self.a0 - self.r0, self.a1 - self.r0),
                slice(self.b0 - self.c0, self.b1 - self.c0), slice(None))

    def at(self, xs: np.ndarray) -> tuple[int, int]:
        """(row, column) of the first pixel of NHWC piece `xs`: the whole input, or the window's
        part inside it."""
        return (piece_start(xs.shape[1], self.h, self.a0),
                piece_start(xs.shape[2], self.w, self.b0))

    def read(self, xs: np.ndarray, value: float = 0.0) -> np.ndarray:
        """The window of NHWC piece `xs` padded with `value` (a view when it needs no
        padding)."""
        r, c = self.at(xs)
        if self.inside:
            return xs[:, self.r0 - r:self.r1 - r, self.c0 - c:self.c1 - c]
        out = xp(xs).full((xs.shape[0], self.r1 - self.r0, self.c1 - self.c0, xs.shape[3]),
                          value, dtype=xs.dtype)
        if self.a1 > self.a0 and self.b1 > self.b0:
            out[self._local()] = xs[:, self.a0 - r:self.a1 - r, self.b0 - c:self.b1 - c]
        return out


def input_grad_window(dxs: np.ndarray, d_out: np.ndarray, origin: tuple[int, ...],
                      channels_first: bool, in_hw: tuple[int, int], out_hw: tuple[int, int],
                      k: tuple[int, int], strides: tuple[int, int], dilation: tuple[int, int],
                      pads: tuple[int, ...]
                      ) -> tuple[Window, tuple[int, int], tuple[slice, ...]] | None:
    """For the input-gradient tile `dxs` (NHWC) at global `origin`: the window (of an input of
    in_hw) of the d_out region that reaches it, the tile's (row, column) start, and that region
    inside `d_out`, the point's NHWC piece of d_out (whole along H and W, or exactly the region);
    None if no output reaches the tile (it is then zeroed). Each input pixel then gets the
    contributions of the same output pixels, added in the same tap order, as in the unsplit run
    (the tiles' sums are the serial sums, bit for bit)."""
    t0, u0 = tile_start(origin, channels_first)
    oh = sources(t0, t0 + dxs.shape[1], out_hw[0], k[0], strides[0], dilation[0], pads[0])
    ow = sources(u0, u0 + dxs.shape[2], out_hw[1], k[1], strides[1], dilation[1], pads[2])
    if oh.stop <= oh.start or ow.stop <= ow.start:
        dxs[...] = 0
        return None
    win = Window((dxs.shape[0], *in_hw, dxs.shape[3]), pads, oh.start, ow.start,
                 oh.stop - oh.start, ow.stop - ow.start, k[0], k[1], strides[0], strides[1],
                 dilation[0], dilation[1])
    return win, (t0, u0), local_region(d_out, (slice(None), oh, ow, slice(None)), out_hw)


def local_region(piece: np.ndarray, region: tuple[slice, ...], out_hw: tuple[int, int]
                 ) -> tuple[slice, ...]:
    """`region` (NHWC, of the whole d_out) inside NHWC piece `piece` of d_out: the whole d_out, or
    exactly the region (the executor sliced it out: `Reach`)."""
    r = piece_start(piece.shape[1], out_hw[0], region[1].start)
    c = piece_start(piece.shape[2], out_hw[1], region[2].start)
    return (region[0], slice(region[1].start - r, region[1].stop - r),
            slice(region[2].start - c, region[2].stop - c), region[3])


def halo_windows(data_format: str, in_hw: tuple[int, int], out_hw: tuple[int, int],
                 k: tuple[int, int], strides: tuple[int, int], dilation: tuple[int, int],
                 pads: tuple[int, ...], forward: bool) -> tuple[tuple[int, str, Reach], ...]:
    """The windows of a spatially split launch's image argument, per spatial dim: forward, the
    input rows / columns an output tile reads; else the d_out rows / columns whose windows reach
    an input tile."""
    out = []
    for (dim, axis), i in zip(spatial_axes(data_format).items(), (0, 1)):
        pad = pads[2 * i]
        reach = (Reach(out_hw[i], in_hw[i], k[i], strides[i], dilation[i], pad, True) if forward
                 else Reach(in_hw[i], out_hw[i], k[i], strides[i], dilation[i], pad, False))
        out.append((dim, axis, reach))
    return tuple(out)


def _holds_bias(origin: tuple[int, ...], channels_first: bool, grouped: bool) -> bool:
    """Whether this point adds the bias (or its gradient): with groups == 1 the input's channel
    pieces are a reduction, and only the piece holding input channel 0 may; grouped pieces are
    whole groups, each adding its own outputs' bias."""
    return grouped or origin[1 if channels_first else 3] == 0


def _chunks(batch: int, per_sample: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(per_sample, 1))
    for b0 in range(0, batch, step):
        yield slice(b0, min(batch, b0 + step))


class _Geometry:
    """Strides, dilation and pads of one launch (passed to kernels as a string of ints)."""

    def __init__(self, text: str, kernel_shape: tuple[int, ...], in_channels: int) -> None:
        self.sh, self.sw, self.dh, self.dw, pt, pb, pl, pr = parse_ints(text)
        self.pads = (pt, pb, pl, pr)
        self.kh, self.kw, self.cg, self.cout = kernel_shape
        self.groups = in_channels // self.cg
        self.coutg = self.cout // self.groups
        self.spans = ((self.kh - 1) * self.dh + 1, (self.kw - 1) * self.dw + 1)

    def per_sample(self, ho: int, wo: int) -> int:
        """Elements of one sample's im2col matrix (what the chunks bound)."""
        return ho * wo * self.kh * self.kw * self.cg * self.groups

    def conv_args(self, pad: tuple[int, int]) -> tuple[Any, ...]:
        """ATen's convolution arguments after the weight: stride, padding, dilation,
        transposed, output_padding, groups."""
        return ((self.sh, self.sw), pad, (self.dh, self.dw), False, (0, 0), self.groups)


@lru_cache(maxsize=1024)
def _geometry(text: str, kernel_shape: tuple[int, ...], in_channels: int) -> _Geometry:
    return _Geometry(text, kernel_shape, in_channels)


def implicit_pads(win: Window) -> tuple[int, int] | None:
    """(rows, columns) of zero padding that ATen can add itself around the window's part inside
    the input: the same on both sides of each dim; None where it is not (the window is then
    read padded, a copy)."""
    top, bottom = win.a0 - win.r0, win.r1 - win.a1
    left, right = win.b0 - win.c0, win.c1 - win.b1
    if top != bottom or left != right or win.a1 <= win.a0 or win.b1 <= win.b0:
        return None
    return top, left


def reach(n: int, spare: int, out: int, span: int, stride: int, pad: int) -> int:
    """How many positions ATen may be given instead of `n` (the `n` a window needs, followed by
    `spare` more in the piece) with the same `out` outputs (window `span`, `stride`, `pad` on
    each side): trailing positions no output reads change nothing, and a piece passed whole is
    one dense block (channels_last) that ATen's fast kernels take as it is."""
    most = out * stride - 1 + span - 2 * pad   # (most + 2 pad - span) // stride + 1 == out
    return max(n, min(n + spare, most))


@lru_cache(maxsize=4096)
def _conv_read(geom: str, kernel_shape: tuple[int, ...], piece: tuple[int, ...],
               out_hw: tuple[int, int], start: tuple[int, int], in_hw: str
               ) -> tuple[_Geometry, Window, tuple[slice, slice] | None, tuple[Any, ...]]:
    """For an output tile of out_hw at `start` read from an NHWC input piece of shape `piece`:
    the geometry, the window, the rows and columns of the piece ATen reads and ATen's
    convolution arguments. Where the window's padding is symmetric ATen reads a view of its
    part inside the input (and the unread positions after it in the piece, see `reach`) and
    pads it itself; else (None) the window padded, a copy. Kernels run many times on the same
    shapes: this is worked out once."""
    g = _geometry(geom, kernel_shape, piece[3])
    ho, wo = out_hw
    win = Window((piece[0], *parse_hw(in_hw), piece[3]), g.pads, start[0], start[1], ho, wo,
                 g.kh, g.kw, g.sh, g.sw, g.dh, g.dw)
    pads = implicit_pads(win)
    if pads is None:
        return g, win, None, g.conv_args((0, 0))
    r = piece_start(piece[1], win.h, win.a0)
    c = piece_start(piece[2], win.w, win.b0)
    i0, j0 = win.a0 - r, win.b0 - c
    rows = reach(win.a1 - win.a0, piece[1] - (win.a1 - r), ho, g.spans[0], g.sh, pads[0])
    cols = reach(win.b1 - win.b0, piece[2] - (win.b1 - c), wo, g.spans[1], g.sw, pads[1])
    return g, win, (slice(i0, i0 + rows), slice(j0, j0 + cols)), g.conv_args(pads)


def _conv_input(xs: np.ndarray, k: np.ndarray, out_hw: tuple[int, int], geom: str,
                start: tuple[int, int], in_hw: str
                ) -> tuple[_Geometry, np.ndarray, tuple[Any, ...]]:
    """The geometry, what ATen reads of NHWC input piece `xs` for the output tile of out_hw at
    `start` (a view, or the padded window) and the convolution arguments."""
    g, win, box, args = _conv_read(geom, k.shape, xs.shape, out_hw, start, in_hw)
    xin = win.read(xs) if box is None else xs[:, box[0], box[1]]
    return g, xin, args


def _widening_matmul(a: np.ndarray, w2: np.ndarray, out: np.ndarray,
                     bias: np.ndarray | None = None) -> bool:
    """out (NHWC) = a (NHWC) @ w2 (+ bias) for a 1x1 convolution of stride 1 and one group
    whose output has more channels than its input, as one matrix product written in place
    (ATen's `mm`); False (nothing done) where the arrays are not dense blocks or the product
    does not widen. ATen's convolution is the faster kernel otherwise, but its result is a new
    tensor that a widening convolution would spend much of its time copying."""
    if not (w2.shape[0] < w2.shape[1] and a.flags.c_contiguous and out.flags.c_contiguous
            and a.shape[:3] == out.shape[:3] and a.dtype == out.dtype == w2.dtype):
        return False
    o2 = out.reshape(-1, out.shape[3])
    mm(a.reshape(-1, a.shape[3]), w2, o2)
    if bias is not None:
        o2 += bias
    return True


def _forward_into(x: np.ndarray, k: np.ndarray, bias: np.ndarray | None, out: np.ndarray,
                  geom: str, channels_first: bool, start: tuple[int, int], in_hw: str) -> None:
    """out (output layout) = conv(x) + bias; `out` is the output tile whose first pixel is at
    `start` (row, column) of the whole output, `x` the input's piece: whole along H and W, or
    (under a spatial split) the window the tile reads."""
    xs = nhwc(x, channels_first)
    os_ = nhwc(out, channels_first)
    g, xin, args = _conv_input(xs, k, os_.shape[1:3], geom, start, in_hw)
    if g.kh == g.kw == g.sh == g.sw == g.groups == 1 and _widening_matmul(
            xin, k.reshape(g.cg, g.cout), os_, bias):
        return
    with aten() as torch:
        b_ = None if bias is None else view(bias)
        w_ = view(k).permute(3, 2, 0, 1)               # (out, in / groups, kh, kw)
        yt = nchw(os_)
        for rows in _chunks(xs.shape[0], g.per_sample(*os_.shape[1:3])):
            yt[rows].copy_(torch.convolution(nchw(xin[rows]), w_, b_, *args))


def _d_preact(preact: np.ndarray, out: np.ndarray, d_out: np.ndarray, fn: str) -> np.ndarray:
    return act.grad_of(fn, preact, out, d_out)


@kernel
def conv2d_forward(x: In, kernel: In, bias: In, y: Out, origin: Origin, geom: str,
                   channels_first: bool, use_bias: bool, grouped: bool, in_hw: str) -> None:
    add = use_bias and _holds_bias(origin, channels_first, grouped)
    _forward_into(x, kernel, bias if add else None, y, geom, channels_first,
                  tile_start(origin_of(origin, "y", 4), channels_first), in_hw)


@kernel
def conv2d_forward_act(x: In, kernel: In, bias: In, preact: Out, y: Out, origin: Origin,
                       geom: str, channels_first: bool, use_bias: bool, fn: str,
                       in_hw: str) -> None:
    _forward_into(x, kernel, bias if use_bias else None, preact, geom, channels_first,
                  tile_start(origin_of(origin, "preact", 4), channels_first), in_hw)
    act.apply_into(fn, preact, y)


@kernel
def conv2d_backward_input(preact: In, y: In, dy: In, kernel: In, dx: Out, origin: Origin,
                          geom: str, channels_first: bool, fn: str, in_hw: str,
                          out_hw: str) -> None:
    """A tile of dx (under a spatial split: rows / columns of the input) from the region of d_out
    whose windows reach it (d_out, preact and y: whole along H and W, or exactly that region)."""
    _input_grad_into(preact, y, dy, kernel, dx, origin_of(origin, "dx", 4), geom,
                     channels_first, fn, parse_hw(in_hw), parse_hw(out_hw))


def grad_box(tile: tuple[int, ...], t0: int, u0: int, r0: int, c0: int, rows: int, cols: int
             ) -> tuple[tuple[slice, ...] | None, tuple[tuple[slice, ...], ...]]:
    """Where the gradient of input rows [r0, r0 + rows) x columns [c0, c0 + cols) goes in an
    NHWC tile of shape `tile` whose first pixel is (t0, u0): the tile's slices it covers and
    the slices of the rest of the tile (to zero); (None, ()) if it does not lie inside the
    tile (it is then computed aside, see `crop_into`)."""
    i0, j0 = r0 - t0, c0 - u0
    i1, j1 = i0 + rows, j0 + cols
    if i0 < 0 or j0 < 0 or i1 > tile[1] or j1 > tile[2]:
        return None, ()
    every = slice(None)
    frame = [(every, slice(0, i0)), (every, slice(i1, None)), (every, slice(i0, i1), slice(0, j0)),
             (every, slice(i0, i1), slice(j1, None))]
    sizes = (i0, tile[1] - i1, j0, tile[2] - j1)
    return ((every, slice(i0, i1), slice(j0, j1)),
            tuple(f for f, n in zip(frame, sizes) if n > 0))


def crop_into(dxs: np.ndarray, t0: int, u0: int, grad: np.ndarray, r0: int, c0: int) -> None:
    """dxs (NHWC tile at (t0, u0)) = `grad` (NHWC, the gradient of input rows / columns from
    (r0, c0), padding positions included) where they overlap, zero elsewhere."""
    dxs[...] = 0
    a0, a1 = max(r0, t0), min(r0 + grad.shape[1], t0 + dxs.shape[1])
    b0, b1 = max(c0, u0), min(c0 + grad.shape[2], u0 + dxs.shape[2])
    if a1 > a0 and b1 > b0:
        dxs[:, a0 - t0:a1 - t0, b0 - u0:b1 - u0] = grad[:, a0 - r0:a1 - r0, b0 - c0:b1 - c0]


@lru_cache(maxsize=4096)
def _grad_read(geom: str, kernel_shape: tuple[int, ...], tile: tuple[int, ...],
               d_out: tuple[int, ...], t0: int, u0: int, in_hw: tuple[int, int],
               out_hw: tuple[int, int]) -> tuple[Any, ...] | None:
    """For an input-gradient tile (NHWC shape `tile`, first pixel (t0, u0)) and the NHWC shape
    of the d_out piece: None if no output reaches the tile; else the geometry, the d_out
    region reaching it (slices of the piece), the input rows / columns whose gradient ATen
    computes (r0, c0, rows, cols: the window's part inside the input, padded by ATen
    symmetrically, with the unread positions after it in the tile, see `reach`; or the whole
    padded window), where they go in the tile (`grad_box`) and the convolution arguments.
    Worked out once per shape (kernels run many times on the same shapes)."""
    g = _geometry(geom, kernel_shape, tile[3])
    oh = sources(t0, t0 + tile[1], out_hw[0], g.kh, g.sh, g.dh, g.pads[0])
    ow = sources(u0, u0 + tile[2], out_hw[1], g.kw, g.sw, g.dw, g.pads[2])
    if oh.stop <= oh.start or ow.stop <= ow.start:
        return None
    ho, wo = oh.stop - oh.start, ow.stop - ow.start
    win = Window((tile[0], *in_hw, tile[3]), g.pads, oh.start, ow.start, ho, wo, g.kh, g.kw,
                 g.sh, g.sw, g.dh, g.dw)
    r = piece_start(d_out[1], out_hw[0], oh.start)
    c = piece_start(d_out[2], out_hw[1], ow.start)
    local = (slice(None), slice(oh.start - r, oh.stop - r), slice(ow.start - c, ow.stop - c),
             slice(None))
    pads = implicit_pads(win)
    if pads is None:
        pad, r0, c0 = (0, 0), win.r0, win.c0
        rows, cols = win.r1 - win.r0, win.c1 - win.c0
    else:
        pad, r0, c0 = pads, win.a0, win.b0
        rows = reach(win.a1 - win.a0, t0 + tile[1] - win.a1, ho, g.spans[0], g.sh, pad[0])
        cols = reach(win.b1 - win.b0, u0 + tile[2] - win.b1, wo, g.spans[1], g.sw, pad[1])
    box, frame = grad_box(tile, t0, u0, r0, c0, rows, cols)
    return g, local, (r0, c0, rows, cols), box, frame, g.conv_args(pad)


def _input_grad_into(preact: np.ndarray, y: np.ndarray, dy: np.ndarray, kernel: np.ndarray,
                     dx: np.ndarray, origin: tuple[int, ...], geom: str, channels_first: bool,
                     fn: str, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    """dx's tile at `origin` from the d_out (preact, y) region whose windows reach it: each
    input pixel gets the contributions of the same output pixels as unsplit
    (`input_grad_window`)."""
    dxs = nhwc(dx, channels_first)
    b, _, _, c = dxs.shape
    t0, u0 = tile_start(origin, channels_first)
    plan = _grad_read(geom, kernel.shape, dxs.shape, nhwc(dy, channels_first).shape, t0, u0,
                      tuple(in_hw), tuple(out_hw))
    if plan is None:
        dxs[...] = 0
        return
    g, local, (r0, c0, rows, cols), box, frame, args = plan
    # in the stores' own layout: a fused softmax normalises their last dim
    native = (local[0], local[3], local[1], local[2]) if channels_first else local
    gs = nhwc(_d_preact(preact[native], y[native], dy[native], fn), channels_first)
    if box is None:
        target = xp(dx).empty((b, rows, cols, c), dx.dtype)
    else:
        for sl in frame:
            dxs[sl] = 0
        target = dxs[box]
        if g.kh == g.kw == g.sh == g.sw == g.groups == 1 and _widening_matmul(
                gs, kernel.reshape(g.cg, g.cout).T, target):
            return
    with aten() as torch:
        w_ = view(kernel).permute(3, 2, 0, 1)
        tt = nchw(target)  # also stands in for the input: only its shape is read
        for sl in _chunks(b, g.per_sample(*gs.shape[1:3])):
            gi = torch.ops.aten.convolution_backward(nchw(gs[sl]), tt[sl], w_, None, *args,
                                                     (True, False, False))[0]
            tt[sl].copy_(gi)
    if box is None:
        crop_into(dxs, t0, u0, target, r0, c0)


def _weight_grads(x: np.ndarray, gout: np.ndarray, dkernel: np.ndarray, dbias: np.ndarray | None,
                  geom: str, channels_first: bool, start: tuple[int, int], in_hw: str) -> None:
    """Add the kernel's (and bias') gradient from the output tile `gout` at `start`: under a
    spatial split, each point's share of a sum over the tiles (`x`: whole along H and W, or the
    window the tile reads)."""
    xs = nhwc(x, channels_first)
    gs = nhwc(gout, channels_first)
    g, xin, args = _conv_input(xs, dkernel, gs.shape[1:3], geom, start, in_hw)
    with aten() as torch:
        db = None if dbias is None else view(dbias)
        dk = view(dkernel).permute(3, 2, 0, 1)         # (out, in / groups, kh, kw)
        bias_sizes = None if dbias is None else [g.cout]
        # stands in for the weight, whose values the weight gradient does not read; channels
        # last, as oneDNN's weight gradient prefers for channels-last images (~10% faster)
        w_ = torch.empty(dk.shape, dtype=dk.dtype, device=dk.device,
                         memory_format=torch.channels_last)
        for rows in _chunks(xs.shape[0], g.per_sample(*gs.shape[1:3])):
            _, gw, gb = torch.ops.aten.convolution_backward(
                nchw(gs[rows]), nchw(xin[rows]), w_, bias_sizes, *args,
                (False, True, dbias is not None))
            dk.add_(gw)
            if db is not None:
                db.add_(gb)


@kernel
def conv2d_backward_kernel(x: In, preact: In, y: In, dy: In, dkernel: Sum, origin: Origin,
                           geom: str, channels_first: bool, fn: str, in_hw: str) -> None:
    _weight_grads(x, _d_preact(preact, y, dy, fn), dkernel, None, geom, channels_first,
                  tile_start(origin_of(origin, "dy", 4), channels_first), in_hw)


@kernel
def conv2d_backward_kernel_bias(x: In, preact: In, y: In, dy: In, dkernel: Sum, dbias: Sum,
                                origin: Origin, geom: str, channels_first: bool, fn: str,
                                grouped: bool, in_hw: str) -> None:
    bias = dbias if _holds_bias(origin, channels_first, grouped) else None
    _weight_grads(x, _d_preact(preact, y, dy, fn), dkernel, bias, geom, channels_first,
                  tile_start(origin_of(origin, "dy", 4), channels_first), in_hw)


@dataclass(frozen=True)
class Conv2D(Operator):
    filters: int
    kernel_size: Any
    strides: Any = (1, 1)
    padding: str = "valid"
    data_format: str = "channels_last"
    dilation_rate: Any = (1, 1)
    groups: int = 1
    activation: str = "linear"
    use_bias: bool = True
    kernel_initializer: str = "glorot_uniform"
    bias_initializer: str = "zeros"

    op_type = "conv2d"
    num_inputs = 1
    taso_names = (TasoName("OP_CONV2D"),)
    flops_efficiency = 0.5       # im2col-style products: compute-bound, less regular

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(4, 3), (TensorShape((2, 8, 8, 3)),)),
        )

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("filters", positive_int(self.filters, "filters", "conv2d"))
        set_("groups", positive_int(self.groups, "groups", "conv2d"))
        set_("kernel_size", pair(self.kernel_size, "kernel_size", "conv2d"))
        set_("strides", pair(self.strides, "strides", "conv2d"))
        set_("dilation_rate", pair(self.dilation_rate, "dilation_rate", "conv2d"))
        set_("padding", check_padding(self.padding, "conv2d", causal=True))
        set_("data_format", check_data_format(self.data_format, "conv2d"))
        set_("activation", act.check_activation(self.activation))
        if self.filters % self.groups:
            raise OperatorError(f"conv2d: groups ({self.groups}) must divide filters "
                                f"({self.filters})")

    @property
    def fused(self) -> bool:
        return self.activation != "linear"

    @property
    def channels_first(self) -> bool:
        return self.data_format == "channels_first"

    def _geometry(self, s: TensorShape) -> tuple[int, int, int, int, int, tuple[int, ...]]:
        """(H, W, C, Ho, Wo, pads top/bottom/left/right) of input `s`, checked."""
        h, w_, c = spatial_dims(s, self.data_format, "conv2d")
        if c % self.groups:
            raise OperatorError(f"conv2d: groups ({self.groups}) must divide the input channels "
                                f"({c}) of {s}")
        (kh, kw), (sh, sw), (dh, dw_) = self.kernel_size, self.strides, self.dilation_rate
        ho, pt, pb = out_size_and_pads(h, kh, sh, dh, self.padding, "conv2d", "kernel height")
        wo, pl, pr = out_size_and_pads(w_, kw, sw, dw_, self.padding, "conv2d", "kernel width")
        return h, w_, c, ho, wo, (pt, pb, pl, pr)

    def _geom(self, s: TensorShape) -> str:
        pads = self._geometry(s)[5]
        return join_ints(self.strides + self.dilation_rate + pads)

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        _, _, _, ho, wo, _ = self._geometry(s)
        return (image_shape(s, self.data_format, ho, wo, self.filters),)

    def weights(self, inputs: Sequence[TensorShape]) -> tuple[WeightSpec, ...]:
        (s,) = inputs
        c = self._geometry(s)[2]
        kh, kw = self.kernel_size
        ws = [WeightSpec("kernel", TensorShape((kh, kw, c // self.groups, self.filters), s.dtype),
                         self.kernel_initializer)]
        if self.use_bias:
            ws.append(WeightSpec("bias", TensorShape((self.filters,), s.dtype),
                                 self.bias_initializer))
        return tuple(ws)

    def saved(self, inputs: Sequence[TensorShape]) -> tuple[SavedSpec, ...]:
        return (SavedSpec("preact", self.infer_outputs(inputs)[0]),) if self.fused else ()

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        (s,) = inputs
        _, _, c, ho, wo, _ = self._geometry(s)
        kh, kw = self.kernel_size
        out = self.infer_outputs(inputs)
        n = 2 * s.dims[0] * ho * wo * self.filters * (c // self.groups) * kh * kw
        return n + (act.Activation(self.activation).flops(out) if self.fused else 0)

    # --- parallelism ----------------------------------------------------------------------------
    def _group_extent(self, c: int) -> int:
        """The largest degree d such that every degree up to d tiles the input channels (c) and
        the output channels into pieces of the same whole groups (the executor tiles each dim by
        ceil(size / degree))."""
        cg, fg = c // self.groups, self.filters // self.groups
        if cg == fg == 1:  # depthwise, one filter per channel: the two dims tile alike
            return self.groups
        best = 1
        for d in range(2, self.groups + 1):
            pieces = tile_count(c, d)
            tx, ty = ceil_div(c, pieces), ceil_div(self.filters, pieces)
            if tile_count(self.filters, d) != pieces or tx % cg or ty != tx // cg * fg:
                break
            best = d
        return best

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        (s,) = inputs
        c = self._geometry(s)[2]
        dims = [sample_dim(s)]
        out = self.filters if self.groups == 1 else self._group_extent(c)
        if self.activation != "softmax" and out > 1:  # a fused softmax needs whole rows
            dims.append(ParallelDim(OUT, DimKind.PARAMETER, out))
        if self.groups == 1 and not self.fused:  # an activation of a partial sum is wrong
            dims.append(ParallelDim(IN, DimKind.REDUCTION, c))
        ho, wo = self._geometry(s)[3:5]
        if ho > 1:
            dims.append(ParallelDim(HEIGHT, DimKind.ATTRIBUTE, ho))
        # a fused softmax normalises the last dim: the width of a channels_first output
        if wo > 1 and not (self.activation == "softmax" and self.channels_first):
            dims.append(ParallelDim(WIDTH, DimKind.ATTRIBUTE, wo))
        return tuple(dims)

    def _image(self, ref: Ref, axis: str) -> Arg:
        """An image batch split by samples and, along its channels, by `axis` (its H and W
        whole: the input and its gradient under a spatial split)."""
        return Arg.by_sample(ref, 4, {channel_dim(self.data_format): axis})

    def _output(self, ref: Ref) -> Arg:
        """The output (or its gradient, or preact): samples, OUT channels, spatial tiles."""
        return Arg.by_sample(ref, 4, {channel_dim(self.data_format): OUT}
                             | spatial_axes(self.data_format))

    def _input(self, ref: Ref) -> Arg:
        """The input (or its gradient): its channels are contracted (IN) with one group, and go
        with their groups' outputs (OUT) with several."""
        return self._image(ref, IN if self.groups == 1 else OUT)

    def _input_tiles(self, ref: Ref) -> Arg:
        """The input's gradient as the backward computes it: also tiled by the spatial axes
        (rows / columns of the input)."""
        return Arg.by_sample(ref, 4, {channel_dim(self.data_format):
                                      IN if self.groups == 1 else OUT}
                             | spatial_axes(self.data_format))

    def _kernel(self, ref: Ref) -> Arg:
        return Arg(ref, (None, None, IN if self.groups == 1 else None, OUT))

    def _windowed(self, arg: Arg, s: TensorShape, forward: bool) -> Windowed:
        """`arg` (whole along H and W) read, under a spatial split, only through the window its
        point's tile needs: forward, the input rows / columns an output tile reads; else the
        d_out rows / columns reaching an input tile."""
        h, w_, _, ho, wo, pads = self._geometry(s)
        return Windowed(arg.ref, arg.split, halo_windows(
            self.data_format, (h, w_), (ho, wo), self.kernel_size, self.strides,
            self.dilation_rate, pads, forward))

    def _hw_scalars(self, s: TensorShape) -> dict[str, str]:
        h, w_, _, ho, wo, _ = self._geometry(s)
        return {"in_hw": join_ints((h, w_)), "out_hw": join_ints((ho, wo))}

    # --- launches -----------------------------------------------------------------------------
    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        (s,) = inputs
        scal = {"geom": self._geom(s), "channels_first": self.channels_first,
                "use_bias": self.use_bias, "in_hw": self._hw_scalars(s)["in_hw"]}
        args = {"x": self._windowed(self._input(x(0)), s, True),
                "kernel": self._kernel(w("kernel")),
                # unused without bias: the kernel stands in
                "bias": Arg(w("bias"), (OUT,)) if self.use_bias else self._kernel(w("kernel")),
                "y": self._output(y(0))}
        if self.fused:
            return [Launch(conv2d_forward_act, args | {"preact": self._output(saved("preact"))},
                           scal | {"fn": self.activation})]
        return [Launch(conv2d_forward, args, scal | {"grouped": self.groups > 1})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        (s,) = inputs
        scal = {"geom": self._geom(s), "channels_first": self.channels_first, "fn": self.activation,
                "in_hw": self._hw_scalars(s)["in_hw"]}
        # without an activation the kernels read neither preact nor y: dy (already an argument)
        # stands in for both, so no extra store is mapped
        d_out = self._output(dy(0))
        pre = {"preact": self._output(saved("preact")) if self.fused else d_out,
               "y": self._output(y(0)) if self.fused else d_out, "dy": d_out}
        launches = []
        if needs_input_grad[0]:
            # dx tiled by the spatial axes; each point reads the d_out (and preact, y) rows and
            # columns whose windows reach its input tile, and computes its tile's gradient
            def reach(ref: Ref) -> Windowed:
                return self._windowed(self._image(ref, OUT), s, False)

            d_out_win = reach(dy(0))
            launches.append(Launch(conv2d_backward_input,
                                   {"preact": reach(saved("preact")) if self.fused else d_out_win,
                                    "y": reach(y(0)) if self.fused else d_out_win,
                                    "dy": d_out_win, "kernel": self._kernel(w("kernel")),
                                    "dx": self._input_tiles(dx(0))},
                                   scal | self._hw_scalars(s)))
        args = pre | {"x": self._windowed(self._input(x(0)), s, True),
                      "dkernel": self._kernel(dw("kernel"))}
        if self.use_bias:
            launches.append(Launch(conv2d_backward_kernel_bias,
                                   args | {"dbias": Arg(dw("bias"), (OUT,))},
                                   scal | {"grouped": self.groups > 1}))
        else:
            launches.append(Launch(conv2d_backward_kernel, args, scal))
        return launches
