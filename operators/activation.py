"""Elementwise activations (and softmax over the last axis): a table used by the Activation
operator and by operators that fuse an activation (Linear, Conv2D).

Kernels run PyTorch's ATen CPU operators on views of their pieces (`apply_into`, `grad_into`),
so results are PyTorch's, in the input's precision; `apply` / `grad` keep the numpy float64
formulas (a reference, and the path for mixed dtypes).

Parallel forms of the Activation operator: "sample" (the batch) and, as an elementwise function
is per position, "features" (ATTRIBUTE: the last dim). Softmax needs whole rows of its last dim,
so it splits the dim before it instead ("dim<r-2>", inputs of rank >= 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
from scipy.special import erf

from .base import (Arg, In, Kernel, Launch, Operator, OperatorError, Out, ParallelDim, Ref,
                   TasoName, TensorShape, attribute_dims, dx, dy, features_dims, kernel, x, y)
from ._aten import Into, aten, view

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


# The kernels' form: PyTorch's ATen CPU operators on views of the pieces, written straight into
# the output piece (numpy in float64 was 6-35x slower than PyTorch). name -> (forward(torch, z,
# out), backward(torch, z, out, d_out, d_z)); z: pre-activation, out: the activation's output.
_ATEN: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "relu": (lambda t, z, o: t.clamp_min(z, 0, out=o),
             lambda t, z, o, g, d: t.ops.aten.threshold_backward.grad_input(g, z, 0,
                                                                           grad_input=d)),
    "tanh": (lambda t, z, o: t.tanh(z, out=o),
             lambda t, z, o, g, d: t.ops.aten.tanh_backward.grad_input(g, o, grad_input=d)),
    "sigmoid": (lambda t, z, o: t.sigmoid(z, out=o),
                lambda t, z, o, g, d: t.ops.aten.sigmoid_backward.grad_input(g, o,
                                                                             grad_input=d)),
    "gelu": (lambda t, z, o: t.ops.aten.gelu.out(z, approximate="none", out=o),
             lambda t, z, o, g, d: t.ops.aten.gelu_backward.grad_input(
                 g, z, approximate="none", grad_input=d)),
    "softmax": (lambda t, z, o: t.ops.aten._softmax.out(z, -1, False, out=o),
                lambda t, z, o, g, d: t.ops.aten._softmax_backward_data.out(
                    g, o, -1, g.dtype, grad_input=d)),
}


def _same_dtype(*arrays: np.ndarray) -> bool:
    return all(a.dtype == arrays[0].dtype for a in arrays)


def apply_into(name: str, z: np.ndarray, out: np.ndarray) -> None:
    """out = name(z), in z's precision (as PyTorch computes it)."""
    if name == "linear":
        out[...] = z
    elif not _same_dtype(z, out) or z.ndim == 0:
        out[...] = apply(name, z.astype(np.float64))
    elif out.flags.c_contiguous:
        with aten() as torch:
            _ATEN[name][0](torch, view(z), view(out))
    else:
        with aten() as torch:
            o = Into(out)
            _ATEN[name][0](torch, view(z), o.t)
            o.done()


def grad_into(name: str, z: np.ndarray, o: np.ndarray, g: np.ndarray, out: np.ndarray) -> None:
    """out = d_out's gradient `g` through the activation: d z from z, its output o and g."""
    if name == "linear":
        out[...] = g
    elif not _same_dtype(z, o, g, out) or z.ndim == 0:
        out[...] = grad(name, z.astype(np.float64), o.astype(np.float64), g.astype(np.float64))
    elif out.flags.c_contiguous:  # written in place (the usual case: no Into to make)
        with aten() as torch:
            _ATEN[name][1](torch, view(z), view(o), view(g), view(out))
    else:
        with aten() as torch:
            d = Into(out)
            _ATEN[name][1](torch, view(z), view(o), view(g), d.t)
            d.done()


def grad_of(name: str, z: np.ndarray, o: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The gradient through the activation as a new array (g itself for linear)."""
    if name == "linear":
        return g
    out = np.empty_like(g, order="C")  # dispatches: a CuPy g gets a CuPy out
    grad_into(name, z, o, g, out)
    return out


@kernel
def activation_forward(x: In, y: Out, fn: str) -> None:
    apply_into(fn, x, y)


@kernel
def activation_backward(x: In, y: In, dy: In, dx: Out, fn: str) -> None:
    grad_into(fn, x, y, dy, dx)


@dataclass(frozen=True)
class Activation(Operator):
    fn: str = "linear"

    op_type = "activation"
    num_inputs = 1
    # The functions by how they read their input ("linear" is the identity): elementwise ones
    # act on each element alone; row-wise ones need whole rows of the last dim. Rules fuse,
    # move and merge activations by these lists (in this order: it names the generated rules).
    ELEMENTWISE_FNS: ClassVar[tuple[str, ...]] = ("relu", "tanh", "sigmoid", "gelu")
    ROW_WISE_FNS: ClassVar[tuple[str, ...]] = ("softmax",)
    taso_names = tuple(TasoName(f"OP_{fn.upper()}", (("fn", fn),))
                       for fn in ("relu", "sigmoid", "tanh", "gelu"))

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls("relu"), (TensorShape((4, 6)),)),
            (cls("relu"), (TensorShape((4, 5, 6)),)),
            (cls("softmax"), (TensorShape((4, 5, 6)),)),
        )

    def is_elementwise(self) -> bool:
        return self.fn not in self.ROW_WISE_FNS

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


@dataclass(frozen=True)
class _FloatElementwise(Operator):
    """What the one-input elementwise layers of floating-point tensors (ReLU, Rescale) share: the
    shape rule (a float input, unchanged), the parallel forms (split by features, as the
    activations) and their launches (`_launch`). A subclass names its op_type and cost_family
    (Activation's: memory-bound elementwise work)."""

    num_inputs = 1
    elementwise = True

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        if not inputs[0].dtype.is_float:
            raise OperatorError(f"{self.op_type}: expects a floating-point input, got "
                                f"{inputs[0].dtype.value}")
        return (inputs[0],)

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return features_dims(inputs[0])

    def _launch(self, inputs: Sequence[TensorShape], kern: Kernel, names: Sequence[str],
                scalars: dict[str, Any]) -> list[Launch]:
        """One launch of `kern` over the named tensors among x, y, dy, dx, split by features."""
        r = inputs[0].rank
        refs = {"x": x(0), "y": y(0), "dy": dy(0), "dx": dx(0)}
        return [Launch(kern, {n: Arg.by_features(refs[n], r) for n in names}, scalars)]
