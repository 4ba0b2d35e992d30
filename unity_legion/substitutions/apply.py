"""Applying a rule at a match: a NEW ComputationGraph with the pattern replaced, plus how its
tensors and weights relate to the old graph's; and replaying a recorded list of rewrites."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace as dc_replace
from typing import Any, Iterable, Mapping, Sequence

from unity_legion.operators.base import OperatorError
from unity_legion.pcg.graph import ComputationGraph, GraphError, Node

from .exprs import OPERATOR_TYPES, MatchContext
from .match import Match, find_matches, graph_outputs
from .rule import Copy, In, OpTemplate, Out, Rule, SubstitutionError, WeightFrom
from .weights import WeightRef, WeightSource


@dataclass(frozen=True)
class AppliedRule:
    """A rewrite as a strategy file stores it: the rule and the matched nodes (pattern order)."""

    rule_name: str
    matched_node_names: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule_name, "nodes": list(self.matched_node_names)}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "AppliedRule":
        try:
            return AppliedRule(str(d["rule"]), tuple(str(n) for n in d["nodes"]))
        except (KeyError, TypeError) as exc:
            raise SubstitutionError(f"an applied rule needs 'rule' and 'nodes', got {d!r}") from exc


@dataclass(frozen=True)
class Rewrite:
    """graph: the new graph; tensor_map: old tensor id -> new tensor id for every tensor that
    survives (graph inputs, outputs of untouched nodes, mapped pattern outputs); weight_map:
    (new node name, weight name) -> how to make it from the old graph's weights."""

    graph: ComputationGraph
    tensor_map: dict[int, int]
    applied: AppliedRule | None
    weight_map: dict[WeightRef, WeightSource]
    history: tuple[AppliedRule, ...] = field(default=())


def build_op(ctx: MatchContext, t: OpTemplate) -> Any:
    """The operator a replacement template makes for this match."""
    b = t.build
    attrs = {k: ctx.value(v) for k, v in b.set}
    try:
        if isinstance(b, Copy):
            return dc_replace(ctx.op(b.source), **attrs)
        return OPERATOR_TYPES[b.op_type](**attrs)
    except (OperatorError, TypeError, ValueError) as exc:
        raise SubstitutionError(f"replacement op {t.label!r}: {exc}") from None


def apply(graph: ComputationGraph, rule: Rule, match: Match,
          outputs: Iterable[int] | None = None) -> Rewrite:
    """Rewrite `graph` at `match`; the old graph is left as it was. Raises SubstitutionError if
    the match does not fit the graph, a replacement op fails shape inference, a mapped output
    changes shape, or the result would have a cycle."""
    _check_match(graph, rule, match)
    ctx = match.context(graph)
    matched = [graph.nodes[n] for n in match.node_ids()]
    matched_ids = {n.id for n in matched}
    keep = graph_outputs(graph, outputs)

    # every tensor of the new graph is keyed by the old tensor id or ("rep", label, index)
    alias: dict[int, Any] = {}
    for src, dst in rule.outputs:
        old = ctx.nodes[src.op].outputs[src.index]
        alias[old] = (("rep", dst.op, dst.index) if isinstance(dst, Out)
                      else match.inputs[dst.index])
    made = {t for n in matched for t in n.outputs}

    def key_of(t: int) -> Any:
        if t in alias:
            return alias[t]
        if t in made:
            raise SubstitutionError(f"rule {rule.name!r}: tensor {graph.tensors[t].name!r} is used "
                                    f"outside the match but the rule does not map it")
        return t

    for t in made - set(alias):
        if t in keep:
            raise SubstitutionError(f"rule {rule.name!r}: model output {graph.tensors[t].name!r} "
                                    f"would be removed")

    ops = [build_op(ctx, t) for t in rule.replacement]
    names = _names(graph, rule, ctx, matched_ids)

    # items to place: (sort key, kind, payload, input keys, output keys)
    first = min(matched_ids)
    items: list[tuple[tuple, str, Any, list, list]] = []
    for n in graph.nodes:
        if n.id not in matched_ids:
            items.append(((n.id, 0, 0), "old", n, [key_of(t) for t in n.inputs], list(n.outputs)))
    for k, (t, op) in enumerate(zip(rule.replacement, ops)):
        ins = [match.inputs[r.index] if isinstance(r, In) else ("rep", r.op, r.index)
               for r in t.inputs]
        items.append(((first, 1, k), "rep", (t, op), ins, None))

    new = ComputationGraph()
    new_id: dict[Any, int] = {}
    for t in graph.inputs:
        new_id[t] = new.add_input(graph.tensors[t].shape, graph.tensors[t].name)

    weight_map: dict[WeightRef, WeightSource] = {}

    def emit(item: tuple) -> list[Any]:
        """Add one item to the new graph; the keys of the tensors it makes."""
        _, kind, payload, ins, _ = item
        if kind == "old":
            n: Node = payload
            outs = _add(new, n.op, [new_id[i] for i in ins], n.name, rule, matched)
            new_id.update(zip(n.outputs, outs))
            for w in n.weights:
                weight_map[(n.name, w.name)] = WeightSource.identity(n.name, w.name)
            return list(n.outputs)
        t, op = payload
        outs = _add(new, op, [new_id[i] for i in ins], names[t.label], rule, matched)
        keys = [("rep", t.label, i) for i in range(len(outs))]
        new_id.update(zip(keys, outs))
        weight_map.update(_weights(graph, ctx, t, new.nodes[-1], rule))
        return keys

    if not _emit_in_order(items, set(new_id), emit):
        raise SubstitutionError(f"rule {rule.name!r} at {[n.name for n in matched]}: the rewrite "
                                f"would make a cycle (or reads a replacement output that does "
                                f"not exist)")

    tensor_map: dict[int, int] = {}
    for t in graph.tensors:
        if t in made and t not in alias:
            continue
        k = alias.get(t, t)
        if k in new_id:
            tensor_map[t] = new_id[k]
    for t in alias:
        if t not in tensor_map:
            raise SubstitutionError(f"rule {rule.name!r}: {graph.tensors[t].name!r} is mapped to "
                                    f"{alias[t]}, which the replacement does not make")
        old_s, new_s = graph.tensors[t].shape, new.tensors[tensor_map[t]].shape
        if old_s != new_s:
            raise SubstitutionError(f"rule {rule.name!r}: the replacement of "
                                    f"{graph.tensors[t].name!r} has shape {new_s}, not {old_s}")
    applied = AppliedRule(rule.name, tuple(n.name for n in matched))
    return Rewrite(new, tensor_map, applied, weight_map, (applied,))


