"""Series-parallel decomposition of a computation graph's nodes. Pure Python.

A block (a set of nodes) is split, as Unity splits a PCG, into:
- `Parallel`: the block falls into several weakly connected components (independent branches:
  Inception's towers, DLRM's tables); the DP either runs them on the same devices (costs add) or
  splits the machine between groups of them (costs max).
- `Series`: a connected block. Its bottlenecks (nodes every path of the block passes through:
  every other node is an ancestor or a descendant, and no edge bypasses them) are its `own` nodes;
  the nodes between two consecutive bottlenecks form `segments`, each a block of its own.
  A connected block WITHOUT any bottleneck is not series-parallel (a cross edge): it becomes a leaf
  (`leaf=True`): every node is own and the DP eliminates them jointly (exact variable
  elimination over the pairwise costs, no machine split inside), so every DAG is handled.
Node ids of a ComputationGraph are topological (the graph is append-only), so sorting by id is a
topological order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Sequence

from unity_legion.pcg.graph import ComputationGraph, Node


@dataclass(frozen=True)
class Edge:
    """A tensor from output `out` of node `src` to input `inp` of node `dst`."""

    src: int
    out: int
    dst: int
    inp: int
    tensor: int


class GraphIndex:
    """Adjacency of a graph's nodes (those needed for `outputs`)."""

    def __init__(self, graph: ComputationGraph, outputs: Sequence[int]) -> None:
        self.graph = graph
        self.outputs = list(outputs)
        self.nodes: list[Node] = graph.subgraph_nodes(self.outputs)
        self.by_id = {n.id: n for n in self.nodes}
        producer = {t: (n.id, i) for n in self.nodes for i, t in enumerate(n.outputs)}
        self.edges: list[Edge] = []
        for n in self.nodes:
            for j, t in enumerate(n.inputs):
                if t in producer:
                    u, i = producer[t]
                    self.edges.append(Edge(u, i, n.id, j, t))
        self.touching: dict[int, list[Edge]] = {n.id: [] for n in self.nodes}
        for e in self.edges:
            self.touching[e.src].append(e)
            if e.dst != e.src:
                self.touching[e.dst].append(e)
        self._cache: dict[frozenset[int], Block] = {}

    def neighbours(self, nid: int) -> set[int]:
        return {e.dst if e.src == nid else e.src for e in self.touching[nid]}

    def boundary(self, block: Iterable[int]) -> tuple[int, ...]:
        """Nodes outside `block` adjacent to it, sorted."""
        s = set(block)
        return tuple(sorted({m for n in s for m in self.neighbours(n)} - s))

    def block(self, nodes: Iterable[int]) -> "Block":
        key = frozenset(nodes)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = _split(self, key)
        return hit


@dataclass(frozen=True)
class Block:
    nodes: tuple[int, ...]                          # sorted ids


@dataclass(frozen=True)
class Parallel(Block):
    components: tuple[tuple[int, ...], ...]          # sorted by first node id


@dataclass(frozen=True)
class Series(Block):
    own: tuple[int, ...]                             # bottlenecks (all nodes for a leaf), topo order
    segments: tuple[tuple[int, ...], ...]            # node sets between bottlenecks, non-empty
    leaf: bool = False

    @cached_property
    def own_set(self) -> frozenset[int]:
        return frozenset(self.own)


def components(index: GraphIndex, nodes: frozenset[int]) -> list[tuple[int, ...]]:
    parent = {n: n for n in nodes}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for n in nodes:
        for m in index.neighbours(n):
            if m in nodes:
                ra, rb = find(n), find(m)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for n in sorted(nodes):
        groups.setdefault(find(n), []).append(n)
    return sorted((tuple(g) for g in groups.values()), key=lambda g: g[0])


def bottlenecks(index: GraphIndex, nodes: frozenset[int]) -> list[int]:
    """Nodes of a connected block that every path passes through (see the module doc)."""
    order = sorted(nodes)
    pos = {n: i for i, n in enumerate(order)}
    k = len(order)
    preds = {n: [pos[e.src] for e in index.touching[n] if e.dst == n and e.src in nodes]
             for n in order}
    succs = {n: [pos[e.dst] for e in index.touching[n] if e.src == n and e.dst in nodes]
             for n in order}
    anc = [0] * k
    for i, n in enumerate(order):
        a = 0
        for p in preds[n]:
            a |= anc[p] | (1 << p)
        anc[i] = a
    desc = [0] * k
    for i in range(k - 1, -1, -1):
        d = 0
        for s in succs[order[i]]:
            d |= desc[s] | (1 << s)
        desc[i] = d
    # edges crossing position i strictly (u before i, v after i): a difference array
    crossing = [0] * (k + 1)
    for n in order:
        for s in succs[n]:
            if s > pos[n] + 1:
                crossing[pos[n] + 1] += 1
                crossing[s] -= 1
    out, run = [], 0
    for i, n in enumerate(order):
        run += crossing[i]
        if run == 0 and anc[i].bit_count() == i and desc[i].bit_count() == k - 1 - i:
            out.append(n)
    return out


def _split(index: GraphIndex, nodes: frozenset[int]) -> Block:
    srt = tuple(sorted(nodes))
    comps = components(index, nodes)
    if len(comps) > 1:
        return Parallel(srt, tuple(comps))
    if len(srt) == 1:
        return Series(srt, srt, ())
    necks = bottlenecks(index, nodes)
    if not necks:
        return Series(srt, srt, (), leaf=True)
    segs: list[tuple[int, ...]] = []
    neck_set = set(necks)
    cur: list[int] = []
    for n in srt:
        if n in neck_set:
            if cur:
                segs.append(tuple(cur))
            cur = []
        else:
            cur.append(n)
    if cur:
        segs.append(tuple(cur))
    return Series(srt, tuple(necks), tuple(segs))


def describe(index: GraphIndex, nodes: Iterable[int] | None = None, depth: int = 0) -> str:
    """The decomposition as indented text (for reading and debugging)."""
    b = index.block(nodes if nodes is not None else [n.id for n in index.nodes])
    pad = "  " * depth
    name = lambda n: index.by_id[n].name  # noqa: E731
    if isinstance(b, Parallel):
        return "\n".join([f"{pad}parallel x{len(b.components)}"]
                         + [describe(index, c, depth + 1) for c in b.components])
    kind = "leaf" if b.leaf else "series"
    lines = [f"{pad}{kind}: {', '.join(name(n) for n in b.own)}"]
    lines += [describe(index, s, depth + 1) for s in b.segments]
    return "\n".join(lines)
