"""The named functions rules may use: operator constructors, computed attribute values, and
predicates over a match. Each takes a `MatchContext` (the matched ops and their shapes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from unity_legion.operators.base import Operator
from unity_legion.operators.registry import by_op_type
from unity_legion.pcg.graph import ComputationGraph, Node
from unity_legion.types import TensorShape

from .values import AttrOf, Computed, SubstitutionError

# Operator classes a `New` builder may construct, by op_type: every operator of the registry.
OPERATOR_TYPES: Mapping[str, type[Operator]] = by_op_type()


@dataclass(frozen=True)
class MatchContext:
    """What a builder or predicate sees: matched nodes by label and the pattern inputs."""

    graph: ComputationGraph
    nodes: Mapping[str, Node]
    inputs: tuple[int, ...]

    def op(self, label: str) -> Any:
        return self.nodes[label].op

    def in_shape(self, label: str, i: int = 0) -> TensorShape:
        return self.graph.tensors[self.nodes[label].inputs[i]].shape

    def out_shape(self, label: str, i: int = 0) -> TensorShape:
        return self.graph.tensors[self.nodes[label].outputs[i]].shape

    def input_shape(self, i: int) -> TensorShape:
        return self.graph.tensors[self.inputs[i]].shape

    def value(self, v: Any) -> Any:
        """Evaluate a builder value: a literal, an AttrOf or a Computed."""
        if isinstance(v, AttrOf):
            return getattr(self.op(v.op), v.attr)
        if isinstance(v, Computed):
            if v.fn not in FUNCTIONS:
                raise SubstitutionError(f"unknown builder function {v.fn!r}")
            return FUNCTIONS[v.fn](self, *v.args)
        return v


def _axis(ctx: MatchContext, label: str) -> int:
    """The resolved (non-negative) axis of a matched concat or split."""
    op = ctx.op(label)
    rank = ctx.in_shape(label).rank
    return op.resolved_axis(rank)


# --- computed values -----------------------------------------------------------------------------

def _sum_attr(ctx: MatchContext, attr: str, *labels: str) -> int:
    return sum(getattr(ctx.op(lb), attr) for lb in labels)


def _attrs(ctx: MatchContext, attr: str, *labels: str) -> tuple:
    return tuple(getattr(ctx.op(lb), attr) for lb in labels)


def _out_dim(ctx: MatchContext, label: str, index: int, dim: int) -> int:
    return ctx.out_shape(label, index).dims[dim]


def _input_dim(ctx: MatchContext, i: int, dim: int) -> int:
    return ctx.input_shape(i).dims[dim]


def _offset_of_output(ctx: MatchContext, label: str, index: int, dim: int) -> int:
    """Where output `index` of a split starts along `dim` (sum of the earlier parts)."""
    return sum(ctx.out_shape(label, j).dims[dim] for j in range(index))


def _compose_perm(ctx: MatchContext, inner: str, outer: str) -> tuple[int, ...]:
    p1, p2 = ctx.op(inner).perm, ctx.op(outer).perm
    return tuple(p1[j] for j in p2)[1:]


def _out_target(ctx: MatchContext, label: str) -> tuple[int, ...]:
    """The per-sample output shape of a matched op (a reshape target)."""
    return tuple(ctx.out_shape(label).dims[1:])


def _any_attr(ctx: MatchContext, attr: str, *labels: str) -> bool:
    return any(getattr(ctx.op(lb), attr) for lb in labels)


def _input_dims_sum(ctx: MatchContext, dim: int, *indices: int) -> int:
    return sum(ctx.input_shape(i).dims[dim] for i in indices)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "any_attr": _any_attr,
    "input_dims_sum": _input_dims_sum,
    "sum_attr": _sum_attr,
    "attrs": _attrs,
    "out_dim": _out_dim,
    "input_dim": _input_dim,
    "offset_of_output": _offset_of_output,
    "compose_perm": _compose_perm,
    "out_target": _out_target,
}


# --- predicates ----------------------------------------------------------------------------------

def _same_attrs(ctx: MatchContext, a: str, b: str, *attrs: str) -> bool:
    return all(getattr(ctx.op(a), x) == getattr(ctx.op(b), x) for x in attrs)


def _is_last_axis(ctx: MatchContext, label: str) -> bool:
    return _axis(ctx, label) == ctx.in_shape(label).rank - 1


def _same_axis(ctx: MatchContext, a: str, b: str) -> bool:
    return _axis(ctx, a) == _axis(ctx, b)


def _split_feeds_concat_in_order(ctx: MatchContext, split: str, concat: str) -> bool:
    """concat(split(x)) reads every part of the split, in order, along the same axis."""
    s, c = ctx.nodes[split], ctx.nodes[concat]
    return c.inputs == s.outputs and _same_axis(ctx, split, concat)


def _split_undoes_concat(ctx: MatchContext, concat: str, split: str) -> bool:
    """split(concat(a, b, ...)) cuts at the concat's seams along the same axis."""
    c, s = ctx.nodes[concat], ctx.nodes[split]
    if len(s.outputs) != len(c.inputs) or not _same_axis(ctx, concat, split):
        return False
    return all(ctx.graph.tensors[i].shape == ctx.graph.tensors[o].shape
               for i, o in zip(c.inputs, s.outputs))


def _perm_is_identity(ctx: MatchContext, inner: str, outer: str) -> bool:
    p = _compose_perm(ctx, inner, outer)
    return p == tuple(range(1, len(p) + 1))


def _perm_not_identity(ctx: MatchContext, inner: str, outer: str) -> bool:
    return not _perm_is_identity(ctx, inner, outer)


def _reshape_is_noop(ctx: MatchContext, label: str) -> bool:
    return ctx.in_shape(label) == ctx.out_shape(label)


def _same_input_shapes(ctx: MatchContext, *pairs: tuple[int, int]) -> bool:
    return all(ctx.input_shape(i) == ctx.input_shape(j) for i, j in pairs)


def _flatten_is_row_major(ctx: MatchContext, label: str) -> bool:
    op = ctx.op(label)
    return not getattr(op, "channels_first", False) or ctx.in_shape(label).rank <= 2


PREDICATES: dict[str, Callable[..., bool]] = {
    "same_attrs": _same_attrs,
    "is_last_axis": _is_last_axis,
    "same_axis": _same_axis,
    "split_feeds_concat_in_order": _split_feeds_concat_in_order,
    "split_undoes_concat": _split_undoes_concat,
    "perm_is_identity": _perm_is_identity,
    "perm_not_identity": _perm_not_identity,
    "reshape_is_noop": _reshape_is_noop,
    "same_input_shapes": _same_input_shapes,
    "flatten_is_row_major": _flatten_is_row_major,
}
