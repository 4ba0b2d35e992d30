"""Unity's joint search: graph substitutions and machine mapping optimised together. Pure Python.

A best-first search over rewritten graphs (Unity §5): the frontier is ordered by the cost of each
graph's best machine mapping (the DP of dp.py: per-operator parallel configuration and machine
view, memory-aware); expanding a graph applies every substitution at every match (and each rule
at all of its matches at once, which reaches a rewrite of every repeated layer in one step); a
rewritten graph whose cost exceeds alpha x the best so far is pruned (alpha > 1 lets the search
pass through slightly worse graphs to better ones). The search stops when the frontier is empty,
after `budget` graphs were priced, or after `time_limit` seconds, whichever is first: it always
finishes. The DP's cost tables and solved blocks are shared between the graphs (a cache keyed by
structure), so a graph that differs in a few operators costs little to price.

Which parallelisation the DP may use is itself given by substitutions: the parallel rules of
`unity_legion.substitutions.parallel` (Partition -> op -> Combine per splittable axis,
Replicate -> op -> Reduce per reduction axis) enable an operator's launch axes; only the
sample-axis rules gives data parallelism.

The result is then compared, under the full simulator (which overlaps communication with
computation, unlike the DP's additive cost), with data parallelism and the expert strategy
(Megatron-style for attention models, table-parallel embeddings for recommendation models): the
fastest that fits is returned, so a search never returns a plan worse than either baseline under
the cost model. With `SearchOptions.pipeline`, pipelined plans (search/pipeline.py: stages on
machine splits, this DP inside each stage, priced with bubbles and stage transfers by
cost/pipeline.py) join that comparison as "pipeline".
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from unity_legion.cost.machine import MachineModel
from unity_legion.cost.op_cost import AnalyticCost, CostModel
from unity_legion.cost.simulator import Simulator
from unity_legion.pcg.graph import ComputationGraph, Node
from unity_legion.search.cache import MappingCache
from unity_legion.search.dp import MappingResult, best_mapping
from unity_legion.strategy.builtin import data_parallel, expert, serial
from unity_legion.strategy.strategy import Strategy, as_graph
from unity_legion.substitutions import (AppliedRule, ParallelRule, Rule,
                                        SubstitutionError, allowed_axes, apply, builtin_rules,
                                        data_parallel_rules, find_matches, parallel_rules, replay)


class SearchError(ValueError):
    """The search cannot run as asked (bad options, a model with no operators)."""


@dataclass(frozen=True)
class SearchOptions:
    budget: int = 64                 # graphs priced by the DP, the original included
    alpha: float = 1.05              # keep exploring graphs up to alpha x the best cost
    time_limit: float = 60.0         # seconds; the search returns its best when it runs out
    only_data_parallel: bool = False
    rules: tuple[Rule, ...] | None = None            # None: the built-in library
    parallel: tuple[ParallelRule, ...] | None = None  # None: every operator's parallel rules
    memory_limit: bool = True
    # only rewrites a training run can carry out (weights made by concatenation, never by sums,
    # so they can be mapped back to the model's own weights)
    trainable_only: bool = False
    progress: bool = False
    everywhere_cap: int = 256        # applications of one rule in an "everywhere" rewrite
    optimizer_slots: int = 2         # state arrays per weight (SGD 0, momentum 1, Adam 2)
    # also place pipeline stages (search/pipeline.py) and keep a pipelined plan when it wins;
    # opt-in: the executor runs pipelines (executor/pipeline.py), but a pipelined step is walked,
    # not replayed from a recording (more host time per step), refuses batch norm in training,
    # and on one machine's processors a pipeline rarely beats splitting each operator
    pipeline: bool = False
    # a plan other than the baselines (data parallelism, everything on one device) is chosen
    # only when predicted at least this fraction faster than the best baseline that fits: a
    # simulator's error on a real machine is of that order (bench_simulator: ~10% median here),
    # and a gain inside it is as likely a loss
    min_gain: float = 0.05
    # training steps issued before the host reads their losses (compile's steps_per_execution):
    # the candidates are priced with one read and wait per that many steps
    steps_per_read: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.steps_per_read, bool) or not isinstance(self.steps_per_read, int) \
                or self.steps_per_read < 1:
            raise SearchError(f"search steps_per_read must be a positive integer, got "
                              f"{self.steps_per_read!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise SearchError(f"search budget must be a positive integer, got {self.budget!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha < 1.0:
            raise SearchError(f"search alpha must be a number >= 1, got {self.alpha!r}")
        if not isinstance(self.time_limit, (int, float)) or self.time_limit <= 0:
            raise SearchError(f"search time limit must be positive, got {self.time_limit!r}")
        if (isinstance(self.min_gain, bool) or not isinstance(self.min_gain, (int, float))
                or not 0.0 <= self.min_gain < math.inf):
            raise SearchError(f"search min_gain must be a non-negative fraction, got "
                              f"{self.min_gain!r}")


# the plans every search prices besides its own: chosen over another plan unless that one is
# predicted SearchOptions.min_gain faster
_BASELINES = frozenset({"data_parallel", "serial"})


@dataclass(frozen=True)
class _Candidate:
    graph: ComputationGraph
    outputs: tuple[int, ...]
    history: tuple[AppliedRule, ...]
    mapping: MappingResult

    @property
    def key(self) -> tuple[bool, float]:
        # a plan that fits the devices' memory beats any that does not
        return (not self.mapping.fits, self.mapping.estimate if self.mapping.fits
                else self.mapping.excess)


@dataclass(frozen=True)
class StepSaving:
    """One applied rewrite and what it saved (DP estimate before minus after, seconds)."""

    applied: AppliedRule
    family: str
    saved: float


@dataclass
class SearchResult:
    strategy: Strategy               # the winner, for the ORIGINAL model (rewrites recorded in it)
    chosen: str                      # "search", "data_parallel", "serial", "pipeline" or the expert's name
    step_time: float                 # simulated step time of the winner
    baselines: dict[str, float]      # simulated step times: "data_parallel", "expert", "search", "serial"
    expert_name: str
    estimate: float                  # the DP's estimate of the found plan
    peak_memory: float               # bytes on the fullest device (simulator)
    fits: bool
    excess: float                    # bytes over the device memory when nothing fits
    savings: list[StepSaving]
    evaluated: int                   # graphs priced by the DP
    pruned: int
    seconds: float
    stopped_by: str                  # "frontier", "budget" or "time"
    graph: ComputationGraph = field(repr=False, default=None)  # type: ignore[assignment]
    # whether each priced plan ("data_parallel", "expert", "search", "pipeline") fits the memory
    baseline_fits: dict[str, bool] = field(default_factory=dict)

    @property
    def speedup_vs_dp(self) -> float:
        return self.baselines["data_parallel"] / self.step_time

    @property
    def pipeline_stages(self) -> int:
        """Pipeline stages of the chosen plan (1: not pipelined)."""
        p = self.strategy.pipeline
        return p.num_stages if p is not None else 1

    def report(self) -> str:
        lines = [f"search: {self.evaluated} graphs priced in {self.seconds:.1f} s "
                 f"(stopped by {self.stopped_by}; {self.pruned} pruned)",
                 "simulated step time: " + ", ".join(f"{k} {v * 1e3:.3f} ms"
                                                      for k, v in self.baselines.items()),
                 f"chosen: {self.chosen} ({self.step_time * 1e3:.3f} ms, "
                 f"{self.speedup_vs_dp:.2f}x data parallel)"]
        if not self.fits:
            lines.append(f"no plan fits the devices' memory: {self.excess / 2**30:.2f} GiB over "
                         f"on the fullest device")
        if self.savings and self.chosen == "search":
            lines.append("substitutions applied (DP estimate saved):")
            for s in self.savings:
                lines.append(f"  {s.applied.rule_name} [{s.family}] at "
                             f"{', '.join(s.applied.matched_node_names)}: "
                             f"{s.saved * 1e3:+.3f} ms")
        elif self.chosen == "search":
            lines.append("no substitution applied: the gain is the parallelisation alone")
        p = self.strategy.pipeline
        if p is not None:
            lines.append(f"pipelined: {p.num_stages} stages of "
                         f"{len(p.stages[0].devices)} device(s), {p.micro_batches} micro-batches, "
                         f"schedule {p.schedule}")
        return "\n".join(lines)


def structure_hash(graph: ComputationGraph, outputs: Sequence[int]) -> str:
    """Names left out: two rewrite orders that build the same operators the same way meet."""
    pos = {}
    parts: list[Any] = [[list(graph.tensors[t].shape.dims) for t in graph.inputs]]
    for i, t in enumerate(graph.inputs):
        pos[t] = ("in", i)
    for k, n in enumerate(graph.nodes):
        parts.append([n.op.describe(), [pos[t] for t in n.inputs]])
        for j, t in enumerate(n.outputs):
            pos[t] = (k, j)
    parts.append([pos[t] for t in outputs])
    text = json.dumps(parts, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _trainable(rule: Rule) -> bool:
    """A rule whose new weights are plain concatenations/copies of old ones (so the model's
    weights can be read back out of the rewritten graph's)."""
    return all(wf.mode != "sum" for t in rule.replacement for wf in t.weights)


class UnitySearch:
    def __init__(self, graph: ComputationGraph, outputs: Sequence[int], batch: int,
                 machine: MachineModel, cost: CostModel | None = None,
                 options: SearchOptions | None = None) -> None:
        if not graph.nodes:
            raise SearchError("the model has no operators to search over")
        self.graph, self.outputs = graph, tuple(outputs)
        self.batch, self.machine = batch, machine
        self.cost = cost or AnalyticCost()
        self.options = options or SearchOptions()
        o = self.options
        if o.only_data_parallel:
            self.rules: list[Rule] = []
            self.parallel = list(data_parallel_rules(graph))
        else:
            self.rules = list(o.rules) if o.rules is not None else builtin_rules()
            self.parallel = list(o.parallel) if o.parallel is not None else parallel_rules(graph)
        if o.trainable_only:
            self.rules = [r for r in self.rules if _trainable(r)]
        self.family = {r.name: r.family for r in self.rules}
        self.cache = MappingCache()   # shared by every graph this search prices
        self.evaluated = 0
        self.pruned = 0

    # ------------------------------------------------------------------ pieces
    def _axes(self, node: Node) -> set[str] | None:
        return allowed_axes(node, self.parallel)

    def price(self, graph: ComputationGraph, outputs: Sequence[int]) -> MappingResult:
        self.evaluated += 1
        return best_mapping(graph, self.batch, self.machine, self.cost, outputs=list(outputs),
                            allowed_axes=self._axes, device_type=self.machine.device.kind,
                            memory_limit=self.options.memory_limit,
                            optimizer_slots=self.options.optimizer_slots, cache=self.cache)

    def neighbours(self, cand: _Candidate) -> list[tuple[ComputationGraph, tuple[int, ...],
                                                         tuple[AppliedRule, ...]]]:
        """Each rule applied at all of its matches (one step per rule), then at each match."""
        everywhere, single = [], []
        for rule in self.rules:
            matches = find_matches(cand.graph, rule, cand.outputs)
            if not matches:
                continue
            step = self._everywhere(cand, rule)
            if step is not None and len(step[2]) > len(cand.history) + 1:
                everywhere.append(step)
            for m in matches:
                try:
                    rw = apply(cand.graph, rule, m, cand.outputs)
                except SubstitutionError:
                    continue
                single.append((rw.graph, tuple(rw.tensor_map[t] for t in cand.outputs),
                               cand.history + (rw.applied,)))
        return everywhere + single

    def _everywhere(self, cand: _Candidate, rule: Rule
                    ) -> tuple[ComputationGraph, tuple[int, ...], tuple[AppliedRule, ...]] | None:
        graph, outs, hist = cand.graph, cand.outputs, cand.history
        failed: set[tuple[int, ...]] = set()
        for _ in range(self.options.everywhere_cap):
            ms = [m for m in find_matches(graph, rule, outs) if m.node_ids() not in failed]
            if not ms:
                break
            try:
                rw = apply(graph, rule, ms[0], outs)
            except SubstitutionError:
                failed.add(ms[0].node_ids())
                continue
            graph, outs = rw.graph, tuple(rw.tensor_map[t] for t in outs)
            hist = hist + (rw.applied,)
            failed = set()
        return (graph, outs, hist) if hist != cand.history else None

    # ------------------------------------------------------------------ search
    def run(self) -> tuple[_Candidate, _Candidate, str]:
        """(the best candidate, the original graph's, what stopped the search)."""
        o = self.options
        began = time.perf_counter()
        start = _Candidate(self.graph, self.outputs, (), self.price(self.graph, self.outputs))
        best = start
        seen = {structure_hash(self.graph, self.outputs)}
        tie = itertools.count()
        frontier = [(start.key, next(tie), start)]
        stopped = "frontier"
        bar = _Progress(o.progress, o.budget)
        bar.update(self.evaluated, best.mapping.estimate)
        while frontier:
            key, _, cand = heapq.heappop(frontier)
            if not _within(key, best.key, o.alpha):
                self.pruned += 1
                continue
            for graph, outs, hist in self.neighbours(cand):
                if self.evaluated >= o.budget:
                    stopped = "budget"
                    break
                if time.perf_counter() - began > o.time_limit:
                    stopped = "time"
                    break
                h = structure_hash(graph, outs)
                if h in seen:
                    continue
                seen.add(h)
                new = _Candidate(graph, outs, hist, self.price(graph, outs))
                if new.key < best.key:
                    best = new
                if _within(new.key, best.key, o.alpha):
                    heapq.heappush(frontier, (new.key, next(tie), new))
                else:
                    self.pruned += 1
                bar.update(self.evaluated, best.mapping.estimate)
            if stopped != "frontier":
                break
        bar.close()
        return best, start, stopped

    def savings(self, best: _Candidate) -> list[StepSaving]:
        """The DP estimate before and after each applied rewrite, replayed in order."""
        out: list[StepSaving] = []
        graph, outs = self.graph, self.outputs
        before = None
        by_name = {r.name: r for r in self.rules}
        for step in best.history:
            if before is None:
                before = self.price(graph, outs).estimate
            rw = replay(graph, [step], list(by_name.values()), outs)
            outs = tuple(rw.tensor_map[t] for t in outs)
            graph = rw.graph
            after = self.price(graph, outs).estimate
            out.append(StepSaving(step, self.family.get(step.rule_name, "?"), before - after))
            before = after
        return out


def _within(key: tuple[bool, float], best: tuple[bool, float], alpha: float) -> bool:
    if key[0] != best[0]:
        return key[0] < best[0]
    return key[1] <= alpha * best[1] + 1e-12


class _Progress:
    """A rich progress bar with the best cost so far (silent when off or not on a terminal)."""

    def __init__(self, on: bool, total: int) -> None:
        self.bar = None
        if on:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("search"), BarColumn(), TextColumn("{task.completed}/"
                                "{task.total} graphs"), TextColumn("best {task.fields[best]}"),
                                TimeElapsedColumn(), transient=True)
            self.task = self.bar.add_task("search", total=total, best="-")
            self.bar.start()

    def update(self, done: int, best: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, best=f"{best * 1e3:.3f} ms")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---------------------------------------------------------------------------------------------

