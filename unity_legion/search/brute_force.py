"""Exhaustive machine mapping over the DP's own search space (for tests on small graphs).

Every combination the DP can reach is enumerated: for a Parallel block, all components on the
same resource or every (prefix | rest, Resource.splits) split; for a Series block, every placed
candidate of each bottleneck; recursively. Each complete plan is priced with `plan_cost`, the
DP's objective, so the DP must find the same optimum. Exponential: up to ~6 operators on up to 4
devices.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Iterator, Sequence

from unity_legion.cost.machine import MachineModel
from unity_legion.cost.op_cost import CostModel
from unity_legion.pcg.graph import ComputationGraph, Node
from unity_legion.search.candidates import Resource
from unity_legion.search.decompose import Parallel
from unity_legion.search.dp import MappingResult, memory_aware, plan_cost, setup, whole_resource
from unity_legion.search.mapping_cost import MappingCost
from unity_legion.types import OpConfig

MAX_PLANS = 2_000_000


def _plans(mc: MappingCost, nodes: tuple[int, ...], res: Resource, uneven: bool = False
           ) -> Iterator[dict[int, OpConfig]]:
    block = mc.index.block(nodes)
    if isinstance(block, Parallel):
        comps = block.components
        yield from _product([lambda c=c: _plans(mc, c, res, uneven) for c in comps])
        for j in range(1, len(comps)):
            first = tuple(sorted(n for c in comps[:j] for n in c))
            rest = tuple(sorted(n for c in comps[j:] for n in c))
            for r1, r2 in res.splits(uneven):
                for ra, rb in ((r1, r2), (r2, r1)):
                    yield from _product([lambda: _plans(mc, first, ra, uneven),
                                         lambda: _plans(mc, rest, rb, uneven)])
        return
    parts: list[Callable[[], Iterator[dict[int, OpConfig]]]] = [
        (lambda o=o: ({o: c} for c in mc.placed(o, res))) for o in block.own]
    parts += [lambda s=s: _plans(mc, s, res, uneven) for s in block.segments]
    yield from _product(parts)


def _product(parts: Sequence[Callable[[], Iterator[dict[int, OpConfig]]]]
             ) -> Iterator[dict[int, OpConfig]]:
    pools = [list(p()) for p in parts]
    for combo in itertools.product(*pools):
        out: dict[int, OpConfig] = {}
        for d in combo:
            out.update(d)
        yield out


def brute_force_mapping(graph: ComputationGraph, batch: int, machine: MachineModel,
                        cost: CostModel | None = None, *, outputs: Sequence[int] | None = None,
                        allowed_axes: Callable[[Node], set[str] | None] | None = None,
                        device_type: str | None = None, memory_limit: bool = True,
                        uneven_splits: bool = False) -> MappingResult:
    """best_mapping's answer found by trying every plan (same candidates, same cost)."""
    started = time.perf_counter()
    mc = setup(graph, batch, machine, cost, outputs, allowed_axes, device_type)
    whole = whole_resource(machine)
    nodes = tuple(n.id for n in mc.index.nodes)

    def solve(lam: float) -> tuple[float, dict[int, OpConfig]]:
        best: tuple[float, dict[int, OpConfig]] | None = None
        for i, plan in enumerate(_plans(mc, nodes, whole, uneven_splits)):
            if i >= MAX_PLANS:
                raise ValueError(f"brute force: more than {MAX_PLANS} plans; use best_mapping")
            v = plan_cost(mc, plan, lam)
            if best is None or v < best[0]:
                best = (v, plan)
        assert best is not None
        return best

    stats: dict[str, Any] = {}
    return memory_aware(mc, solve, lambda p: plan_cost(mc, p, 0.0), memory_limit, started, stats)
