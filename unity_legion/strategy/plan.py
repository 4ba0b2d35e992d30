"""A compiled plan: a strategy resolved once, at compile time, into all the executor needs.

`Strategy.compile(graph, ...)` replays the strategy's substitutions once and returns a
`CompiledPlan`: the graph that runs (the model's own, or the one the substitutions make) with its
outputs, a configuration per node of that graph, the weight translation between the model's
weights and that graph's, and the model's frozen weights. The executor is built from it
(`unity_legion.executor`): nothing Keras-shaped crosses this line. Pure Python (numpy).

The weight translation: the user sees the model's own weights (by its WeightKeys); the rewritten
graph's weights are made from the model's through the rewrite's `weight_map` (concatenations and
slices of the model's weights). `WeightTranslation` is that map as index boxes, in both
directions: a rewritten weight is materialised from the model's weights, and a model weight is
read back as the pieces of the rewritten weights that hold it.

Only rewrites that keep training exact are accepted: every element of a model weight lives in at
most one element of the rewritten weights (concat/slice trees; then gradients and elementwise
optimizer state are the same numbers). A "sum" source (two biases added into one) or a weight
copied twice would train differently from the model and could not be read back: such a strategy
is refused at compile time, naming the substitution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from unity_legion.pcg.graph import ComputationGraph
from unity_legion.pcg.pipeline import PipelineSpec
from unity_legion.strategy.strategy import StrategyError
from unity_legion.substitutions.apply import AppliedRule, Rewrite, replay
from unity_legion.substitutions.weights import WeightRef, WeightSource
from unity_legion.types import OpConfig

WeightKey = tuple[int, str]                  # (node id, weight name) of one graph
Box = tuple[tuple[int, int], ...]            # [lo, hi) per dimension


@dataclass(frozen=True)
class Piece:
    """Elements `new_box` of rewritten weight `new` are elements `old_box` of model weight `old`."""

    new: WeightKey
    new_box: Box
    old: WeightKey
    old_box: Box


class _Untrainable(Exception):
    """A rewrite whose weights cannot be trained as the model's own (the message says why)."""


def _index(box: Box) -> tuple[slice, ...]:
    return tuple(slice(lo, hi) for lo, hi in box)


def _boxes(src: WeightSource | WeightRef, shape_of: Callable[[WeightRef], tuple[int, ...]]
           ) -> tuple[list[tuple[WeightRef, Box, Box]], tuple[int, ...]]:
    """(leaf, box in the leaf, box in src's value) for every piece of `src`, and its shape."""
    if isinstance(src, tuple):
        shape = tuple(shape_of(src))
        full = tuple((0, d) for d in shape)
        return [(src, full, full)], shape
    if src.mode == "sum":
        raise _Untrainable(f"it is the sum {src}: a summed weight trains differently from its "
                           f"parts (each part gets the whole gradient) and cannot be split back")
    parts = [_boxes(s, shape_of) for s in src.sources]
    if src.mode == "slice":
        (pieces, shape), = parts
        ax = src.axis % len(shape)  # type: ignore[operator]
        start, stop = int(src.start), int(src.stop)  # type: ignore[arg-type]
        out = []
        for ref, lb, ob in pieces:
            lo, hi = max(ob[ax][0], start), min(ob[ax][1], stop)
            if lo >= hi:
                continue
            d = lo - ob[ax][0]
            lb2 = lb[:ax] + ((lb[ax][0] + d, lb[ax][0] + d + hi - lo),) + lb[ax + 1:]
            ob2 = ob[:ax] + ((lo - start, hi - start),) + ob[ax + 1:]
            out.append((ref, lb2, ob2))
        return out, shape[:ax] + (stop - start,) + shape[ax + 1:]
    if len(parts) == 1:
        return parts[0]
    ax = src.axis % len(parts[0][1])  # type: ignore[operator]
    out, offset = [], 0
    for pieces, shape in parts:
        for ref, lb, ob in pieces:
            shifted = (ob[ax][0] + offset, ob[ax][1] + offset)
            out.append((ref, lb, ob[:ax] + (shifted,) + ob[ax + 1:]))
        offset += shape[ax]
    first = parts[0][1]
    return out, first[:ax] + (offset,) + first[ax + 1:]


