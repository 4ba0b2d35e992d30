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
pieces: each piece adds its rows' gradients into the rows its batch used, and only those, with
ATen's index_add_ (repeated indices accumulate).

Parallel forms (launch axes): "sample" (the batch); "columns" (PARAMETER: the table's columns
and the output's last dim; the indices are read whole); "rows" (REDUCTION: the table's rows, for
tables too big for one device: each point looks up only the indices inside its row range, found
from the origin of its table piece, and writes zeros for the others, so the output is a partial
sum that Legate adds; each point scatters only its own rows' gradients).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ._aten import aten, view
from .base import (Arg, DimKind, In, InOut, Launch, Operator, OperatorError, Origin, Out,
                   ParallelDim, Ref, Sum, TensorShape, WeightSpec, dw, dx, dy, kernel, sample_dim,
                   w, x, y)
from .optimizers import ROWS as UPDATE_ROWS
from unity_legion.types import DataType


COMBINERS = (None, "sum", "mean")
ROWS, COLUMNS = "rows", "columns"  # launch axes: the table's rows (input_dim), columns (output_dim)


def _indices(x: np.ndarray, first: int, rows: int, total: int
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """Indices into a table piece of `rows` rows starting at global row `first` (of `total`),
    and which lookups it holds (None: the whole table, every lookup; indices are clipped)."""
    idx = x.astype(np.int64, copy=False)
    if first == 0 and rows == total:
        return np.clip(idx, 0, rows - 1), None
    local = idx - first
    held = (local >= 0) & (local < rows)
    return np.where(held, local, 0), held


def _take(table: np.ndarray, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows `idx` (in range: _indices clipped them) of `table`. numpy's "clip" mode avoids the
    buffered output of its default "raise"; CuPy's take has no mode (and does not buffer)."""
    if type(table) is np.ndarray:
        return np.take(table, idx, axis=0, out=out, mode="clip")
    return np.take(table, idx, axis=0, out=out)


@kernel
def embedding_forward(embeddings: In, x: In, y: Out, origin: Origin, input_dim: int) -> None:
    idx, held = _indices(x, origin[0], embeddings.shape[0], input_dim)
    _take(embeddings, idx, y)
    if held is not None:
        y[~held] = 0  # another piece's rows: this point's partial sum is zero there


def _scatter_rows(dembeddings: np.ndarray, idx: np.ndarray, held: np.ndarray | None,
                  rows: Any) -> None:
    """dembeddings[idx[i]] += rows[i] for each lookup this piece holds (repeated indices
    accumulate): ATen's index_add_ touches only the rows the batch used."""
    with aten():
        index = view(np.ascontiguousarray(idx.reshape(-1)))
        if held is not None:
            keep = view(np.ascontiguousarray(held.reshape(-1)))
            index, rows = index[keep], rows[keep]
        view(dembeddings).index_add_(0, index, rows)


@kernel
def embedding_backward(dembeddings: Sum, x: In, dy: In, origin: Origin, input_dim: int) -> None:
    idx, held = _indices(x, origin[0], dembeddings.shape[0], input_dim)
    _scatter_rows(dembeddings, idx, held, view(dy).reshape(-1, dembeddings.shape[1]))


@kernel
def embedding_bag_forward(embeddings: In, x: In, y: Out, origin: Origin, mean: bool,
                          input_dim: int) -> None:
    idx, held = _indices(x, origin[0], embeddings.shape[0], input_dim)
    rows = _take(embeddings, idx)
    if held is not None:
        rows[~held] = 0
    np.sum(rows, axis=-2, out=y)
    if mean and x.shape[-1]:
        y /= x.shape[-1]  # the whole bag's size, whichever of its rows this piece holds


@kernel
def embedding_bag_backward(dembeddings: Sum, x: In, dy: In, origin: Origin, mean: bool,
                           input_dim: int) -> None:
    idx, held = _indices(x, origin[0], dembeddings.shape[0], input_dim)
    width, bag = dembeddings.shape[1], x.shape[-1]
    with aten():
        g = view(dy)
        if mean and bag:
            g = g / bag
        # each bag's gradient, once per index of the bag
        per_index = g.unsqueeze(-2).expand(*x.shape, width).reshape(-1, width)
        _scatter_rows(dembeddings, idx, held, per_index)


def _sgd_rows(embeddings: np.ndarray, idx: np.ndarray, held: np.ndarray | None, rows: Any,
              lr: float) -> None:
    """embeddings[r] -= lr * (sum of the rows looked up at r), only for the rows used: the
    gradient rows summed in lookup order (as the dense gradient sums them), scaled and
    subtracted as `sgd_update` does, so every element ends as the dense update leaves it."""
    with aten() as torch:
        index = view(np.ascontiguousarray(idx.reshape(-1)))
        if held is not None:
            keep = view(np.ascontiguousarray(held.reshape(-1)))
            index, rows = index[keep], rows[keep]
        if index.numel() == 0:
            return
        used, where = torch.unique(index, return_inverse=True)
        grad = torch.zeros((used.numel(), rows.shape[-1]), dtype=rows.dtype, device=rows.device)
        grad.index_add_(0, where, rows)
        grad *= lr
        view(embeddings).index_add_(0, used, grad, alpha=-1)


@kernel
def embedding_sgd_update(embeddings: InOut, x: In, dy: In, origin: Origin, lr: float,
                         input_dim: int) -> None:
    idx, held = _indices(x, origin[0], embeddings.shape[0], input_dim)
    _sgd_rows(embeddings, idx, held, view(dy).reshape(-1, embeddings.shape[1]), lr)


@kernel
def embedding_bag_sgd_update(embeddings: InOut, x: In, dy: In, origin: Origin, lr: float,
                             mean: bool, input_dim: int) -> None:
    idx, held = _indices(x, origin[0], embeddings.shape[0], input_dim)
    width, bag = embeddings.shape[1], x.shape[-1]
    with aten():
        g = view(dy)
        if mean and bag:
            g = g / bag
        per_index = g.unsqueeze(-2).expand(*x.shape, width).reshape(-1, width)
        _sgd_rows(embeddings, idx, held, per_index, lr)


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

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(10, 4), (TensorShape((4, 3), DataType.INT32),)),
            (cls(10, 4, combiner="sum"), (TensorShape((4, 3), DataType.INT32),)),
        )

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

    def weight_bytes_touched(self, inputs: Sequence[TensorShape]) -> int | None:
        # at most one row per index (fewer where indices repeat)
        rows = min(inputs[0].num_elements(), self.input_dim)
        return rows * self.output_dim * self.dtype.itemsize

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return (sample_dim(inputs[0]), ParallelDim(COLUMNS, DimKind.PARAMETER, self.output_dim),
                ParallelDim(ROWS, DimKind.REDUCTION, self.input_dim))

    def _out(self, ref: Ref, inputs: Sequence[TensorShape]) -> Arg:
        """The output (or its gradient): split by samples and, along its last dim, by columns."""
        r = self.infer_outputs(inputs)[0].rank
        return Arg.by_sample(ref, r, {r - 1: COLUMNS})

    def _scalars(self) -> dict[str, Any]:
        bag = {} if self.combiner is None else {"mean": self.combiner == "mean"}
        return bag | {"input_dim": self.input_dim}

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        args = {"embeddings": Arg(w("embeddings"), (ROWS, COLUMNS)),
                "x": Arg.by_sample(x(0), inputs[0].rank), "y": self._out(y(0), inputs)}
        k = embedding_forward if self.combiner is None else embedding_bag_forward
        return [Launch(k, args, self._scalars())]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        r = inputs[0].rank
        args = {"dembeddings": Arg(dw("embeddings"), (ROWS, COLUMNS)),
                "x": Arg.by_sample(x(0), r), "dy": self._out(dy(0), inputs)}
        k = embedding_backward if self.combiner is None else embedding_bag_backward
        launches = [Launch(k, args, self._scalars())]
        if needs_input_grad[0]:
            launches.append(Launch(embedding_zero_grad, {"dx": Arg.by_sample(dx(0), r)}))
        return launches

    def sparse_sgd_update(self, inputs: Sequence[TensorShape], weight: str) -> Launch | None:
        """The rows the batch looked up, updated from the indices and the output gradient
        (read whole by every point), the table split by rows over the update's points (the
        optimizer's row axis): each point updates the used rows in its range. No dense
        gradient is formed."""
        if weight != "embeddings":
            return None
        r = inputs[0].rank
        out_rank = self.infer_outputs(inputs)[0].rank
        args = {"embeddings": Arg(w("embeddings"), (UPDATE_ROWS, None)),
                "x": Arg(x(0), (None,) * r), "dy": Arg(dy(0), (None,) * out_rank)}
        k = embedding_sgd_update if self.combiner is None else embedding_bag_sgd_update
        return Launch(k, args, self._scalars() | {"lr": 0.0})
