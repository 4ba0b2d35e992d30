"""2-D pooling (Keras MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D).

Windows, strides and "same" padding follow Keras / TensorFlow: "same" gives ceil(in / stride)
outputs with the odd padding pixel at the bottom / right; max pooling never picks a padding
pixel, and average pooling divides by the number of real (non-padding) pixels in each window.

Kernels loop over the window's taps with strided slices of a (batch, H, W, C) view:
max pooling keeps, per output, the index of the first tap holding the maximum (saved "argmax",
int32), so backward routes each gradient to exactly that input (PyTorch's choice on ties, too);
average pooling backward spreads d_out / count over each window.

Parallel forms: "sample" and "channels" (ATTRIBUTE: pooling is per channel, so the input, the
output and the saved argmax are split alike); "height" and "width" (ATTRIBUTE: the output's rows
and columns; the output, argmax and d_out are tiled and, as Conv2D's spatial split, each point
receives only the input window its tile pools (its tile plus the halo); backward tiles the input
gradient by the same axes over the input's rows / columns, each point receiving only the d_out
and argmax region whose windows reach its tile and adding, in the unsplit order, its
contributions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .base import (Arg, DimKind, In, Launch, Operator, OperatorError, Origin, Out, ParallelDim,
                   Ref, SavedSpec, TensorShape, dx, dy, kernel, origin_of, saved, x, y)
from .conv2d import (HEIGHT, WIDTH, Window, halo_windows, input_grad_window, spatial_axes,
                     tile_start)
from .spatial import (CHANNELS, Windowed, by_channel, channel_dim, channel_dims, check_data_format,
                      check_padding, image_shape, join_ints, nhwc, out_size_and_pads, pair,
                      parse_hw, parse_ints, spatial_dims, tap)
from unity_legion.pcg.tensor import DataType


def _geometry(geom: str) -> tuple[int, int, int, int, tuple[int, ...]]:
    kh, kw, sh, sw, pt, pb, pl, pr = parse_ints(geom)
    return kh, kw, sh, sw, (pt, pb, pl, pr)


def _window(geom: str, xs: np.ndarray, in_hw: str, origin: tuple[int, ...],
            channels_first: bool, ho: int, wo: int) -> Window:
    """The window of the input (of in_hw rows, columns) that the output tile at `origin` (its
    global origin) of ho x wo reads; NHWC `xs` is the point's piece of the input (whole along H
    and W, or that window)."""
    kh, kw, sh, sw, pads = _geometry(geom)
    oh0, ow0 = tile_start(origin, channels_first)
    return Window((xs.shape[0], *parse_hw(in_hw), xs.shape[3]), pads, oh0, ow0, ho, wo, kh, kw, sh,
                  sw, 1, 1)


@kernel
def maxpool_forward(x: In, y: Out, argmax: Out, origin: Origin, geom: str,
                    channels_first: bool, in_hw: str) -> None:
    kh, kw, sh, sw, pads = _geometry(geom)
    xs = nhwc(x, channels_first)
    ys, arg = nhwc(y, channels_first), nhwc(argmax, channels_first)
    ho, wo = ys.shape[1:3]
    xp = _window(geom, xs, in_hw, origin_of(origin, "y", 4), channels_first, ho, wo).read(
        xs, -np.inf)
    best = xp[tap(0, 0, sh, sw, 1, 1, ho, wo)].copy()
    arg[...] = 0
    for t in range(1, kh * kw):
        v = xp[tap(t // kw, t % kw, sh, sw, 1, 1, ho, wo)]
        better = v > best  # strictly: the first maximum wins ties
        np.copyto(best, v, where=better)
        np.copyto(arg, t, where=better)
    ys[...] = best


def _input_grad_tile(dx: np.ndarray, dy: np.ndarray, origin: tuple[int, ...], geom: str,
                     channels_first: bool, in_hw: str, out_hw: str
                     ) -> tuple[np.ndarray, Window, tuple[int, int], tuple[slice, ...]] | None:
    """The NHWC tile of dx and, as `input_grad_window`, the window of the d_out region reaching
    it, the tile's start and that region inside the NHWC piece of d_out; None: no output
    reaches the tile, which is zeroed."""
    kh, kw, sh, sw, pads = _geometry(geom)
    dxs = nhwc(dx, channels_first)
    found = input_grad_window(dxs, nhwc(dy, channels_first), origin_of(origin, "dx", 4),
                              channels_first, parse_hw(in_hw), parse_hw(out_hw), (kh, kw),
                              (sh, sw), (1, 1), pads)
    return None if found is None else (dxs, *found)


@kernel
def maxpool_backward(dy: In, argmax: In, dx: Out, origin: Origin, geom: str,
                     channels_first: bool, in_hw: str, out_hw: str) -> None:
    """A tile of dx (rows / columns of the input under a spatial split) from the region of
    d_out (and argmax: whole along H and W, or exactly that region) whose windows reach it."""
    found = _input_grad_tile(dx, dy, origin, geom, channels_first, in_hw, out_hw)
    if found is None:
        return
    dxs, win, (t0, u0), region = found
    kh, kw, sh, sw, _ = _geometry(geom)
    gs, arg = nhwc(dy, channels_first)[region], nhwc(argmax, channels_first)[region]
    b, ho, wo, c = gs.shape
    dxp = win.zeros(b, c, dx.dtype)
    zero = dx.dtype.type(0)
    for t in range(kh * kw):
        dxp[tap(t // kw, t % kw, sh, sw, 1, 1, ho, wo)] += np.where(arg == t, gs, zero)
    win.write(dxs, dxp, t0, u0)


def _counts(h: int, w_: int, kh: int, kw: int, sh: int, sw: int, win: Window, ho: int,
            wo: int) -> np.ndarray:
    """Real (non-padding) pixels per window of the output tile `win` reads, as (1, ho, wo, 1)
    float64."""
    ones = win.read(np.ones((1, h, w_, 1)), 0.0)
    count = np.zeros((1, ho, wo, 1))
    for i in range(kh):
        for j in range(kw):
            count += ones[tap(i, j, sh, sw, 1, 1, ho, wo)]
    return count


@kernel
def avgpool_forward(x: In, y: Out, origin: Origin, geom: str, channels_first: bool,
                    in_hw: str) -> None:
    kh, kw, sh, sw, _ = _geometry(geom)
    xs, ys = nhwc(x, channels_first), nhwc(y, channels_first)
    ho, wo = ys.shape[1:3]
    win = _window(geom, xs, in_hw, origin_of(origin, "y", 4), channels_first, ho, wo)
    xp = win.read(xs)
    acc = xp[tap(0, 0, sh, sw, 1, 1, ho, wo)].astype(np.float64)
    for t in range(1, kh * kw):
        acc += xp[tap(t // kw, t % kw, sh, sw, 1, 1, ho, wo)]
    acc /= _counts(*parse_hw(in_hw), kh, kw, sh, sw, win, ho, wo)
    ys[...] = acc


@kernel
def avgpool_backward(dy: In, dx: Out, origin: Origin, geom: str, channels_first: bool,
                     in_hw: str, out_hw: str) -> None:
    """As maxpool_backward: a tile of dx from the d_out region reaching it."""
    found = _input_grad_tile(dx, dy, origin, geom, channels_first, in_hw, out_hw)
    if found is None:
        return
    dxs, win, (t0, u0), region = found
    kh, kw, sh, sw, _ = _geometry(geom)
    gs = nhwc(dy, channels_first)[region]
    b, ho, wo, c = gs.shape
    h, w_ = parse_hw(in_hw)
    share = (gs / _counts(h, w_, kh, kw, sh, sw, win, ho, wo)).astype(dx.dtype)
    dxp = win.zeros(b, c, dx.dtype)
    for t in range(kh * kw):
        dxp[tap(t // kw, t % kw, sh, sw, 1, 1, ho, wo)] += share
    win.write(dxs, dxp, t0, u0)


@dataclass(frozen=True)
class Pool2D(Operator):
    """Max or average pooling over (pool_size) windows; strides None means pool_size."""

    mode: str                     # "max" or "avg"
    pool_size: Any = (2, 2)
    strides: Any = None
    padding: str = "valid"
    data_format: str = "channels_last"

    op_type = "pool2d"
    num_inputs = 1

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if self.mode not in ("max", "avg"):
            raise OperatorError(f"pool2d: mode must be 'max' or 'avg', got {self.mode!r}")
        what = f"{self.mode}_pool2d"
        set_("pool_size", pair(self.pool_size, "pool_size", what))
        set_("strides", self.pool_size if self.strides is None else pair(self.strides, "strides", what))
        set_("padding", check_padding(self.padding, what))
        set_("data_format", check_data_format(self.data_format, what))

    @property
    def name(self) -> str:
        return f"{self.mode}_pool2d"

    def _geometry(self, s: TensorShape) -> tuple[int, int, int, tuple[int, ...]]:
        h, w_, c = spatial_dims(s, self.data_format, self.name)
        (kh, kw), (sh, sw) = self.pool_size, self.strides
        ho, pt, pb = out_size_and_pads(h, kh, sh, 1, self.padding, self.name, "pool height")
        wo, pl, pr = out_size_and_pads(w_, kw, sw, 1, self.padding, self.name, "pool width")
        return ho, wo, c, (pt, pb, pl, pr)

    def _scalars(self, s: TensorShape) -> dict[str, Any]:
        pads = self._geometry(s)[3]
        h, w_, _ = spatial_dims(s, self.data_format, self.name)
        return {"geom": join_ints(self.pool_size + self.strides + pads),
                "channels_first": self.data_format == "channels_first",
                "in_hw": join_ints((h, w_))}

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        ho, wo, c, _ = self._geometry(s)
        return (image_shape(s, self.data_format, ho, wo, c),)

    def saved(self, inputs: Sequence[TensorShape]) -> tuple[SavedSpec, ...]:
        if self.mode != "max":
            return ()
        out = self.infer_outputs(inputs)[0]
        return (SavedSpec("argmax", TensorShape(out.dims, DataType.INT32)),)

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        kh, kw = self.pool_size
        return self.infer_outputs(inputs)[0].num_elements() * kh * kw

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        ho, wo = self._geometry(inputs[0])[:2]
        spatial = tuple(ParallelDim(axis, DimKind.ATTRIBUTE, size)
                        for axis, size in ((HEIGHT, ho), (WIDTH, wo)) if size > 1)
        return channel_dims(inputs[0], self.data_format, self.name) + spatial

    def _arg(self, ref: Ref) -> Arg:
        """The input (forward), d_out and argmax (backward): samples and channels; H and W
        whole."""
        return by_channel(ref, 4, self.data_format)

    def _windowed(self, ref: Ref, s: TensorShape, forward: bool) -> Windowed:
        """`_arg(ref)` read, under a spatial split, only through the window its point's tile
        needs: forward, the input rows / columns an output tile pools; else the d_out (argmax)
        rows / columns reaching an input tile."""
        h, w_, _ = spatial_dims(s, self.data_format, self.name)
        ho, wo, _, pads = self._geometry(s)
        arg = self._arg(ref)
        return Windowed(arg.ref, arg.split, halo_windows(
            self.data_format, (h, w_), (ho, wo), self.pool_size, self.strides, (1, 1), pads,
            forward))

    def _out(self, ref: Ref) -> Arg:
        """The output and argmax (forward), the input gradient (backward): samples, channels
        and the spatial tiles."""
        return Arg.by_sample(ref, 4, {channel_dim(self.data_format): CHANNELS}
                             | spatial_axes(self.data_format))

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        args = {"x": self._windowed(x(0), inputs[0], True), "y": self._out(y(0))}
        if self.mode == "max":
            return [Launch(maxpool_forward, args | {"argmax": self._out(saved("argmax"))},
                           self._scalars(inputs[0]))]
        return [Launch(avgpool_forward, args, self._scalars(inputs[0]))]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        # dx tiled by the spatial axes (the input's rows / columns): each point receives the
        # d_out (and argmax) region reaching its tile and computes its tile from it
        s = inputs[0]
        args = {"dy": self._windowed(dy(0), s, False), "dx": self._out(dx(0))}
        ho, wo = self._geometry(s)[:2]
        scal = self._scalars(s) | {"out_hw": join_ints((ho, wo))}
        if self.mode == "max":
            return [Launch(maxpool_backward,
                           args | {"argmax": self._windowed(saved("argmax"), s, False)}, scal)]
        return [Launch(avgpool_backward, args, scal)]


@kernel
def global_avgpool_forward(x: In, y: Out, channels_first: bool) -> None:
    axes = (2, 3) if channels_first else (1, 2)
    y[...] = x.mean(axis=axes, dtype=np.float64).reshape(y.shape)


@kernel
def global_avgpool_backward(dy: In, dx: Out, channels_first: bool) -> None:
    b, c = dx.shape[0], dx.shape[1 if channels_first else 3]
    hw = dx.shape[2] * dx.shape[3] if channels_first else dx.shape[1] * dx.shape[2]
    share = (dy.reshape(b, c) / hw).astype(dx.dtype)
    dx[...] = share[:, :, None, None] if channels_first else share[:, None, None, :]


@dataclass(frozen=True)
class GlobalAvgPool2D(Operator):
    """Mean over H and W: (batch, C), or (batch, 1, 1, C) / (batch, C, 1, 1) with keepdims."""

    data_format: str = "channels_last"
    keepdims: bool = False

    op_type = "global_avg_pool2d"
    num_inputs = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_format", check_data_format(self.data_format, self.op_type))
        if not isinstance(self.keepdims, (bool, np.bool_)):
            raise OperatorError(f"{self.op_type}: keepdims must be a bool, got {self.keepdims!r}")

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        _, _, c = spatial_dims(s, self.data_format, self.op_type)
        if self.keepdims:
            return (image_shape(s, self.data_format, 1, 1, c),)
        return (s.with_dims((s.dims[0], c)),)

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return inputs[0].num_elements()

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return channel_dims(inputs[0], self.data_format, self.op_type)

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        r, fmt = self.infer_outputs(inputs)[0].rank, self.data_format
        return [Launch(global_avgpool_forward,
                       {"x": by_channel(x(0), 4, fmt), "y": by_channel(y(0), r, fmt)},
                       {"channels_first": self.data_format == "channels_first"})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        r, fmt = self.infer_outputs(inputs)[0].rank, self.data_format
        return [Launch(global_avgpool_backward,
                       {"dy": by_channel(dy(0), r, fmt), "dx": by_channel(dx(0), 4, fmt)},
                       {"channels_first": self.data_format == "channels_first"})]
