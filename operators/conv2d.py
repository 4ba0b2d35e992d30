"""Conv2D (Keras Conv2D): a grouped, strided, dilated 2-D convolution with a fused activation.

Layouts follow Keras: the input is (batch, H, W, C) (channels_last, the default) or
(batch, C, H, W) (channels_first); the kernel is (kh, kw, C / groups, filters), the bias
(filters,). Output channel o belongs to group o // (filters / groups), which reads input channels
[g * C/groups, (g + 1) * C/groups) - the same grouping as TensorFlow and PyTorch.

Padding "same" is TensorFlow's: output size ceil(in / stride), total padding
max((out - 1) * stride + (k - 1) * dilation + 1 - in, 0), the odd pixel at the bottom / right.

Kernels work on (batch, H, W, C) views and proceed in chunks of samples (bounded scratch):
forward builds the im2col matrix from a strided window view of the padded input and multiplies
it by the kernel (one batched matmul over groups); the kernel gradient is cols^T @ d_out; the
input gradient multiplies d_out by the kernel^T and scatters the columns back with one strided
add per kernel tap (col2im). Under a spatial split a point computes an output tile from the
input window it needs (`Window`: strides, dilation and padding), and that window (its tile plus
the halo) is all it receives of the input. As in
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
from typing import Any, Iterator, Sequence

import numpy as np

from . import activation as act
from .base import (Arg, DimKind, In, Launch, Operator, OperatorError, Origin, Out, ParallelDim, Ref,
                   SavedSpec, Sum, TensorShape, WeightSpec, ceil_div, dw, dx, dy, kernel,
                   origin_of, sample_dim, saved, tile_count, w, x, y)
from .spatial import (Reach, Windowed, channel_dim, check_data_format, check_padding, image_shape,
                      join_ints, nhwc, out_size_and_pads, pair, parse_hw, parse_ints, piece_start,
                      sources,
                      spatial_dims, tap, windows)

# Upper bound on the elements of one chunk's im2col matrix (the kernels' main scratch).
_CHUNK_ELEMENTS = 1 << 23
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
        out = np.full((xs.shape[0], self.r1 - self.r0, self.c1 - self.c0, xs.shape[3]), value,
                      dtype=xs.dtype)
        if self.a1 > self.a0 and self.b1 > self.b0:
            out[self._local()] = xs[:, self.a0 - r:self.a1 - r, self.b0 - c:self.b1 - c]
        return out

    def zeros(self, b: int, c: int, dtype: Any) -> np.ndarray:
        return np.zeros((b, self.r1 - self.r0, self.c1 - self.c0, c), dtype=dtype)

    def write(self, dxs: np.ndarray, dwin: np.ndarray, t0: int = 0, u0: int = 0) -> None:
        """dxs (NHWC), the tile of the input whose first pixel is at row t0, column u0 = the
        window's gradient `dwin` where they overlap, zero elsewhere (padding dropped)."""
        dxs[...] = 0
        a0, a1 = max(self.a0, t0), min(self.a1, t0 + dxs.shape[1])
        b0, b1 = max(self.b0, u0), min(self.b1, u0 + dxs.shape[2])
        if a1 > a0 and b1 > b0:
            dxs[:, a0 - t0:a1 - t0, b0 - u0:b1 - u0] = dwin[:, a0 - self.r0:a1 - self.r0,
                                                           b0 - self.c0:b1 - self.c0]


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

    def cols(self, xp: np.ndarray, rows: slice, ho: int, wo: int) -> np.ndarray:
        """im2col of samples `rows`: (N, kh*kw*C) with one group, else (G, N, kh*kw*C/G)."""
        win = windows(xp[rows], self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, ho, wo)
        b = win.shape[0]
        n = b * ho * wo
        if self.groups == 1:
            return win.reshape(n, self.kh * self.kw * self.cg)
        win = win.reshape(b, ho, wo, self.kh, self.kw, self.groups, self.cg)
        return win.transpose(5, 0, 1, 2, 3, 4, 6).reshape(self.groups, n, -1)

    def grouped_kernel(self, k: np.ndarray) -> np.ndarray:
        """The kernel as (K, Cout) with one group, else (G, K, Cout/G)."""
        if self.groups == 1:
            return k.reshape(-1, self.cout)
        kg = k.reshape(self.kh, self.kw, self.cg, self.groups, self.coutg)
        return kg.transpose(3, 0, 1, 2, 4).reshape(self.groups, -1, self.coutg)

    def ungroup_kernel(self, kg: np.ndarray) -> np.ndarray:
        """Inverse of grouped_kernel: back to (kh, kw, C/G, Cout)."""
        if self.groups == 1:
            return kg.reshape(self.kh, self.kw, self.cg, self.cout)
        k = kg.reshape(self.groups, self.kh, self.kw, self.cg, self.coutg)
        return k.transpose(1, 2, 3, 0, 4).reshape(self.kh, self.kw, self.cg, self.cout)

    def matmul(self, cols: np.ndarray, kg: np.ndarray) -> np.ndarray:
        """cols @ kernel as (N, Cout)."""
        out = cols @ kg
        if self.groups == 1:
            return out
        return out.transpose(1, 0, 2).reshape(out.shape[1], self.cout)

    def group_rows(self, g2: np.ndarray) -> np.ndarray:
        """(N, Cout) as (N, Cout) with one group, else (G, N, Cout/G)."""
        if self.groups == 1:
            return g2
        return g2.reshape(-1, self.groups, self.coutg).transpose(1, 0, 2)