def _overlap(a: Box, b: Box) -> bool:
    return all(max(x[0], y[0]) < min(x[1], y[1]) for x, y in zip(a, b))


def _volume(box: Box) -> int:
    return int(np.prod([hi - lo for lo, hi in box], dtype=np.int64))


def _analyse(old: ComputationGraph, rw: Rewrite) -> list[Piece]:
    """Every piece of the rewritten graph's weights; _Untrainable if the map is not 1:1."""
    old_ids = {n.name: n.id for n in old.nodes}
    old_shapes = {(n.name, w.name): tuple(w.shape.dims) for n in old.nodes for w in n.weights}
    new_ids = {n.name: n.id for n in rw.graph.nodes}
    pieces: list[Piece] = []
    for (node, wname), src in sorted(rw.weight_map.items()):
        try:
            found, _ = _boxes(src, lambda r: old_shapes[r])
        except _Untrainable as exc:
            raise _Untrainable(f"weight {node}/{wname} of the rewritten graph: {exc}") from None
        for (on, ow), ob, nb in found:
            pieces.append(Piece((new_ids[node], wname), nb, (old_ids[on], ow), ob))
    by_old: dict[WeightKey, list[Piece]] = {}
    for p in pieces:
        for q in by_old.get(p.old, []):
            if _overlap(p.old_box, q.old_box):
                names = {n.id: n.name for n in rw.graph.nodes}
                raise _Untrainable(
                    f"weight {old.nodes[p.old[0]].name}/{p.old[1]} of the model is copied into "
                    f"both {names[q.new[0]]}/{q.new[1]} and {names[p.new[0]]}/{p.new[1]} of the "
                    f"rewritten graph: the copies would train apart")
        by_old.setdefault(p.old, []).append(p)
    return pieces


def _culprit(graph: ComputationGraph, applied: Sequence[AppliedRule], outputs: Sequence[int]
             ) -> str:
    """The first substitution after which the rewrite is untrainable, in words."""
    for k in range(1, len(applied) + 1):
        try:
            _analyse(graph, replay(graph, applied[:k], outputs=outputs))
        except _Untrainable:
            a = applied[k - 1]
            return f"substitution {k - 1} ({a.rule_name} on {list(a.matched_node_names)})"
    return "its substitutions"


