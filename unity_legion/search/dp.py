"""Unity's machine-mapping dynamic programme over a series-parallel decomposition. Pure Python.

`best_mapping` minimises the decomposed cost of mapping_cost.py (time + lambda x memory) over
one placed candidate config per node:

- a Series block (decompose.py) is solved by variable elimination along its bottlenecks: each
  bottleneck's config is enumerated and the two sides' optimal costs given that boundary are
  added (a min-plus product of cost tables, in numpy); its segments are solved recursively as
  cost tables over their boundary nodes' configs;
- a Parallel block takes the elementwise min of (a) every component on the same devices (costs
  add) and (b) the resource cut in two (Resource.splits: by whole nodes, or by devices inside one
  node; in halves, optionally also 1/4 : 3/4) between a prefix and the rest of its components (costs max),
  recursively;
- a leaf (a non-series-parallel connected block) eliminates all its nodes jointly (min-degree
  order): exact for its sum of costs, no machine split inside it.

Results are memoised on a block's STRUCTURE (operator keys, position-relative edges, boundary
operators), its resource's SHAPE and its boundary's resources RELATIVE to it (costs are invariant
under moving everything by whole nodes / devices inside a node; blocks reading a graph input,
which arrives on device 0, also key on whether they start there), and lambda. So identical layers,
the same branch on another part of the machine, and (with a MappingCache) the same block in
another graph are solved once; a reused solution is moved to its devices when expanded. The
boundary configs are the axes of the stored table. Memory-aware as Unity: if the time-optimal plan
does not fit the device memory, lambda is raised until it does; if none fits, the plan with the
least memory is returned with fits=False and the excess in bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from unity_legion.cost.machine import MachineModel
from unity_legion.cost.op_cost import CostModel
from unity_legion.pcg.graph import ComputationGraph, Node
from unity_legion.search.cache import MappingCache
from unity_legion.search.candidates import Resource, shifted
from unity_legion.search.decompose import Edge, GraphIndex, Parallel, Series
from unity_legion.search.mapping_cost import MappingCost, peak_memory
from unity_legion.strategy.strategy import Strategy
from unity_legion.types import OpConfig


@dataclass(frozen=True)
class MappingResult:
    configs: dict[int, OpConfig]          # node id -> placed config
    names: dict[int, str]
    estimate: float                       # seconds per step, the DP's decomposed cost
    peak_memory: float                    # bytes, the fullest device
    fits: bool
    excess: float = 0.0                   # bytes over the device memory (0 when it fits)
    memory_weight: float = 0.0            # the lambda (seconds per byte) that made it fit
    seconds: float = 0.0                  # wall time of the search
    device_type: str = "gpu"
    devices: int = 1
    stats: dict[str, Any] = field(default_factory=dict)

    def strategy(self, model: Any) -> Strategy:
        """The plan as a Strategy for `model` (the graph or Keras model it was found for)."""
        return Strategy.for_graph(model, {self.names[n]: c for n, c in self.configs.items()},
                                  source="search", device_type=self.device_type,
                                  devices=self.devices)


# ---------------------------------------------------------------------------------------------
# Cost tables over variables (node ids): numpy arrays with one axis per variable

Factor = tuple[tuple[int, ...], np.ndarray]


def _aligned(vars_f: Sequence[int], arr: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """`arr` (axes `vars_f`) transposed and reshaped to broadcast over the axes `order`."""
    if not vars_f:
        return arr.reshape((1,) * len(order)) if order else arr
    pos = {v: i for i, v in enumerate(order)}
    perm = sorted(range(len(vars_f)), key=lambda i: pos[vars_f[i]])
    arr = arr.transpose(perm)
    shape = [1] * len(order)
    for i in perm:
        shape[pos[vars_f[i]]] = arr.shape[perm.index(i)]
    return arr.reshape(shape)


def _sum(factors: Sequence[Factor], order: Sequence[int], dims: dict[int, int]) -> np.ndarray:
    total = np.zeros([dims[v] for v in order])
    for vs, arr in factors:
        total = total + _aligned(vs, arr, order)
    return total


class _Solved:
    """A block's optimal cost table over its boundary nodes' configs, and how to expand it."""

    table: np.ndarray
    bvars: tuple[int, ...]

    def expand(self, idx: tuple[int, ...]) -> dict[int, OpConfig]:
        raise NotImplementedError


@dataclass
class _Child:
    solved: _Solved
    remap: dict[int, int]                 # the child's base node ids -> this block's ids
    bvars: tuple[int, ...]                # the child's boundary in this block's ids
    shift: int = 0                        # devices from where it was solved to where it is used

    def expand(self, assign: dict[int, int]) -> dict[int, OpConfig]:
        got = self.solved.expand(tuple(assign[b] for b in self.bvars))
        return {self.remap[n]: shifted(c, self.shift) for n, c in got.items()}


class _SeriesSolved(_Solved):
    def __init__(self, table, bvars, own_cfgs, steps, children, offset) -> None:
        self.table, self.bvars = table, bvars
        self.own_cfgs = own_cfgs          # node -> its domain, placed at device 0
        self.offset = offset              # ... and moved by this many devices
        self.steps = steps                # (variable, its bucket of factors), elimination order
        self.children = children          # segments

    def expand(self, idx: tuple[int, ...]) -> dict[int, OpConfig]:
        assign = dict(zip(self.bvars, idx))
        for v, bucket in reversed(self.steps):
            total = np.zeros(len(self.own_cfgs[v]))
            for vs, arr in bucket:
                sl = tuple(slice(None) if u == v else assign[u] for u in vs)
                total = total + arr[sl]
            assign[v] = int(np.argmin(total))
        out = {v: shifted(self.own_cfgs[v][assign[v]], self.offset) for v in self.own_cfgs}
        for ch in self.children:
            out.update(ch.expand(assign))
        return out


class _ParallelSolved(_Solved):
    def __init__(self, table, bvars, options) -> None:
        self.table, self.bvars = table, bvars
        self.options = options            # (aligned table, children)

    def expand(self, idx: tuple[int, ...]) -> dict[int, OpConfig]:
        assign = dict(zip(self.bvars, idx))
        best, pick = None, None
        for tab, children in self.options:
            v = float(tab[idx] if idx else tab)
            if best is None or v < best:
                best, pick = v, children
        out: dict[int, OpConfig] = {}
        for ch in pick:  # type: ignore[union-attr]
            out.update(ch.expand(assign))
        return out


class MappingDP:
    """The DP over one graph, machine and cost; `solve(lam)` for one memory weight."""

    def __init__(self, mc: MappingCost, whole: Resource, uneven: bool = False) -> None:
        self.mc, self.index, self.whole = mc, mc.index, whole
        self.uneven = uneven              # also 1/4 : 3/4 machine splits (Resource.splits)
        self.lam = 0.0
        # signature -> (solved, base node ids, resource it was solved on); shared across calls
        # through the MappingCache (the signature holds lambda)
        self.memo: dict[tuple, tuple[_Solved, tuple[int, ...], Resource]] = mc.store.blocks
        self.calls = 0
        self.hits = 0

    def solve(self, lam: float) -> tuple[float, dict[int, OpConfig]]:
        self.lam = lam
        nodes = tuple(n.id for n in self.index.nodes)
        child = self._child(nodes, self.whole, {})
        return float(child.solved.table), child.expand({})

    # ------------------------------------------------------------------ memo
    def _signature(self, nodes: tuple[int, ...], bnd: tuple[int, ...], res: Resource,
                   bres: dict[int, Resource]) -> tuple:
        """A block's structure, by operator keys and positions (never ids), with its resource's
        shape and its boundary's resources relative to it: the block's optimal table is the
        same wherever (and in whichever graph) the signature recurs."""
        mc = self.mc
        loc = {n: i for i, n in enumerate(nodes)} | {b: -1 - i for i, b in enumerate(bnd)}
        edges = set()
        for n in nodes:
            for e in self.index.touching[n]:
                edges.add((loc[e.src], e.out, loc[e.dst], e.inp))
        # graph inputs arrive on device 0: blocks reading them depend on where they lie
        where = ((res.node0 == 0, res.dev0 == 0) if any(mc.reads_input(n) for n in nodes)
                 else None)
        return (tuple(mc.node_key(n) for n in nodes),
                tuple((mc.node_key(b), bres[b].relative(res)) for b in bnd),
                tuple(sorted(edges)), res.nodes, res.devs, where, self.lam, self.uneven)

    def _child(self, nodes: tuple[int, ...], res: Resource, bres: dict[int, Resource]) -> _Child:
        bnd = self.index.boundary(nodes)
        sub = {b: bres[b] for b in bnd}
        key = self._signature(nodes, bnd, res, sub)
        hit = self.memo.get(key)
        if hit is None:
            self.calls += 1
            self.mc.store.stats.block_misses += 1
            block = self.index.block(nodes)
            solved = (self._parallel(block, res, bnd, sub) if isinstance(block, Parallel)
                      else self._series(block, res, bnd, sub))  # type: ignore[arg-type]
            hit = self.memo[key] = (solved, nodes + bnd, res)
        else:
            self.hits += 1
            self.mc.store.stats.block_hits += 1
        solved, base, at = hit
        return _Child(solved, dict(zip(base, nodes + bnd)), bnd, res.offset - at.offset)

    # ------------------------------------------------------------------ blocks
    def _series(self, block: Series, res: Resource, bnd: tuple[int, ...],
                bres: dict[int, Resource]) -> _Solved:
        mc, lam = self.mc, self.lam
        own = block.own_set
        where = {o: res for o in block.own} | bres
        cfgs = {o: mc.local(o, res).cfgs for o in block.own}     # at device 0: moved on expand
        dims = {v: mc.count(v, where[v]) for v in where}
        factors: list[Factor] = []
        for o in block.own:
            t, m = mc.unary(o, res)
            factors.append(((o,), t + lam * m if lam else t))
        seen: set[Edge] = set()
        for o in block.own:
            for e in self.index.touching[o]:
                other = e.dst if e.src == o else e.src
                if e in seen or (other not in own and other not in bres):
                    continue
                seen.add(e)
                factors.append(((e.src, e.dst), mc.edge(e, where[e.src], where[e.dst])))
        children = []
        for seg in block.segments:
            ch = self._child(seg, res, where)
            children.append(ch)
            factors.append((ch.bvars, ch.solved.table))
        order = list(block.own) if not block.leaf else self._min_degree(block.own, factors)
        steps = []
        for v in order:
            bucket = [f for f in factors if v in f[0]]
            factors = [f for f in factors if v not in f[0]]
            union = sorted({u for vs, _ in bucket for u in vs}, key=lambda u: (u != v, u))
            total = _sum(bucket, union, dims)
            factors.append((tuple(union[1:]), total.min(axis=0)))
            steps.append((v, bucket))
        table = _sum(factors, list(bnd), dims)
        return _SeriesSolved(table, bnd, cfgs, steps, children, res.offset)

    @staticmethod
    def _min_degree(own: Sequence[int], factors: list[Factor]) -> list[int]:
        nb: dict[int, set[int]] = {o: set() for o in own}
        for vs, _ in factors:
            for v in vs:
                if v in nb:
                    nb[v] |= set(vs) - {v}
        order = []
        left = set(own)
        while left:
            v = min(left, key=lambda u: (len(nb[u] & (left | set(nb[u]))), u))
            order.append(v)
            left.discard(v)
            for u in nb[v]:
                if u in nb:
                    nb[u] |= nb[v] - {u}
                    nb[u].discard(v)
        return order

    def _parallel(self, block: Parallel, res: Resource, bnd: tuple[int, ...],
                  bres: dict[int, Resource]) -> _Solved:
        mc = self.mc
        dims = {b: mc.count(b, bres[b]) for b in bnd}
        comps = block.components
        shared = [self._child(c, res, bres) for c in comps]
        options = [(_sum([(c.bvars, c.solved.table) for c in shared], bnd, dims), shared)]
        for j in range(1, len(comps)):
            first = tuple(sorted(n for c in comps[:j] for n in c))
            rest = tuple(sorted(n for c in comps[j:] for n in c))
            for r1, r2 in res.splits(self.uneven):
                for ra, rb in ((r1, r2), (r2, r1)):
                    a, b = self._child(first, ra, bres), self._child(rest, rb, bres)
                    tab = np.maximum(_aligned(a.bvars, a.solved.table, bnd),
                                     _aligned(b.bvars, b.solved.table, bnd))
                    options.append((np.broadcast_to(tab, [dims[v] for v in bnd]), [a, b]))
        table = options[0][0]
        for tab, _ in options[1:]:
            table = np.minimum(table, tab)
        return _ParallelSolved(np.asarray(table), bnd, options)


# ---------------------------------------------------------------------------------------------

def whole_resource(machine: MachineModel) -> Resource:
    return Resource.whole(machine.nodes, machine.devices_per_node)


def setup(graph: ComputationGraph, batch: int, machine: MachineModel, cost: CostModel | None,
          outputs: Sequence[int] | None, allowed_axes: Callable[[Node], set[str] | None] | None,
          device_type: str | None, cache: MappingCache | None = None,
          optimizer_slots: int = 2) -> MappingCost:
    outs = list(outputs) if outputs is not None else [
        t for n in graph.nodes for t in n.outputs if not graph.consumers(t)]
    index = GraphIndex(graph, outs)
    return MappingCost(graph, index, batch, machine, cost, device_type or machine.device.kind,
                       allowed_axes, optimizer_slots=optimizer_slots, cache=cache)


def memory_aware(mc: MappingCost, solve: Callable[[float], tuple[float, dict[int, OpConfig]]],
                 evaluate: Callable[[dict[int, OpConfig]], float], memory_limit: bool,
                 started: float, stats: dict[str, Any]) -> MappingResult:
    """Unity's memory-aware search: raise the weight of memory until the plan fits."""
    cap = float(mc.machine.device.memory)
    _, plan = solve(0.0)
    peak = max(peak_memory(mc, plan))
    lam, best = 0.0, (peak, plan, 0.0)
    tries = 1
    if memory_limit and peak > cap:
        t0 = max(evaluate(plan), 1e-9)
        lam = t0 / max(peak, 1.0)
        for _ in range(12):
            tries += 1
            _, cand = solve(lam)
            p = max(peak_memory(mc, cand))
            if p < best[0]:
                best = (p, cand, lam)
            if p <= cap:
                best = (p, cand, lam)
                break
            lam *= 8
        peak, plan, lam = best
    stats["solves"] = tries
    names = {n.id: n.name for n in mc.index.nodes}
    fits = peak <= cap
    return MappingResult(dict(sorted(plan.items())), names, evaluate(plan) + mc.constant(), peak,
                         fits, 0.0 if fits else peak - cap, lam, time.perf_counter() - started,
                         mc.device_type, mc.n, stats)