def _window(g: "_Geometry", xs: np.ndarray, in_hw: tuple[int, int], start: tuple[int, int],
            ho: int, wo: int) -> Window:
    """The window of an input of in_hw (rows, columns) that the output tile at `start` reads."""
    return Window((xs.shape[0], *in_hw, xs.shape[3]), g.pads, start[0], start[1], ho, wo, g.kh,
                  g.kw, g.sh, g.sw, g.dh, g.dw)


def _forward_into(x: np.ndarray, k: np.ndarray, bias: np.ndarray | None, out: np.ndarray,
                  geom: str, channels_first: bool, start: tuple[int, int], in_hw: str) -> None:
    """out (output layout) = conv(x) + bias; `out` is the output tile whose first pixel is at
    `start` (row, column) of the whole output, `x` the input's piece: whole along H and W, or
    (under a spatial split) the window the tile reads."""
    xs = nhwc(x, channels_first)
    os_ = nhwc(out, channels_first)
    g = _Geometry(geom, k.shape, xs.shape[3])
    ho, wo = os_.shape[1:3]
    xp = _window(g, xs, parse_hw(in_hw), start, ho, wo).read(xs)
    kg = g.grouped_kernel(k)
    for rows in _chunks(xs.shape[0], ho * wo * k.size // g.coutg):
        res = g.matmul(g.cols(xp, rows, ho, wo), kg)
        if bias is not None:
            res += bias
        os_[rows] = res.reshape(-1, ho, wo, g.cout)


def _d_preact(preact: np.ndarray, out: np.ndarray, d_out: np.ndarray, fn: str) -> np.ndarray:
    if fn == "linear":
        return d_out
    g = act.grad(fn, preact.astype(np.float64), out.astype(np.float64), d_out.astype(np.float64))
    return g.astype(d_out.dtype)


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
    y[...] = act.apply(fn, preact.astype(np.float64))


@kernel
def conv2d_backward_input(preact: In, y: In, dy: In, kernel: In, dx: Out, origin: Origin,
                          geom: str, channels_first: bool, fn: str, in_hw: str,
                          out_hw: str) -> None:
    """A tile of dx (under a spatial split: rows / columns of the input) from the region of d_out
    whose windows reach it (d_out, preact and y: whole along H and W, or exactly that region)."""
    _input_grad_into(preact, y, dy, kernel, dx, origin_of(origin, "dx", 4), geom,
                     channels_first, fn, parse_hw(in_hw), parse_hw(out_hw))


def _input_grad_into(preact: np.ndarray, y: np.ndarray, dy: np.ndarray, kernel: np.ndarray,
                     dx: np.ndarray, origin: tuple[int, ...], geom: str, channels_first: bool,
                     fn: str, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    dxs = nhwc(dx, channels_first)
    b, _, _, c = dxs.shape
    g = _Geometry(geom, kernel.shape, c)
    found = input_grad_window(dxs, nhwc(dy, channels_first), origin, channels_first, in_hw,
                              out_hw, (g.kh, g.kw), (g.sh, g.sw), (g.dh, g.dw), g.pads)
    if found is None:
        return
    win, (t0, u0), local = found
    # in the stores' own layout: a fused softmax normalises their last dim
    native = (local[0], local[3], local[1], local[2]) if channels_first else local
    gs = nhwc(_d_preact(preact[native], y[native], dy[native], fn), channels_first)
    ho, wo = gs.shape[1:3]
    kgt = g.grouped_kernel(kernel)
    kgt = kgt.T if g.groups == 1 else kgt.transpose(0, 2, 1)
    dxp = win.zeros(b, c, dx.dtype)
    for rows in _chunks(b, ho * wo * kernel.size // g.coutg):
        g2 = g.group_rows(gs[rows].reshape(-1, g.cout))
        dcols = g2 @ kgt                                   # (N, K) or (G, N, K/G-ish)
        nb = rows.stop - rows.start
        if g.groups == 1:
            dcols = dcols.reshape(nb, ho, wo, g.kh, g.kw, c)
        else:
            dcols = dcols.reshape(g.groups, nb, ho, wo, g.kh, g.kw, g.cg)
            dcols = dcols.transpose(1, 2, 3, 4, 5, 0, 6).reshape(nb, ho, wo, g.kh, g.kw, c)
        part = dxp[rows]
        for i in range(g.kh):
            for j in range(g.kw):
                part[tap(i, j, g.sh, g.sw, g.dh, g.dw, ho, wo)] += dcols[:, :, :, i, j, :]
    win.write(dxs, dxp, t0, u0)


def _weight_grads(x: np.ndarray, gout: np.ndarray, dkernel: np.ndarray, dbias: np.ndarray | None,
                  geom: str, channels_first: bool, start: tuple[int, int], in_hw: str) -> None:
    """Add the kernel's (and bias') gradient from the output tile `gout` at `start`: under a
    spatial split, each point's share of a sum over the tiles (`x`: whole along H and W, or the
    window the tile reads)."""
    xs = nhwc(x, channels_first)
    gs = nhwc(gout, channels_first)
    g = _Geometry(geom, dkernel.shape, xs.shape[3])
    ho, wo = gs.shape[1:3]
    xp = _window(g, xs, parse_hw(in_hw), start, ho, wo).read(xs)
    acc = None
    for rows in _chunks(xs.shape[0], ho * wo * dkernel.size // g.coutg):
        cols = g.cols(xp, rows, ho, wo)
        g2 = gs[rows].reshape(-1, g.cout)
        part = (cols.T if g.groups == 1 else cols.transpose(0, 2, 1)) @ g.group_rows(g2)
        acc = part if acc is None else acc + part
        if dbias is not None:
            dbias += g2.sum(axis=0)
    if acc is not None:
        dkernel += g.ungroup_kernel(acc)


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


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise OperatorError(f"conv2d: {what} must be a positive integer, got {value!r}")
    return int(value)


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

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("filters", _positive_int(self.filters, "filters"))
        set_("groups", _positive_int(self.groups, "groups"))
        set_("kernel_size", pair(self.kernel_size, "kernel_size", "conv2d"))
        set_("strides", pair(self.strides, "strides", "conv2d"))
        set_("dilation_rate", pair(self.dilation_rate, "dilation_rate", "conv2d"))
        set_("padding", check_padding(self.padding, "conv2d"))
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
