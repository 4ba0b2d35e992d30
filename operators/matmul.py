"""Batch matmul: (b, ..., m, k) x (b, ..., k, n) -> (b, ..., m, n), the operator behind Keras Dot.

`transpose_a` / `transpose_b` say an operand is stored with its last two dims swapped
((b, ..., k, m) / (b, ..., n, k)), so Dot never needs a separate transpose. Rank-2 operands
(b, k) x (b, k) are one vector per sample: their dot product, shaped (b, 1) as in Keras.
With `normalize` (Keras Dot(normalize=True)) both operands are first L2-normalised along the
contracted dim k, as Keras does: x * min(1/||x||, 1/epsilon) with epsilon = 1e-7.

Every leading dim is per sample, so a batch split needs no communication; nothing is saved
(backward recomputes the normalisation from the inputs).

Parallel forms: "sample"; "m" and "n" (ATTRIBUTE: the rows of a and y, the columns of b and y);
"k" (REDUCTION: the contracted dim, so each point makes a partial product that Legate adds; not
with `normalize`, which needs whole rows of k). A split of m (n) makes d_b (d_a) a partial sum
too, and since the normalisation's backward is linear in the incoming gradient, that holds with
`normalize` as well. Rank-2 operands have m = n = 1: only "k" is offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .base import (SAMPLE, Arg, DimKind, In, Launch, Operator, OperatorError, Out, ParallelDim,
                   TensorShape, dx, dy, kernel, same_float, sample_dim, x, y)

M, N, K = "m", "n", "k"  # launch axes: rows, columns, contracted dim
Split = tuple[str | None, ...]
NORM_EPSILON = 1e-7  # Keras backend.epsilon(): the smallest norm a normalised operand divides by


def _canonical(a: np.ndarray, b: np.ndarray, ta: bool, tb: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    """Views of the operands as (..., m, k) and (..., k, n) (rank 2: (b, 1, k) and (b, k, 1))."""
    if a.ndim == 2:
        return a[:, None, :], b[:, :, None]
    return (a.swapaxes(-1, -2) if ta else a), (b.swapaxes(-1, -2) if tb else b)


def _out_view(out: np.ndarray) -> np.ndarray:
    """The output (or its gradient) as (..., m, n); rank 2 (b, 1) is (b, 1, 1)."""
    return out[:, :, None] if out.ndim == 2 else out


def _inv_norm(v: np.ndarray, axis: int) -> np.ndarray:
    """min(1/||v||, 1/epsilon) along `axis`, kept as a broadcastable dim (float64)."""
    sq = np.square(v, dtype=np.float64).sum(axis=axis, keepdims=True)
    return 1.0 / np.sqrt(np.maximum(sq, NORM_EPSILON ** 2))


def _normalized(v: np.ndarray, axis: int, on: bool) -> np.ndarray:
    return (v * _inv_norm(v, axis)).astype(v.dtype) if on else v


def _normalize_backward(v: np.ndarray, g: np.ndarray, axis: int) -> np.ndarray:
    """Gradient through u = v * r(v): r * (g - u * <g, u>) where the norm is above epsilon,
    r * g where the floor holds r constant."""
    r = _inv_norm(v, axis)
    u = v * r
    active = r < 1.0 / NORM_EPSILON
    return r * (g - np.where(active, u * (g * u).sum(axis=axis, keepdims=True), 0.0))


@kernel
def batch_matmul_forward(a: In, b: In, y: Out, transpose_a: bool, transpose_b: bool,
                         normalize: bool) -> None:
    ca, cb = _canonical(a, b, transpose_a, transpose_b)
    np.matmul(_normalized(ca, -1, normalize), _normalized(cb, -2, normalize), out=_out_view(y))


@kernel
def batch_matmul_backward_a(a: In, b: In, dy: In, da: Out, transpose_a: bool, transpose_b: bool,
                            normalize: bool) -> None:
    ca, cb = _canonical(a, b, transpose_a, transpose_b)
    g = _out_view(dy) @ _normalized(cb, -2, normalize).swapaxes(-1, -2)        # (..., m, k)
    if normalize:
        g = _normalize_backward(ca, g, -1)
    _canonical(da, b, transpose_a, transpose_b)[0][...] = g


@kernel
def batch_matmul_backward_b(a: In, b: In, dy: In, db: Out, transpose_a: bool, transpose_b: bool,
                            normalize: bool) -> None:
    ca, cb = _canonical(a, b, transpose_a, transpose_b)
    g = _normalized(ca, -1, normalize).swapaxes(-1, -2) @ _out_view(dy)        # (..., k, n)
    if normalize:
        g = _normalize_backward(cb, g, -2)
    _canonical(a, db, transpose_a, transpose_b)[1][...] = g


@dataclass(frozen=True)
class BatchMatmul(Operator):
    transpose_a: bool = False
    transpose_b: bool = False
    normalize: bool = False

    op_type = "batch_matmul"
    num_inputs = 2
    flops_efficiency = 0.6       # batched dense products: compute-bound
    backward_ratio = 2.0         # no weights, yet two products: d_a and d_b

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(), (TensorShape((4, 5, 6)), TensorShape((4, 6, 3)))),
        )

    def _mkn(self, inputs: Sequence[TensorShape]) -> tuple[int, int, int, int]:
        """(m, k of a, k of b, n), checked."""
        self.check_inputs(inputs)
        a, b = inputs
        same_float(inputs, self.op_type)
        if a.rank != b.rank or a.rank < 2:
            raise OperatorError(f"{self.op_type}: operands must have the same rank >= 2, got "
                                f"{a} and {b}")
        if a.rank == 2:
            if self.transpose_a or self.transpose_b:
                raise OperatorError(f"{self.op_type}: rank-2 operands are per-sample vectors; "
                                    f"transpose_a/transpose_b need rank >= 3")
            m, ka, kb, n = 1, a.dims[1], b.dims[1], 1
        else:
            m, ka = a.dims[-2:][::-1] if self.transpose_a else a.dims[-2:]
            kb, n = b.dims[-2:][::-1] if self.transpose_b else b.dims[-2:]
            lead_a, lead_b = a.dims[:-2], b.dims[:-2]
            batches_differ = None not in (lead_a[0], lead_b[0]) and lead_a[0] != lead_b[0]
            if lead_a[1:] != lead_b[1:] or batches_differ:
                raise OperatorError(f"{self.op_type}: operands {a} and {b} must agree in every "
                                    f"dim before the last two")
        if ka != kb:
            raise OperatorError(f"{self.op_type}: contracted dims differ: {ka} in {a} "
                                f"(transpose_a={self.transpose_a}) and {kb} in {b} "
                                f"(transpose_b={self.transpose_b})")
        return m, ka, kb, n

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        m, _, _, n = self._mkn(inputs)
        a, b = inputs
        batch = a.dims[0] if a.dims[0] is not None else b.dims[0]
        if a.rank == 2:
            return (a.with_dims((batch, 1)),)
        return (a.with_dims((batch,) + a.dims[1:-2] + (m, n)),)

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        m, k, _, n = self._mkn(inputs)
        out = self.infer_outputs(inputs)[0]
        pairs = out.num_elements() // (m * n)
        extra = 3 * (inputs[0].num_elements() + inputs[1].num_elements()) if self.normalize else 0
        return 2 * pairs * m * n * k + extra

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        m, k, _, n = self._mkn(inputs)
        dims = [sample_dim(inputs[0])]
        if inputs[0].rank > 2:
            dims += [ParallelDim(M, DimKind.ATTRIBUTE, m), ParallelDim(N, DimKind.ATTRIBUTE, n)]
        if not self.normalize:
            dims.append(ParallelDim(K, DimKind.REDUCTION, k))
        return tuple(dims)

    def _splits(self, inputs: Sequence[TensorShape]) -> tuple[Split, Split, Split]:
        """The splits of a (and d_a), b (and d_b), y (and d_y), as stored."""
        r = inputs[0].rank
        if r == 2:  # one vector per sample: y is (batch, 1), a partial sum when k is split
            return (SAMPLE, K), (SAMPLE, K), (SAMPLE, None)
        lead = (SAMPLE,) + (None,) * (r - 3)
        return (lead + ((K, M) if self.transpose_a else (M, K)),
                lead + ((N, K) if self.transpose_b else (K, N)), lead + (M, N))

    def _scalars(self) -> dict[str, bool]:
        return {"transpose_a": bool(self.transpose_a), "transpose_b": bool(self.transpose_b),
                "normalize": bool(self.normalize)}

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        sa, sb, sy = self._splits(inputs)
        return [Launch(batch_matmul_forward, {"a": Arg(x(0), sa), "b": Arg(x(1), sb),
                                              "y": Arg(y(0), sy)}, self._scalars())]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        sa, sb, sy = self._splits(inputs)
        common = {"a": Arg(x(0), sa), "b": Arg(x(1), sb), "dy": Arg(dy(0), sy)}
        launches = []
        if needs_input_grad[0]:
            launches.append(Launch(batch_matmul_backward_a, common | {"da": Arg(dx(0), sa)},
                                   self._scalars()))
        if needs_input_grad[1]:
            launches.append(Launch(batch_matmul_backward_b, common | {"db": Arg(dx(1), sb)},
                                   self._scalars()))
        return launches
