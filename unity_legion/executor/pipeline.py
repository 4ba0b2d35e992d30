"""Running a pipelined plan (issue 14): every step in micro-batches through the stages.

A `PipelineRunner` belongs to one GraphExecutor (`set_plan(configs, pipeline)`) and runs its
train, evaluate and predict steps so:

- the step's inputs and targets are uploaded (or staged) once and cut into micro-batches as
  row slices of those stores, never host copies;
- each stage's operators run on its own processors with their own configurations (the plan's,
  checked to lie on the stage's devices; an operator without one runs data-parallel over the
  stage), and so do its glue launches (gradient sums, the loss): while a stage's launches are
  issued the executor's default processors are the stage's;
- the passes are issued in the schedule's order (pcg.pipeline.schedule_order: GPipe's forwards
  then backwards, or 1F1B's), each micro-batch with its own stores (its index joins the
  scratch stores' keys), so Legate overlaps a stage's micro-batch with the next stage's
  earlier one; a boundary tensor made on one stage's processors and read on the next one's is
  moved by Legate, as any store read through another partition is;
- a stage's activations (outputs and saved tensors) live from its forward of a micro-batch to
  its backward of it: a later micro-batch's forward takes the stores of one whose backward was
  issued before (`activation_buffers`), so under 1F1B a stage holds at most the micro-batches
  in flight (S - s) where GPipe holds all of them; every reader of the old micro-batch's
  activations was issued before, and Legate orders the overwrite after them;
- the loss of a micro-batch is scaled by the step's whole batch (a mean loss: 1/batch), weight
  gradients add up over the micro-batches (backward kernels add into them; they are zeroed once
  per step), and one optimizer update runs per step, guarded by every micro-batch's loss: the
  step trains exactly as the whole batch does (up to float rounding of the sums);
- a step is recorded and re-issued as a plain one is (executor/replay.py), the order in which
  its schedule makes the micro-batches' feeds stores noted by the walk that records it; steps
  issued in groups (fit's steps_per_execution: `train_steps`, `evaluate_steps`,
  `predict_steps`) copy each micro-batch's results out as their step ends and read them once;
- every micro-batch's losses and metrics are posted to the step's box by its own tasks
  (executor/posted.py; over several ranks, each rank's box, shared), as an unpipelined step's:
  nothing is read back but predictions.

Refused before anything launches (PipelineError): an operator that normalises with its batch's
statistics (batch norm in training) – micro-batches would change its numbers.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from unity_legion.executor.launcher import effective_degree
from unity_legion.executor.replay import DYNAMIC_BOX, DYNAMIC_LR, DYNAMIC_STEP
from unity_legion.operators.base import SAMPLE
from unity_legion.pcg.graph import Node
from unity_legion.pcg.pipeline import (PipelineError, PipelineSpec, Slot, inexact_operator,
                                       micro_batch_sizes, schedule_order)
from unity_legion.types import MachineView, OpConfig

if TYPE_CHECKING:
    from unity_legion.executor.executor import GraphExecutor, Objective, StepResult

T = TypeVar("T")


@dataclass(frozen=True)
class StagePlan:
    """One stage as the executor runs it: its live operators (in graph order) and the processors
    of its glue launches (the first run of consecutive devices of the stage)."""

    name: str
    nodes: tuple[Node, ...]
    glue: MachineView


def activation_buffers(order: Sequence[Slot]) -> dict[tuple[int, int], int]:
    """{(stage, micro): index of the activation stores it uses}: a stage's forward of a
    micro-batch takes the lowest index no micro-batch holds (one holds its index from its
    forward until its backward on that stage is issued), in issue order."""
    held: dict[int, set[int]] = {}
    out: dict[tuple[int, int], int] = {}
    for sl in order:
        busy = held.setdefault(sl.stage, set())
        if sl.phase == "F":
            index = next(i for i in range(len(busy) + 1) if i not in busy)
            busy.add(index)
            out[(sl.stage, sl.micro)] = index
        else:
            busy.discard(out[(sl.stage, sl.micro)])
    return out


class PipelineRunner:
    def __init__(self, ex: "GraphExecutor", spec: PipelineSpec, stages: Sequence[StagePlan],
                 stage_of: Mapping[int, int], configs: Mapping[int, OpConfig]) -> None:
        self.ex = ex
        self.spec = spec
        self.stages = tuple(stages)
        self.stage_of = dict(stage_of)
        self.configs = dict(configs)    # the plan, with a config for every operator
        # the stage whose forward ends with the loss: the last one making a model output
        producers = [ex.graph.tensors[t].producer for t in ex.outputs]
        self.loss_stage = max((self.stage_of[p] for p in producers if p is not None), default=0)
        self._orders: dict[int, list[Slot]] = {}
        # per recorded kind of step: the order in which its walk made the micro-batches'
        # feeds stores, as indices into their flat list (`_recorded`; a replay passes them so)
        self._feed_orders: dict[tuple[Any, ...], list[int]] = {}

    @classmethod
    def of(cls, ex: "GraphExecutor", spec: PipelineSpec, plan: Mapping[int, OpConfig]
           ) -> "PipelineRunner":
        """The runner of `spec` over `ex`'s graph with the configurations `plan`; PipelineError
        (naming the stage) where the stages do not fit the graph or the machine, or an
        operator's processors lie outside its stage's."""
        graph = ex.graph
        stage_of = spec.assign(graph)   # every operator in one stage, boundaries cut edges
        have = ex.machine.processors
        for st in spec.stages:
            if max(st.devices) >= have:
                raise PipelineError(f"stage {st.name!r}: uses device {max(st.devices)} but the "
                                    f"job has {have} processors")
        spec.check_configs(graph, stage_of, plan)
        kind = ex.machine.preferred_kind
        stages = []
        configs = dict(plan)
        for i, st in enumerate(spec.stages):
            run = 1
            while run < len(st.devices) and st.devices[run] == st.devices[0] + run:
                run += 1
            glue = MachineView.contiguous(kind, st.devices[0], run)
            nodes = tuple(n for n in ex.nodes if stage_of[n.id] == i)
            for n in nodes:   # not configured: data-parallel over the stage (its glue's range)
                if n.id not in configs:
                    configs[n.id] = OpConfig.of({SAMPLE: run} if run > 1 else {}, glue)
            stages.append(StagePlan(st.name, nodes, glue))
        return cls(ex, spec, stages, stage_of, configs)

    # ------------------------------------------------------------------ checks
    def check_exact(self) -> None:
        """PipelineError if micro-batches would train an operator differently (batch norm not
        frozen): checked every step, since layers may be frozen or unfrozen after compile."""
        n = inexact_operator(self.ex.graph, self.ex.nodes, self.ex.frozen)
        if n is not None:
            st = self.stages[self.stage_of[n.id]].name
            raise PipelineError(
                f"stage {st!r}: operator {n.name!r} ({n.op.op_type}) normalises with its "
                f"batch's statistics; in {self.spec.micro_batches} micro-batches it would "
                f"compute other numbers than the whole batch, so the pipeline cannot train it "
                f"exactly: freeze the layer or run without a pipeline")

    # ------------------------------------------------------------------ pieces
    def order(self, micro: int) -> list[Slot]:
        order = self._orders.get(micro)
        if order is None:
            order = self._orders[micro] = schedule_order(len(self.stages), micro,
                                                         self.spec.schedule)
        return order

    def degrees(self, stage: int, size: int) -> dict[str, int]:
        """The glue launches' degrees of `stage` over a micro-batch of `size` samples."""
        return {SAMPLE: effective_degree(size, self.stages[stage].glue.num_points)}

    @contextmanager
    def on(self, stage: int, micro: int, buffers: Mapping[tuple[int, int], int] | None = None
           ) -> Iterator[None]:
        """Launches issued inside run by default on the stage's processors and use the
        micro-batch's own scratch stores, its activations those of `buffers`' index for
        (stage, micro) where given (activation_buffers)."""
        ex = self.ex
        view, tag, act = ex.view, ex._scratch_tag, ex._activation_tag
        ex.view, ex._scratch_tag = self.stages[stage].glue, ("micro_batch", micro)
        if buffers is not None:
            ex._activation_tag = ("activations", buffers[(stage, micro)])
        try:
            yield
        finally:
            ex.view, ex._scratch_tag, ex._activation_tag = view, tag, act

    def _micro_feeds(self, feeds: Mapping[int, Any], sizes: Sequence[int]
                     ) -> list[dict[int, Any]]:
        """Per micro-batch, each input's rows (by graph input)."""
        inputs = list(feeds)
        return [dict(zip(inputs, rows)) for rows in self._cut([feeds[t] for t in inputs], sizes)]

    def _recorded(self, key: tuple[Any, ...] | None, mb_feeds: Sequence[Mapping[int, Any]],
                  mb_targets: Sequence[Sequence[Any]], values: Mapping[str, Any],
                  walk: Callable[[], T]) -> T:
        """GraphExecutor._recorded for a pipelined step: the schedule makes the micro-batches'
        feeds stores in its own order, which the walk that records the step notes (its feed
        log) and a replay follows."""
        ex = self.ex
        flat = [rows for feeds in mb_feeds for rows in feeds.values()] + [
            rows for targets in mb_targets for rows in targets]
        order = self._feed_orders.get(key) if key is not None else None
        if order is not None and key in ex._traces:
            return ex._recorded(key, [flat[i] for i in order], values, walk)
        if key is not None:
            ex._traces.pop(key, None)   # (a recording whose feed order is unknown)
        log: list[Any] = []
        ex._feed_log = log
        try:
            result = ex._recorded(key, (), values, walk)
        finally:
            ex._feed_log = None
        if key is not None:
            index = {id(rows): i for i, rows in enumerate(flat)}
            self._feed_orders[key] = [index[id(rows)] for rows in log]
        return result

    def _cut(self, feeds: Sequence[Any], sizes: Sequence[int]) -> list[list[Any]]:
        """Per micro-batch, each feed's rows (StagedRows over the feed's one store)."""
        from unity_legion.executor.executor import Staged, StagedRows

        out: list[list[Any]] = [[] for _ in sizes]
        for feed in feeds:
            if isinstance(feed, StagedRows):
                staged, start = feed.staged, feed.start
            else:   # uploaded once for the step (attached until the next call)
                staged, start = Staged(self.ex._store_from(feed), feed), 0
            lo = start
            for j, size in enumerate(sizes):
                out[j].append(StagedRows(staged, lo, lo + size))
                lo += size
        return out

    def _forward(self, slot: Slot, feeds: Sequence[Mapping[int, Any]], sizes: Sequence[int],
                 envs: list[dict], refs: list[dict], training: bool) -> None:
        s, j = slot.stage, slot.micro
        self.ex._forward(feeds[j] if s == 0 else {}, training, sizes[j],
                         self.degrees(s, sizes[j]), self.stages[s].nodes, envs[j], refs[j])

    # ------------------------------------------------------------------ steps
    def train_step(self, feeds: Mapping[int, Any], targets: Sequence[Any],
                   objective: "Objective", rule: Any, lr: float, step: int,
                   loss_scale: float | None = None) -> "StepResult":
        """GraphExecutor.train_step in micro-batches (`loss_scale`: dynamic loss scaling, as
        there: every micro-batch's loss gradient scaled, the summed gradients unscaled once)."""
        from unity_legion.executor.executor import _batch_of

        ex = self.ex
        batch = _batch_of(feeds)
        targets = ex._checked_targets(objective, targets, batch)
        self.check_exact()
        ex._new_step()
        box = ex._open_box()
        parts, finite = self._issue_train(feeds, targets, objective, rule, lr, step, loss_scale,
                                          batch)
        ex._mark(None, "sync")
        read, checked = ex._read_and_drain(parts, [finite] if finite is not None else [],
                                           boxes=[box] * len(parts))
        result = self._joined(batch, read)
        if finite is not None and not np.all(np.isfinite(checked[0])):
            result.grads_finite = result.applied = False
        if not np.all(np.isfinite(result.loss)):
            result.applied = False    # (as GraphExecutor.train_step)
        return result

    def train_steps(self, batches: Sequence[tuple[Mapping[int, Any], Sequence[Any]]],
                    objective: "Objective", rule: Any, lrs: Sequence[float],
                    first_step: int) -> list["StepResult"]:
        """GraphExecutor.train_steps in micro-batches: every step issued in its schedule, one
        after another, each micro-batch's losses copied out as its step ends, all read back
        once (without loss scaling)."""
        ex = self.ex
        checked = ex._checked_batches(objective, batches)
        self.check_exact()
        for i, lr in enumerate(lrs):   # the rule checks its arguments before anything is issued
            rule.launch(1, lr, first_step + i)
        ex._new_step()
        issued, boxes = [], []
        for i, ((feeds, targets, batch), lr) in enumerate(zip(checked, lrs)):
            box = ex._open_box()
            parts, _ = self._issue_train(feeds, targets, objective, rule, lr, first_step + i,
                                         None, batch)
            issued.append((batch, [ex._copied_out(*part, box) for part in parts]))
            boxes += [box] * len(parts)
        ex._mark(None, "sync")
        read, _ = ex._read_and_drain([part for _b, parts in issued for part in parts],
                                     direct=True, boxes=boxes)
        values = iter(read)
        results = []
        for batch, parts in issued:
            result = self._joined(batch, [next(values) for _ in parts])
            if not np.all(np.isfinite(result.loss)):
                result.applied = False    # (as GraphExecutor.train_step)
            results.append(result)
        return results

    def _issue_train(self, feeds: Mapping[int, Any], targets: Sequence[Any],
                     objective: "Objective", rule: Any, lr: float, step: int,
                     loss_scale: float | None, batch: int
                     ) -> tuple[list[tuple[int, list[Any], dict[str, list[Any]]]], Any]:
        """Issue one pipelined training step (checked targets): each micro-batch's (size, loss
        stores, metric stores), and the store of the gradients' finiteness (None without loss
        scaling)."""
        ex = self.ex
        sizes = micro_batch_sizes(batch, self.spec.micro_batches)
        mb_feeds, mb_targets = self._micro_feeds(feeds, sizes), self._cut(targets, sizes)
        key = ex._trace_key("pipelined train", feeds, targets, objective, rule, batch, loss_scale)
        if key is not None and key in ex._traces:
            rule.launch(1, lr, step)   # the rule checks its arguments before anything is issued
        return self._recorded(
            key, mb_feeds, mb_targets,
            {DYNAMIC_LR: lr, DYNAMIC_STEP: step, DYNAMIC_BOX: ex._box_number()},
            lambda: self._walk_train(mb_feeds, mb_targets, sizes, objective, rule, lr, step,
                                     loss_scale, batch))

    def _walk_train(self, mb_feeds: list[dict[int, Any]], mb_targets: list[list[Any]],
                    sizes: Sequence[int], objective: "Objective", rule: Any, lr: float,
                    step: int, loss_scale: float | None, batch: int
                    ) -> tuple[list[tuple[int, list[Any], dict[str, list[Any]]]], Any]:
        """_issue_train by walking the graph through the schedule."""
        ex = self.ex
        k = len(sizes)
        envs: list[dict] = [{} for _ in range(k)]
        refs: list[dict] = [{} for _ in range(k)]
        grads: list[dict] = [{} for _ in range(k)]
        losses: list[list[Any]] = [[] for _ in range(k)]
        metrics: list[dict[str, list[Any]]] = [{} for _ in range(k)]
        ex._zero_weight_grads()   # backward kernels add every micro-batch's gradient in
        buffers = activation_buffers(self.order(k))
        for slot in self.order(k):
            s, j = slot.stage, slot.micro
            with self.on(s, j, buffers):
                deg = self.degrees(s, sizes[j])
                if slot.phase == "F":
                    self._forward(slot, mb_feeds, sizes, envs, refs, True)
                    if s == self.loss_stage:
                        ex._loss_scale = float(loss_scale) if loss_scale is not None else 1.0
                        try:
                            losses[j], dpred, metrics[j] = ex._objective(
                                objective, envs[j], mb_targets[j], sizes[j], deg,
                                with_grad=True, batch_total=batch)
                        finally:
                            ex._loss_scale = 1.0
                        for st in [st for st, _w in losses[j]] + [
                                st for v in metrics[j].values() for st in v]:
                            ex._settle(st)
                        grads[j] = ex._seed_grads(dpred, sizes[j], deg)
                else:
                    ex._backward_nodes(self.stages[s].nodes, envs[j], refs[j], grads[j],
                                       sizes[j], deg)
        # one update per step (the stages' weights on their own processors), where every
        # micro-batch's loss is finite
        guards = [st for ls in losses for st, _w in ls]
        finite = ex._unscale_grads(loss_scale) if loss_scale is not None else None
        if finite is not None:
            guards.append(finite)
        ex._update(rule, lr, step, refs[-1], sizes[0], ex.degrees_for(sizes[0]), frozenset(),
                   guards)
        ex.flush()
        return [(sizes[j], losses[j], metrics[j]) for j in range(k)], finite

    def evaluate_step(self, feeds: Mapping[int, Any], targets: Sequence[Any],
                      objective: "Objective") -> "StepResult":
        from unity_legion.executor.executor import _batch_of

        ex = self.ex
        batch = _batch_of(feeds)
        targets = ex._checked_targets(objective, targets, batch)
        ex._new_step()
        box = ex._open_box()
        parts = self._issue_evaluate(feeds, targets, objective, batch)
        return self._joined(batch, ex._read_and_drain(parts, boxes=[box] * len(parts))[0])

    def evaluate_steps(self, batches: Sequence[tuple[Mapping[int, Any], Sequence[Any]]],
                       objective: "Objective") -> list["StepResult"]:
        """evaluate_step on each of `batches`, issued one after another and read back together
        (as train_steps)."""
        ex = self.ex
        checked = ex._checked_batches(objective, batches)
        ex._new_step()
        issued, boxes = [], []
        for feeds, targets, batch in checked:
            box = ex._open_box()
            parts = self._issue_evaluate(feeds, targets, objective, batch)
            issued.append((batch, [ex._copied_out(*part, box) for part in parts]))
            boxes += [box] * len(parts)
        read, _ = ex._read_and_drain([part for _b, parts in issued for part in parts],
                                     direct=True, boxes=boxes)
        values = iter(read)
        return [self._joined(batch, [next(values) for _ in parts]) for batch, parts in issued]

    def _issue_evaluate(self, feeds: Mapping[int, Any], targets: Sequence[Any],
                        objective: "Objective", batch: int
                        ) -> list[tuple[int, list[Any], dict[str, list[Any]]]]:
        """Issue one pipelined evaluation step (checked targets): each micro-batch's (size,
        loss stores, metric stores)."""
        sizes = micro_batch_sizes(batch, self.spec.micro_batches)
        mb_feeds, mb_targets = self._micro_feeds(feeds, sizes), self._cut(targets, sizes)
        key = self.ex._trace_key("pipelined evaluate", feeds, targets, objective, batch=batch)
        return self._recorded(key, mb_feeds, mb_targets, {DYNAMIC_BOX: self.ex._box_number()},
                              lambda: self._walk_evaluate(mb_feeds, mb_targets, sizes,
                                                          objective, batch))

    def _walk_evaluate(self, mb_feeds: list[dict[int, Any]], mb_targets: list[list[Any]],
                       sizes: Sequence[int], objective: "Objective", batch: int
                       ) -> list[tuple[int, list[Any], dict[str, list[Any]]]]:
        ex = self.ex
        envs, _ = self._forward_all(mb_feeds, sizes)
        parts = []
        for j in range(len(sizes)):
            with self.on(self.loss_stage, j):
                ls, _g, ms = ex._objective(objective, envs[j], mb_targets[j], sizes[j],
                                           self.degrees(self.loss_stage, sizes[j]),
                                           with_grad=False, batch_total=batch)
                parts.append((sizes[j], ls, ms))
        ex.settle_all()
        ex.flush()
        return parts

    def predict_step(self, feeds: Mapping[int, Any]) -> list[np.ndarray]:
        from unity_legion.executor.executor import read_all

        ex = self.ex
        ex._new_step()
        stores = self._issue_predict(feeds)
        ex._drain()
        # every micro-batch's outputs read together (over several ranks: one mapping)
        return self._outputs_of(stores, iter(read_all([st for out in stores for st in out])))

    def predict_steps(self, batches: Sequence[Mapping[int, Any]]) -> list[list[np.ndarray]]:
        """predict_step on each of `batches`, issued one after another, each micro-batch's
        outputs copied out as its step ends and all read back together."""
        from unity_legion.executor.executor import read_all, snapshot

        ex = self.ex
        ex._new_step()
        keep = ex._uploads
        issued = [[[snapshot(st, keep) for st in out] for out in self._issue_predict(feeds)]
                  for feeds in batches]
        ex._drain()
        values = iter(read_all([st for stores in issued for out in stores for st in out], keep,
                               direct=True))
        return [self._outputs_of(stores, values) for stores in issued]

    def _issue_predict(self, feeds: Mapping[int, Any]) -> list[list[Any]]:
        """Issue one pipelined prediction step: each output's store per micro-batch."""
        from unity_legion.executor.executor import _batch_of

        ex = self.ex
        batch = _batch_of(feeds)
        sizes = micro_batch_sizes(batch, self.spec.micro_batches)
        mb_feeds = self._micro_feeds(feeds, sizes)

        def walk() -> list[list[Any]]:
            envs, _ = self._forward_all(mb_feeds, sizes)
            ex.settle_all()
            ex.flush()
            return [[env[t] for env in envs] for t in ex.outputs]

        return self._recorded(ex._trace_key("pipelined predict", feeds, batch=batch), mb_feeds,
                              [], {}, walk)

    @staticmethod
    def _outputs_of(stores: Sequence[Sequence[Any]], values: Iterator[np.ndarray]
                    ) -> list[np.ndarray]:
        """Each output's micro-batch values (read in the order of `stores`) joined in sample
        order."""
        return [np.concatenate([next(values) for _ in out]) for out in stores]

    def _forward_all(self, mb_feeds: Sequence[Mapping[int, Any]], sizes: Sequence[int]
                     ) -> tuple[list[dict], list[dict]]:
        """Inference forwards of every micro-batch through every stage, in GPipe's order."""
        envs: list[dict] = [{} for _ in sizes]
        refs: list[dict] = [{} for _ in sizes]
        for j in range(len(sizes)):
            for s in range(len(self.stages)):
                with self.on(s, j):
                    self._forward(Slot("F", s, j), mb_feeds, sizes, envs, refs, False)
        return envs, refs

    @staticmethod
    def _joined(batch: int, parts: Sequence["StepResult"]) -> "StepResult":
        """The micro-batches' per-sample results as the step's, in sample order."""
        from unity_legion.executor.executor import StepResult

        names = parts[0].metrics.keys() if parts else ()
        return StepResult(batch, np.concatenate([p.loss for p in parts]),
                          {m: np.concatenate([p.metrics[m] for p in parts]) for m in names})
