"""Linear (Keras Dense): y = act(x @ kernel + bias) over the last dim; the activation is fused.

With an activation other than linear, forward keeps the pre-activation (saved "preact") and each
backward kernel turns d_out into d_preact locally (cheap, elementwise) before its matmul.

Parallel forms (launch axes): "sample" splits the batch (data parallel); "out" splits the output
features and the kernel's columns (Megatron's column-parallel Linear: x is read whole); "in"
splits the input features and the kernel's rows (row-parallel: every point makes a partial sum of
y, which Legate adds). "in" is offered only without a fused activation (an activation of a partial
sum is wrong), "out" not with a fused softmax (it needs whole rows); the bias is added by the
points holding input feature 0 only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import activation as act
from ._aten import mm, mm_add
from .base import (SAMPLE, Arg, DimKind, In, Launch, Operator, OperatorError, Origin, Out,
                   ParallelDim, SavedSpec, Sum, TasoName, TensorShape, WeightSpec, dw, dx, dy,
                   kernel, saved, w, x, y)

OUT, IN = "out", "in"  # launch axes: output features, input (contracted) features


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1])


def _d_preact(preact: np.ndarray, out: np.ndarray, d_out: np.ndarray, fn: str) -> np.ndarray:
    if fn == "linear":
        return _rows(d_out)
    return _rows(act.grad_of(fn, preact, out, d_out))


@kernel
def linear_forward(x: In, kernel: In, y: Out) -> None:
    mm(_rows(x), kernel, _rows(y))


@kernel
def linear_forward_bias(x: In, kernel: In, bias: In, y: Out, origin: Origin) -> None:
    y2 = _rows(y)
    mm(_rows(x), kernel, y2)
    if origin[-1] == 0:  # split by input features: one partial sum carries the bias
        y2 += bias


@kernel
def linear_forward_act(x: In, kernel: In, bias: In, preact: Out, y: Out, fn: str,
                       use_bias: bool) -> None:
    p = _rows(preact)
    mm(_rows(x), kernel, p)
    if use_bias:
        p += bias
    act.apply_into(fn, preact, y)


@kernel
def linear_backward_input(dy: In, kernel: In, dx: Out) -> None:
    mm(_rows(dy), kernel.T, _rows(dx))


@kernel
def linear_backward_input_act(preact: In, y: In, dy: In, kernel: In, dx: Out, fn: str) -> None:
    mm(_d_preact(preact, y, dy, fn), kernel.T, _rows(dx))


@kernel
def linear_backward_kernel(x: In, dy: In, dkernel: Sum) -> None:
    mm_add(_rows(x).T, _rows(dy), dkernel)


@kernel
def linear_backward_kernel_bias(x: In, dy: In, dkernel: Sum, dbias: Sum, origin: Origin) -> None:
    d2 = _rows(dy)
    mm_add(_rows(x).T, d2, dkernel)
    if origin[-1] == 0:  # split by input features: the bias gradient is counted once
        dbias += d2.sum(axis=0)


@kernel
def linear_backward_weights_act(x: In, preact: In, y: In, dy: In, dkernel: Sum, dbias: Sum,
                                fn: str, use_bias: bool) -> None:
    d2 = _d_preact(preact, y, dy, fn)
    mm_add(_rows(x).T, d2, dkernel)
    if use_bias:
        dbias += d2.sum(axis=0)


@dataclass(frozen=True)
class Linear(Operator):
    out_features: int
    use_bias: bool = True
    kernel_initializer: str = "glorot_uniform"
    bias_initializer: str = "zeros"
    activation: str = "linear"

    op_type = "linear"
    num_inputs = 1
    taso_names = (TasoName("OP_LINEAR"),)
    flops_efficiency = 0.7       # dense matrix products: compute-bound

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(8), (TensorShape((4, 6)),)),
            (cls(8), (TensorShape((4, 5, 6)),)),
            (cls(8, activation="relu"), (TensorShape((4, 6)),)),
        )

    def __post_init__(self) -> None:
        if isinstance(self.out_features, bool) or not isinstance(self.out_features, (int, np.integer)) \
                or self.out_features <= 0:
            raise OperatorError(f"linear: units must be a positive integer, got {self.out_features!r}")
        act.check_activation(self.activation)

    @property
    def fused(self) -> bool:
        return self.activation != "linear"

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        if s.rank < 2:
            raise OperatorError(f"linear: input must have rank >= 2 (batch, ..., features), got {s}")
        if s.dims[-1] is None:
            raise OperatorError(f"linear: the last dimension of the input {s} must be known")
        if not s.dtype.is_float:
            raise OperatorError(f"linear: expects a floating-point input, got {s.dtype.value}")
        return (s.with_dims(s.dims[:-1] + (self.out_features,)),)

    def weights(self, inputs: Sequence[TensorShape]) -> tuple[WeightSpec, ...]:
        (s,) = inputs
        ws = [WeightSpec("kernel", TensorShape((s.dims[-1], self.out_features), s.dtype),
                         self.kernel_initializer)]
        if self.use_bias:
            ws.append(WeightSpec("bias", TensorShape((self.out_features,), s.dtype),
                                 self.bias_initializer))
        return tuple(ws)

    def saved(self, inputs: Sequence[TensorShape]) -> tuple[SavedSpec, ...]:
        return (SavedSpec("preact", self.infer_outputs(inputs)[0]),) if self.fused else ()

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        (s,) = inputs
        rows = s.num_elements() // s.dims[-1]
        return 2 * rows * s.dims[-1] * self.out_features + (
            act.Activation(self.activation).flops(self.infer_outputs(inputs)) if self.fused else 0)

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        (s,) = inputs
        dims = [ParallelDim(SAMPLE, DimKind.SAMPLE, s.dims[0])]
        if self.activation != "softmax":  # softmax needs whole rows of output features
            dims.append(ParallelDim(OUT, DimKind.PARAMETER, self.out_features))
        if not self.fused:
            dims.append(ParallelDim(IN, DimKind.REDUCTION, s.dims[-1]))
        return tuple(dims)

    # Arguments by role: activations (batch, ..., features) split by sample and a feature axis.
    @staticmethod
    def _act(ref, rank: int, features: str) -> Arg:
        return Arg(ref, (SAMPLE,) + (None,) * (rank - 2) + (features,))

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        r = inputs[0].rank
        args = {"x": self._act(x(0), r, IN), "kernel": Arg(w("kernel"), (IN, OUT)),
                "y": self._act(y(0), r, OUT)}
        # unused when use_bias is False (the kernel's argument list is fixed)
        bias = Arg(w("bias"), (OUT,)) if self.use_bias else Arg(w("kernel"), (IN, OUT))
        if self.fused:
            return [Launch(linear_forward_act,
                           args | {"bias": bias, "preact": self._act(saved("preact"), r, OUT)},
                           {"fn": self.activation, "use_bias": self.use_bias})]
        if self.use_bias:
            return [Launch(linear_forward_bias, args | {"bias": bias})]
        return [Launch(linear_forward, args)]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        r = inputs[0].rank
        d_out = self._act(dy(0), r, OUT)
        kern, d_kern = Arg(w("kernel"), (IN, OUT)), Arg(dw("kernel"), (IN, OUT))
        x_in, d_in = self._act(x(0), r, IN), self._act(dx(0), r, IN)
        launches = []
        if self.fused:
            pre = {"preact": self._act(saved("preact"), r, OUT), "y": self._act(y(0), r, OUT)}
            if needs_input_grad[0]:
                launches.append(Launch(linear_backward_input_act,
                                       pre | {"dy": d_out, "kernel": kern, "dx": d_in},
                                       {"fn": self.activation}))
            if not self.use_bias:
                # a Sum store may not be passed twice; without bias the fused kernel ignores dbias
                return launches + [Launch(linear_backward_kernel_act, pre | {
                    "x": x_in, "dy": d_out, "dkernel": d_kern}, {"fn": self.activation})]
            launches.append(Launch(linear_backward_weights_act,
                                   pre | {"x": x_in, "dy": d_out, "dkernel": d_kern,
                                          "dbias": Arg(dw("bias"), (OUT,))},
                                   {"fn": self.activation, "use_bias": True}))
            return launches
        if needs_input_grad[0]:
            launches.append(Launch(linear_backward_input, {"dy": d_out, "kernel": kern, "dx": d_in}))
        args = {"x": x_in, "dy": d_out, "dkernel": d_kern}
        if self.use_bias:
            launches.append(Launch(linear_backward_kernel_bias,
                                   args | {"dbias": Arg(dw("bias"), (OUT,))}))
        else:
            launches.append(Launch(linear_backward_kernel, args))
        return launches


@kernel
def linear_backward_kernel_act(x: In, preact: In, y: In, dy: In, dkernel: Sum, fn: str) -> None:
    mm_add(_rows(x).T, _d_preact(preact, y, dy, fn), dkernel)
