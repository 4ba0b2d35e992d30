"""Pipeline stages placed jointly with intra-operator parallelism (Alpa's stage DP, over equal
machine splits). Pure Python.

1. The graph's series cut points: positions in its (topological) node order where exactly one
   tensor made before is read after (a model output made before counts: the loss reads it at
   the end). Between them lie the units a stage is made of (a transformer's attention and FFN
   blocks, ...); at most `max_units`, neighbours merged evenly beyond that.
2. For each stage count S that splits the machine evenly (S whole-node groups, or S groups of
   devices inside the nodes): each distinct unit is mapped by the machine-mapping DP (dp.py) on
   one group, and a linear-partition DP cuts the units into S contiguous stages minimising the
   slowest stage (the pipeline's throughput; the bubble is S - 1 of its slots whatever the cut).
   Each stage's sub-graph is then mapped by the DP on its group (memory-aware; identical stages
   solved once) and moved onto the group's devices. The DP runs at the whole batch: a stage's
   micro-batches add up to it, and its gradients are summed once per step, so the DP weighs
   compute against gradient sums as the step does.
3. For each micro-batch count m (S x 1, 2, 4, ... 16, dividing the batch, no smaller than a stage's
   sample split) the step is priced by cost/pipeline.py (1F1B: the same bubble as GPipe, less
   activation memory). If it does not fit the devices' memory, the stages' DP is re-run with
   less memory assumed, down to a quarter.

The best pipeline that fits (then the fastest) is returned with its placed configs; the caller
(`unity.search`) compares it with the unpipelined plans under the memory limit.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from unity_legion.cost.machine import MachineModel
from unity_legion.cost.op_cost import CostModel
from unity_legion.cost.pipeline import PipelineCost
from unity_legion.cost.simulator import Simulator
from unity_legion.operators.base import SAMPLE
from unity_legion.pcg.graph import ComputationGraph, Node
from unity_legion.pcg.pipeline import PipelineSpec, Stage
from unity_legion.search.candidates import shifted
from unity_legion.search.dp import MappingResult, best_mapping
from unity_legion.types import OpConfig


@dataclass(frozen=True)
class PipelinePlan:
    spec: PipelineSpec
    configs: dict[int, OpConfig]        # node id -> config placed on its stage's devices
    names: dict[int, str]
    price: PipelineCost
    capacity: float = float("inf")      # bytes per device

    @property
    def key(self) -> tuple[bool, float]:
        # a plan that fits the devices' memory beats any that does not
        return (not self.price.fits(self.capacity), self.price.step_time)


def cut_points(graph: ComputationGraph, outputs: Sequence[int]) -> list[int]:
    """Positions p (0 < p < len(nodes)) of the node order where one tensor alone crosses."""
    pos = {n.id: i for i, n in enumerate(graph.nodes)}
    last_read: dict[int, int] = {}
    for i, n in enumerate(graph.nodes):
        for t in n.inputs:
            if graph.tensors[t].producer is not None:
                last_read[t] = max(last_read.get(t, -1), i)
    end = len(graph.nodes)
    for t in outputs:
        if graph.tensors[t].producer is not None:
            last_read[t] = end
    # crossing[p]: tensors made at < p and read at >= p
    delta = [0] * (end + 1)
    for t, r in last_read.items():
        made = pos[graph.tensors[t].producer]  # type: ignore[index]
        if r > made:
            delta[made + 1] += 1
            delta[r + 1 if r < end else end] -= 1
    cuts, live = [], 0
    for p in range(1, end):
        live += delta[p]
        if live == 1:
            cuts.append(p)
    return cuts


def units_of(graph: ComputationGraph, outputs: Sequence[int], max_units: int = 64
             ) -> list[tuple[int, ...]]:
    """The node ids of each unit, in order (see the module doc)."""
    bounds = [0] + cut_points(graph, outputs) + [len(graph.nodes)]
    units = [tuple(n.id for n in graph.nodes[a:b]) for a, b in zip(bounds, bounds[1:])]
    if len(units) > max_units:  # merge neighbours: about equal numbers of units per group
        k = len(units)
        units = [sum(units[i * k // max_units:(i + 1) * k // max_units], ())
                 for i in range(max_units)]
    return units


def subgraph(graph: ComputationGraph, nodes: Sequence[int], outputs: Sequence[int]
             ) -> ComputationGraph:
    """The operators `nodes` (in graph order) as a graph of their own: tensors made outside are
    its inputs; its outputs are what later operators read and the model outputs it makes. Node
    names are kept."""
    keep = set(nodes)
    sub = ComputationGraph()
    local: dict[int, int] = {}
    for n in graph.nodes:
        if n.id not in keep:
            continue
        for t in n.inputs:
            if t not in local:
                src = graph.tensors[t]
                local[t] = sub.add_input(src.shape, f"{src.name}@in")
        outs = sub.add_node(n.op, [local[t] for t in n.inputs], n.name)
        local.update(zip(n.outputs, outs))
    read_after = {t for n in graph.nodes if n.id not in keep for t in n.inputs}
    made = [t for n in graph.nodes if n.id in keep for t in n.outputs]
    sub.set_outputs([local[t] for t in made if t in read_after or t in outputs])
    return sub


def machine_groups(machine: MachineModel, stages: int) -> tuple[MachineModel, list[int]] | None:
    """One group's machine and each group's first device, for `stages` equal groups (None when
    the machine does not split so)."""
    n, d = machine.nodes, machine.devices_per_node
    if stages <= n and n % stages == 0:
        per = n // stages
        return machine.with_nodes(per), [k * per * d for k in range(stages)]
    if stages > n and stages % n == 0 and d % (stages // n) == 0:
        per = d // (stages // n)
        return machine.with_nodes(1, per), [k * per for k in range(stages)]
    return None


def linear_partition(costs: Sequence[float], parts: int) -> list[int]:
    """Boundaries (unit indices where stages 1.. start) cutting `costs` into `parts` contiguous
    non-empty runs with the smallest maximum sum."""
    n = len(costs)
    pre = [0.0]
    for c in costs:
        pre.append(pre[-1] + c)
    inf = float("inf")
    # best[k][i]: the smallest max over the first i units in k runs; back[k][i]: last run's start
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    back = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                v = max(best[k - 1][j], pre[i] - pre[j])
                if v < best[k][i]:
                    best[k][i], back[k][i] = v, j
    cuts, i = [], n
    for k in range(parts, 0, -1):
        i = back[k][i]
        cuts.append(i)
    return sorted(cuts)[1:]


class PipelineSearch:
    def __init__(self, graph: ComputationGraph, outputs: Sequence[int], batch: int,
                 machine: MachineModel, cost: CostModel,
                 allowed_axes: Callable[[Node], set[str] | None] | None = None,
                 optimizer_slots: int = 2, max_stages: int = 16, max_units: int = 64,
                 schedule: str = "1f1b", steps_per_read: int = 1) -> None:
        self.graph, self.outputs = graph, list(outputs)
        self.batch, self.machine, self.cost = batch, machine, cost
        self.allowed_axes = allowed_axes
        self.slots = optimizer_slots
        self.max_stages = max_stages
        self.schedule = schedule
        self.units = units_of(graph, self.outputs, max_units)
        # pipelined steps are priced on the simulator's timelines, m passes per stage: where
        # every step is read back, one step from idle devices is the period (the executor
        # drains after every step, so two simulated back to back differ by < 0.2%) at half the
        # search's time; steps issued in groups (steps_per_read) overlap, two give the period
        self.sim = Simulator(machine, cost, optimizer_slots, steps=1 if steps_per_read == 1 else 2,
                             steps_per_read=steps_per_read)
        self._maps: dict[tuple, tuple[ComputationGraph, MappingResult]] = {}
        self._cache: dict[tuple, Any] = {}
        self.priced = 0

    def _map(self, nodes: Sequence[int], batch: int, machine: MachineModel, memory_limit: bool
             ) -> tuple[ComputationGraph, MappingResult]:
        from unity_legion.search.unity import structure_hash

        sub = subgraph(self.graph, nodes, self.outputs)
        key = (structure_hash(sub, sub.outputs), batch, machine.nodes, machine.devices_per_node,
               machine.device.memory, memory_limit)
        hit = self._maps.get(key)
        if hit is None:
            hit = self._maps[key] = (sub, best_mapping(
                sub, batch, machine, self.cost, outputs=sub.outputs,
                allowed_axes=self.allowed_axes, device_type=machine.device.kind,
                memory_limit=memory_limit, optimizer_slots=self.slots))
        solved, res = hit
        # the same structure solved for other operators: node i here is node i there
        configs = {mine.id: res.configs[theirs.id] for mine, theirs in zip(sub.nodes, solved.nodes)}
        return sub, dataclasses.replace(res, configs=configs,
                                        names={n.id: n.name for n in sub.nodes})

    def stage_counts(self) -> list[int]:
        """Powers of two that split the machine evenly, one stage per node first (each stage's
        collectives then stay on NVLink), then by distance from it (the order `run` tries)."""
        out = []
        s = 2
        while s <= min(self.max_stages, len(self.units), self.machine.num_devices):
            if machine_groups(self.machine, s) is not None:
                out.append(s)
            s *= 2
        return sorted(out, key=lambda k: (abs(k.bit_length() - self.machine.nodes.bit_length()),
                                          -k))

    def _stages(self, stages: int) -> tuple[MachineModel, list[int], list[tuple[int, ...]]]:
        """One group's machine, each group's first device, and each stage's node ids: the units
        cut into `stages` runs balancing their DP estimates on one group."""
        key = ("stages", stages)
        if key not in self._cache:
            group, starts = machine_groups(self.machine, stages)  # type: ignore[misc]
            costs = [self._map(u, self.batch, group, False)[1].estimate for u in self.units]
            cuts = [0] + linear_partition(costs, stages) + [len(self.units)]
            members = [sum(self.units[a:b], ()) for a, b in zip(cuts, cuts[1:])]
            self._cache[key] = (group, starts, members)
        return self._cache[key]

    def _configs(self, stages: int, factor: float) -> dict[int, OpConfig]:
        """Each stage mapped by the DP on its group (memory-aware, with `factor` of the device
        memory), moved onto the group's devices. The DP prices a stage at the whole batch: its
        micro-batches' forward and backward passes add up to that, while its gradients are
        summed once per step, so the trade between the two is the step's."""
        key = ("configs", stages, factor)
        if key not in self._cache:
            group, starts, members = self._stages(stages)
            shrunk = dataclasses.replace(group, device=dataclasses.replace(
                group.device, memory=group.device.memory * factor))
            by_name = {n.name: n.id for n in self.graph.nodes}
            configs: dict[int, OpConfig] = {}
            for k, ids in enumerate(members):
                _, res = self._map(ids, self.batch, shrunk, True)
                for nid, cfg in res.configs.items():
                    configs[by_name[res.names[nid]]] = shifted(cfg, starts[k])
            self._cache[key] = configs
        return self._cache[key]

    def plan(self, stages: int, micro_batches: int) -> PipelinePlan | None:
        """The best pipeline of `stages` stages and `micro_batches` micro-batches, or None when
        the batch or machine cannot be cut so (or a micro-batch is smaller than a stage's
        sample split)."""
        if (machine_groups(self.machine, stages) is None or self.batch % micro_batches
                or micro_batches > self.batch):
            return None
        micro = self.batch // micro_batches
        group, starts, members = self._stages(stages)
        by_id = {n.id: n for n in self.graph.nodes}
        spec = PipelineSpec(tuple(
            Stage(f"stage_{k}", tuple(by_id[i].name for i in members[k]),
                  tuple(range(starts[k], starts[k] + group.num_devices)))
            for k in range(stages)), micro_batches, self.schedule)
        cap = float(self.machine.device.memory)
        names = {n.id: n.name for n in self.graph.nodes}
        best: PipelinePlan | None = None
        for factor in (1.0, 0.5, 0.25):
            configs = self._configs(stages, factor)
            if any(c.degree(SAMPLE) > micro for c in configs.values()):
                continue
            price = self.sim.simulate_pipeline(self.graph, self.batch, configs, spec,
                                               self.outputs)
            self.priced += 1
            plan = PipelinePlan(spec, configs, names, price, cap)
            if best is None or plan.key < best.key:
                best = plan
            if price.fits(cap):
                break
        return best

    def run(self, deadline: float = float("inf")) -> PipelinePlan | None:
        """The best pipelined plan over stage and micro-batch counts (None: no split fits the
        machine or the graph has too few units); tries no further stage count after
        `deadline` (time.perf_counter seconds), having tried one."""
        best: PipelinePlan | None = None
        for s in self.stage_counts():
            if best is not None and time.perf_counter() > deadline:
                break   # a new stage count costs DPs; its micro-batch counts cost little
            last: PipelinePlan | None = None
            for mult in (1, 2, 4, 8, 16):
                cand = self.plan(s, s * mult)
                if cand is None:
                    continue
                if best is None or cand.key < best.key:
                    best = cand
                if last is not None and not cand.key < last.key and not last.key[0]:
                    break   # more micro-batches no longer pay (and fewer fitted)
                last = cand
        return best