def best_mapping(graph: ComputationGraph, batch: int, machine: MachineModel,
                 cost: CostModel | None = None, *, outputs: Sequence[int] | None = None,
                 allowed_axes: Callable[[Node], set[str] | None] | None = None,
                 device_type: str | None = None, memory_limit: bool = True,
                 cache: MappingCache | None = None, uneven_splits: bool = False,
                 optimizer_slots: int = 2) -> MappingResult:
    """The best placed config per node of `graph` at `batch` on `machine` (see the module doc).
    `cache`: a MappingCache shared by calls with the same batch, machine, cost model and device
    type (on different graphs): cost tables and solved blocks are reused by structure.
    `uneven_splits`: parallel branches may also get 1/4 : 3/4 of a resource (a larger search:
    inception_v3 on 64 GPUs about 3% faster plans for about 30% more search time).
    `optimizer_slots`: state arrays per weight the optimizer keeps (SGD 0, momentum 1, Adam 2)."""
    started = time.perf_counter()
    mc = setup(graph, batch, machine, cost, outputs, allowed_axes, device_type, cache,
               optimizer_slots)
    dp = MappingDP(mc, whole_resource(machine), uneven_splits)
    stats: dict[str, Any] = {}
    res = memory_aware(mc, dp.solve, lambda p: plan_cost(mc, p, 0.0), memory_limit, started,
                       stats)
    stats["blocks_solved"] = dp.calls
    stats["blocks_reused"] = dp.hits
    return res


