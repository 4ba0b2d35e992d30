"""2-D pooling (Keras MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D).

Windows, strides and "same" padding follow Keras / TensorFlow: "same" gives ceil(in / stride)
outputs with the odd padding pixel at the bottom / right; max pooling never picks a padding
pixel, and average pooling divides by the number of real (non-padding) pixels in each window.

Kernels run PyTorch's ATen pooling operators on views of (batch, H, W, C) pieces (NCHW tensors
with channels_last strides), ATen padding the window itself where its padding is symmetric and
at most half the window, else on a padded copy of the window. Max pooling keeps, per output,
where the first maximum of its window was (saved "argmax", int64: a flat index row * W + column
into the input's unpadded plane, the same whatever the split), so backward routes each gradient
to exactly that input (PyTorch's choice on ties, too); average pooling backward spreads
d_out / count over each window.

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
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from .base import (Arg, DimKind, In, Launch, Operator, OperatorError, Origin, Out, ParallelDim,
                   Ref, SavedSpec, TensorShape, dx, dy, kernel, origin_of, saved, x, y)
from ._aten import Into, aten, nchw, view, xp
from .conv2d import (HEIGHT, WIDTH, Window, crop_into, grad_box, halo_windows, implicit_pads,
                     input_grad_window, reach, spatial_axes, tile_start)
from .spatial import (CHANNELS, Windowed, by_channel, channel_dim, channel_dims, check_data_format,
                      check_padding, image_shape, join_ints, nhwc, out_size_and_pads, pair,
                      parse_hw, parse_ints, spatial_dims, tap)
from unity_legion.types import DataType


@lru_cache(maxsize=1024)
def _geometry(geom: str) -> tuple[int, int, int, int, tuple[int, ...]]:
    kh, kw, sh, sw, pt, pb, pl, pr = parse_ints(geom)
    return kh, kw, sh, sw, (pt, pb, pl, pr)


_hw = lru_cache(maxsize=1024)(parse_hw)


def _window(geom: str, xs: np.ndarray, in_hw: str, origin: tuple[int, ...],
            channels_first: bool, ho: int, wo: int) -> Window:
    """The window of the input (of in_hw rows, columns) that the output tile at `origin` (its
    global origin) of ho x wo reads; NHWC `xs` is the point's piece of the input (whole along H
    and W, or that window)."""
    kh, kw, sh, sw, pads = _geometry(geom)
    oh0, ow0 = tile_start(origin, channels_first)
    return Window((xs.shape[0], *_hw(in_hw), xs.shape[3]), pads, oh0, ow0, ho, wo, kh, kw, sh,
                  sw, 1, 1)


def _to_nchw(t: Any) -> Any:
    return t.permute(0, 3, 1, 2)


def _aten_pads(win: Window, kh: int, kw: int) -> tuple[int, int] | None:
    """The padding ATen's pooling adds itself around the window's part inside the input: the
    same on both sides and at most half the window (ATen's limit); None otherwise (the window
    is then read padded, a copy)."""
    pads = implicit_pads(win)
    if pads is None or pads[0] > kh // 2 or pads[1] > kw // 2:
        return None
    return pads


def _pool_input(win: Window, xs: np.ndarray, out_hw: tuple[int, int], k: tuple[int, int],
                s: tuple[int, int], value: float
                ) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """What ATen pools for window `win` of NHWC piece `xs`: the array, the padding ATen adds
    and the global (row, column) of the array's first pixel. A view of the window's part
    inside the input (with unread positions after it, see `reach`), or the window padded with
    `value` (a copy)."""
    pads = _aten_pads(win, *k)
    if pads is None:
        return win.read(xs, value), (0, 0), (win.r0, win.c0)
    r, c = win.at(xs)
    i0, j0 = win.a0 - r, win.b0 - c
    rows = reach(win.a1 - win.a0, xs.shape[1] - (win.a1 - r), out_hw[0], k[0], s[0], pads[0])
    cols = reach(win.b1 - win.b0, xs.shape[2] - (win.b1 - c), out_hw[1], k[1], s[1], pads[1])
    return xs[:, i0:i0 + rows, j0:j0 + cols], pads, (win.a0, win.b0)


def _grad_region(win: Window, dxs: np.ndarray, t0: int, u0: int, out_hw: tuple[int, int],
                 k: tuple[int, int], s: tuple[int, int]
                 ) -> tuple[np.ndarray, bool, tuple[int, int], tuple[int, int]]:
    """Where ATen writes the input gradient of the d_out region of window `win` for the NHWC
    tile `dxs` at (t0, u0): the array (a view of the tile, the rest of the tile zeroed, or a new
    array to crop from), whether it is aside, ATen's padding and the array's global first
    (row, column). As `_pool_input`: the window's part inside the input padded by ATen, or the
    whole padded window."""
    pads = _aten_pads(win, *k)
    if pads is None:
        pad, r0, c0 = (0, 0), win.r0, win.c0
        rows, cols = win.r1 - win.r0, win.c1 - win.c0
    else:
        pad, r0, c0 = pads, win.a0, win.b0
        rows = reach(win.a1 - win.a0, t0 + dxs.shape[1] - win.a1, out_hw[0], k[0], s[0], pad[0])
        cols = reach(win.b1 - win.b0, u0 + dxs.shape[2] - win.b1, out_hw[1], k[1], s[1], pad[1])
    box, frame = grad_box(dxs.shape, t0, u0, r0, c0, rows, cols)
    if box is None:
        return (xp(dxs).empty((dxs.shape[0], rows, cols, dxs.shape[3]), dxs.dtype), True, pad,
                (r0, c0))
    for sl in frame:
        dxs[sl] = 0
    return dxs[box], False, pad, (r0, c0)


def _plane_index(torch: Any, idx: Any, start: tuple[int, int], width: int, whole: tuple[int, int],
                 clamp: bool = False) -> Any:
    """Flat indices (row * width + column) into an array whose first pixel is global `start`
    as flat indices into the whole input plane (`whole`: rows, columns); `clamp`: indices of
    padding positions move to the nearest real pixel."""
    if start == (0, 0) and width == whole[1] and not clamp:
        return idx
    row = torch.div(idx, width, rounding_mode="floor")
    col = idx - row * width + start[1]
    row += start[0]
    if clamp:
        row.clamp_(0, whole[0] - 1)
        col.clamp_(0, whole[1] - 1)
    return row * whole[1] + col


@kernel
def maxpool_forward(x: In, y: Out, argmax: Out, origin: Origin, geom: str,
                    channels_first: bool, in_hw: str) -> None:
    """y = the window maxima (ATen: the first maximum in the window's row-major order) and
    argmax = where each was, as a flat index row * W + column into the input's (unpadded)
    plane: the same for any split, so backward finds the pixel from any piece."""
    kh, kw, sh, sw, _ = _geometry(geom)
    xs = nhwc(x, channels_first)
    ys, arg = nhwc(y, channels_first), nhwc(argmax, channels_first)
    ho, wo = ys.shape[1:3]
    win = _window(geom, xs, in_hw, origin_of(origin, "y", 4), channels_first, ho, wo)
    xin, pad, start = _pool_input(win, xs, (ho, wo), (kh, kw), (sh, sw), -np.inf)
    whole = _hw(in_hw)
    clamp = pad == (0, 0) and not win.inside
    with aten() as torch:
        yt = Into(ys, _to_nchw)
        # ATen's indices are into xin's plane: the input's plane when xin is whole rows of it
        direct = start == (0, 0) and xin.shape[2] == whole[1] and not clamp
        it = Into(arg, _to_nchw) if direct else None
        idx = it.t if direct else torch.empty_like(yt.t, dtype=torch.int64)
        torch.ops.aten.max_pool2d_with_indices.out(nchw(xin), (kh, kw), (sh, sw), pad, (1, 1),
                                                   False, out=yt.t, indices=idx)
        yt.done()
        if direct:
            it.done()
        else:
            nchw(arg).copy_(_plane_index(torch, idx, start, xin.shape[2], whole, clamp))


def _input_grad_tile(dx: np.ndarray, dy: np.ndarray, origin: tuple[int, ...], geom: str,
                     channels_first: bool, in_hw: str, out_hw: str
                     ) -> tuple[np.ndarray, Window, tuple[int, int], tuple[slice, ...]] | None:
    """The NHWC tile of dx and, as `input_grad_window`, the window of the d_out region reaching
    it, the tile's start and that region inside the NHWC piece of d_out; None: no output
    reaches the tile, which is zeroed."""
    kh, kw, sh, sw, pads = _geometry(geom)
    dxs = nhwc(dx, channels_first)
    found = input_grad_window(dxs, nhwc(dy, channels_first), origin_of(origin, "dx", 4),
                              channels_first, _hw(in_hw), _hw(out_hw), (kh, kw),
                              (sh, sw), (1, 1), pads)
    return None if found is None else (dxs, *found)


@kernel
def maxpool_backward(dy: In, argmax: In, dx: Out, origin: Origin, geom: str,
                     channels_first: bool, in_hw: str, out_hw: str) -> None:
    """A tile of dx (rows / columns of the input under a spatial split) from the region of
    d_out (and argmax: whole along H and W, or exactly that region) whose windows reach it:
    each gradient goes to the pixel argmax names (ATen adds them up)."""
    found = _input_grad_tile(dx, dy, origin, geom, channels_first, in_hw, out_hw)
    if found is None:
        return
    dxs, win, (t0, u0), region = found
    kh, kw, sh, sw, _ = _geometry(geom)
    gs, arg = nhwc(dy, channels_first)[region], nhwc(argmax, channels_first)[region]
    target, aside, pad, (r0, c0) = _grad_region(win, dxs, t0, u0, gs.shape[1:3], (kh, kw),
                                                (sh, sw))
    h, w_ = _hw(in_hw)
    with aten() as torch:
        idx = view(arg)
        if (r0, c0) != (0, 0) or target.shape[2] != w_:  # into the target's own plane
            row = torch.div(idx, w_, rounding_mode="floor")
            idx = (row - r0) * target.shape[2] + (idx - row * w_ - c0)
        tt = Into(target, _to_nchw)  # also stands in for the input: only its shape is read
        torch.ops.aten.max_pool2d_with_indices_backward.grad_input(
            nchw(gs), tt.t, (kh, kw), (sh, sw), pad, (1, 1), False, idx.permute(0, 3, 1, 2),
            grad_input=tt.t)
        tt.done()
    if aside:
        crop_into(dxs, t0, u0, target, r0, c0)


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
    xin, pad, _ = _pool_input(win, xs, (ho, wo), (kh, kw), (sh, sw), 0.0)
    with aten() as torch:
        yt = Into(ys, _to_nchw)
        if pad != (0, 0) or win.inside:  # ATen divides by the real pixels (Keras' rule)
            torch.ops.aten.avg_pool2d.out(nchw(xin), (kh, kw), (sh, sw), pad, False, False,
                                          None, out=yt.t)
        else:  # the window padded by a copy: window sums over the real pixels' counts
            total = torch.ops.aten.avg_pool2d(nchw(xin), (kh, kw), (sh, sw), (0, 0), False,
                                              True, 1)
            count = view(_counts(*_hw(in_hw), kh, kw, sh, sw, win, ho, wo)).permute(0, 3, 1, 2)
            torch.div(total, count.to(total), out=yt.t)  # to total's dtype and device
        yt.done()


@kernel
def avgpool_backward(dy: In, dx: Out, origin: Origin, geom: str, channels_first: bool,
                     in_hw: str, out_hw: str) -> None:
    """As maxpool_backward: a tile of dx from the d_out region reaching it (each window's
    d_out spread over its real pixels)."""
    found = _input_grad_tile(dx, dy, origin, geom, channels_first, in_hw, out_hw)
    if found is None:
        return
    dxs, win, (t0, u0), region = found
    kh, kw, sh, sw, _ = _geometry(geom)
    gs = nhwc(dy, channels_first)[region]
    b, ho, wo, c = gs.shape
    target, aside, pad, (r0, c0) = _grad_region(win, dxs, t0, u0, (ho, wo), (kh, kw), (sh, sw))
    with aten() as torch:
        tt = Into(target, _to_nchw)  # also stands in for the input: only its shape is read
        g = nchw(gs)
        if pad == (0, 0) and not win.inside:  # the padded window: d_out / real pixels, summed
            count = _counts(*_hw(in_hw), kh, kw, sh, sw, win, ho, wo)
            g = g / view(count).permute(0, 3, 1, 2).to(g)  # to g's dtype and device
            torch.ops.aten.avg_pool2d_backward.grad_input(g, tt.t, (kh, kw), (sh, sw), pad,
                                                          False, True, 1, grad_input=tt.t)
        else:
            torch.ops.aten.avg_pool2d_backward.grad_input(g, tt.t, (kh, kw), (sh, sw), pad,
                                                          False, False, None, grad_input=tt.t)
        tt.done()
    if aside:
        crop_into(dxs, t0, u0, target, r0, c0)


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

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls("max"), (TensorShape((2, 8, 8, 3)),)),
        )

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
        # int64: ATen's own index type, written and read by its kernels as they are
        return (SavedSpec("argmax", TensorShape(out.dims, DataType.INT64)),)

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


@dataclass(frozen=True)
class _GlobalPool2D(Operator):
    """What global pooling over H and W shares (GlobalAvgPool2D, GlobalMaxPool2D): the
    attributes, their checks, the shape rules and the parallel forms; a subclass names its
    op_type and its kernels' launches (`_launch`)."""

    data_format: str = "channels_last"
    keepdims: bool = False

    num_inputs = 1

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(), (TensorShape((2, 8, 8, 3)),)),
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_format", check_data_format(self.data_format, self.op_type))
        if not isinstance(self.keepdims, (bool, np.bool_)):
            raise OperatorError(f"{self.op_type}: keepdims must be a bool, got {self.keepdims!r}")

    @property
    def channels_first(self) -> bool:
        return self.data_format == "channels_first"

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

    def _launch(self, inputs: Sequence[TensorShape], kern: Any, *names: str) -> list[Launch]:
        """One launch of `kern` over the named tensors among x, y, dy, dx (x and dx are image
        batches, y and dy the output's rank), split by samples and channels."""
        r, fmt = self.infer_outputs(inputs)[0].rank, self.data_format
        refs = {"x": (x(0), 4), "y": (y(0), r), "dy": (dy(0), r), "dx": (dx(0), 4)}
        return [Launch(kern, {n: by_channel(refs[n][0], refs[n][1], fmt) for n in names},
                       {"channels_first": self.channels_first})]


@kernel
def global_avgpool_forward(x: In, y: Out, channels_first: bool) -> None:
    axes = (2, 3) if channels_first else (1, 2)
    with aten() as torch:
        view(y).copy_(torch.mean(view(x), axes, keepdim=y.ndim == 4))


@kernel
def global_avgpool_backward(dy: In, dx: Out, channels_first: bool) -> None:
    b, c = dx.shape[0], dx.shape[1 if channels_first else 3]
    hw = dx.shape[2] * dx.shape[3] if channels_first else dx.shape[1] * dx.shape[2]
    share = (dy.reshape(b, c) / hw).astype(dx.dtype)
    dx[...] = share[:, :, None, None] if channels_first else share[:, None, None, :]


@dataclass(frozen=True)
class GlobalAvgPool2D(_GlobalPool2D):
    """Mean over H and W: (batch, C), or (batch, 1, 1, C) / (batch, C, 1, 1) with keepdims."""

    op_type = "global_avg_pool2d"

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        return self._launch(inputs, global_avgpool_forward, "x", "y")

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        return self._launch(inputs, global_avgpool_backward, "dy", "dx")