def search(model: Any, batch: int, machine: MachineModel, cost: CostModel | None = None,
           options: SearchOptions | None = None, outputs: Sequence[int] | None = None
           ) -> SearchResult:
    """Search a strategy for `model` (a ComputationGraph, which knows its outputs, or a built
    Keras model: its public `.graph`) at `batch` samples per step on `machine`; see the module
    doc. `outputs`: other output tensors than the graph's."""
    began = time.perf_counter()
    graph, name = as_graph(model)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise SearchError(f"batch must be a positive integer, got {batch!r}")
    outs = list(outputs) if outputs is not None else graph.outputs
    opts = options or SearchOptions()
    cost = cost or AnalyticCost()
    # with pipelines to place as well, the substitution search leaves them part of the time
    unity = UnitySearch(graph, outs, batch, machine, cost,
                        replace(opts, time_limit=opts.time_limit * 0.45) if opts.pipeline else opts)
    best, start, stopped = unity.run()
    evaluated = unity.evaluated
    if best.key >= start.key:
        best = start  # a rewrite that did not pay is not kept
    devices = machine.num_devices
    dtype = machine.device.kind
    sim = Simulator(machine, cost, optimizer_slots=opts.optimizer_slots,
                    steps_per_read=opts.steps_per_read)

    def simulate(g: ComputationGraph, o: Sequence[int], plan: dict) -> Any:
        return sim.simulate(g, batch, plan, list(o))

    found_strategy = Strategy.for_graph(
        model, {best.mapping.names[n]: c for n, c in best.mapping.configs.items()},
        source="search", device_type=dtype, devices=devices, name=name,
        substitutions=best.history)
    results: dict[str, tuple[Any, Strategy]] = {
        "search": (simulate(best.graph, best.outputs, best.mapping.configs), found_strategy)}
    dp_strategy = data_parallel(model, devices, dtype, batch)
    results["data_parallel"] = (simulate(graph, outs, dp_strategy.plan(graph)), dp_strategy)
    exp_strategy = expert(model, devices, dtype, batch, machine.devices_per_node)
    results["expert"] = (simulate(graph, outs, exp_strategy.plan(graph)), exp_strategy)
    if devices > 1:
        # one device is a candidate too: the mapping DP's decomposed costs can miss that a small
        # model's step is cheapest with no launch split (seen: xdl on 2 CPU processors), and
        # over several nodes one that moves nothing between them can be (ResNeXt on 2 ranks of
        # a 2-core host: 174 ms serial, 495 ms the search's split, 1848 ms data parallelism)
        one = serial(model, devices, dtype, batch)
        results["serial"] = (simulate(graph, outs, one.plan(graph)), one)
    if opts.pipeline:  # stages on machine splits, the DP inside each (priced by cost/pipeline.py)
        from unity_legion.search.pipeline import PipelineSearch

        piped = PipelineSearch(graph, outs, batch, machine, cost, unity._axes,
                               opts.optimizer_slots, steps_per_read=opts.steps_per_read
                               ).run(deadline=began + 0.75 * opts.time_limit)
        if piped is not None:
            results["pipeline"] = (piped.price, Strategy.for_graph(
                model, {piped.names[n]: c for n, c in piped.configs.items()}, source="search",
                device_type=dtype, devices=devices, name=name, pipeline=piped.spec))
    cap = machine.device.memory

    def rank(item: tuple[str, tuple[Any, Strategy]]) -> tuple[bool, float]:
        r = item[1][0]
        if r.peak_memory > cap:
            return (True, r.peak_memory)
        # a baseline wins ties within the margin
        margin = 1.0 if item[0] in _BASELINES else 1.0 + opts.min_gain
        return (False, r.step_time * margin)

    chosen, (res, strategy) = min(results.items(), key=rank)
    baselines = {k: v[0].step_time for k, v in results.items()}
    savings = unity.savings(best) if chosen == "search" else []
    return SearchResult(strategy, chosen, res.step_time, baselines,
                        exp_strategy.source,
                        best.mapping.estimate, res.peak_memory, res.peak_memory <= cap,
                        max(0.0, res.peak_memory - cap), savings, evaluated, unity.pruned,
                        time.perf_counter() - began, stopped,
                        graph if chosen == "pipeline" else best.graph,
                        {k: v[0].peak_memory <= cap for k, v in results.items()})
