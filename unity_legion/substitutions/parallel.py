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

from unity_legion.operators.base import DimKind, Operator
from unity_legion.operators.registry import OPERATORS
from unity_legion.pcg.graph import ComputationGraph, Node
from unity_legion.types import TensorShape


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


def catalogue() -> list[tuple[Operator, tuple[TensorShape, ...]]]:
    """One or more representative instances of every operator class (with input shapes): each
    class's own `examples()`, in the registry's order. The source of the built-in parallel
    rules."""
    return [example for cls in OPERATORS for example in cls.examples()]


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
