"""Conv2DTranspose (Keras Conv2DTranspose): a strided transposed 2-D convolution with a fused
activation (dilation 1, no groups, as the task needs).

Layouts follow Keras: the input is (batch, H, W, C) (channels_last) or (batch, C, H, W); the
kernel is (kh, kw, filters, C), the bias (filters,). Each input pixel (i, j) adds
x[i, j] * kernel to the output window at (i * sh, j * sw): the "full" output has
(H - 1) * sh + kh rows. Keras' padding then keeps a window of it per dim (rows [crop_before,
full - crop_after); a negative crop_after appends zero rows), as Keras' own rule gives:
    "valid": output (H - 1) * sh + max(kh, sh) (+ output_padding where given), nothing cropped
             before;
    "same":  output H * sh (or (H - 1) * sh + kh % 2 + output_padding), the crop before
             kh - 1 - min(ceil(p / 2), kh - 1) for p = sh + kh - 2 (or kh + kh % 2 - 2 +
             output_padding).

Kernels run ATen's transposed convolution (padding 0) and its backward on views of NHWC
pieces (NCHW tensors with channels_last strides), keep the output's window of the full result,
and for backward place d_out back into a zeroed full-size gradient. As Conv2D, a fused
activation keeps the pre-activation (saved "preact").

Parallel forms (launch axes): "sample"; "out" (PARAMETER: the filters, the kernel's dim 2 and
the bias; not with a fused softmax, which needs whole rows); "in" (REDUCTION: the input
channels and the kernel's last dim, each point making a partial sum of the output; no fused
activation; the bias is added, and its gradient counted, by the points holding input channel 0).
The input is read whole by every "out" point (its gradient is then a partial sum).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from . import activation as act
from .base import (Arg, DimKind, In, Launch, Operator, OperatorError, Origin, Out, ParallelDim,
                   Ref, SavedSpec, Sum, TensorShape, WeightSpec, dw, dx, dy, kernel, sample_dim,
                   saved, w, x, y)
from ._aten import aten, nchw, view
from .spatial import (channel_dim, check_data_format, check_padding, image_shape, join_ints, nhwc,
                      pair, parse_ints, positive_int, spatial_dims)

OUT, IN = "out", "in"  # launch axes: the filters, the input (contracted) channels


def transpose_geometry(size: int, k: int, stride: int, padding: str,
                       output_padding: int | None) -> tuple[int, int, int]:
    """(output size, crop before, crop after) along one dim of a transposed convolution of
    `size` inputs: Keras' rule; the full output has (size - 1) * stride + k positions and a
    negative crop after appends zeros."""
    full = (size - 1) * stride + k
    if padding == "valid":
        extra = max(k, stride) - k if output_padding is None else output_padding
        before, after = k - 1, k - 1 + extra
    else:
        total = stride + k - 2 if output_padding is None else k + k % 2 - 2 + output_padding
        before = min(total // 2 + total % 2, k - 1)
        after = total - before
    crop0, crop1 = k - 1 - before, k - 1 - after
    return full - crop0 - crop1, crop0, crop1


def _kept(full: int, out: int, crop0: int) -> int:
    """How many output positions come from the full result (the rest are appended zeros)."""
    return min(out, full - crop0)


def _parse(geom: str) -> tuple[tuple[int, int], tuple[int, int]]:
    sh, sw, ch, cw = parse_ints(geom)
    return (sh, sw), (ch, cw)


def _full(torch: Any, xs: np.ndarray, k: np.ndarray, strides: tuple[int, int]) -> Any:
    """The full transposed convolution of NHWC piece xs by kernel k (kh, kw, filters, C), NCHW."""
    weight = view(k).permute(3, 2, 0, 1)   # (C, filters, kh, kw): ATen's transposed layout
    return torch.convolution(nchw(xs), weight, None, strides, (0, 0), (1, 1), True, (0, 0), 1)


def _forward_into(x: np.ndarray, k: np.ndarray, bias: np.ndarray | None, out: np.ndarray,
                  geom: str, channels_first: bool) -> None:
    strides, (ch, cw) = _parse(geom)
    xs, os_ = nhwc(x, channels_first), nhwc(out, channels_first)
    ho, wo = os_.shape[1:3]
    with aten() as torch:
        full = _full(torch, xs, k, strides)
        nh, nw = _kept(full.shape[2], ho, ch), _kept(full.shape[3], wo, cw)
        yt = nchw(os_)
        if nh < ho or nw < wo:
            yt.zero_()
        yt[:, :, :nh, :nw].copy_(full[:, :, ch:ch + nh, cw:cw + nw])
        if bias is not None:
            yt.add_(view(bias)[None, :, None, None])


def _holds_bias(origin: tuple[int, ...], channels_first: bool) -> bool:
    """Whether this point adds the bias (or its gradient): input channel pieces are a reduction,
    and only the piece holding input channel 0 may."""
    return origin[1 if channels_first else 3] == 0


@kernel
def conv2d_transpose_forward(x: In, kernel: In, bias: In, y: Out, origin: Origin, geom: str,
                             channels_first: bool, use_bias: bool) -> None:
    add = use_bias and _holds_bias(origin, channels_first)
    _forward_into(x, kernel, bias if add else None, y, geom, channels_first)


@kernel
def conv2d_transpose_forward_act(x: In, kernel: In, bias: In, preact: Out, y: Out, geom: str,
                                 channels_first: bool, use_bias: bool, fn: str) -> None:
    _forward_into(x, kernel, bias if use_bias else None, preact, geom, channels_first)
    act.apply_into(fn, preact, y)


def _full_grad(torch: Any, g: np.ndarray, xs: np.ndarray, k_shape: tuple[int, ...],
               strides: tuple[int, int], crops: tuple[int, int]) -> Any:
    """d_out (NHWC g) placed into a zeroed gradient of the full result (NCHW)."""
    b, h, w_, _ = xs.shape
    kh, kw, f, _ = k_shape
    fh, fw = (h - 1) * strides[0] + kh, (w_ - 1) * strides[1] + kw
    ch, cw = crops
    nh, nw = _kept(fh, g.shape[1], ch), _kept(fw, g.shape[2], cw)
    full = view(g).new_zeros((b, f, fh, fw))   # on the piece's device
    full[:, :, ch:ch + nh, cw:cw + nw] = nchw(g)[:, :, :nh, :nw]
    return full


@kernel
def conv2d_transpose_backward_input(preact: In, y: In, dy: In, kernel: In, dx: Out, geom: str,
                                    channels_first: bool, fn: str) -> None:
    strides, crops = _parse(geom)
    g = nhwc(act.grad_of(fn, preact, y, dy), channels_first)
    dxs = nhwc(dx, channels_first)
    with aten() as torch:
        full = _full_grad(torch, g, dxs, kernel.shape, strides, crops)
        weight = view(kernel).permute(3, 2, 0, 1)
        gi = torch.ops.aten.convolution_backward(full, nchw(dxs), weight, None, strides, (0, 0),
                                                 (1, 1), True, (0, 0), 1, (True, False, False))[0]
        nchw(dxs).copy_(gi)


def _weight_grads(x: np.ndarray, g: np.ndarray, dkernel: np.ndarray, dbias: np.ndarray | None,
                  geom: str, channels_first: bool) -> None:
    strides, crops = _parse(geom)
    xs, gs = nhwc(x, channels_first), nhwc(g, channels_first)
    with aten() as torch:
        full = _full_grad(torch, gs, xs, dkernel.shape, strides, crops)
        dk = view(dkernel).permute(3, 2, 0, 1)   # (C, filters, kh, kw)
        stand_in = dk.new_empty(dk.shape)  # the weight's values are not read
        gw = torch.ops.aten.convolution_backward(full, nchw(xs), stand_in, None, strides, (0, 0),
                                                 (1, 1), True, (0, 0), 1, (False, True, False))[1]
        dk.add_(gw)
        if dbias is not None:
            view(dbias).add_(nchw(gs).sum((0, 2, 3)))


@kernel
def conv2d_transpose_backward_kernel(x: In, preact: In, y: In, dy: In, dkernel: Sum, geom: str,
                                     channels_first: bool, fn: str) -> None:
    _weight_grads(x, act.grad_of(fn, preact, y, dy), dkernel, None, geom, channels_first)


@kernel
def conv2d_transpose_backward_kernel_bias(x: In, preact: In, y: In, dy: In, dkernel: Sum,
                                          dbias: Sum, origin: Origin, geom: str,
                                          channels_first: bool, fn: str) -> None:
    bias = dbias if _holds_bias(origin, channels_first) else None
    _weight_grads(x, act.grad_of(fn, preact, y, dy), dkernel, bias, geom, channels_first)


@dataclass(frozen=True)
class Conv2DTranspose(Operator):
    filters: int
    kernel_size: Any
    strides: Any = (1, 1)
    padding: str = "valid"
    output_padding: Any = None
    data_format: str = "channels_last"
    activation: str = "linear"
    use_bias: bool = True
    kernel_initializer: str = "glorot_uniform"
    bias_initializer: str = "zeros"

    op_type = "conv2d_transpose"
    num_inputs = 1
    cost_family = "conv2d"         # the same ATen convolution kernels, compute-bound
    flops_efficiency = 0.5

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(4, 3, 2, "same"), (TensorShape((2, 4, 4, 3)),)),
            (cls(2, 2, activation="relu", use_bias=False), (TensorShape((2, 3, 3, 2)),)),
        )

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        op = self.op_type
        set_("filters", positive_int(self.filters, "filters", op))
        set_("kernel_size", pair(self.kernel_size, "kernel_size", op))
        set_("strides", pair(self.strides, "strides", op))
        set_("padding", check_padding(self.padding, op))
        set_("data_format", check_data_format(self.data_format, op))
        set_("activation", act.check_activation(self.activation))
        if self.output_padding is not None:
            set_("output_padding", pair(self.output_padding, "output_padding", op, minimum=0))
            if any(p >= s for p, s in zip(self.output_padding, self.strides)):
                raise OperatorError(f"{op}: output_padding {self.output_padding} must be less "
                                    f"than strides {self.strides} in each dim")

    @property
    def fused(self) -> bool:
        return self.activation != "linear"

    @property
    def channels_first(self) -> bool:
        return self.data_format == "channels_first"

    def _geometry(self, s: TensorShape) -> tuple[int, int, int, tuple[int, int, int, int]]:
        """(C, Ho, Wo, (crop top, crop bottom, crop left, crop right)) of input `s`."""
        h, w_, c = spatial_dims(s, self.data_format, self.op_type)
        pads = self.output_padding or (None, None)
        ho, ct, cb = transpose_geometry(h, self.kernel_size[0], self.strides[0], self.padding,
                                        pads[0])
        wo, cl, cr = transpose_geometry(w_, self.kernel_size[1], self.strides[1], self.padding,
                                        pads[1])
        return c, ho, wo, (ct, cb, cl, cr)

    def _geom(self, s: TensorShape) -> str:
        ct, _, cl, _ = self._geometry(s)[3]
        return join_ints(self.strides + (ct, cl))

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        _, ho, wo, _ = self._geometry(s)
        return (image_shape(s, self.data_format, ho, wo, self.filters),)

    def weights(self, inputs: Sequence[TensorShape]) -> tuple[WeightSpec, ...]:
        (s,) = inputs
        c = self._geometry(s)[0]
        kh, kw = self.kernel_size
        ws = [WeightSpec("kernel", TensorShape((kh, kw, self.filters, c), s.dtype),
                         self.kernel_initializer)]
        if self.use_bias:
            ws.append(WeightSpec("bias", TensorShape((self.filters,), s.dtype),
                                 self.bias_initializer))
        return tuple(ws)

    def saved(self, inputs: Sequence[TensorShape]) -> tuple[SavedSpec, ...]:
        return (SavedSpec("preact", self.infer_outputs(inputs)[0]),) if self.fused else ()

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        (s,) = inputs
        h, w_, c = spatial_dims(s, self.data_format, self.op_type)
        kh, kw = self.kernel_size
        n = 2 * s.dims[0] * h * w_ * c * self.filters * kh * kw
        out = self.infer_outputs(inputs)
        return n + (act.Activation(self.activation).flops(out) if self.fused else 0)

    # --- parallelism ----------------------------------------------------------------------------
    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        (s,) = inputs
        c = self._geometry(s)[0]
        dims = [sample_dim(s)]
        if self.activation != "softmax" and self.filters > 1:  # a fused softmax needs whole rows
            dims.append(ParallelDim(OUT, DimKind.PARAMETER, self.filters))
        if not self.fused and c > 1:  # an activation of a partial sum is wrong
            dims.append(ParallelDim(IN, DimKind.REDUCTION, c))
        return tuple(dims)

    def _image(self, ref: Ref, axis: str) -> Arg:
        return Arg.by_sample(ref, 4, {channel_dim(self.data_format): axis})

    def _kernel(self, ref: Ref) -> Arg:
        return Arg(ref, (None, None, OUT, IN))

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        (s,) = inputs
        scal = {"geom": self._geom(s), "channels_first": self.channels_first,
                "use_bias": self.use_bias}
        args = {"x": self._image(x(0), IN), "kernel": self._kernel(w("kernel")),
                # unused without bias: the kernel stands in
                "bias": Arg(w("bias"), (OUT,)) if self.use_bias else self._kernel(w("kernel")),
                "y": self._image(y(0), OUT)}
        if self.fused:
            return [Launch(conv2d_transpose_forward_act,
                           args | {"preact": self._image(saved("preact"), OUT)},
                           scal | {"fn": self.activation})]
        return [Launch(conv2d_transpose_forward, args, scal)]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        (s,) = inputs
        scal = {"geom": self._geom(s), "channels_first": self.channels_first,
                "fn": self.activation}
        # without an activation the kernels read neither preact nor y: dy stands in for both
        d_out = self._image(dy(0), OUT)
        pre = {"preact": self._image(saved("preact"), OUT) if self.fused else d_out,
               "y": self._image(y(0), OUT) if self.fused else d_out, "dy": d_out}
        launches = []
        if needs_input_grad[0]:
            launches.append(Launch(conv2d_transpose_backward_input,
                                   pre | {"kernel": self._kernel(w("kernel")),
                                          "dx": self._image(dx(0), IN)}, scal))
        args = pre | {"x": self._image(x(0), IN), "dkernel": self._kernel(dw("kernel"))}
        if self.use_bias:
            launches.append(Launch(conv2d_transpose_backward_kernel_bias,
                                   args | {"dbias": Arg(dw("bias"), (OUT,))}, scal))
        else:
            launches.append(Launch(conv2d_transpose_backward_kernel, args, scal))
        return launches