def plan_cost(mc: MappingCost, plan: dict[int, OpConfig], lam: float) -> float:
    """The DP's objective of a complete plan (without the plan-independent constant): unary and
    pairwise costs summed along the decomposition, parallel components whose devices are disjoint
    taking the max (components sharing devices add)."""
    index = mc.index

    def unary(n: int) -> float:
        t, m = mc.unary_one(n, plan[n])
        return t + lam * m if lam else t

    def block(nodes: tuple[int, ...], outside: set[int]) -> float:
        b = index.block(nodes)
        if isinstance(b, Parallel):
            costs = [block(c, outside) for c in b.components]
            devs = [frozenset().union(*(mc.devinfo(plan[n])[1] for n in c)) for c in b.components]
            group = list(range(len(costs)))

            def find(i: int) -> int:
                while group[i] != i:
                    i = group[i]
                return i

            for i in range(len(costs)):
                for j in range(i + 1, len(costs)):
                    if devs[i] & devs[j]:
                        group[find(j)] = find(i)
            sums: dict[int, float] = {}
            for i, c in enumerate(costs):
                sums[find(i)] = sums.get(find(i), 0.0) + c
            return max(sums.values())
        own = b.own_set
        total = sum(unary(o) for o in b.own)
        seen: set[Edge] = set()
        for o in b.own:
            for e in index.touching[o]:
                other = e.dst if e.src == o else e.src
                if e in seen or (other not in own and other not in outside):
                    continue
                seen.add(e)
                total += mc.edge_one(e, plan[e.src], plan[e.dst])
        for seg in b.segments:
            total += block(seg, set(index.boundary(seg)))
        return total

    return block(tuple(n.id for n in index.nodes), set())
