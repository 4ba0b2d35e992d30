"""Embedding (Keras Embedding): y[..., :] = embeddings[x[...], :].

With a combiner ("sum" or "mean") it is an embedding bag (torch's EmbeddingBag, DLRM's multi-hot
lookup): the last input axis is a bag of indices whose vectors are summed or averaged, so
(batch, ..., bag) -> (batch, ..., output_dim). The gathered (.., bag, output_dim) rows exist only
inside the kernel; backward spreads each bag's gradient (divided by the bag size for "mean") back
over its rows.

Indices are integers; float inputs are truncated to integers as Keras casts them (and get a zero
gradient). Out-of-range indices are rejected at the edge by `check_input_values` before any
launch, since a kernel cannot raise without aborting the process; the kernels still clip indices
so a stray value can never crash a task. The weight gradient is an ADD reduction over sample
pieces: each piece scatters its rows with np.add.at (repeated indices accumulate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .base import (Arg, In, Launch, Operator, OperatorError, Out, Sum, TensorShape, WeightSpec, dw,
                   dx, dy, kernel, w, x, y)
from unity_legion.pcg.tensor import DataType


COMBINERS = (None, "sum", "mean")


def _indices(x: np.ndarray, rows: int) -> np.ndarray:
    return np.clip(x.astype(np.int64, copy=False), 0, rows - 1)


@kernel
def embedding_forward(x: In, embeddings: In, y: Out) -> None:
    np.take(embeddings, _indices(x, embeddings.shape[0]), axis=0, out=y)


@kernel
def embedding_backward(x: In, dy: In, dembeddings: Sum) -> None:
    np.add.at(dembeddings, _indices(x, dembeddings.shape[0]).ravel(),
              dy.reshape(-1, dembeddings.shape[1]))


@kernel
def embedding_bag_forward(x: In, embeddings: In, y: Out, mean: bool) -> None:
    rows = np.take(embeddings, _indices(x, embeddings.shape[0]), axis=0)
    np.sum(rows, axis=-2, out=y)
    if mean and x.shape[-1]:
        y /= x.shape[-1]


@kernel
def embedding_bag_backward(x: In, dy: In, dembeddings: Sum, mean: bool) -> None:
    width = dembeddings.shape[1]
    g = dy / x.shape[-1] if mean and x.shape[-1] else dy
    per_index = np.broadcast_to(g[..., None, :], x.shape + (width,)).reshape(-1, width)
    np.add.at(dembeddings, _indices(x, dembeddings.shape[0]).ravel(), per_index)


@kernel
def embedding_zero_grad(dx: Out) -> None:
    dx[...] = 0  # indices are not differentiable (float index inputs only)


@dataclass(frozen=True)
class Embedding(Operator):
    input_dim: int
    output_dim: int
    embeddings_initializer: str = "random_uniform"
    dtype: DataType = DataType.FLOAT32
    combiner: str | None = None   # None: one vector per index; "sum"/"mean": over the last axis

    op_type = "embedding"
    num_inputs = 1

    def __post_init__(self) -> None:
        for name in ("input_dim", "output_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise OperatorError(f"embedding: {name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        if not DataType.of(self.dtype).is_float:
            raise OperatorError(f"embedding: the embeddings dtype must be floating-point, got "
                                f"{self.dtype}")
        object.__setattr__(self, "dtype", DataType.of(self.dtype))
        if self.combiner not in COMBINERS:
            raise OperatorError(f"embedding: combiner must be one of {COMBINERS}, got "
                                f"{self.combiner!r}")

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        self.check_inputs(inputs)
        (s,) = inputs
        if s.rank < 1:
            raise OperatorError(f"embedding: the input needs a batch dimension, got {s}")
        if s.dtype is DataType.BOOL:
            raise OperatorError(f"embedding: expects integer indices, got {s.dtype.value}")
        if self.combiner is None:
            return (TensorShape(s.dims + (self.output_dim,), self.dtype),)
        if s.rank < 2:
            raise OperatorError(f"embedding: combiner={self.combiner!r} reduces the last input "
                                f"axis (the bag), so the input needs shape (batch, ..., bag), "
                                f"got {s}")
        return (TensorShape(s.dims[:-1] + (self.output_dim,), self.dtype),)

    def weights(self, inputs: Sequence[TensorShape]) -> tuple[WeightSpec, ...]:
        return (WeightSpec("embeddings", TensorShape((self.input_dim, self.output_dim), self.dtype),
                           self.embeddings_initializer),)

    def check_input_values(self, index: int, values: Any) -> None:
        a = np.asarray(values)
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)):
                raise OperatorError("embedding: input indices contain NaN or infinity")
            a = a.astype(np.int64)  # Keras casts float indices to integers
        elif a.dtype.kind not in "iu":
            raise OperatorError(f"embedding: expects integer indices, got dtype {a.dtype}")
        if a.size == 0:
            return
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= self.input_dim:
            bad = lo if lo < 0 else hi
            raise OperatorError(f"embedding: input index {bad} is out of range [0, {self.input_dim})"
                                f" (input_dim={self.input_dim}); indices must be in "
                                f"0..{self.input_dim - 1}")

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        # a bag adds its gathered vectors; a plain lookup only copies
        return 0 if self.combiner is None else inputs[0].num_elements() * self.output_dim

    def bytes_accessed(self, inputs: Sequence[TensorShape]) -> int:
        # gathers touch only the looked-up rows, not the whole table
        (out,) = self.infer_outputs(inputs)
        gathered = inputs[0].num_elements() * self.output_dim * self.dtype.itemsize
        return inputs[0].num_bytes() + gathered + out.num_bytes()

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        r = inputs[0].rank
        args = {"x": Arg.by_sample(x(0), r), "embeddings": Arg(w("embeddings"))}
        if self.combiner is None:
            return [Launch(embedding_forward, args | {"y": Arg.by_sample(y(0), r + 1)})]
        return [Launch(embedding_bag_forward, args | {"y": Arg.by_sample(y(0), r)},
                       {"mean": self.combiner == "mean"})]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        r = inputs[0].rank
        args = {"x": Arg.by_sample(x(0), r), "dembeddings": Arg(dw("embeddings"))}
        if self.combiner is None:
            launches = [Launch(embedding_backward, args | {"dy": Arg.by_sample(dy(0), r + 1)})]
        else:
            launches = [Launch(embedding_bag_backward, args | {"dy": Arg.by_sample(dy(0), r)},
                               {"mean": self.combiner == "mean"})]
        if needs_input_grad[0]:
            launches.append(Launch(embedding_zero_grad, {"dx": Arg.by_sample(dx(0), r)}))
        return launches
