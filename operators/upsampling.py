"""UpSampling2D (keras.layers.UpSampling2D, interpolation "nearest"): every pixel repeated
size[0] times along H and size[1] times along W.

Forward copies input pixel (i // size[0], j // size[1]) to output pixel (i, j) (a broadcast
view of the input copied into a (batch, h, size[0], w, size[1], C) view of the output, as
Keras' repeat; no index arithmetic in floating point);
backward sums each size[0] x size[1] block of d_out. "bilinear" (and Keras' other
interpolations) are refused with a clear error.

Parallel forms: "sample" and "channels" (ATTRIBUTE: each channel is upsampled alone); every
piece holds whole images, so no communication is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .base import (In, Launch, Operator, OperatorError, Out, ParallelDim, TensorShape, dx, dy,
                   kernel, x, y)
from ._aten import Into, aten, view
from .spatial import (by_channel, channel_dims, check_data_format, image_shape, nhwc, pair,
                      spatial_dims)


@kernel
def upsample_nearest_forward(x: In, y: Out, channels_first: bool) -> None:
    xs, ys = nhwc(x, channels_first), nhwc(y, channels_first)
    b, h, w_, c = xs.shape
    sh, sw = ys.shape[1] // h, ys.shape[2] // w_
    with aten():
        out = Into(ys)  # NHWC, one dense block: its (b, h, sh, w, sw, c) view takes the copies
        src = view(xs)[:, :, None, :, None, :].expand(b, h, sh, w_, sw, c)
        out.t.view(b, h, sh, w_, sw, c).copy_(src)
        out.done()


@kernel
def upsample_nearest_backward(dy: In, dx: Out, channels_first: bool) -> None:
    gs, dxs = nhwc(dy, channels_first), nhwc(dx, channels_first)
    b, h, w_, c = dxs.shape
    sh, sw = gs.shape[1] // h, gs.shape[2] // w_
    with aten():
        blocks = view(gs).reshape(b, h, sh, w_, sw, c)
        view(dxs).copy_(blocks.sum((2, 4)))


@dataclass(frozen=True)
class UpSampling2D(Operator):
    size: Any = (2, 2)
    data_format: str = "channels_last"
    interpolation: str = "nearest"

    op_type = "upsampling2d"
    num_inputs = 1

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(), (TensorShape((2, 4, 4, 3)),)),
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", pair(self.size, "size", self.op_type))
        object.__setattr__(self, "data_format", check_data_format(self.data_format, self.op_type))
        if self.interpolation != "nearest":
            raise OperatorError(f"{self.op_type}: interpolation {self.interpolation!r} is not "
                                f"supported; use 'nearest'")

    @property
    def channels_first(self) -> bool:
        return self.data_format == "channels_first"

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        h, w_, c = spatial_dims(s, self.data_format, self.op_type)
        return (image_shape(s, self.data_format, h * self.size[0], w_ * self.size[1], c),)

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return 0

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return channel_dims(inputs[0], self.data_format, self.op_type)

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        fmt = self.data_format
        return [Launch(upsample_nearest_forward, {"x": by_channel(x(0), 4, fmt),
                                                  "y": by_channel(y(0), 4, fmt)},
                       {"channels_first": self.channels_first})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        fmt = self.data_format
        return [Launch(upsample_nearest_backward, {"dy": by_channel(dy(0), 4, fmt),
                                                   "dx": by_channel(dx(0), 4, fmt)},
                       {"channels_first": self.channels_first})]
