"""Parallelisation rules: which launch axes of which operators a search may split.

In Unity's PCG a parallelisation is a substitution that wraps an operator in parallel ops:
Partition(dim) -> op -> Combine(dim) for a SAMPLE, ATTRIBUTE or PARAMETER axis, and
Replicate -> op -> Reduce for a REDUCTION axis. Here the op's launch axes already say all that
(`Operator.parallel_dims`, and `pcg.lift` inserts the parallel ops), so such a rule is data: "this
operator type may use this axis". The DP over machine mappings restricts an op's candidate
configurations to `allowed_axes`; data parallelism alone is `data_parallel_rules()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

from unity_legion.operators.activation import Activation
from unity_legion.operators.attention import MultiHeadAttention
from unity_legion.operators.base import DimKind, Operator
from unity_legion.operators.batch_norm import BatchNorm
from unity_legion.operators.concat import Concat
from unity_legion.operators.conv2d import Conv2D
from unity_legion.operators.dropout import Dropout
from unity_legion.operators.elementwise import Add, Multiply, Subtract
from unity_legion.operators.embedding import Embedding
from unity_legion.operators.layer_norm import LayerNorm
from unity_legion.operators.linear import Linear
from unity_legion.operators.matmul import BatchMatmul
from unity_legion.operators.padding import ZeroPad2D
from unity_legion.operators.permute import Identity, Permute
from unity_legion.operators.pooling import GlobalAvgPool2D, Pool2D
from unity_legion.operators.reshape import Flatten, Reshape
from unity_legion.operators.softmax import Softmax
from unity_legion.operators.split import Split
from unity_legion.pcg.graph import ComputationGraph, Node
from unity_legion.pcg.tensor import DataType, TensorShape


@dataclass(frozen=True)
class ParallelRule:
    """Operator type `op_type` may split launch axis `axis`, a `dim_kind` axis."""

    op_type: str
    axis: str
    dim_kind: DimKind

    @property
    def wrapping(self) -> tuple[str, str]:
        """The parallel ops this rule puts around the operator in Unity's PCG form."""
        return ("replicate", "reduce") if self.dim_kind is DimKind.REDUCTION else ("partition", "combine")

    def __str__(self) -> str:
        a, b = self.wrapping
        return f"{a} -> {self.op_type}[{self.axis}: {self.dim_kind.value}] -> {b}"


def _s(*dims: int, dtype: DataType = DataType.FLOAT32) -> TensorShape:
    return TensorShape(tuple(dims), dtype)


def catalogue() -> list[tuple[Operator, tuple[TensorShape, ...]]]:
    """One or more representative instances of every operator class (with input shapes), in
    the ranks the model zoo uses: the source of the built-in parallel rules."""
    ints = DataType.INT32
    return [
        (Linear(8), (_s(4, 6),)), (Linear(8), (_s(4, 5, 6),)), (Linear(8, activation="relu"), (_s(4, 6),)),
        (Conv2D(4, 3), (_s(2, 8, 8, 3),)),
        (Activation("relu"), (_s(4, 6),)), (Activation("relu"), (_s(4, 5, 6),)),
        (Activation("softmax"), (_s(4, 5, 6),)),
        (Add(), (_s(4, 6), _s(4, 6))), (Subtract(), (_s(4, 6), _s(4, 6))),
        (Multiply(), (_s(4, 6), _s(4, 6))), (Add(), (_s(4, 5, 6), _s(4, 5, 6))),
        (Concat(-1), (_s(4, 6), _s(4, 2))), (Concat(-1), (_s(4, 5, 6), _s(4, 5, 2))),
        (Concat(1), (_s(4, 5, 6), _s(4, 3, 6))),
        (Split(2, -1), (_s(4, 6),)), (Split(2, -1), (_s(4, 5, 6),)), (Split(2, 1), (_s(4, 6, 5),)),
        (Permute((2, 1)), (_s(4, 5, 6),)), (Identity(), (_s(4, 6),)), (Identity(), (_s(4, 5, 6),)),
        (Reshape((3, 2)), (_s(4, 6),)), (Reshape((5, 3, 2)), (_s(4, 5, 6),)),
        (Flatten(), (_s(4, 5, 6),)),
        (Dropout(0.5), (_s(4, 6),)), (Dropout(0.5), (_s(4, 5, 6),)),
        (Softmax(), (_s(4, 6),)), (Softmax(), (_s(4, 5, 6),)),
        (LayerNorm(), (_s(4, 6),)), (LayerNorm(), (_s(4, 5, 6),)),
        (BatchNorm(), (_s(4, 6),)), (BatchNorm(), (_s(2, 8, 8, 3),)),
        (Embedding(10, 4), (_s(4, 3, dtype=ints),)), (Embedding(10, 4, combiner="sum"), (_s(4, 3, dtype=ints),)),
        (MultiHeadAttention(2, 4), (_s(4, 5, 6), _s(4, 5, 6))),
        (BatchMatmul(), (_s(4, 5, 6), _s(4, 6, 3))),
        (Pool2D("max"), (_s(2, 8, 8, 3),)), (GlobalAvgPool2D(), (_s(2, 8, 8, 3),)),
        (ZeroPad2D(), (_s(2, 8, 8, 3),)),
    ]


def rules_of(op: Operator, inputs: Sequence[TensorShape]) -> list[ParallelRule]:
    return [ParallelRule(op.op_type, d.axis, d.kind) for d in op.parallel_dims(inputs)]


@lru_cache(maxsize=1)
def _catalogue_rules() -> tuple[ParallelRule, ...]:
    seen: dict[ParallelRule, None] = {}
    for op, shapes in catalogue():
        seen.update(dict.fromkeys(rules_of(op, shapes)))
    return tuple(seen)


def parallel_rules(graph: ComputationGraph | None = None) -> list[ParallelRule]:
    """Every parallelisation rule of the operator catalogue, plus those of `graph`'s nodes (axis
    names such as "dim2" depend on an input's rank), in a fixed order."""
    seen = dict.fromkeys(_catalogue_rules())
    if graph is not None:
        for n in graph.nodes:
            seen.update(dict.fromkeys(rules_of(n.op, graph.input_shapes(n))))
    return list(seen)


def data_parallel_rules(graph: ComputationGraph | None = None) -> list[ParallelRule]:
    return [r for r in parallel_rules(graph) if r.dim_kind is DimKind.SAMPLE]


def rules_of_kinds(kinds: Iterable[DimKind], graph: ComputationGraph | None = None) -> list[ParallelRule]:
    want = set(kinds)
    return [r for r in parallel_rules(graph) if r.dim_kind in want]


def allowed_axes(node: Node, rules: Iterable[ParallelRule],
                 inputs: Sequence[TensorShape] | None = None) -> set[str]:
    """The launch axes of `node` the enabled `rules` allow. With the node's input shapes, only
    axes the operator actually has there (and of the rule's kind) are returned."""
    enabled = {(r.axis, r.dim_kind) for r in rules if r.op_type == node.op.op_type}
    if inputs is None:
        return {a for a, _ in enabled}
    return {d.axis for d in node.op.parallel_dims(inputs) if (d.axis, d.kind) in enabled}