def _add(new: ComputationGraph, op: Any, inputs: list[int], name: str, rule: Rule,
         matched: list[Node]) -> tuple[int, ...]:
    try:
        return new.add_node(op, inputs, name)
    except GraphError as exc:
        raise SubstitutionError(f"rule {rule.name!r} at {[m.name for m in matched]}: "
                                f"{exc}") from None


def _check_match(graph: ComputationGraph, rule: Rule, match: Match) -> None:
    if match.rule != rule.name:
        raise SubstitutionError(f"a match of rule {match.rule!r} given with rule {rule.name!r}")
    if len(match.nodes) != len(rule.pattern) or len(match.inputs) != rule.num_inputs:
        raise SubstitutionError(f"rule {rule.name!r}: the match does not fit the pattern")
    for (label, nid), pat in zip(match.nodes, rule.pattern):
        if label != pat.label or not 0 <= nid < len(graph.nodes) \
                or graph.nodes[nid].op.op_type != pat.op_type:
            raise SubstitutionError(f"rule {rule.name!r}: node {nid} of the match is not a "
                                    f"{pat.op_type} in this graph")
    for t in match.inputs:
        if t not in graph.tensors:
            raise SubstitutionError(f"rule {rule.name!r}: input tensor {t} is not in this graph")


def _names(graph: ComputationGraph, rule: Rule, ctx: MatchContext,
           matched_ids: set[int]) -> dict[str, str]:
    """Replacement op names: the inherited matched name, or '<matched names>.<label>'; a clash
    with a surviving node gets a '~k' suffix, so names are deterministic."""
    taken = {n.name for n in graph.nodes if n.id not in matched_ids}
    base = "+".join(n.name for n in ctx.nodes.values())
    out: dict[str, str] = {}
    for t in rule.replacement:
        name = ctx.nodes[t.name_from].name if t.name_from else f"{base}.{t.label}"
        cand, k = name, 1
        while cand in taken:
            k += 1
            cand = f"{name}~{k}"
        taken.add(cand)
        out[t.label] = cand
    return out


def _emit_in_order(items: list, available: set, emit: Any) -> bool:
    """Kahn's order over the items' input keys, smallest sort key first (so untouched nodes keep
    their relative order); `emit(item)` adds an item and returns the keys it makes. False if
    some item can never be added (a cycle)."""
    avail = set(available)
    waiting: dict[Any, list[int]] = {}
    missing: list[int] = []
    heap: list[tuple[tuple, int]] = []
    for i, (key, _, _, ins, _) in enumerate(items):
        need = {k for k in ins if k not in avail}
        missing.append(len(need))
        for k in need:
            waiting.setdefault(k, []).append(i)
        if not need:
            heapq.heappush(heap, (key, i))
    done = 0
    while heap:
        _, i = heapq.heappop(heap)
        done += 1
        for k in emit(items[i]):
            if k in avail:
                continue
            avail.add(k)
            for j in waiting.pop(k, []):
                missing[j] -= 1
                if missing[j] == 0:
                    heapq.heappush(heap, (items[j][0], j))
    return done == len(items)


