"""Dropout (Keras Dropout): in training y = x * mask / (1 - rate), at inference y = x.

The mask must not depend on how samples are split over processors, so it is not drawn from a
per-piece random generator: each element's keep decision is a counter-based hash (splitmix64) of
the step's seed and the element's GLOBAL index, computed from the piece's origin. Any split of the
batch (or a serial run of the kernel) therefore yields the same mask for the same seed.

With a noise_shape (Keras semantics: one mask entry per noise-shape element, broadcast over the
dims where noise_shape is 1) the hash index is the element's index in the noise shape.

The forward launch carries a scalar named "seed" that the executor replaces with a fresh value
per launch; "salt" (from the layer's `seed` argument) is mixed in so two layers built with
different seeds never share a mask stream. The saved "mask" holds each element's multiplier
(0 or 1/(1-rate) in training, 1 at inference, in the input's dtype), so backward is dx = dy * mask
whichever way forward ran.

Parallel forms: "sample" (the batch) and "features" (ATTRIBUTE: the last dim). Since the mask
hashes global indices (the origin covers every dim), any split of either draws the same mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ._aten import xp
from .base import (Arg, In, Launch, Operator, OperatorError, Origin, Out, ParallelDim, SavedSpec,
                   TensorShape, dx, dy, features_dims, kernel, saved, x, y)

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _mix_int(v: int) -> int:
    """splitmix64 of a Python int (the per-launch key; Python ints avoid numpy scalar overflow
    warnings)."""
    z = (v + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over a uint64 array (wrapping multiplication is intended)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def uniform(seed: int, salt: int, index: np.ndarray) -> np.ndarray:
    """A uniform [0, 1) float64 per element index: a pure function of (seed, salt, index)."""
    key = np.uint64(_mix_int(_mix_int(seed & _MASK64) ^ (salt & _MASK64)))
    z = key + (index.astype(np.uint64) + np.uint64(1)) * np.uint64(_GOLDEN)
    return (_mix(z) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _parse_dims(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",")) if text else ()


def keep_mask(local_shape: tuple[int, ...], origin: Sequence[int], noise: tuple[int, ...],
              seed: int, salt: int, rate: float, mod: Any = np) -> np.ndarray:
    """The keep decisions of a piece of `local_shape` whose element 0 sits at global `origin`,
    broadcastable to the piece (size 1 on the dims where the noise shape is 1); an array of
    `mod` (numpy, or cupy for a GPU piece: made where the piece lives)."""
    rank = len(local_shape)
    index = mod.zeros((1,) * rank, dtype=np.uint64)
    stride = 1
    for d in reversed(range(rank)):  # row-major index into the noise shape
        if noise[d] != 1:
            coord = mod.arange(origin[d], origin[d] + local_shape[d], dtype=np.uint64)
            index = index + (coord * np.uint64(stride)).reshape((-1,) + (1,) * (rank - 1 - d))
        stride *= noise[d]
    return uniform(seed, salt, index) >= rate  # P(keep) = 1 - rate


@kernel
def dropout_forward(x: In, y: Out, mask: Out, origin: Origin, seed: int, salt: int, rate: float,
                    noise: str) -> None:
    keep = keep_mask(x.shape, origin, _parse_dims(noise), seed, salt, rate, xp(x))
    mask[...] = np.where(keep, x.dtype.type(1.0 / (1.0 - rate)), x.dtype.type(0))
    np.multiply(x, mask, out=y)


@kernel
def dropout_identity(x: In, y: Out, mask: Out) -> None:
    # Inference (or rate 0): a copy. The mask is still written so a backward after an inference
    # forward (GraphExecutor.gradients(training=False)) passes gradients through unchanged.
    y[...] = x
    mask[...] = 1


@kernel
def dropout_backward(dy: In, mask: In, dx: Out) -> None:
    np.multiply(dy, mask, out=dx)


def check_rate(rate: Any) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating, np.integer)):
        raise OperatorError(f"dropout: rate must be a number in [0, 1), got {rate!r}")
    if not 0.0 <= float(rate) < 1.0:
        raise OperatorError(f"dropout: rate must be in [0, 1), got {rate!r}")
    return float(rate)


@dataclass(frozen=True)
class Dropout(Operator):
    rate: float
    noise_shape: tuple[int | None, ...] | None = None  # Keras: includes the batch dim; None = input's
    salt: int = 0

    op_type = "dropout"
    num_inputs = 1
    elementwise = True

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(0.5), (TensorShape((4, 6)),)),
            (cls(0.5), (TensorShape((4, 5, 6)),)),
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", check_rate(self.rate))
        if self.noise_shape is not None:
            try:
                dims = tuple(self.noise_shape)
            except TypeError:
                raise OperatorError(f"dropout: noise_shape must be a tuple, got "
                                    f"{self.noise_shape!r}") from None
            for d in dims:
                if d is not None and (isinstance(d, bool) or not isinstance(d, (int, np.integer))
                                      or d <= 0):
                    raise OperatorError(f"dropout: noise_shape {dims} must hold positive integers "
                                        f"or None")
            object.__setattr__(self, "noise_shape", tuple(None if d is None else int(d) for d in dims))
        if isinstance(self.salt, bool) or not isinstance(self.salt, (int, np.integer)):
            raise OperatorError(f"dropout: seed must be an integer, got {self.salt!r}")

    def _noise(self, s: TensorShape) -> tuple[int | None, ...]:
        """The noise shape resolved against input `s` (None entries take the input's dim)."""
        if self.noise_shape is None:
            return s.dims
        if len(self.noise_shape) != s.rank:
            raise OperatorError(f"dropout: noise_shape {self.noise_shape} must have one entry per "
                                f"input dimension (batch included); the input is {s}")
        out = []
        for d, (n, size) in enumerate(zip(self.noise_shape, s.dims)):
            if n is None:
                out.append(size)
            elif n != 1 and size is not None and n != size:
                raise OperatorError(f"dropout: noise_shape {self.noise_shape} does not broadcast to "
                                    f"the input {s}: dim {d} must be None, 1 or {size}")
            else:
                out.append(n)
        return tuple(out)

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        if not s.dtype.is_float:
            raise OperatorError(f"dropout: expects a floating-point input, got {s.dtype.value}")
        self._noise(s)
        return (s,)

    def saved(self, inputs: Sequence[TensorShape]) -> tuple[SavedSpec, ...]:
        return (SavedSpec("mask", inputs[0]),)

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return 12 * inputs[0].num_elements()  # hash + compare + scale per element

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return features_dims(inputs[0])

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        r = inputs[0].rank
        args = {"x": Arg.by_features(x(0), r), "y": Arg.by_features(y(0), r),
                "mask": Arg.by_features(saved("mask"), r)}
        if not training or self.rate == 0.0:
            return [Launch(dropout_identity, args)]
        noise = self._noise(inputs[0])
        if any(d is None for d in noise):
            raise OperatorError(f"dropout: the batch size must be known to launch, got {inputs[0]}")
        return [Launch(dropout_forward, args,
                       {"seed": 0, "salt": int(self.salt), "rate": self.rate,
                        "noise": ",".join(str(d) for d in noise)})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        r = inputs[0].rank
        return [Launch(dropout_backward, {"dy": Arg.by_features(dy(0), r),
                                          "mask": Arg.by_features(saved("mask"), r),
                                          "dx": Arg.by_features(dx(0), r)})]
