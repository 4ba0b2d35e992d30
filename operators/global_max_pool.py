"""Global max pooling (Keras GlobalMaxPooling2D): the maximum over H and W of each channel.

Output (batch, C), or (batch, 1, 1, C) / (batch, C, 1, 1) with keepdims. The gradient goes to the
pixels equal to their channel's maximum, shared evenly among ties (what Keras' torch backend
computes: `amax` and its backward); backward reads the input and the output to find them, so
nothing is saved.

Parallel forms: "sample" and "channels" (ATTRIBUTE: the maximum is per channel), as
GlobalAvgPool2D.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .base import In, Launch, Out, TensorShape, kernel
from ._aten import aten, view
from .pooling import _GlobalPool2D


def _axes(channels_first: bool) -> tuple[int, int]:
    return (2, 3) if channels_first else (1, 2)


@kernel
def global_maxpool_forward(x: In, y: Out, channels_first: bool) -> None:
    with aten() as torch:
        view(y).copy_(torch.amax(view(x), _axes(channels_first), keepdim=y.ndim == 4))


@kernel
def global_maxpool_backward(x: In, y: In, dy: In, dx: Out, channels_first: bool) -> None:
    axes = _axes(channels_first)
    with aten() as torch:
        xt = view(x)
        keep = [1] * 4
        keep[0] = x.shape[0]
        keep[1 if channels_first else 3] = x.shape[1 if channels_first else 3]
        top = view(y).reshape(keep)
        hit = (xt == top).to(xt.dtype)
        share = view(dy).reshape(keep) / hit.sum(axes, keepdim=True)
        torch.mul(hit, share, out=view(dx))


@dataclass(frozen=True)
class GlobalMaxPool2D(_GlobalPool2D):
    """Maximum over H and W: (batch, C), or (batch, 1, 1, C) / (batch, C, 1, 1) with keepdims."""

    op_type = "global_max_pool2d"

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        return self._launch(inputs, global_maxpool_forward, "x", "y")

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        return self._launch(inputs, global_maxpool_backward, "x", "y", "dy", "dx")
