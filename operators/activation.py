"""Elementwise activations (and softmax over the last axis): a table used by the Activation
operator and by operators that fuse an activation (Linear)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy.special import erf

from .base import (Arg, In, Launch, Operator, OperatorError, Out, TensorShape, dx, dy, kernel, x, y)

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

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        r = inputs[0].rank
        return [Launch(activation_forward, {"x": Arg.by_sample(x(0), r), "y": Arg.by_sample(y(0), r)},
                       {"fn": self.fn})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        if not needs_input_grad[0]:
            return []
        r = inputs[0].rank
        return [Launch(activation_backward, {"x": Arg.by_sample(x(0), r), "y": Arg.by_sample(y(0), r),
                                             "dy": Arg.by_sample(dy(0), r),
                                             "dx": Arg.by_sample(dx(0), r)}, {"fn": self.fn})]
