"""Simulate training steps of a PCG on a machine model: step time, memory, breakdown.

A step is simulated as the executor (`GraphExecutor.train_step`) runs it:

1. the inputs and targets are attached (one host action each);
2. forward: each computation's launches on the devices of its machine view (an output that
   several points write as partial sums, and a saved tensor accumulated into, is zero-filled
   first: one more launch), each parallel operator's data movement between them;
3. the objective: one loss launch per model output, data-parallel over all devices (reading the
   output split by samples: a producer cut otherwise is converted first);
4. the executor reads the loss back before it issues the backward pass (a blocking read);
5. backward in reverse order: each computation's backward launches (computing input gradients
   only where some upstream weight needs them), parallel operators' movements reversed, and one
   accumulate launch (data-parallel) for each further consumer of a tensor;
6. per trainable weight: its gradient's replicas are summed (a ring all-reduce, or with the
   runtime's "fold" every one of c >= 2 partial copies folded whole: c x fold time; one copy is
   written in place), then the optimizer update: one launch over the weight's own tiles on
   its operator's devices when the operator's configuration splits it (the slots live with
   the pieces), otherwise split by rows over the operator's devices (`update_points`);
   then the operators' state updates (batch-norm statistics).

7. the executor waits for all of the step's work before it returns (`GraphExecutor._drain`).

Launches are issued one after another by one host thread (`RuntimeSpec.issue` each, or the
operator's measured issuing time), then analysed and mapped one after another by the runtime's
own thread (Legion's utility processor: `RuntimeSpec.analysis` each, or the measured time): a
launch's tasks start when it is analysed, their inputs are ready and their devices are free.
Tasks are scheduled onto per-device compute timelines and per-device network timelines, so
communication overlaps computation wherever the dependencies allow. Two steps are simulated back
to back; the step time is the period between their final waits, which is what a loop of
train_on_batch calls measures.

Where the host thread, the processors and the runtime's threads share the machine's cores
(`RuntimeSpec.cores` > 0: a CPU machine, costs in seconds of one thread alone), they are
time-sliced: a stretch of that period during which k of them are busy lasts max(1, k / cores)
times as long (processor sharing), and a step lasts at least its total work (issuing, analysis,
tasks, copies and folds) over the cores. Without it (GPU presets) the period is the step time.

Communication time: a parallel operator's bytes go over the slowest link it crosses (inside a
node or between nodes), spread over the devices that receive them; alpha-beta per message. A
Reduce under the "fold" runtime folds every partial copy into the consumer's piece.
Memory per device: weights, gradients and optimizer slots of the pieces it holds, plus every
activation piece kept for the backward pass, plus replicated input copies (peak: the end of the
forward pass).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from unity_legion.cost.machine import LinkSpec, MachineModel
from unity_legion.cost.op_cost import AnalyticCost, CostModel, OpCost, priced
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.pcg.parallel_ops import (FusedParallelOp, ParallelOp, Partition, Reduce,
                                           Replicate, conversion)
from unity_legion.pcg.pcg import PCG, PNode, lift
from unity_legion.types import OpConfig, ParallelShapeError, ParallelTensorShape, effective_degree


@dataclass
class OpBreakdown:
    compute: float = 0.0      # forward + backward + update, one point
    communication: float = 0.0
    start: float = 0.0
    end: float = 0.0


@dataclass
class SimResult:
    step_time: float
    memory: list[float]                        # bytes per device (peak)
    breakdown: dict[str, OpBreakdown] = field(default_factory=dict)
    busy: list[float] = field(default_factory=list)   # compute seconds per device
    launches: int = 0                          # launches the host issues per step
    host: float = 0.0                          # seconds of the issuing thread per step
    runtime: float = 0.0                       # seconds of the runtime's analysis thread
    span: float = 0.0                          # the period the timelines alone give
    work: float = 0.0                          # host + device + copy seconds per step
    # with Simulator.trace: the last step's tasks, (device (-1: the host's issuing), start,
    # end, operator, phase) in seconds of the simulated timelines (the profiler draws them)
    tasks: list[tuple[int, float, float, str, str]] = field(default_factory=list)

    @property
    def peak_memory(self) -> float:
        return max(self.memory) if self.memory else 0.0

    def idle(self, device: int) -> float:
        return self.step_time - self.busy[device]


class SimulationError(ValueError):
    """A strategy that cannot run on the machine model (too many devices, a bad view)."""



class Simulator:
    """optimizer_slots: slots per weight the update touches (SGD 0, SGD with momentum 1, Adam 2);
    metrics: metric launches per model output (compile(metrics=...)); steps: simulated back to
    back (2: the steady-state period; 1: a single step from idle devices); trace: keep the
    last step's tasks (SimResult.tasks)."""

    trace = False

    def __init__(self, machine: MachineModel, cost: CostModel | None = None,
                 optimizer_slots: int = 2, metrics: int = 0, steps: int = 2) -> None:
        self.machine = machine
        self.cost = cost or AnalyticCost()
        self.optimizer_slots = optimizer_slots  # Adam keeps 2 slots per weight
        self.metrics = metrics
        self.steps = max(1, steps)

    # ------------------------------------------------------------------ public
    def simulate(self, graph: ComputationGraph, batch: int, plan: Mapping[int, OpConfig],
                 outputs: Sequence[int] | None = None, default: OpConfig | None = None
                 ) -> SimResult:
        pcg = lift(graph, batch, plan, outputs, default)
        return self.simulate_pcg(graph, pcg)

    def simulate_pcg(self, graph: ComputationGraph, pcg: PCG) -> SimResult:
        m = self.machine
        n = m.num_devices
        for node in pcg.computations():
            lo, hi = node.config.view.span()  # type: ignore[union-attr]
            if hi > n:
                raise SimulationError(f"operator {node.name!r} uses devices [{lo}, {hi}) but "
                                      f"machine {m.name!r} has {n}")
        plan = _Plan(self, graph, pcg)
        state = _State(n)
        cores = m.runtime.cores
        state.record = cores > 0
        state.tasks = [] if self.trace else None
        syncs: list[float] = []
        for _ in range(self.steps):
            state.new_step()
            syncs.append(plan.run_step(state))
        if len(syncs) >= 2:
            lo, hi = syncs[-2], syncs[-1]
        else:
            lo, hi = 0.0, max(state.compute_free + state.net_free + [state.host])
        span = hi - lo
        work = state.host_busy + state.util_busy + sum(state.busy) + state.moved
        step = span
        if cores > 0:
            step = max(_time_sliced(state.intervals, lo, hi, cores), work / cores)
        return SimResult(step, self._memory(graph, pcg), state.breakdown, state.busy,
                         state.launches, state.host_busy, state.util_busy, span, work,
                         state.tasks or [])

    # ------------------------------------------------------------------ public pieces
    # The search's decomposed cost tables (unity_legion.search.mapping_cost) price transfers,
    # gradient sums, updates and memory with these, so the DP and the simulator agree.
    def comm_time(self, op: ParallelOp, shape: ParallelTensorShape, devices: Sequence[int]
                  ) -> float:
        """Seconds a parallel operator moving `shape` between `devices` takes."""
        return self._comm_time(op, shape, devices)

    def grad_sync_time(self, ws: ParallelTensorShape, devices: Sequence[int]) -> float:
        """Seconds summing the copy replicas of a weight's gradient takes."""
        return self._grad_sync_time(ws, devices)

    def update_time(self, ws: ParallelTensorShape, points: int = 1) -> float:
        """Seconds of one point of a weight's optimizer update: over its tiles when `ws` (its
        parallel shape under its operator's configuration) is split, otherwise split by rows
        over `points` devices."""
        return self._update_time(ws, points)

    @staticmethod
    def update_points(ws: ParallelTensorShape, devices: int) -> int:
        """How many points the executor's update of weight `ws` runs on, for an operator on
        `devices` devices: the weight's tiles when its configuration splits it, otherwise
        its rows split over those devices (GraphExecutor.update_layout)."""
        if ws.shard_degree > 1:
            return ws.shard_degree
        rows = ws.sizes[0] if ws.rank else 1
        return effective_degree(rows, max(devices, 1)) if ws.rank else 1

    def stream_time(self, nbytes: float, points: int = 1) -> float:
        """Seconds of a memory-bound task over `nbytes` split over `points` devices."""
        return self._stream_time(nbytes, points)

    def memory(self, graph: ComputationGraph, pcg: PCG) -> list[float]:
        """Bytes per device a lifted plan keeps (the `memory` of `simulate_pcg`)."""
        return self._memory(graph, pcg)

    # ------------------------------------------------------------------ pieces
    def _link(self, devices: Sequence[int]) -> LinkSpec:
        nodes = {self.machine.node_of(d) for d in devices}
        return self.machine.intra if len(nodes) <= 1 else self.machine.inter

    def _comm_time(self, op: ParallelOp, shape: ParallelTensorShape, devices: Sequence[int]
                   ) -> float:
        if len(set(devices)) <= 1:
            return 0.0  # every piece already on one device: a view, no transfer
        link = self._link(devices)
        rt = self.machine.runtime
        ops = op.ops if isinstance(op, FusedParallelOp) else (op,)
        total = 0.0
        for o in ops:
            out = o.infer(shape)
            if isinstance(o, Reduce) and rt.reduction == "fold":
                # every partial copy is folded, whole, into the consumer's piece
                total += o.degree * rt.fold.time(shape.piece_bytes())  # type: ignore[union-attr]
                shape = out
                continue
            if isinstance(o, (Partition, Replicate)):
                receivers = shape.num_pieces * (o.degree - 1)
            else:  # Combine, Reduce: each output piece receives k - 1 pieces
                receivers = out.num_pieces
            per_device = o.bytes_moved(shape) / max(receivers, 1)
            total += link.time(per_device)
            shape = out
        return total

    def _grad_sync_time(self, ws: ParallelTensorShape, devices: Sequence[int]) -> float:
        """Summing the c replicas of a weight's gradient (each device holds one piece)."""
        c = ws.copy_degree
        if c <= 1:
            return 0.0
        rt = self.machine.runtime
        if rt.reduction == "fold":
            return c * rt.fold.time(ws.piece_bytes())  # type: ignore[union-attr]
        link = self._link(devices)
        return 2 * (c - 1) * link.latency + 2 * (c - 1) / c * ws.piece_bytes() / link.bandwidth

    def _allreduce_time(self, ws: ParallelTensorShape, devices: Sequence[int]) -> float:
        return self._grad_sync_time(ws, devices)

    def _stream_time(self, nbytes: float, points: int = 1) -> float:
        """A memory-bound task over `nbytes` (read + written), split over `points` devices."""
        dev = self.machine.device
        return dev.launch_overhead + nbytes / max(points, 1) / dev.mem_bandwidth

    def _update_time(self, ws: ParallelTensorShape, points: int = 1) -> float:
        """One point of the optimizer update of a weight: one of its tiles when its operator
        splits it (ws.shard_degree > 1; `points` is then ignored), otherwise a piece of its rows
        split over `points` devices; weight, gradient and slots each read and written."""
        if ws.shard_degree > 1:
            piece = float(ws.piece_bytes())
        else:
            rows = ws.sizes[0] if ws.rank else 1
            piece = ws.num_bytes() * (-(-rows // max(points, 1)) / max(rows, 1))
        return self._stream_time(piece * (2 + 2 + 2 * self.optimizer_slots))

    def _memory(self, graph: ComputationGraph, pcg: PCG) -> list[float]:
        mem: dict[int, float] = defaultdict(float)
        per_weight = 2 + self.optimizer_slots  # weight, gradient, slots
        weights_of: dict[int, float] = defaultdict(float)
        for (nid, _), ws in pcg.weights.items():
            weights_of[nid] += ws.piece_bytes() * per_weight
        for node in pcg.computations():
            devs = node.config.view.devices()[:node.config.num_points]  # type: ignore[union-attr]
            held = sum(pcg.tensors[t].piece_bytes() for t in node.outputs)
            held += sum(pcg.tensors[t].piece_bytes() for t in node.inputs
                        if pcg.tensors[t].copy_degree > 1)
            held += weights_of.get(node.source, 0.0)  # type: ignore[arg-type]
            for d in devs:
                mem[d] += held
        return [mem[d] for d in range(self.machine.num_devices)]


class _State:
    """Timelines carried from one simulated step to the next."""

    def __init__(self, n: int) -> None:
        self.compute_free = [0.0] * n
        self.net_free = [0.0] * n
        self.busy = [0.0] * n
        self.host = 0.0
        self.host_busy = 0.0
        self.util = 0.0             # when the runtime's (analysis and mapping) thread is free
        self.util_busy = 0.0
        self.moved = 0.0            # seconds of copies and folds (work of the runtime's threads)
        self.launches = 0
        self.weight_ready: dict[tuple[int, str], float] = {}
        self.breakdown: dict[str, OpBreakdown] = {}
        self.record = False         # keep busy intervals (machines whose threads share cores)
        self.intervals: list[tuple[float, float]] = []
        self.tasks: list[tuple[int, float, float, str, str]] | None = None   # Simulator.trace

    def new_step(self) -> None:
        if self.tasks is not None:
            self.tasks = []
        self.busy = [0.0] * len(self.busy)
        self.breakdown = {}
        self.host_busy = 0.0
        self.util_busy = 0.0
        self.moved = 0.0
        self.launches = 0


@dataclass
class _Node:
    """What the step needs of one PCG node, worked out once."""

    pnode: PNode
    devs: list[int]
    cost: OpCost | None = None
    fills: int = 0                 # zero-fills before the forward launches
    fill_time: float = 0.0
    comm: float = 0.0              # parallel operators: seconds of movement
    src: list[int] = field(default_factory=list)
    backward: bool = True          # whether the backward pass runs it (or moves its gradient)
    accumulates: int = 0           # accumulate launches after the backward
    acc_time: float = 0.0          # their time on every device
    weights: list[tuple[tuple[int, str], ParallelTensorShape]] = field(default_factory=list)
    state_launches: int = 0


class _Plan:
    """A PCG turned into the sequence of host actions and device tasks of one step."""

    def __init__(self, sim: Simulator, graph: ComputationGraph, pcg: PCG) -> None:
        self.sim = sim
        self.pcg = pcg
        m = sim.machine
        self.n = m.num_devices
        self.all_devs = list(range(self.n))
        dev = m.device
        shapes = graph.bind_batch(_batch_of(pcg))
        self.batch = _batch_of(pcg)
        outputs = set(pcg.outputs)
        consumers: dict[int, list[PNode]] = defaultdict(list)
        for node in pcg.nodes:
            for t in node.inputs:
                consumers[t].append(node)
        self.consumers = consumers
        # the executor does not gather model outputs: the loss reads them split by samples
        self.skipped = {node.id for node in pcg.nodes
                        if node.is_parallel and any(t in outputs for t in node.outputs)}
        # which graph tensors need a gradient (the executor's rule, no input gradients)
        gnodes = {g.id: g for g in graph.nodes}
        req: dict[int, bool] = {t: False for t in graph.inputs}
        trainable: dict[int, set[str]] = {}
        for g in graph.subgraph_nodes([t for g in graph.nodes for t in g.outputs]):
            trainable[g.id] = {ws.name for ws in g.weights if ws.trainable}
            r = any(req.get(t, False) for t in g.inputs) or bool(trainable[g.id])
            for t in g.outputs:
                req[t] = r and shapes[t].dtype.is_float
        consumed = {t for g in graph.nodes for t in g.inputs}
        preq: dict[int, bool] = {t: False for t in pcg.inputs}   # pcg tensors needing gradients
        self.devices_of: dict[int, list[int]] = {t: [0] for t in pcg.inputs}
        self.nodes: list[_Node] = []
        seen_grad: set[int] = set()
        grad_nodes: list[tuple[_Node, list[int]]] = []
        for node in pcg.nodes:
            if node.id in self.skipped:
                continue
            if node.is_parallel:
                src = self.devices_of[node.inputs[0]]
                dst = self._consumer_devices(node)
                item = _Node(node, dst, src=src)
                item.comm = sim._comm_time(node.op, pcg.tensors[node.inputs[0]],  # type: ignore[arg-type]
                                           src + dst)
                item.backward = preq.get(node.inputs[0], False)
                for t in node.outputs:
                    preq[t] = item.backward
            else:
                cfg = node.config
                devs = cfg.view.devices()[:cfg.num_points]  # type: ignore[union-attr]
                g = gnodes[node.source]  # type: ignore[index]
                ins = [shapes[t] for t in g.inputs]
                needs = [req.get(t, False) for t in g.inputs]
                item = _Node(node, devs)
                item.cost = priced(sim.cost, g.op, ins, cfg, dev, needs)  # type: ignore[arg-type]
                zeroed = [pcg.tensors[t] for t in node.outputs if pcg.tensors[t].sum_degree > 1]
                saved = [sv.shape for sv in g.op.saved(ins) if sv.zero]
                item.fills = len(zeroed) + len(saved)
                item.fill_time = (sum(sim._stream_time(s.piece_bytes()) for s in zeroed)
                                  + sum(sim._stream_time(s.num_bytes() / max(len(devs), 1))
                                        for s in saved))
                item.weights = [((nid, w), ws) for (nid, w), ws in pcg.weights.items()
                                if nid == g.id and w in trainable.get(g.id, set())]
                item.state_launches = len(g.op.state_updates(ins))
                # the executor runs a backward where some output has a gradient: one that
                # needs it, or a model output (the loss gives it one)
                item.backward = any(req.get(t, False) or t not in consumed for t in g.outputs)
                for t, gt in zip(node.outputs, g.outputs):
                    preq[t] = req.get(gt, False)
                if item.backward:
                    grad_nodes.append((item, [t for t in g.inputs if req.get(t, False)]))
            for t in node.outputs:
                self.devices_of[t] = item.devs
            self.nodes.append(item)
        # accumulate launches: every consumer of a tensor but the first one the backward
        # pass reaches adds its part into the gradient (data-parallel over all devices)
        for item, grads in reversed(grad_nodes):
            for t in grads:
                if t in seen_grad:
                    item.accumulates += 1
                    item.acc_time += sim._stream_time(3 * shapes[t].num_bytes(), self.n)
                seen_grad.add(t)
        # the objective, per model output: conversion to samples over all devices, one loss
        self.objectives: list[tuple[int, float, float]] = []   # (pcg tensor, comm, loss time)
        for t in pcg.outputs:
            produced = self._produced(t)
            shape = pcg.tensors[produced]
            want = ParallelTensorShape.of(shape.logical(), (effective_degree(shape.sizes[0], self.n),)
                                          + (1,) * (shape.rank - 1))
            comm = 0.0
            try:
                ops = conversion(shape, want)
            except ParallelShapeError:
                ops = ()
            if ops:
                op = ops[0] if len(ops) == 1 else FusedParallelOp(ops)
                comm = sim._comm_time(op, shape, self.devices_of.get(produced, [0]) + self.all_devs)
            loss = sim._stream_time(3 * shape.num_bytes(), want.shard_degree)
            self.objectives.append((produced, comm, loss))
        self.feeds = len(pcg.inputs) + len(pcg.outputs)   # arrays attached per step

    def _produced(self, t: int) -> int:
        """The tensor a model output is gathered from (before the skipped gather)."""
        for node in self.pcg.nodes:
            if node.id in self.skipped and t in node.outputs:
                return node.inputs[0]
        return t

    def _consumer_devices(self, node: PNode) -> list[int]:
        out = node.outputs[0]
        for c in self.consumers.get(out, []):
            if c.is_parallel:
                if c.id in self.skipped:
                    return self.all_devs
                return self._consumer_devices(c)
            return c.config.view.devices()[:c.config.num_points]  # type: ignore[union-attr]
        return self.all_devs  # a model output: read by the loss on every device

    # ------------------------------------------------------------------ one step
    def run_step(self, s: _State) -> float:
        """Simulate one step onto the timelines of `s`; returns when its final wait returns."""
        sim, pcg = self.sim, self.pcg
        rt = sim.machine.runtime
        issue = rt.issue

        record = s.intervals.append if s.record else None
        tasks = s.tasks

        def trace(devs: Sequence[int], start: float, end: float, name: str, phase: str) -> None:
            if tasks is not None and end > start:
                tasks.extend((d, start, end, name, phase) for d in devs)

        def host(launches: int, seconds: float | None = None, runtime: float | None = None
                 ) -> tuple[float, float]:
            """Issue `launches` (taking `seconds` of the host, default `issue` each), then the
            runtime's thread analyses them (`runtime` seconds, default `analysis` each): when
            the first may start its tasks, when the last may."""
            n = max(launches, 1)
            total = launches * issue if seconds is None else seconds
            first = s.host + total / n
            trace([-1], s.host, s.host + total, "", "host")
            if record and total > 0:
                record((s.host, s.host + total))
            s.host += total
            s.host_busy += total
            s.launches += launches
            work = launches * rt.analysis if runtime is None else runtime
            if work <= 0:
                return first, s.host
            begin = max(s.util, first)
            s.util = max(begin + work, s.host + work / n)
            s.util_busy += work
            if record:
                record((s.util - work, s.util))
            return s.util - work + work / n, s.util

        def run(devs: Sequence[int], start: float, duration: float, timeline: list[float]
                ) -> float:
            begin = max([start] + [timeline[d] for d in devs])
            for d in devs:
                timeline[d] = begin + duration
            if record and duration > 0:
                # a task per device; a transfer is one thread's work
                for _ in (devs if timeline is s.compute_free else devs[:1]):
                    record((begin, begin + duration))
            return begin + duration

        def move(item: Any, start: float) -> float:
            """A parallel operator's transfer on the network timelines of its devices (the same
            forward and backward: Partition and Combine, Replicate and Reduce move alike)."""
            end = run(sorted(set(item.src + item.devs)), start, item.comm, s.net_free)
            s.moved += item.comm
            s.breakdown.setdefault(_owner(item.pnode), OpBreakdown()).communication += item.comm
            return end

        host(self.feeds)
        ready: dict[int, float] = {t: s.host for t in pcg.inputs}
        # forward
        for item in self.nodes:
            node = item.pnode
            start = max((ready[t] for t in node.inputs), default=0.0)
            if node.is_parallel:
                end = move(item, start)
            else:
                c = item.cost
                assert c is not None
                for key, _ in item.weights:
                    start = max(start, s.weight_ready.get(key, 0.0))
                fills = 0 if c.fills_included else item.fills
                launches = fills + c.launches_forward
                first, last = host(launches, None if c.issue_forward is None
                                   else fills * issue + c.issue_forward,
                                   None if c.runtime_forward is None
                                   else fills * rt.analysis + c.runtime_forward)
                dur = (0.0 if c.fills_included else item.fill_time) + c.forward
                begin = max([start, first] + [s.compute_free[d] for d in item.devs])
                end = max(begin + dur, last + c.forward / max(c.launches_forward, 1))
                for d in item.devs:
                    s.compute_free[d] = end
                    s.busy[d] += dur
                    if record:
                        record((end - dur, end))
                trace(item.devs, end - dur, end, node.name, "forward")
                br = s.breakdown.setdefault(node.name, OpBreakdown(start=begin))
                br.compute += dur
            for t in node.outputs:
                ready[t] = end
        # the objective, then the blocking read of the loss
        losses_end = 0.0
        grad_ready: dict[int, float] = {}
        for produced, comm, loss in self.objectives:
            t0 = ready.get(produced, 0.0)
            if comm:
                t0 = run(self.all_devs, t0, comm, s.net_free)
                s.moved += 2 * comm   # there, and the gradient back
            launches = 1 + self.sim.metrics
            first, _ = host(launches)
            end = run(self.all_devs, max(t0, first), loss * launches, s.compute_free)
            trace(self.all_devs, end - loss * launches, end, "(loss and metrics)", "loss")
            for d in self.all_devs:
                s.busy[d] += loss * launches
            grad_ready[produced] = end + comm
            losses_end = max(losses_end, end)
        s.host = max(s.host, losses_end) + rt.sync
        s.host_busy += rt.sync
        # backward, in reverse; gradients flow from consumers to producers
        updates: list[tuple[_Node, float]] = []
        for item in reversed(self.nodes):
            if not item.backward:
                continue
            node = item.pnode
            start = max((grad_ready.get(t, 0.0) for t in node.outputs), default=0.0)
            if node.is_parallel:
                end = move(item, start)
            else:
                c = item.cost
                assert c is not None
                first, last = host(c.launches_backward + item.accumulates,
                                   None if c.issue_backward is None
                                   else item.accumulates * issue + c.issue_backward,
                                   None if c.runtime_backward is None
                                   else item.accumulates * rt.analysis + c.runtime_backward)
                begin = max([start, first] + [s.compute_free[d] for d in item.devs])
                end = max(begin + c.backward,
                          last + c.backward / max(c.launches_backward, 1))
                for d in item.devs:
                    s.compute_free[d] = end
                    s.busy[d] += c.backward
                    if record:
                        record((end - c.backward, end))
                trace(item.devs, end - c.backward, end, node.name, "backward")
                br = s.breakdown[node.name]
                br.compute += c.backward
                if item.accumulates:
                    acc = item.acc_time
                    end = run(self.all_devs, end, acc, s.compute_free)
                    trace(self.all_devs, end - acc, end, node.name, "backward")
                    for d in self.all_devs:
                        s.busy[d] += acc
                br.end = max(br.end, end)
                if item.weights:
                    updates.append((item, end))
            for t in node.inputs:
                grad_ready[t] = max(grad_ready.get(t, 0.0), end)
        # gradient sums and optimizer updates (issued after the whole backward pass)
        for item, grads_end in reversed(updates):
            br = s.breakdown[item.pnode.name]
            for key, ws in item.weights:
                sync = sim._grad_sync_time(ws, item.devs)
                sync_end = run(item.devs, grads_end, sync, s.net_free) if sync else grads_end
                s.moved += sync
                br.communication += sync
                points = sim.update_points(ws, len(item.devs))
                devs = item.devs[:points]
                # more tiles than devices: the devices share them (as the executor's launch)
                upd = sim._update_time(ws, points) * -(-points // max(len(devs), 1))
                first, _ = host(1)
                upd_end = run(devs, max(sync_end, first), upd, s.compute_free)
                trace(devs, upd_end - upd, upd_end, item.pnode.name, "update")
                for d in devs:
                    s.busy[d] += upd
                br.compute += upd
                br.end = max(br.end, upd_end)
                s.weight_ready[key] = upd_end
        for item in self.nodes:
            if item.state_launches:
                first, _ = host(item.state_launches)
                run(item.devs, first, sim.machine.device.launch_overhead * item.state_launches,
                    s.compute_free)
        # the executor ends every step waiting for all of its work (GraphExecutor._drain):
        # the next step's issuing starts after it
        s.host = max(s.compute_free + s.net_free + [s.host]) + rt.sync
        s.host_busy += rt.sync
        return s.host


def _time_sliced(intervals: Sequence[tuple[float, float]], lo: float, hi: float,
                 cores: float) -> float:
    """How long [lo, hi) of a schedule lasts when its busy threads share `cores` cores: a
    stretch where k threads are busy takes max(1, k / cores) times as long."""
    events: list[tuple[float, int]] = []
    for a, b in intervals:
        a, b = max(a, lo), min(b, hi)
        if b > a:
            events.append((a, 1))
            events.append((b, -1))
    events.sort()
    total, t, k = 0.0, lo, 0
    for when, delta in events:
        total += (when - t) * max(1.0, k / cores)
        t, k = when, k + delta
    return total + (hi - t) * max(1.0, k / cores)


def _owner(node: PNode) -> str:
    """The computation a parallel operator feeds (its name starts with the consumer's)."""
    return node.name.split(":")[0]


def _batch_of(pcg: PCG) -> int:
    return pcg.tensors[pcg.inputs[0]].sizes[0] if pcg.inputs else 1
