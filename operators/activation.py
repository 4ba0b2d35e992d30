"""Elementwise activations (and softmax over the last axis): a table used by the Activation
operator and by operators that fuse an activation (Linear).

Parallel forms of the Activation operator: "sample" (the batch) and, as an elementwise function
is per position, "features" (ATTRIBUTE: the last dim). Softmax needs whole rows of its last dim,
so it splits the dim before it instead ("dim<r-2>", inputs of rank >= 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy.special import erf

from .base import (Arg, In, Launch, Operator, OperatorError, Out, ParallelDim, Ref, TensorShape,
                   attribute_dims, dx, dy, kernel, x, y)

_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# name -> (forward(pre), backward(pre, out, d_out) -> d_pre)
_TABLE: dict[str, tuple[Callable[[np.ndarray], np.ndarray],
                        Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]]] = {
    "linear": (lambda z: z, lambda z, o, g: g),
    "relu": (lambda z: np.maximum(z, 0), lambda z, o, g: g * (z > 0)),
    "tanh": (np.tanh, lambda z, o, g: g * (1 - o * o)),
    "sigmoid": (lambda z: 0.5 * (1 + np.tanh(0.5 * z)), lambda z, o, g: g * o * (1 - o)),
    "gelu": (lambda z: 0.5 * z * (1 + erf(z / math.sqrt(2.0))),
             lambda z, o, g: g * (0.5 * (1 + erf(z / math.sqrt(2.0))) + z * np.exp(-0.5 * z * z) / _SQRT_2PI)),
    "softmax": (_softmax, lambda z, o, g: o * (g - (g * o).sum(axis=-1, keepdims=True))),
}
NAMES = tuple(sorted(_TABLE))


def check_activation(activation: Any) -> str:
    """The canonical activation name for a Keras-style argument (None means linear)."""
    if activation is None:
        return "linear"
    if callable(activation):
        name = getattr(activation, "__name__", None)
        if name in _TABLE:
            return name
        raise ValueError(f"unsupported activation function {activation!r}; use one of {', '.join(NAMES)}")
    if not isinstance(activation, str) or activation not in _TABLE:
        raise ValueError(f"unknown activation {activation!r}; known: {', '.join(NAMES)}")
    return activation


def apply(name: str, z: np.ndarray) -> np.ndarray:
    return _TABLE[name][0](z)


def grad(name: str, z: np.ndarray, out: np.ndarray, g: np.ndarray) -> np.ndarray:
    return _TABLE[name][1](z, out, g)


def _compute(z: np.ndarray) -> np.ndarray:
    """Activations are evaluated in float64 and rounded once: float32 results match PyTorch."""
    return z.astype(np.float64, copy=False)


@kernel
def activation_forward(x: In, y: Out, fn: str) -> None:
    y[...] = apply(fn, _compute(x))


@kernel
def activation_backward(x: In, y: In, dy: In, dx: Out, fn: str) -> None:
    dx[...] = grad(fn, _compute(x), _compute(y), _compute(dy))


@dataclass(frozen=True)
class Activation(Operator):
    fn: str = "linear"

    op_type = "activation"
    num_inputs = 1

    def __post_init__(self) -> None:
        if self.fn not in _TABLE:
            raise OperatorError(f"unknown activation {self.fn!r}; known: {', '.join(NAMES)}")

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        if not inputs[0].dtype.is_float:
            raise OperatorError(f"activation {self.fn}: expects a floating-point input, got "
                                f"{inputs[0].dtype.value}")
        if self.fn == "softmax" and inputs[0].rank < 2:
            raise OperatorError("softmax needs an input of rank >= 2 (batch, ..., classes)")
        return (inputs[0],)

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return {"linear": 0, "relu": 1, "softmax": 5}.get(self.fn, 8) * inputs[0].num_elements()

    def _split_dim(self, s: TensorShape) -> int | None:
        """The dim the ATTRIBUTE axis splits: the last (elementwise functions), the one before it
        for softmax, which needs whole rows of the last dim."""
        if self.fn != "softmax":
            return s.rank - 1 if s.rank >= 2 else None
        return s.rank - 2 if s.rank >= 3 else None

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return attribute_dims(inputs[0], self._split_dim(inputs[0]))

    def _arg(self, ref: Ref, s: TensorShape) -> Arg:
        return Arg.by_attribute(ref, s.rank, self._split_dim(s))

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        s = inputs[0]
        return [Launch(activation_forward, {"x": self._arg(x(0), s), "y": self._arg(y(0), s)},
                       {"fn": self.fn})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        s = inputs[0]
        return [Launch(activation_backward, {"x": self._arg(x(0), s), "y": self._arg(y(0), s),
                                             "dy": self._arg(dy(0), s),
                                             "dx": self._arg(dx(0), s)}, {"fn": self.fn})]
