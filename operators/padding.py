"""ZeroPadding2D (Keras ZeroPadding2D): zero rows above / below and columns left / right of
every image of a (batch, H, W, C) or (batch, C, H, W) tensor.

Forward copies the input into the interior of a zeroed output; backward crops d_out.

Parallel forms: "sample" and "channels" (ATTRIBUTE: padding is per channel); every piece holds
whole images, so no communication is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .base import (In, Launch, Operator, OperatorError, Out, ParallelDim, TensorShape, dx, dy,
                   kernel, x, y)
from .spatial import (by_channel, channel_dims, check_data_format, image_shape, join_ints, nhwc,
                      parse_ints, spatial_dims)


def _interior(a: np.ndarray, pads: str, channels_first: bool, h: int, w_: int) -> np.ndarray:
    """The (batch, H, W, C) view of the unpadded interior of a padded piece."""
    pt, _, pl, _ = parse_ints(pads)
    return nhwc(a, channels_first)[:, pt:pt + h, pl:pl + w_]


@kernel
def zero_pad2d_forward(x: In, y: Out, pads: str, channels_first: bool) -> None:
    xs = nhwc(x, channels_first)
    y[...] = 0
    _interior(y, pads, channels_first, xs.shape[1], xs.shape[2])[...] = xs


@kernel
def zero_pad2d_backward(dy: In, dx: Out, pads: str, channels_first: bool) -> None:
    dxs = nhwc(dx, channels_first)
    dxs[...] = _interior(dy, pads, channels_first, dxs.shape[1], dxs.shape[2])


def check_pads(padding: Any, op: str) -> tuple[int, int, int, int]:
    """Keras' forms as (top, bottom, left, right): an int (all four), a pair (symmetric
    height, symmetric width) or a pair of pairs ((top, bottom), (left, right)); each >= 0."""
    def is_int(v: Any) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, np.integer))

    bad = OperatorError(f"{op}: padding must be an int, a tuple of 2 ints or a tuple of 2 tuples "
                        f"of 2 ints ((top, bottom), (left, right)), got {padding!r}")
    if is_int(padding):
        pads: tuple[Any, ...] = (padding,) * 4
    elif isinstance(padding, (tuple, list)) and len(padding) == 2:
        if all(is_int(v) for v in padding):
            pads = (padding[0], padding[0], padding[1], padding[1])
        elif all(isinstance(v, (tuple, list)) and len(v) == 2 and all(is_int(u) for u in v)
                 for v in padding):
            pads = tuple(padding[0]) + tuple(padding[1])
        else:
            raise bad
    else:
        raise bad
    if any(p < 0 for p in pads):
        raise OperatorError(f"{op}: padding must not be negative, got {padding!r}")
    return tuple(int(p) for p in pads)  # type: ignore[return-value]


@dataclass(frozen=True)
class ZeroPad2D(Operator):
    """pads: (top, bottom, left, right), or any form check_pads accepts."""

    pads: Any = (1, 1, 1, 1)
    data_format: str = "channels_last"

    op_type = "zero_pad2d"
    num_inputs = 1

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(), (TensorShape((2, 8, 8, 3)),)),
        )

    def __post_init__(self) -> None:
        pads = self.pads
        if isinstance(pads, (tuple, list)) and len(pads) == 4:
            pads = ((pads[0], pads[1]), (pads[2], pads[3]))
        object.__setattr__(self, "pads", check_pads(pads, self.op_type))
        object.__setattr__(self, "data_format", check_data_format(self.data_format, self.op_type))

    @property
    def channels_first(self) -> bool:
        return self.data_format == "channels_first"

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        h, w_, c = spatial_dims(s, self.data_format, self.op_type)
        pt, pb, pl, pr = self.pads
        return (image_shape(s, self.data_format, h + pt + pb, w_ + pl + pr, c),)

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return 0

    def _scalars(self) -> dict[str, Any]:
        return {"pads": join_ints(self.pads), "channels_first": self.channels_first}

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return channel_dims(inputs[0], self.data_format, self.op_type)

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        fmt = self.data_format
        return [Launch(zero_pad2d_forward, {"x": by_channel(x(0), 4, fmt),
                                            "y": by_channel(y(0), 4, fmt)}, self._scalars())]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        fmt = self.data_format
        return [Launch(zero_pad2d_backward, {"dy": by_channel(dy(0), 4, fmt),
                                             "dx": by_channel(dx(0), 4, fmt)}, self._scalars())]