class WeightTranslation:
    """The model's weights <-> the rewritten graph's, for one strategy's substitutions."""

    def __init__(self, graph: ComputationGraph, outputs: Sequence[int], rw: Rewrite,
                 substitutions: tuple[AppliedRule, ...], pieces: list[Piece]) -> None:
        self.graph = graph                      # the model's graph
        self.rewrite = rw
        self.substitutions = substitutions
        self.outputs = [rw.tensor_map[t] for t in outputs]
        live = {n.id for n in rw.graph.subgraph_nodes(self.outputs)}  # the nodes that run
        self.pieces = pieces = [p for p in pieces if p.new[0] in live]
        new_ids = {n.name: n.id for n in rw.graph.nodes}
        old_ids = {n.name: n.id for n in graph.nodes}
        self.sources: dict[WeightKey, WeightSource] = {
            (new_ids[n], w): src for (n, w), src in rw.weight_map.items() if new_ids[n] in live}
        self._old_name = {n.id: n.name for n in graph.nodes}
        self._old_id = old_ids
        self.by_old: dict[WeightKey, list[Piece]] = {}
        self.by_new: dict[WeightKey, set[WeightKey]] = {}
        for p in pieces:
            self.by_old.setdefault(p.old, []).append(p)
            self.by_new.setdefault(p.new, set()).add(p.old)
        shapes = {(n.id, w.name): tuple(w.shape.dims) for n in graph.nodes for w in n.weights}
        # model weights the rewritten graph does not (wholly) hold keep a host copy
        self.partial = {k for k, s in shapes.items()
                        if sum(_volume(p.old_box) for p in self.by_old.get(k, []))
                        != int(np.prod(s))}

    @classmethod
    def of(cls, graph: ComputationGraph, outputs: Sequence[int], rw: Rewrite,
           substitutions: Sequence[AppliedRule]) -> "WeightTranslation":
        """The translation between `graph` (outputs `outputs`) and `rw`, the graph that
        `substitutions` make of it; StrategyError, naming the substitution, if its weights cannot
        be trained as the model's. Changes nothing."""
        try:
            pieces = _analyse(graph, rw)
        except _Untrainable as exc:
            raise StrategyError(f"compile: {_culprit(graph, substitutions, outputs)} of "
                                f"the strategy cannot be trained as the model's weights: "
                                f"{exc}") from None
        return cls(graph, outputs, rw, tuple(substitutions), pieces)

    def to_rewritten(self, values: Mapping[WeightKey, np.ndarray],
                     keys: Iterable[WeightKey] | None = None) -> dict[WeightKey, np.ndarray]:
        """Rewritten weights (all, or `keys`) from the model's weights `values`."""
        get = (lambda n, w: values[(self._old_id[n], w)])
        return {k: self.sources[k].materialize(get)
                for k in (self.sources if keys is None else keys)}

    def to_model(self, key: WeightKey, read: Callable[[WeightKey], np.ndarray],
                 base: np.ndarray | None) -> np.ndarray:
        """Model weight `key` from the rewritten weights (`read`), over `base` where they do not
        hold all of it."""
        pieces = self.by_old.get(key, [])
        spec = {w.name: w for w in self.graph.nodes[key[0]].weights}[key[1]]
        out = (np.array(base, dtype=spec.shape.dtype.numpy, copy=True) if base is not None
               else np.empty(spec.shape.dims, spec.shape.dtype.numpy))
        for p in pieces:
            out[_index(p.old_box)] = read(p.new)[_index(p.new_box)]
        return out

    def frozen_keys(self, frozen: Iterable[WeightKey]) -> frozenset[WeightKey]:
        """The rewritten weights to freeze for the model's frozen weights; a rewritten weight
        made of frozen and trainable weights is an error."""
        frozen = set(frozen)
        out = set()
        new_name = {n.id: n.name for n in self.rewrite.graph.nodes}
        for new, olds in self.by_new.items():
            f = olds & frozen
            if f and f != olds:
                show = (lambda ks: ", ".join(sorted(f"{self._old_name[k[0]]}/{k[1]}" for k in ks)))
                raise StrategyError(
                    f"weight {new_name[new[0]]}/{new[1]} of the graph the strategy's "
                    f"substitutions make joins frozen ({show(f)}) and trainable "
                    f"({show(olds - f)}) weights; freeze all of those layers or none, or use a "
                    f"strategy without that substitution")
            if f:
                out.add(new)
        return frozenset(out)



@dataclass(frozen=True)
class CompiledPlan:
    """A strategy resolved for one model graph: what the executor runs, and nothing else."""

    graph: ComputationGraph                    # the graph that runs (rewritten or the model's)
    outputs: tuple[int, ...]                   # its output tensors, in the model's order
    configs: Mapping[int, OpConfig]            # by node id of `graph`: every node's config
    # the model's weights <-> `graph`'s (None: `graph` is the model's own graph)
    translation: WeightTranslation | None = None
    # the model's weights frozen at compile time (by the model's keys; checked against the
    # translation: a rewritten weight joining frozen and trainable ones is refused)
    frozen: frozenset[WeightKey] = frozenset()
    substitutions: tuple[AppliedRule, ...] = ()
    model_graph: ComputationGraph | None = field(default=None, compare=False)  # the model's
    # pipeline parallelism (stages by operator names of `graph`, micro-batches, schedule):
    # the executor runs every step in micro-batches through the stages (executor/pipeline.py)
    pipeline: PipelineSpec | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "configs", dict(self.configs))
        object.__setattr__(self, "frozen", frozenset(self.frozen))
        object.__setattr__(self, "substitutions", tuple(self.substitutions))

    @property
    def rewritten(self) -> bool:
        return self.translation is not None

    @property
    def tensor_map(self) -> Mapping[int, int]:
        """Model tensor id -> tensor id of `graph` (identity without substitutions)."""
        if self.translation is None:
            return {t: t for t in self.graph.tensors}
        return self.translation.rewrite.tensor_map