def _weights(graph: ComputationGraph, ctx: MatchContext, t: OpTemplate, node: Node,
             rule: Rule) -> dict[WeightRef, WeightSource]:
    """Where each weight of the new node `node` (made from template `t`) comes from."""
    old_shapes = {(n.name, w.name): tuple(w.shape.dims) for n in graph.nodes for w in n.weights}
    listed = {wf.name: wf for wf in t.weights}
    want = {w.name: tuple(w.shape.dims) for w in node.weights}
    out: dict[WeightRef, WeightSource] = {}
    for wf in t.weights:
        src = _weight_from(ctx, wf)
        if wf.name not in want:
            if src is not None:
                raise SubstitutionError(f"rule {rule.name!r}: replacement op {t.label!r} has no "
                                        f"weight {wf.name!r} to make from {src}")
            continue
        if src is None:
            raise SubstitutionError(f"rule {rule.name!r}: no source for weight {wf.name!r} of "
                                    f"replacement op {t.label!r}")
        out[(node.name, wf.name)] = src
    for name in want:
        if name in listed:
            continue
        if not isinstance(t.build, Copy):
            raise SubstitutionError(f"rule {rule.name!r}: replacement op {t.label!r} has a weight "
                                    f"{name!r} the rule does not say how to make")
        out[(node.name, name)] = WeightSource.identity(ctx.nodes[t.build.source].name, name)
    for (_, name), src in out.items():
        got = src.shape(lambda r: old_shapes[r])
        if got != want[name]:
            raise SubstitutionError(f"rule {rule.name!r}: weight {name!r} of replacement op "
                                    f"{t.label!r} has shape {want[name]}, but {src} makes {got}")
    return out


def _weight_from(ctx: MatchContext, wf: WeightFrom) -> WeightSource | None:
    have = [(ctx.nodes[lb].name, w) for lb, w in wf.sources
            if any(x.name == w for x in ctx.nodes[lb].weights)]
    if not have:
        return None
    if wf.mode == "slice":
        return WeightSource((have[0],), wf.axis, "slice", int(ctx.value(wf.start)),
                            int(ctx.value(wf.stop)))
    if wf.mode == "sum":
        return WeightSource(tuple(have), None, "sum") if len(have) > 1 else WeightSource((have[0],))
    return WeightSource(tuple(have), wf.axis if len(have) > 1 else None)


def replay(graph: ComputationGraph, applied: Sequence[AppliedRule], rules: Iterable[Rule] | None = None,
           outputs: Iterable[int] | None = None) -> Rewrite:
    """Re-apply recorded rewrites in order (each by rule name and matched node names), composing
    the tensor and weight maps back to `graph`. Raises SubstitutionError naming the step that no
    longer matches."""
    if rules is None:
        from .library import builtin_rules
        rules = builtin_rules()
    by_name = {r.name: r for r in rules}
    cur = graph
    tmap = {t: t for t in graph.tensors}
    wmap = {(n.name, w.name): WeightSource.identity(n.name, w.name)
            for n in graph.nodes for w in n.weights}
    outs = None if outputs is None else list(outputs)
    for step_no, step in enumerate(applied):
        rule = by_name.get(step.rule_name)
        if rule is None:
            raise SubstitutionError(f"replay step {step_no}: unknown rule {step.rule_name!r}")
        cur_outs = None if outs is None else [tmap[t] for t in outs]
        ids = {n.name: n.id for n in cur.nodes}
        missing = [n for n in step.matched_node_names if n not in ids]
        if missing:
            raise SubstitutionError(f"replay step {step_no} ({step.rule_name}): no node named "
                                    f"{missing} in the graph")
        want = tuple(ids[n] for n in step.matched_node_names)
        found = [m for m in find_matches(cur, rule, cur_outs) if m.node_ids() == want]
        if not found:
            raise SubstitutionError(f"replay step {step_no}: rule {step.rule_name!r} no longer "
                                    f"matches nodes {list(step.matched_node_names)}")
        rw = apply(cur, rule, found[0], cur_outs)
        tmap = {old: rw.tensor_map[mid] for old, mid in tmap.items() if mid in rw.tensor_map}
        prev = wmap
        wmap = {k: src.compose(lambda r: prev[r]) for k, src in rw.weight_map.items()}
        cur = rw.graph
    hist = tuple(applied)
    return Rewrite(cur, tmap, hist[-1] if hist else None, wmap, hist)
