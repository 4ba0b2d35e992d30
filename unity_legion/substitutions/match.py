"""Finding every occurrence of a rule's pattern in a ComputationGraph."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from unity_legion.pcg.graph import ComputationGraph, Node

from .exprs import PREDICATES, MatchContext
from .rule import In, Out, Rule, SubstitutionError, check_constraint


@dataclass(frozen=True)
class Match:
    """Which node each pattern label matched (in pattern order) and which tensor each pattern
    input is."""

    rule: str
    nodes: tuple[tuple[str, int], ...]
    inputs: tuple[int, ...]

    def node_ids(self) -> tuple[int, ...]:
        return tuple(n for _, n in self.nodes)

    def context(self, graph: ComputationGraph) -> MatchContext:
        return MatchContext(graph, {lb: graph.nodes[n] for lb, n in self.nodes}, self.inputs)


def graph_outputs(graph: ComputationGraph, outputs: Iterable[int] | None = None) -> set[int]:
    """The tensors that must survive a rewrite: the given model outputs, or by default every
    tensor a node makes and no node reads (an unread tensor may be a model output)."""
    if outputs is not None:
        return set(outputs)
    read = {t for n in graph.nodes for t in n.inputs}
    return {t for n in graph.nodes for t in n.outputs if t not in read}


class _Index:
    """Consumers and nodes by op type, computed once per search over one graph."""

    def __init__(self, graph: ComputationGraph) -> None:
        self.by_type: dict[str, list[Node]] = {}
        self.consumers: dict[int, list[Node]] = {}
        for n in graph.nodes:
            self.by_type.setdefault(n.op.op_type, []).append(n)
            for t in dict.fromkeys(n.inputs):
                self.consumers.setdefault(t, []).append(n)


def find_matches(graph: ComputationGraph, rule: Rule, outputs: Iterable[int] | None = None,
                 _index: "_Index | None" = None) -> list[Match]:
    """Every match of `rule` in `graph`, ordered by the matched node ids (pattern order).

    A match is rejected when an output of a matched node is used outside the match (read by
    another node, or a model output, see `graph_outputs`) and the rule does not map it."""
    index = _index or _Index(graph)
    keep = graph_outputs(graph, outputs)
    found: list[Match] = []
    pats = {p.label: p for p in rule.pattern}
    # readers[label] = [(reader label, input position, output index)]: edges into bound ops
    readers: dict[str, list[tuple[str, int, int]]] = {p.label: [] for p in rule.pattern}
    for p in rule.pattern:
        for k, r in enumerate(p.inputs):
            if isinstance(r, Out):
                readers[r.op].append((p.label, k, r.index))
    # try the last op first: patterns usually end in one op, and producers are one lookup away
    order = [p.label for p in reversed(rule.pattern)]

    def seeds(label: str, bound: dict[str, Node], inputs: list[int | None]) -> list[Node] | None:
        """Candidates for `label` from its bound neighbours; None if it has none bound."""
        pat = pats[label]
        for reader, k, idx in readers[label]:
            if reader in bound:
                t = bound[reader].inputs[k]
                prod_ = graph.tensors[t].producer
                node = None if prod_ is None else graph.nodes[prod_]
                ok = node is not None and node.outputs.index(t) == idx
                return [node] if ok else []
        for r in pat.inputs:
            t = (bound[r.op].outputs[r.index] if r.index < len(bound[r.op].outputs) else -1) \
                if isinstance(r, Out) and r.op in bound else \
                (inputs[r.index] if isinstance(r, In) else None)
            if t is not None:
                return [c for c in index.consumers.get(t, []) if c.op.op_type == pat.op_type]
        return None

    def fits(label: str, node: Node, bound: dict[str, Node], inputs: list[int | None]) -> list | None:
        """The pattern inputs with `node` bound to `label`, or None if an edge disagrees."""
        pat = pats[label]
        if node.op.op_type != pat.op_type or len(node.inputs) != len(pat.inputs):
            return None
        if pat.num_outputs is not None and len(node.outputs) != pat.num_outputs:
            return None
        if not all(check_constraint(c, node.op) for c in pat.where):
            return None
        new_inputs = list(inputs)
        for t, r in zip(node.inputs, pat.inputs):
            if isinstance(r, Out):
                if r.op in bound:
                    src = bound[r.op].outputs
                    if r.index >= len(src) or src[r.index] != t:
                        return None
            elif new_inputs[r.index] is None:
                new_inputs[r.index] = t
            elif new_inputs[r.index] != t:
                return None
        for reader, k, idx in readers[label]:
            if reader in bound and (idx >= len(node.outputs)
                                    or bound[reader].inputs[k] != node.outputs[idx]):
                return None
        return new_inputs

    def extend(bound: dict[str, Node], inputs: list[int | None]) -> None:
        if len(bound) == len(rule.pattern):
            m = _accept(graph, rule, bound, inputs, index, keep)
            if m is not None:
                found.append(m)
            return
        free = [lb for lb in order if lb not in bound]
        label, cands = free[0], None
        for lb in free:
            cands = seeds(lb, bound, inputs)
            if cands is not None:
                label = lb
                break
        if cands is None:
            cands = index.by_type.get(pats[label].op_type, [])
        used = {n.id for n in bound.values()}
        for node in cands:
            if node.id in used:
                continue
            new_inputs = fits(label, node, bound, inputs)
            if new_inputs is not None:
                extend({**bound, label: node}, new_inputs)

    extend({}, [None] * rule.num_inputs)
    found.sort(key=lambda m: (m.node_ids(), m.inputs))
    return found


def all_matches(graph: ComputationGraph, rules: Iterable[Rule],
                outputs: Iterable[int] | None = None) -> list[tuple[Rule, Match]]:
    """Every (rule, match) pair over `rules`, rule by rule in the given order: the neighbours
    of `graph` a search expands."""
    keep = None if outputs is None else list(outputs)
    index = _Index(graph)
    return [(r, m) for r in rules for m in find_matches(graph, r, keep, index)]


def _accept(graph: ComputationGraph, rule: Rule, bound: dict[str, Node],
            inputs: list[int | None], index: _Index, keep: set[int]) -> Match | None:
    ids = {n.id for n in bound.values()}
    made = {t for n in bound.values() for t in n.outputs}
    # a pattern input made inside the match would make the pattern's shape a lie (and a cycle)
    if any(t in made for t in inputs):
        return None
    mapped = {bound[src.op].outputs[src.index] for src, _ in rule.outputs
              if src.index < len(bound[src.op].outputs)}
    for t in made:
        escapes = t in keep or any(c.id not in ids for c in index.consumers.get(t, []))
        if escapes and t not in mapped:
            return None
    for a, b in rule.symmetric:
        if bound[a].id > bound[b].id:
            return None
    m = Match(rule.name, tuple((p.label, bound[p.label].id) for p in rule.pattern),
              tuple(t for t in inputs))  # type: ignore[misc]
    ctx = m.context(graph)
    for p in rule.where:
        try:
            if not PREDICATES[p.name](ctx, *p.args):
                return None
        except SubstitutionError:
            raise
        except Exception:  # a predicate that cannot evaluate on these shapes does not hold
            return None
    return m
