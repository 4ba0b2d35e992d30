"""Simulate training steps of a PCG on a machine model: step time, memory, breakdown.

A step is simulated as the executor (`GraphExecutor.train_step`) runs it:

1. the inputs and targets are attached (one host action each);
2. forward: each computation's launches on the devices of its machine view (an output that
   several points write as partial sums, and a saved tensor accumulated into, is zero-filled
   first: one more launch), each parallel operator's data movement between them;
3. the objective: one loss launch per model output, data-parallel over all devices (reading the
   output split by samples: a producer cut otherwise is converted first);
4. (no wait: the executor issues the whole step before it reads the loss back; its updates
   check the loss themselves);
5. backward in reverse order: each computation's backward launches (computing input gradients
   only where some upstream weight needs them), parallel operators' movements reversed, and one
   accumulate launch for each further consumer of a tensor, on that consumer's processors;
6. per trainable weight: its gradient's replicas are summed (a ring all-reduce, or with the
   runtime's "fold" every one of c >= 2 partial copies folded whole: c x fold time; one copy is
   written in place), then the optimizer update: one launch over the weight's own tiles on
   its operator's devices when the operator's configuration splits it (the slots live with
   the pieces), otherwise split by rows over the operator's devices (`update_points`);
   then the operators' state updates (batch-norm statistics).

7. the executor waits for all of the step's work before it returns (`GraphExecutor._drain`).

Fused groups (`RuntimeSpec.fusion` > 0, the executor's default): consecutive launches on the same
devices join one group, submitted as one launch when a launch on other devices, a data movement
between views, the loss read, the end of the step, or (on several devices) a launch reading a
sum the operator's earlier launches added into (batch statistics: `_barriers`; unless the
group's points exchange such sums inside the task, `RuntimeSpec.gather` each read) comes; its steps
(each launch's kernels, plus `fused_step`) run one after another in one task per device, and
what it writes is ready when the task ends. The host pays `fused_issue` per launch joining a
group, `issue` and `analysis` once per group; the devices pay their launch overhead once per
group and `task_store` per store the group's task binds beyond three (before its first kernel);
the host pays `issue_store` per such store as it submits the task; the runtime's thread pays
`analysis_store` per such store and `analysis_reduction` per store it ADD-reduces into, each
per point (`_stores`: what the operators' launches bind, named as the step names them, so a
store several of the group's launches share counts once).
Reductions are partial sums where the executor fuses (`reduction` "partials"): a Reduce, and
a weight gradient's replicas, cost one more step adding the copies, split by rows
(`settle_time`), instead of Legion's folds; over several nodes that step first reads the
other nodes' copies (`partials_fetch`).

Unfused, launches are issued one after another by one host thread (`RuntimeSpec.issue` each, or the
operator's measured issuing time), then analysed and mapped one after another by the runtime's
own thread (Legion's utility processor: `RuntimeSpec.analysis` each, or the measured time): a
launch's tasks start when it is analysed, their inputs are ready and their devices are free.
Tasks are scheduled onto per-device compute timelines and per-device network timelines, so
communication overlaps computation wherever the dependencies allow. Two steps are simulated back
to back; the step time is the period between their final waits, which is what a loop of
train_on_batch calls measures.

A pipelined step (`Staging`, built by cost/pipeline.py from a pcg.pipeline.PipelineSpec) runs
on the same timelines: the PCG lifted at the micro-batch size, steps 2, 3 and 5 once per pass
(one stage's forward or backward over one micro-batch) in the executor's issue order, each
micro-batch with its own tensors; a tensor one stage makes and a later one reads moves once per
micro-batch each way; step 6 once. There a task whose inputs are ready may run in an earlier
idle period of its devices than a task issued before it (the runtime runs ready tasks; a
stage's next forward runs while its backward waits for the next stage's), where an unpipelined
step's tasks take their devices in issue order.

Where the host thread, the processors and the runtime's threads share the machine's cores
(`RuntimeSpec.cores` > 0: a CPU machine, costs in seconds of one thread alone), they are
time-sliced: a stretch of that period during which k of them are busy lasts max(1, k / cores)
times as long (processor sharing), and a step lasts at least its total work (issuing, analysis,
tasks, copies and folds) over the cores. Without it (GPU presets) the period is the step time.

Communication time, with a collective library (a "ring" runtime: the GPU presets): priced over
the devices that exchange pieces, from the launch grids and views (cost/layout.py): a parallel
operator's movement from the producer's pieces to the consumer's (cost/transfer.py: partial sums
reduce-scattered in their groups, then each device fetches what it lacks, across nodes once per
node over the NICs, inside over NVLink), a weight's gradient all-reduced per tile over the
devices holding its copies, hierarchically (cost/collectives.py); each operator's breakdown names
the links used. A runtime that folds or sums partial copies itself ("fold", "partials") keeps
its rules: a parallel operator's bytes go over the slowest link it crosses (inside a node or
between nodes), spread over the devices that receive them; alpha-beta per message; a Reduce
under "fold" folds every partial copy into the consumer's piece.
Memory per device: weights, gradients and optimizer slots of the pieces it holds, plus every
activation piece kept for the backward pass, plus replicated input copies (peak: the end of the
forward pass).
"""

from __future__ import annotations

import bisect
import functools
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from unity_legion.cost.collectives import INTER, INTRA, groups_time, join_links, link_name
from unity_legion.cost.layout import Layout, arg_layout, spread, whole
from unity_legion.cost.machine import LinkSpec, MachineModel
from unity_legion.cost.op_cost import AnalyticCost, CostModel, OpCost, priced
from unity_legion.cost.transfer import Transfer, transfer
from unity_legion.operators.base import SAMPLE, Operator, Ref, RefKind, Role, saved
from unity_legion.operators.glue import PARTIAL_SUMS_MIN
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.pcg.parallel_ops import (FusedParallelOp, ParallelOp, Partition, Reduce,
                                           Replicate, conversion)
from unity_legion.pcg.pcg import PCG, PNode, lift
from unity_legion.types import (OpConfig, ParallelShapeError, ParallelTensorShape, TensorShape,
                                effective_degree)


@dataclass
class OpBreakdown:
    compute: float = 0.0      # forward + backward + update, one point
    communication: float = 0.0
    end: float = 0.0
    # its tasks' time between their inputs (and weights) being ready and their start: devices
    # busy with other work, the host issuing, the runtime analysing (forward and backward)
    waited: float = 0.0
    # the links its communication used (collectives.join_links): the parallel operators
    # feeding it (forward and backward) and its weights' gradient sums
    moves: str = ""
    grads: str = ""

    @property
    def links(self) -> str:
        return join_links((self.moves, self.grads))


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


@dataclass(frozen=True)
class Staging:
    """How the executor's PipelineRunner issues a pipelined step (executor/pipeline.py), for
    `Simulator.simulate_pcg` of the PCG lifted at the micro-batch size: each pass is one
    stage's forward ("F") or backward ("B") launches over one micro-batch, issued in this order
    (pcg.pipeline.schedule_order) by the one host thread; the loss of a micro-batch follows the
    forward of `loss_stage`; a stage's glue launches (loss, gradient accumulations) run on its
    `glue` devices; a tensor one stage makes and a later one reads moves between their devices
    once per micro-batch (and its gradient back); gradient sums and updates run once per step
    after every pass; the host reads each micro-batch's loss back at the end."""

    stage_of: Mapping[int, int]                  # graph node id -> stage index
    passes: tuple[tuple[str, int, int], ...]     # (phase, stage, micro-batch), in issue order
    glue: tuple[tuple[int, ...], ...]            # per stage: its glue launches' devices
    loss_stage: int
    micro_batches: int


def boundary_transfer(sim: "Simulator", src: Layout, dst: Layout) -> Transfer:
    """A tensor made in one pipeline stage (pieces `src`) read by a later one (`dst`): Legate
    moves it, as any store read on other processors (cost/transfer.py). CPU processors of one
    rank share its memory: where every piece the reader wants is a tile the producer made on a
    processor of the same rank, Legion maps the reader onto that instance and copies nothing."""
    m = sim.machine
    if (m.device.kind == "cpu" and src.shape.degrees == dst.shape.degrees
            and src.shape.sum_degree == 1
            and {(m.node_of(d), t) for d, t, _ in dst.pieces}
            <= {(m.node_of(d), t) for d, t, _ in src.pieces}):
        return Transfer(0.0, "")
    return sim.transfer(src, dst)



class Simulator:
    """optimizer_slots: slots per weight the update touches (SGD 0, SGD with momentum 1, Adam 2);
    metrics: metric launches per model output (compile(metrics=...)); steps: simulated back to
    back (2: the steady-state period; 1: a single step from idle devices); trace: keep the
    last step's tasks (SimResult.tasks); steps_per_read: the training steps issued before the
    host reads their losses and waits (compile's steps_per_execution; pipelined steps too:
    PipelineRunner.train_steps)."""

    trace = False

    def __init__(self, machine: MachineModel, cost: CostModel | None = None,
                 optimizer_slots: int = 2, metrics: int = 0, steps: int = 2,
                 steps_per_read: int = 1) -> None:
        if isinstance(steps_per_read, bool) or not isinstance(steps_per_read, int) \
                or steps_per_read < 1:
            raise ValueError(f"steps_per_read must be a positive integer, got {steps_per_read!r}")
        self.machine = machine
        self.steps_per_read = steps_per_read
        self.cost = cost or AnalyticCost()
        self.optimizer_slots = optimizer_slots  # Adam keeps 2 slots per weight
        self.metrics = metrics
        self.steps = max(1, steps)
        # plain SGD updates a lookup table's used rows only, as the executor does by default
        # (GraphExecutor.sparse_updates; off in pipelined steps)
        self.sparse_updates = True
        # a store one group alone uses in the step, written and read there, is the task's
        # own temporary in a replayed step, not bound (GraphExecutor.local_temporaries: on CPU
        # processors)
        self.local_temporaries = machine.device.kind == "cpu"
        # small weight gradients summed in banks (GraphExecutor._banked), with partial sums
        self.sum_banks = machine.runtime.reduction == "partials"

    # ------------------------------------------------------------------ public
    def simulate(self, graph: ComputationGraph, batch: int, plan: Mapping[int, OpConfig],
                 outputs: Sequence[int] | None = None, default: OpConfig | None = None
                 ) -> SimResult:
        pcg = lift(graph, batch, plan, outputs, default)
        return self.simulate_pcg(graph, pcg)

    def simulate_pcg(self, graph: ComputationGraph, pcg: PCG, staging: Staging | None = None
                     ) -> SimResult:
        """`staging`: run `pcg` (lifted at the micro-batch size) as a pipelined step.

        With steps_per_read N > 1 one step in N ends with the read and the wait for all work;
        the others end when their work does, the host issuing the next step meanwhile: the
        period is that of steps that do not wait, plus 1/N of what waiting adds."""
        waiting = self._simulate_pcg(graph, pcg, staging, wait=True)
        if self.steps_per_read == 1:
            return waiting
        free = self._simulate_pcg(graph, pcg, staging, wait=False)
        extra = max(waiting.step_time - free.step_time, 0.0)
        return replace(free, step_time=free.step_time + extra / self.steps_per_read)

    def _simulate_pcg(self, graph: ComputationGraph, pcg: PCG, staging: Staging | None,
                      wait: bool) -> SimResult:
        m = self.machine
        n = m.num_devices
        for node in pcg.computations():
            lo, hi = node.config.view.span()  # type: ignore[union-attr]
            if hi > n:
                raise SimulationError(f"operator {node.name!r} uses devices [{lo}, {hi}) but "
                                      f"machine {m.name!r} has {n}")
        plan = _Plan(self, graph, pcg, staging)
        state = _State(n)
        state.waits = wait
        if staging is not None:
            state.gaps = {d: [] for d in range(n)}
        if staging is not None or self.by_groups:
            # a transfer ready late may use the links while they idle earlier (a collective
            # library runs what is ready): a gradient sum between the backward's moves
            state.net_gaps = {d: [] for d in range(n)}
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

    def sparse_update_time(self, op: Operator, inputs: Sequence[TensorShape], weight: str,
                           ws: ParallelTensorShape, devices: int) -> float | None:
        """Seconds of one point of the executor's sparse SGD update of `weight` (Operator.
        sparse_sgd_update: the rows the batch looked up, from the step's indices and output
        gradient, read whole by each point; no dense gradient is formed or summed), or None
        where the update is dense: an optimizer with state, a weight its configuration tiles, an
        operator without a sparse update. (SGD with weight decay is dense in the executor but
        priced sparse here: the cost model knows the optimizer's state only.)"""
        if self.optimizer_slots or not self.sparse_updates or ws.shard_degree > 1:
            return None
        launch = op.sparse_sgd_update(list(inputs), weight)
        touched = op.weight_bytes_touched(list(inputs))
        if launch is None or touched is None:
            return None
        outs = op.infer_outputs(list(inputs))
        read = 0.0
        for arg in launch.args.values():
            if arg.ref.kind is RefKind.INPUT:
                read += inputs[arg.ref.key].num_bytes()    # type: ignore[index]
            elif arg.ref.kind is RefKind.GRAD_OUTPUT:
                read += outs[arg.ref.key].num_bytes()      # type: ignore[index]
        points = self.update_points(ws, devices)
        return self._stream_time(read + 2 * touched * _master_ratio(ws) / max(points, 1))

    def stream_time(self, nbytes: float, points: int = 1) -> float:
        """Seconds of a memory-bound task over `nbytes` split over `points` devices."""
        return self._stream_time(nbytes, points)

    def memory(self, graph: ComputationGraph, pcg: PCG) -> list[float]:
        """Bytes per device a lifted plan keeps (the `memory` of `simulate_pcg`)."""
        return self._memory(graph, pcg)

    def simulate_pipeline(self, graph: ComputationGraph, batch: int,
                          plan: Mapping[int, OpConfig], spec: Any,
                          outputs: Sequence[int] | None = None) -> Any:
        """A pipelined step (spec: a pcg.pipeline.PipelineSpec): bubbles, stage-boundary
        transfers, per-stage gradient sums, memory per schedule (cost/pipeline.py)."""
        from unity_legion.cost.pipeline import price_pipeline

        return price_pipeline(self, graph, batch, plan, spec, outputs)

    # ------------------------------------------------------------------ device groups
    # With a collective library ("ring" runtimes: the GPU presets) every transfer and gradient
    # sum is priced over the devices that exchange pieces (cost/layout.py, cost/transfer.py,
    # cost/collectives.py); a runtime that folds or sums partial copies itself keeps its own
    # rules (_comm_time, _grad_sync_time).
    @property
    def by_groups(self) -> bool:
        return self.machine.runtime.reduction == "ring"

    def transfer(self, src: Layout, dst: Layout) -> Transfer:
        """Converting the producer's pieces `src` to the consumer's `dst` (cost/transfer.py)."""
        return transfer(src, dst, self.machine)

    def weight_sync(self, ws: Layout) -> Transfer:
        """Summing a weight's gradient: one all-reduce per tile over the devices holding its
        copies (`ws`: where the weight's pieces live), side by side."""
        if ws.shape.copy_degree <= 1:
            return Transfer(0.0, "")
        if not self.by_groups:
            return self._grad_transfer(ws.shape, ws.devices)
        groups = ws.groups()
        # gradients are float32 also under mixed precision (the master copy's)
        return Transfer(groups_time("all_reduce", ws.shape.piece_bytes() * _master_ratio(ws.shape),
                                    groups, self.machine),
                        join_links(link_name(g, self.machine) for g in groups))

    def _link_name(self, devices: Sequence[int]) -> str:
        if len(set(devices)) <= 1:
            return ""
        return INTRA if self._link(devices) is self.machine.intra else INTER

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
        total = self._settle_time(op, shape, devices, len(devices))
        for o in ops:
            out = o.infer(shape)
            if isinstance(o, Reduce) and self._partials():
                shape = out   # priced by _settle_time
                continue
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

    def gathers(self, devices: Sequence[int]) -> bool:
        """Whether a fused task over `devices` exchanges the sums its points add into (batch
        statistics) inside the task (`RuntimeSpec.gather`: the executor's gathers, one rank),
        where a read of one would otherwise end the group."""
        rt = self.machine.runtime
        return (rt.gather is not None and rt.fusion > 0 and self._partials()
                and self.machine.nodes == 1 and len(devices) > 1)

    def _partials(self) -> bool:
        """Whether reductions over several points are summed as partial sums (on any number
        of nodes: `partials_fetch` prices the reads between them)."""
        return self.machine.runtime.reduction == "partials"

    def _settle_time(self, op: ParallelOp, shape: ParallelTensorShape, devices: Sequence[int],
                     points: int) -> float:
        """The Reduce parts of `op` as partial sums: one point of the step adding the k
        partial copies into the result, split by rows over `points` devices (0 otherwise)."""
        if len(set(devices)) <= 1 or not self._partials():
            return 0.0
        total = 0.0
        for o in (op.ops if isinstance(op, FusedParallelOp) else (op,)):
            if isinstance(o, Reduce):
                total += self.settle_time(o.degree, shape.num_bytes(), points)
            shape = o.infer(shape)
        return total

    def grad_partials(self, ws: ParallelTensorShape, devices: Sequence[int]) -> bool:
        """Whether the replicas of a weight's gradient are summed as partial sums: a whole
        (unsplit) gradient every point adds into, where the runtime sums partial copies."""
        return ws.copy_degree > 1 and ws.shard_degree == 1 and self._partials()

    def settle_time(self, copies: int, nbytes: float, points: int) -> float:
        """Seconds of one point adding `copies` partial sums of an `nbytes` store into it, split
        by rows over `points` devices: the kernel (operators/glue.add_partials) adds one copy
        at a time into the result (the result read and written, the copy read) and then zeroes
        every copy for the next step's contributions, 4 passes over a piece per copy."""
        return 4 * copies * nbytes / max(points, 1) / self.machine.device.mem_bandwidth

    def partials_fetch(self, ws: ParallelTensorShape, devices: Sequence[int]) -> float:
        """Seconds before partial sums of a gradient over `devices` can be added up, split by
        rows: the pieces on other nodes are read over the inter-node link (one message's
        latency, shared by the sums in flight, and each settling point's rows of the remote
        copies). 0 on one node. On 2 ranks here the data-parallel MLP's update started ~19 ms
        after its backward ended (a round trip between the ranks' runtimes: 16 ms)."""
        nodes = {self.machine.node_of(d) for d in devices}
        if len(nodes) <= 1:
            return 0.0
        link = self.machine.inter
        points = max(len(set(devices)), 1)
        remote = ws.copy_degree * (len(nodes) - 1) / len(nodes)
        return link.latency + remote * ws.num_bytes() / points / link.bandwidth

    def _grad_sync_time(self, ws: ParallelTensorShape, devices: Sequence[int]) -> float:
        """Summing the c replicas of a weight's gradient (each device holds one piece)."""
        return self._grad_sync(ws, devices)[0]

    def _grad_sync(self, ws: ParallelTensorShape, devices: Sequence[int]) -> tuple[float, float]:
        """(seconds, latency) of summing the c replicas of a weight's gradient: of its seconds,
        the messages' latency is a delay the sums of several weights share, in flight together
        (Legion issues every fold or exchange as soon as its gradient is done), where their
        bytes share the links. On 2 ranks here a fold's latency (~16 ms, the runtime's round
        trip) dwarfs its bytes: bert's ~40 sums priced one after another predicted 3.1 s for a
        0.41 s step."""
        c = ws.copy_degree
        if c <= 1:
            return 0.0, 0.0
        if _master_ratio(ws) != 1:   # gradients are float32 under mixed precision too
            ws = ParallelTensorShape(ws.dims, ws.replicas, ws.dtype.master)
        rt = self.machine.runtime
        if self.grad_partials(ws, devices):
            fetch = self.partials_fetch(ws, devices)
            latency = self.machine.inter.latency if fetch else 0.0
            return self.settle_time(c, ws.num_bytes(), len(set(devices))) + fetch, latency
        if rt.reduction in ("fold", "partials") and rt.fold is not None:
            return c * rt.fold.time(ws.piece_bytes()), c * rt.fold.latency
        link = self._link(devices)
        latency = 2 * (c - 1) * link.latency
        return latency + 2 * (c - 1) / c * ws.piece_bytes() / link.bandwidth, latency

    def _grad_transfer(self, ws: ParallelTensorShape, devices: Sequence[int]) -> Transfer:
        """The gradient sum as a Transfer priced by this runtime's own rule (_grad_sync)."""
        seconds, latency = self._grad_sync(ws, devices)
        return Transfer(seconds, self._link_name(devices), latency)

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
        # (a half-precision operator's weight is updated in its float32 master copy)
        return self._stream_time(piece * _master_ratio(ws) * (2 + 2 + 2 * self.optimizer_slots))

    def _memory(self, graph: ComputationGraph, pcg: PCG) -> list[float]:
        mem: dict[int, float] = defaultdict(float)
        per_weight = 2 + self.optimizer_slots  # weight, gradient, slots
        weights_of: dict[int, float] = defaultdict(float)
        for (nid, _), ws in pcg.weights.items():
            # mixed precision: float32 weight, gradient and slots, plus the step's half copy
            master = _master_ratio(ws)
            weights_of[nid] += ws.piece_bytes() * (per_weight * master + (master > 1))
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
        # a pipelined step (Staging): each device's idle periods before its last task, per
        # timeline, which a later-issued task whose inputs are ready earlier fills (the runtime
        # runs a task when its inputs are ready, not in issue order: a stage's next forward
        # runs while its backward waits for the next stage); None: in issue order
        self.gaps: dict[int, list[tuple[float, float]]] | None = None
        self.net_gaps: dict[int, list[tuple[float, float]]] | None = None
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
        # a step ends with the read of its losses and a wait for all its work (False: a step
        # of a group before its last, Simulator.steps_per_read)
        self.waits = True

    def lane(self, timeline: list[float]) -> dict[int, list[tuple[float, float]]] | None:
        return self.gaps if timeline is self.compute_free else self.net_gaps

    def start(self, timeline: list[float], devs: Sequence[int], ready: float, duration: float
              ) -> float:
        """When a task of `duration` on every device of `devs` may start, not before `ready`:
        after each device's last task, or (gaps kept) in the first idle period all share."""
        gaps = self.lane(timeline)
        frontier = max([timeline[d] for d in devs], default=0.0)
        if gaps is None or duration <= 0 or ready >= frontier:
            return max(ready, frontier)   # (after every device's last task: no gap helps)
        t = ready
        while True:
            later = max(_fit(gaps[d], timeline[d], t, duration) for d in devs)
            if later <= t:
                return t
            t = later

    def take(self, timeline: list[float], devs: Sequence[int], begin: float, end: float) -> None:
        """Devices `devs` busy from `begin` to `end` on `timeline`."""
        gaps = self.lane(timeline)
        for d in devs:
            if gaps is None:
                timeline[d] = end
            elif begin >= timeline[d]:
                if begin > timeline[d]:
                    gaps[d].append((timeline[d], begin))
                timeline[d] = end
            else:   # inside an idle period: split it
                own = gaps[d]
                i = bisect.bisect_right(own, (begin, math.inf)) - 1
                if i >= 0 and own[i][1] > begin:   # (else: rounding at the last task's end)
                    a, b = own[i]
                    own[i:i + 1] = [g for g in ((a, begin), (end, b)) if g[1] > g[0]]
                timeline[d] = max(timeline[d], end)

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
    link: str = ""                 # parallel operators: the links the movement uses
    syncs: dict[tuple[int, str], Transfer] = field(default_factory=dict)   # gradient sums
    sparse: dict[tuple[int, str], float] = field(default_factory=dict)     # sparse updates
    settle: float = 0.0            # a Reduce as partial sums: the step adding them (one point)
    boundary: bool = False         # a pipeline stage boundary: the tensor moved to the reader
    delay: float = 0.0             # a boundary's: of `comm`, the messages' latency, which moves in
                                   # flight together overlap (Transfer.latency)
    stage: int = 0                 # its pipeline stage (Staging; 0 unpipelined)
    # per pass (forward, backward): how many of its launches read a sum earlier ones added into
    # over several points (batch statistics), each ending the fused group, and whether such a
    # sum is big enough to be added as partial sums, by a task of its own (see _barriers)
    barriers: tuple[tuple[int, bool], tuple[int, bool]] = ((0, False), (0, False))
    # per pass (forward, backward): the stores its launches bind (keys shared with the other
    # nodes of the step, so that a fused group counts a store once) and those it ADD-reduces
    # into over several points
    slots: tuple[frozenset[Any], frozenset[Any]] = (frozenset(), frozenset())
    reds: tuple[frozenset[Any], frozenset[Any]] = (frozenset(), frozenset())

    @property
    def moves(self) -> bool:
        """Data movement (a parallel operator, a stage boundary), not launches."""
        return self.boundary or self.pnode.is_parallel

    def update_time(self, sim: "Simulator", key: tuple[int, str], ws: ParallelTensorShape,
                    points: int) -> float:
        """One point of weight `key`'s update: sparse where the executor updates it so."""
        sparse = self.sparse.get(key)
        return sim._update_time(ws, points) if sparse is None else sparse


@dataclass
class _Group:
    """A fused group being collected: its devices, launches, steps (seconds on each device,
    operator, phase, what to do when the task ends) and when its inputs are ready."""

    devs: tuple[int, ...]
    launches: int = 0
    ready: float = 0.0
    steps: list[tuple[float, str, str, Callable[[float], None] | None]] = field(
        default_factory=list)
    slots: set[Any] = field(default_factory=set)   # the stores its task binds
    reds: set[Any] = field(default_factory=set)    # those it ADD-reduces into


class _Plan:
    """A PCG turned into the sequence of host actions and device tasks of one step."""

    def __init__(self, sim: Simulator, graph: ComputationGraph, pcg: PCG,
                 staging: Staging | None = None) -> None:
        self.sim = sim
        self.pcg = pcg
        # per store, how many fused groups of the last simulated step bound it, and of this one
        self.group_uses: Counter[Any] | None = None
        self._uses_now: Counter[Any] = Counter()
        m = sim.machine
        self.n = m.num_devices
        self.all_devs = list(range(self.n))
        self.staging = staging
        # the loss (and the accumulations of gradients) run on the default processors: all of
        # them, or a pipeline's stage's glue devices
        self.loss_devs = list(staging.glue[staging.loss_stage]) if staging else self.all_devs
        dev = m.device
        shapes = graph.bind_batch(_batch_of(pcg))
        self.shapes = shapes
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
        # where each model output's loss runs (both the output and what it is gathered from)
        self.output_devs: dict[int, list[int]] = {}
        for t in pcg.outputs:
            produced = self._produced(t)
            self.output_devs[t] = self.output_devs[produced] = self._loss_devices(produced)
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
        # where each tensor's pieces live (graph inputs: attached whole on device 0)
        self.layout_of: dict[int, Layout] = {t: whole(pcg.tensors[t]) for t in pcg.inputs}
        self.gnodes = gnodes
        self.nodes: list[_Node] = []
        seen_grad: set[int] = set()
        grad_nodes: list[tuple[_Node, list[int]]] = []
        by_name = {g.name: g for g in graph.nodes}
        made_in: dict[int, int] = {}     # pcg tensor -> the pipeline stage computing it
        crossed: set[tuple[int, int]] = set()
        for node in pcg.nodes:
            if node.id in self.skipped:
                continue
            stage = 0
            if staging is not None:
                owner = gnodes[node.source] if node.source is not None else by_name.get(
                    _owner(node))   # a parallel operator belongs to its consumer's stage
                stage = staging.stage_of[owner.id] if owner is not None else 0
            if node.is_parallel:
                src = self.devices_of[node.inputs[0]]
                dst = self._consumer_devices(node)
                item = _Node(node, dst, src=src)
                item.comm = sim._comm_time(node.op, pcg.tensors[node.inputs[0]],  # type: ignore[arg-type]
                                           src + dst)
                item.link = sim._link_name(src + dst)
                if sim.by_groups:
                    moved = sim.transfer(self.layout_of[node.inputs[0]], self._consumer_layout(node))
                    item.comm, item.link = moved.seconds, moved.link
                if sim.machine.runtime.fusion:
                    # partial sums: a step of the producer's devices, not a copy
                    item.settle = sim._settle_time(node.op, pcg.tensors[node.inputs[0]],  # type: ignore[arg-type]
                                                   src + dst, len(src))
                    item.comm = max(item.comm - item.settle, 0.0)
                item.backward = preq.get(node.inputs[0], False)
                for t in node.outputs:
                    preq[t] = item.backward
            else:
                cfg = node.config
                devs = cfg.view.devices()[:cfg.num_points]  # type: ignore[union-attr]
                g = gnodes[node.source]  # type: ignore[index]
                ins = [shapes[t] for t in g.inputs]
                needs = [req.get(t, False) for t in g.inputs]
                for i, t in enumerate(node.inputs):
                    # made by an earlier stage's computation, read here as it is (a conversion
                    # between them is a parallel operator above, priced from the producer's
                    # pieces): Legate moves it, once per micro-batch per stage reading it
                    if made_in.get(t, stage) < stage and (t, stage) not in crossed:
                        crossed.add((t, stage))
                        self.nodes.append(self._boundary(node, g, ins, i, devs, stage,
                                                         preq.get(t, False)))
                item = _Node(node, devs)
                item.cost = priced(sim.cost, g.op, ins, cfg, dev, needs)  # type: ignore[arg-type]
                if len(devs) > 1:
                    item.barriers = _barriers(g.op, tuple(ins), tuple(needs), cfg.degrees)
                item.slots, item.reds = _stores(g.op, tuple(ins), tuple(needs), cfg.degrees,
                                                g.id, tuple(node.inputs), tuple(node.outputs))
                zeroed = [pcg.tensors[t] for t in node.outputs if pcg.tensors[t].sum_degree > 1]
                saved = [sv.shape for sv in g.op.saved(ins) if sv.zero]
                item.fills = len(zeroed) + len(saved)
                item.fill_time = (sum(sim._stream_time(s.piece_bytes()) for s in zeroed)
                                  + sum(sim._stream_time(s.num_bytes() / max(len(devs), 1))
                                        for s in saved))
                item.weights = [((nid, w), ws) for (nid, w), ws in pcg.weights.items()
                                if nid == g.id and w in trainable.get(g.id, set())]
                for key, ws in item.weights:
                    sparse = (sim.sparse_update_time(g.op, ins, key[1], ws, len(devs))
                              if staging is None else None)
                    if sparse is not None:   # no gradient to sum
                        item.sparse[key] = sparse
                        item.syncs[key] = Transfer(0.0, "")
                        continue
                    item.syncs[key] = (sim.weight_sync(
                        arg_layout(g.op, ins, cfg, Ref(RefKind.WEIGHT, key[1]), ws))  # type: ignore[arg-type]
                        if sim.by_groups else
                        sim._grad_transfer(ws, devs))
                for i, t in enumerate(node.outputs):
                    self.layout_of[t] = arg_layout(g.op, ins, cfg, Ref(RefKind.OUTPUT, i),  # type: ignore[arg-type]
                                                   pcg.tensors[t])
                item.state_launches = len(g.op.state_updates(ins))
                # the executor runs a backward where some output has a gradient: one that
                # needs it, or a model output (the loss gives it one)
                item.backward = any(req.get(t, False) or t not in consumed for t in g.outputs)
                for t, gt in zip(node.outputs, g.outputs):
                    preq[t] = req.get(gt, False)
                if item.backward:
                    grad_nodes.append((item, [t for t in g.inputs if req.get(t, False)]))
                made_in.update((t, stage) for t in node.outputs)
            item.stage = stage
            for t in node.outputs:
                self.devices_of[t] = item.devs
            self.nodes.append(item)
        # accumulate launches: every consumer of a tensor but the first one the backward
        # pass reaches adds its part into the gradient (on its processors: glue_of)
        for item, grads in reversed(grad_nodes):
            for t in grads:
                if t in seen_grad:
                    item.accumulates += 1
                    item.acc_time += sim._stream_time(3 * shapes[t].num_bytes(),
                                                      len(self.glue_of(item)))
                seen_grad.add(t)
        # a pipelined step's passes: each stage's items, in the order the executor issues them
        self.stage_nodes: list[list[_Node]] = [
            [it for it in self.nodes if it.stage == k]
            for k in range(len(staging.glue) if staging else 1)]
        # the objective, per model output: conversion to samples over all devices, one loss
        # (pcg tensor, comm, loss time, the loss's devices)
        self.objectives: list[tuple[int, float, float, list[int]]] = []
        for t in pcg.outputs:
            produced = self._produced(t)
            shape = pcg.tensors[produced]
            loss_devs = self.output_devs[t]
            want = ParallelTensorShape.of(shape.logical(),
                                          (effective_degree(shape.sizes[0], len(loss_devs)),)
                                          + (1,) * (shape.rank - 1))
            comm = 0.0
            try:
                ops = conversion(shape, want)
            except ParallelShapeError:
                ops = ()
            if ops and sim.by_groups:
                comm = sim.transfer(self.layout_of[produced], spread(want, loss_devs)).seconds
            elif ops:
                op = ops[0] if len(ops) == 1 else FusedParallelOp(ops)
                comm = sim._comm_time(op, shape, self.devices_of.get(produced, [0]) + loss_devs)
            loss = sim._stream_time(3 * shape.num_bytes(), want.shard_degree)
            self.objectives.append((produced, comm, loss, loss_devs))
        self.feeds = len(pcg.inputs) + len(pcg.outputs)   # arrays attached per step
        # the issue order: forward then backward, or a pipeline's passes over its micro-batches
        self.passes = staging.passes if staging else (("F", 0, 0), ("B", 0, 0))
        self.micro_batches = staging.micro_batches if staging else 1
        self.loss_stage = staging.loss_stage if staging else 0

    def glue_of(self, item: _Node) -> list[int]:
        """The devices of `item`'s gradient accumulations: its own processors as its samples
        split over them (GraphExecutor._backward), all of them where each launch is a task of
        its own (no fusion to join), or a pipeline stage's glue devices."""
        if self.staging:
            return list(self.staging.glue[item.stage])
        cfg = item.pnode.config
        if cfg is None:
            return self.all_devs
        split = len(item.devs) if not self.sim.machine.runtime.fusion else cfg.degree(SAMPLE)
        return item.devs[:max(1, min(len(item.devs), split, self.batch))]

    def _boundary(self, node: PNode, g: Any, ins: list[Any], i: int, devs: list[int],
                  stage: int, grad: bool) -> _Node:
        """The move of `node`'s input `i` from the earlier stage that made it (Staging)."""
        t = node.inputs[i]
        want = arg_layout(g.op, ins, node.config, Ref(RefKind.INPUT, i), self.pcg.tensors[t])
        moved = boundary_transfer(self.sim, self.layout_of[t], want)
        src = self.devices_of[t]
        item = _Node(PNode(-1, f"{node.name}:boundary", node.op, (t,), (t,)), devs, src=src,
                     comm=moved.seconds, link=moved.link, boundary=True, stage=stage,
                     delay=moved.latency)
        item.backward = grad    # its gradient goes back the same way
        return item

    def _loss_devices(self, produced: int) -> list[int]:
        """Where the loss of the model output gathered from `produced` runs, as the executor
        places it (GraphExecutor.loss_placement): on its producer's devices, split by samples
        as it is, where the producer's configuration splits nothing else; otherwise over
        every device (a pipeline's: its loss stage's glue devices)."""
        if self.staging:
            return self.loss_devs
        for node in self.pcg.nodes:
            if produced in node.outputs:
                cfg = node.config
                if (node.is_parallel or cfg is None or cfg.view is None
                        or any(a != SAMPLE for a, _d in cfg.degrees)):
                    return self.all_devs
                return cfg.view.devices()[:cfg.num_points]
        return self.all_devs

    def _produced(self, t: int) -> int:
        """The tensor a model output is gathered from (before the skipped gather)."""
        for node in self.pcg.nodes:
            if node.id in self.skipped and t in node.outputs:
                return node.inputs[0]
        return t

    def _consumer_layout(self, node: PNode) -> Layout:
        """Where the consumer of a parallel operator's output reads its pieces."""
        out = node.outputs[0]
        shape = self.pcg.tensors[out]
        for c in self.consumers.get(out, []):
            if c.is_parallel or c.config is None:
                return spread(shape, self._consumer_devices(node))
            g = self.gnodes[c.source]  # type: ignore[index]
            ins = [self.shapes[t] for t in g.inputs]
            return arg_layout(g.op, ins, c.config, Ref(RefKind.INPUT, c.inputs.index(out)), shape)
        # a model output: read by the loss's devices
        return spread(shape, self.output_devs.get(out, self.loss_devs))

    def _consumer_devices(self, node: PNode) -> list[int]:
        out = node.outputs[0]
        for c in self.consumers.get(out, []):
            if c.is_parallel:
                if c.id in self.skipped:
                    return self.output_devs.get(c.outputs[0], self.loss_devs)
                return self._consumer_devices(c)
            return c.config.view.devices()[:c.config.num_points]  # type: ignore[union-attr]
        return self.output_devs.get(out, self.loss_devs)  # a model output: the loss's devices

    # ------------------------------------------------------------------ one step
    def _run_passes(self, forward: Any, objective: Any, backward: Any, readys: Any,
                    grad_readys: Any) -> None:
        """The step's passes in issue order (F then B; a pipeline's schedule), each micro-batch
        with its own ready times; the objective after the loss stage's forward."""
        for phase, stage, j in self.passes:
            if phase == "F":
                forward(self.stage_nodes[stage], readys[j])
                if stage == self.loss_stage:
                    objective(readys[j], grad_readys[j])
            else:
                backward(self.stage_nodes[stage], grad_readys[j])

    def run_step(self, s: _State) -> float:
        """Simulate one step onto the timelines of `s`; returns when its final wait returns."""
        sim, pcg = self.sim, self.pcg
        rt = sim.machine.runtime
        if rt.fusion > 0:
            return self.run_fused_step(s)
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
            begin = s.start(timeline, devs, start, duration)
            s.take(timeline, devs, begin, begin + duration)
            if record and duration > 0:
                # a task per device; a transfer is one thread's work
                for _ in (devs if timeline is s.compute_free else devs[:1]):
                    record((begin, begin + duration))
            return begin + duration

        def move(item: Any, start: float) -> float:
            """A parallel operator's transfer on the network timelines of its devices (the same
            forward and backward: Partition and Combine, Replicate and Reduce move alike)."""
            busy = item.comm - item.delay     # (the latency is a delay, no thread's work)
            end = run(sorted(set(item.src + item.devs)), start, busy, s.net_free) + item.delay
            s.moved += busy
            _charge(s.breakdown.setdefault(_owner(item.pnode), OpBreakdown()), item.comm,
                    item.link, "moves")
            return end

        host(self.feeds)
        fed = s.host
        # per micro-batch (one unpipelined): when each tensor, and each gradient, is ready
        readys: list[dict[int, float]] = [dict.fromkeys(pcg.inputs, fed)
                                          for _ in range(self.micro_batches)]
        grad_readys: list[dict[int, float]] = [{} for _ in range(self.micro_batches)]
        # operators with weights, as the backward passes first reach them: when their
        # gradients are complete (every micro-batch's added in)
        grads_done: dict[int, tuple[_Node, float]] = {}

        def forward(items: Sequence[_Node], ready: dict[int, float]) -> None:
            for item in items:
                node = item.pnode
                start = max((ready[t] for t in node.inputs), default=0.0)
                if item.moves:
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
                    begin = s.start(s.compute_free, item.devs, max(start, first), dur)
                    end = max(begin + dur, last + c.forward / max(c.launches_forward, 1))
                    s.take(s.compute_free, item.devs, max(begin, end - dur), end)
                    for d in item.devs:
                        s.busy[d] += dur
                        if record:
                            record((end - dur, end))
                    trace(item.devs, end - dur, end, node.name, "forward")
                    br = s.breakdown.setdefault(node.name, OpBreakdown())
                    br.compute += dur
                    br.waited += max(0.0, end - dur - start)
                for t in node.outputs:
                    ready[t] = end

        def objective(ready: dict[int, float], grad_ready: dict[int, float]) -> None:
            """The loss (and metrics) of each model output, on the loss's devices."""
            for produced, comm, loss, devs in self.objectives:
                t0 = ready.get(produced, 0.0)
                if comm:
                    t0 = run(devs, t0, comm, s.net_free)
                    s.moved += 2 * comm   # there, and the gradient back
                launches = 1 + self.sim.metrics
                first, _ = host(launches)
                end = run(devs, max(t0, first), loss * launches, s.compute_free)
                trace(devs, end - loss * launches, end, "(loss and metrics)", "loss")
                for d in devs:
                    s.busy[d] += loss * launches
                grad_ready[produced] = end + comm

        def backward(items: Sequence[_Node], grad_ready: dict[int, float]) -> None:
            """In reverse; gradients flow from consumers to producers."""
            for item in reversed(items):
                if not item.backward:
                    continue
                node = item.pnode
                start = max((grad_ready.get(t, 0.0) for t in node.outputs), default=0.0)
                if item.moves:
                    end = dx_end = move(item, start)
                else:
                    c = item.cost
                    assert c is not None
                    first, last = host(c.launches_backward + item.accumulates,
                                       None if c.issue_backward is None
                                       else item.accumulates * issue + c.issue_backward,
                                       None if c.runtime_backward is None
                                       else item.accumulates * rt.analysis + c.runtime_backward)
                    begin = s.start(s.compute_free, item.devs, max(start, first), c.backward)
                    end = max(begin + c.backward,
                              last + c.backward / max(c.launches_backward, 1))
                    s.take(s.compute_free, item.devs, max(begin, end - c.backward), end)
                    for d in item.devs:
                        s.busy[d] += c.backward
                        if record:
                            record((end - c.backward, end))
                    trace(item.devs, end - c.backward, end, node.name, "backward")
                    br = s.breakdown[node.name]
                    br.compute += c.backward
                    br.waited += max(0.0, end - c.backward - start)
                    # each launch is a task of its own here: the input gradients (and the
                    # additions of this consumer's parts, issued right after them) are done
                    # before the launches computing weight gradients alone, and can leave
                    # while those run
                    early = (1.0 - c.input_grads_at) * c.backward
                    dx_end = end - early
                    if item.accumulates:
                        acc = item.acc_time
                        glue = self.glue_of(item)
                        end = run(glue, end, acc, s.compute_free)
                        trace(glue, end - acc, end, node.name, "backward")
                        for d in glue:
                            s.busy[d] += acc
                        dx_end = end if not early else min(end, dx_end + acc)
                    br.end = max(br.end, end)
                    if item.weights:
                        done = grads_done.get(node.id)
                        grads_done[node.id] = (item, max(end, done[1] if done else end))
                for t in node.inputs:
                    grad_ready[t] = max(grad_ready.get(t, 0.0), dx_end)

        self._run_passes(forward, objective, backward, readys, grad_readys)
        updates = list(grads_done.values())
        # gradient sums: each takes the links once its gradient is done, in that order (the
        # runtime starts it then), not in the order the updates are issued, which would hold
        # the last layer's sum behind the first layer's, done last
        sync_ends: dict[Any, float] = {}
        for item, grads_end in sorted(updates, key=lambda u: u[1]):
            br = s.breakdown[item.pnode.name]
            for key, _ws in item.weights:
                sync = item.syncs[key].seconds
                sync_ends[key] = (run(item.devs, grads_end, sync - item.syncs[key].latency,
                                      s.net_free) + item.syncs[key].latency
                                  if sync else grads_end)
                s.moved += sync - item.syncs[key].latency   # (a delay is no thread's work)
                _charge(br, sync, item.syncs[key].link, "grads")
        # optimizer updates (issued after the whole backward pass)
        for item, grads_end in reversed(updates):
            br = s.breakdown[item.pnode.name]
            for key, ws in item.weights:
                sync_end = sync_ends[key]
                points = sim.update_points(ws, len(item.devs))
                devs = item.devs[:points]
                # more tiles than devices: the devices share them (as the executor's launch)
                upd = item.update_time(sim, key, ws, points) * -(-points // max(len(devs), 1))
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
        return self._end_step(s)

    def _end_step(self, s: _State) -> float:
        """When the step ends: the executor waits for all of the step's work and takes the
        losses its tasks posted (`RuntimeSpec.posted_sync`: a fence, and over several ranks
        the ranks' exchange of their boxes), or reads them back from their stores (None),
        then waits (GraphExecutor._drain); the next step's issuing starts after it. On one
        rank a read is a short call made once the losses are done. Over several ranks it is
        a round trip between the ranks' runtimes that starts when the read is issued, right
        after the step (`RuntimeSpec.sync`, measured from a launch's issue to its result's
        arrival), and runs while the step's work does: a 2-rank MLP step on one processor
        took 112 ms with ~40 ms of kernels where a read alone takes 112-148 ms."""
        done = max(s.compute_free + s.net_free + [s.host])
        if not s.waits:
            return done   # the host goes on issuing the next step
        m = self.sim.machine
        if m.runtime.posted_sync is not None:
            # the step's tasks posted its losses (executor/posted.py): the host fences once the
            # work is done and, over several ranks, the ranks share what they were posted
            reads = m.runtime.posted_sync
            s.host = done + reads
        elif m.nodes > 1:
            # every micro-batch's loss gathered into one store, read once (executor.read_all):
            # a round trip between the ranks from the read's issue
            reads = m.runtime.sync
            s.host = max(done, s.host + reads)
        else:
            reads = m.runtime.sync * self.micro_batches   # each micro-batch's loss read
            s.host = done + reads
        s.host_busy += reads
        return s.host

    def _own_temporaries(self, g: _Group) -> int:
        """How many of group `g`'s stores the executor's replay keeps in the task as its own
        temporaries (replay.Recorder.finish): a tensor, gradient or saved product (written
        before it is read; not a batch input, a weight or a weight gradient) that no other
        group of the step binds."""
        uses = self.group_uses
        if uses is None:
            return 0
        inputs = self._input_keys
        return sum(1 for k in g.slots
                   if uses[k] == 1 and k not in inputs
                   and (k[0] in ("t", "d") or k[0] == RefKind.SAVED.value))

    @functools.cached_property
    def _input_keys(self) -> frozenset[Any]:
        return frozenset(("t", t) for t in self.pcg.inputs)

    def run_fused_step(self, s: _State) -> float:
        """`run_step` for a runtime that fuses launches (RuntimeSpec.fusion > 0), as the
        executor's FusionQueue does: consecutive launches on the same devices collect into one
        group, submitted (one launch: `issue` and `analysis` once) when a launch on other
        devices, a data movement between views, a blocking read or the end of the step comes;
        its steps run one after another in one task per device, and what it writes is ready
        when that task ends. Joining a group costs the host `fused_issue` per launch, a step
        its kernel plus `fused_step`."""
        sim, pcg = self.sim, self.pcg
        rt = sim.machine.runtime
        dev = sim.machine.device
        overhead = dev.launch_overhead
        record = s.intervals.append if s.record else None
        tasks = s.tasks
        pending: list[_Group] = []   # the group being collected (at most one)
        if self._uses_now:   # the step before formed the same groups: its counts hold
            self.group_uses, self._uses_now = self._uses_now, Counter()
        own = self._own_temporaries if sim.local_temporaries else (lambda g: 0)
        banks = sim.sum_banks

        def trace(devs: Sequence[int], start: float, end: float, name: str, phase: str) -> None:
            if tasks is not None and end > start:
                tasks.extend((d, start, end, name, phase) for d in devs)

        def busy_host(seconds: float) -> float:
            trace([-1], s.host, s.host + seconds, "", "host")
            if record and seconds > 0:
                record((s.host, s.host + seconds))
            s.host += seconds
            s.host_busy += seconds
            return s.host

        def submit(launches: int, extra: float = 0.0) -> float:
            """`launches` launches of their own issued and analysed (`extra` seconds of analysis
            besides): when their tasks may start."""
            busy_host(launches * rt.issue)
            s.launches += launches
            work = launches * rt.analysis + extra
            begin = max(s.util, s.host)
            s.util = begin + work
            s.util_busy += work
            if record and work > 0:
                record((begin, s.util))
            return s.util

        def flush() -> float:
            """Submit the group being collected; when its task ends (0.0: none was)."""
            if not pending:
                return 0.0
            g = pending.pop()
            points = len(g.devs)
            self._uses_now.update(g.slots)
            # small weight gradients are summed in a bank (one store the task
            # binds for all of them: GraphExecutor._banked), not by Legion's reductions
            banked = ({r for r in g.reds if r[0] == _GRAD_WEIGHT}
                      if banks and sim._partials() else set())
            extra = max(len(g.slots) - own(g) - 3 - len(banked) + bool(banked), 0)
            busy_host(rt.issue_store * extra)   # each store added to the task submitted
            first = submit(1, (rt.analysis_store * extra
                               + rt.analysis_reduction * (len(g.reds) - len(banked))) * points)
            entry = overhead + rt.task_store * extra
            length = entry + sum(step[0] for step in g.steps)
            begin = s.start(s.compute_free, g.devs, max(g.ready, first), length)
            t = begin + entry
            waited = set()
            for seconds, name, phase, _done in g.steps:
                trace(g.devs, t, t + seconds, name, phase)
                if name:
                    br = s.breakdown.setdefault(name, OpBreakdown())
                    br.compute += seconds
                    if (name, phase) not in waited:   # the group's wait, once per operator pass
                        waited.add((name, phase))
                        br.waited += max(0.0, begin - g.ready)
                t += seconds
            s.take(s.compute_free, g.devs, begin, t)
            for d in g.devs:
                s.busy[d] += t - begin
                if record:
                    record((begin, t))
            for _seconds, name, _phase, done in g.steps:
                if name:
                    br = s.breakdown[name]
                    br.end = max(br.end, t)
                if done is not None:
                    done(t)
            return t

        def join(devs: Sequence[int], launches: int, seconds: float,
                 ready_at: Callable[[], float], name: str, phase: str,
                 done: Callable[[float], None] | None = None,
                 slots: frozenset[Any] = frozenset(), reds: frozenset[Any] = frozenset()
                 ) -> None:
            """`launches` launches whose kernels take `seconds` on each of `devs` join the group
            being collected, or a new one; `ready_at` (asked once the group is known: a
            producer in a group just submitted has its time then) is when their inputs are."""
            key = tuple(devs)
            if pending and (pending[0].devs != key
                            or pending[0].launches + launches > rt.fusion):
                flush()
            if not pending:
                pending.append(_Group(key))
            g = pending[0]
            g.launches += launches
            g.ready = max(g.ready, ready_at())
            g.steps.append((seconds + launches * rt.fused_step, name, phase, done))
            g.slots |= slots
            if len(devs) > 1:
                g.reds |= reds
            busy_host(launches * rt.fused_issue)

        def split(devs: Sequence[int], launches: int, seconds: float,
                  ready_at: Callable[[], float], name: str, phase: str,
                  done: Callable[[float], None] | None, barriers: int, settle: bool,
                  slots: frozenset[Any] = frozenset(), reds: frozenset[Any] = frozenset()
                  ) -> None:
            """`join`, for an operator's launches of which `barriers` read a sum the ones
            before added into over its points: the group ends there, the rest starts a new
            group once every point is done, and with `settle` the partial sums are added first
            by a task of their own (the executor's FusionQueue, GraphExecutor._settle), else
            Legion folds the points' copies of the (small) sum first (`fold` latency each)."""
            if sim.gathers(devs):
                # every point keeps its own sums (partial sums, no Legion reduction) and the
                # readers get them inside the task: one group, a meeting per read
                reds = frozenset(r for r in reds if r[0] == _GRAD_WEIGHT)
                join(devs, launches, seconds + max(barriers, 0) * (rt.gather or 0.0), ready_at,
                     name, phase, done, slots, reds)
                return
            if barriers <= 0 or launches <= 1:
                join(devs, launches, seconds, ready_at, name, phase, done, slots, reds)
                return
            parts = min(barriers, launches - 1) + 1
            each = launches // parts
            for k in range(parts):
                n = each if k < parts - 1 else launches - each * (parts - 1)
                join(devs, n, seconds * n / launches, ready_at, name, phase,
                     done if k == parts - 1 else None, slots, reds)
                if k < parts - 1:
                    end = flush()
                    if settle:
                        join(devs, 1, 0.0, lambda end=end: end, name, phase)
                        end = flush()
                    elif rt.fold is not None:   # Legion folds each point's copy of the sum
                        end += rt.fold.latency * (len(devs) - 1)
                    ready_at = lambda end=end: end

        def move(item: Any, start: float) -> float:
            devs = sorted(set(item.src + item.devs))
            busy = item.comm - item.delay     # (the latency is a delay, no thread's work)
            end = s.start(s.net_free, devs, start, busy) + busy
            s.take(s.net_free, devs, end - busy, end)
            if record and busy > 0:
                record((end - busy, end))
            s.moved += busy
            end += item.delay
            _charge(s.breakdown.setdefault(_owner(item.pnode), OpBreakdown()), item.comm,
                    item.link, "moves")
            return end

        def set_all(table: dict[int, float], keys: Sequence[int]) -> Callable[[float], None]:
            def done(end: float) -> None:
                for t in keys:
                    table[t] = max(table.get(t, 0.0), end)
            return done

        submit(self.feeds)
        fed = s.host
        # per micro-batch (one unpipelined): when each tensor, and each gradient, is ready
        readys: list[dict[int, float]] = [dict.fromkeys(pcg.inputs, fed)
                                          for _ in range(self.micro_batches)]
        grad_readys: list[dict[int, float]] = [{} for _ in range(self.micro_batches)]
        # operators with weights, in the order the backward passes first reach them, and when
        # their gradients are complete (every micro-batch's added in)
        updates: list[_Node] = []
        grads_end: dict[int, float] = {}

        def forward(items: Sequence[_Node], ready: dict[int, float]) -> None:
            for item in items:
                node = item.pnode
                inputs_at = (lambda node=node: max((ready.get(t, 0.0) for t in node.inputs),
                                                   default=0.0))
                if item.moves:
                    flush()   # the consumer reads other tiles: a group of its own
                    end = move(item, inputs_at()) if item.comm else inputs_at()
                    for t in node.outputs:
                        ready[t] = end
                    if item.settle:   # partial sums added into the store before its reader
                        join(item.src, 1, item.settle, lambda end=end: end,
                             _owner(node), "forward", set_all(ready, node.outputs))
                    continue
                c = item.cost
                assert c is not None
                if item.fills:
                    submit(item.fills)   # Legate fills of fresh stores: not tasks of the queue
                keys = [key for key, _ in item.weights]
                split(item.devs, c.launches_forward, c.kernels(overhead)[0] + item.fill_time,
                      lambda f=inputs_at, keys=keys: max([f()] + [s.weight_ready.get(k, 0.0)
                                                                for k in keys]),
                      node.name, "forward", set_all(ready, node.outputs), *item.barriers[0],
                      item.slots[0], item.reds[0])

        def objective(ready: dict[int, float], grad_ready: dict[int, float]) -> None:
            """The loss (and metrics) of each model output, on the loss's devices."""
            for produced, comm, loss, devs in self.objectives:
                launches = 1 + self.sim.metrics
                t0: Callable[[], float] = lambda p=produced: ready.get(p, 0.0)
                if comm:
                    flush()
                    at = max([t0()] + [s.net_free[d] for d in devs]) + comm
                    for d in devs:
                        s.net_free[d] = at
                    s.moved += 2 * comm   # there, and the gradient back
                    t0 = lambda at=at: at

                def objective_done(end: float, produced: int = produced,
                                   comm: float = comm) -> None:
                    grad_ready[produced] = end + comm
                join(devs, launches, max(loss - overhead, 0.0) * launches, t0,
                     "(loss and metrics)", "loss", objective_done)

        def backward(items: Sequence[_Node], grad_ready: dict[int, float]) -> None:
            """In reverse; gradients flow from consumers to producers."""
            for item in reversed(items):
                if not item.backward:
                    continue
                node = item.pnode
                outputs_at = (lambda node=node: max((grad_ready.get(t, 0.0)
                                                     for t in node.outputs), default=0.0))
                if item.moves:
                    flush()
                    end = move(item, outputs_at()) if item.comm else outputs_at()
                    for t in node.inputs:
                        grad_ready[t] = max(grad_ready.get(t, 0.0), end)
                    continue
                c = item.cost
                assert c is not None

                def backward_done(end: float, item: _Node = item) -> None:
                    for t in item.pnode.inputs:
                        grad_ready[t] = max(grad_ready.get(t, 0.0), end)
                    grads_end[item.pnode.id] = max(grads_end.get(item.pnode.id, end), end)
                split(item.devs, c.launches_backward, c.kernels(overhead)[1], outputs_at,
                      node.name, "backward", None if item.accumulates else backward_done,
                      *item.barriers[1], item.slots[1], item.reds[1])
                if item.accumulates:
                    # every further consumer's part added into the gradient (glue_of)
                    join(self.glue_of(item), item.accumulates,
                         max(item.acc_time - item.accumulates * overhead, 0.0), lambda: 0.0,
                         node.name, "backward", backward_done)
                if item.weights and item.pnode.id not in seen:
                    seen.add(item.pnode.id)
                    updates.append(item)

        seen: set[int] = set()
        self._run_passes(forward, objective, backward, readys, grad_readys)
        # gradient sums and optimizer updates: the update reads a summed gradient, which
        # starts a group of its own (FusionQueue), but on one point, whose sum is its own (a
        # read-write there: fusion._combine); the updates then group by devices
        if pending and len(pending[0].devs) > 1:
            flush()
        # banked gradients (small, summed over several points) are added into
        # their stores first, all together, on the first processor of their sums: a task of
        # its own (GraphExecutor._settle_bank)
        bank = [(item, key, ws) for item in reversed(updates) for key, ws in item.weights
                if banks and key not in item.sparse and sim.grad_partials(ws, item.devs)
                and ws.logical().num_elements() < PARTIAL_SUMS_MIN]
        banked = {key for _item, key, _ws in bank}
        settled = 0.0   # when the task adding them ends
        if bank:
            flush()
            first_dev = bank[0][0].devs[:1]
            ready = max(grads_end.get(item.pnode.id, 0.0) + sim.partials_fetch(ws, item.devs)
                        for item, _k, ws in bank)
            for item, key, ws in bank:
                join(first_dev, 1, sim.settle_time(ws.copy_degree, ws.num_bytes(), 1),
                     lambda ready=ready: ready, "", "update", None,
                     frozenset({_node_store(RefKind.GRAD_WEIGHT, *key), ("bank",)}))
            settled = flush()
        # gradient sums over the links: each once its gradient is done, in that order (as in
        # run_step)
        sums = [(item, key) for item in updates for key, ws in item.weights
                if item.syncs[key].seconds and key not in item.sparse and key not in banked
                and not sim.grad_partials(ws, item.devs)]
        if sums:
            flush()   # (the backward's groups, whose ends the sums wait for)
        sums.sort(key=lambda u: grads_end.get(u[0].pnode.id, 0.0))
        sync_ends: dict[Any, float] = {}
        for item, key in sums:
            sync, latency = item.syncs[key].seconds, item.syncs[key].latency
            # the links are busy with its bytes only (on a collective runtime, maybe earlier)
            begin = s.start(s.net_free, item.devs, grads_end.get(item.pnode.id, 0.0),
                            sync - latency)
            s.take(s.net_free, item.devs, begin, begin + sync - latency)
            sync_ends[key] = begin + sync
            s.moved += sync - latency   # (a delay is no work)
            _charge(s.breakdown.setdefault(item.pnode.name, OpBreakdown()), sync,
                    item.syncs[key].link, "grads")
        for item in reversed(updates):
            name = item.pnode.name
            s.breakdown.setdefault(name, OpBreakdown())
            for key, ws in item.weights:
                at = grads_end.get(item.pnode.id, 0.0)
                points = sim.update_points(ws, len(item.devs))
                devs = item.devs[:points]
                if key in item.sparse:
                    pass   # the update reads the step's indices and output gradient
                elif key in banked:
                    at = max(at, settled)
                elif sim.grad_partials(ws, item.devs):
                    # the replicas' partial sums added into the gradient, split by rows over
                    # the operator's points, in the update's group
                    settle = sim.settle_time(ws.copy_degree, ws.num_bytes(), len(item.devs))
                    at += sim.partials_fetch(ws, item.devs)
                    join(item.devs, 1, settle, lambda at=at: at, name, "update")
                else:
                    at = sync_ends.get(key, at)
                upd = item.update_time(sim, key, ws, points) * -(-points // max(len(devs), 1))
                kernel = max(upd - overhead * -(-points // max(len(devs), 1)), 0.0)

                def updated(end: float, key: Any = key) -> None:
                    s.weight_ready[key] = end
                join(devs, 1, kernel, lambda at=at: at, name, "update", updated,
                     frozenset({_node_store(RefKind.WEIGHT, *key),
                                _node_store(RefKind.GRAD_WEIGHT, *key)}))
        # sums exchanged inside the forward's task are added into their stores before the
        # state updates read them, all together (GraphExecutor._update: settle_all)
        for item in self.nodes:
            if item.state_launches and item.barriers[0][0] and sim.gathers(item.devs):
                join(item.devs, 1, 0.0, lambda: 0.0, "", "update")
        for item in self.nodes:
            if item.state_launches:
                join(item.devs, item.state_launches, 0.0, lambda: 0.0, "", "update")
        flush()
        return self._end_step(s)


def _fit(gaps: list[tuple[float, float]], free: float, t: float, duration: float) -> float:
    """The earliest start >= t of `duration` seconds in one of the idle periods `gaps` (sorted,
    disjoint) of a device whose last task ends at `free`, or after that task."""
    for k in range(max(bisect.bisect_right(gaps, (t, math.inf)) - 1, 0), len(gaps)):
        a, b = gaps[k]
        begin = a if a > t else t
        if b - begin >= duration:
            return begin
    return max(t, free)


def _shared_by_points(arg: Any, split_axes: set[str]) -> bool:
    """Whether the points of a launch over `split_axes` (those of degree > 1) share pieces of
    `arg`'s store: its split misses one of them (what a point adds in there, others add to)."""
    return bool(split_axes - set(arg.split))


@functools.lru_cache(maxsize=4096)
def _barriers(op: Operator, ins: tuple[TensorShape, ...], needs: tuple[bool, ...],
              degrees: tuple[tuple[str, int], ...]) -> tuple[tuple[int, bool], tuple[int, bool]]:
    """Per pass (forward, backward): how many of the operator's launches read a store an
    earlier launch of the same pass adds into (Role.SUM: batch statistics and their gradient
    sums) whole, over points that share its pieces (its split misses an axis of degree > 1),
    and whether one such store has PARTIAL_SUMS_MIN elements or more. Such a read needs every
    point's sum: the fused group ends before it. A sum each point makes in a piece of its own
    is read in the same task (executor.fusion.owns_piece)."""
    sizes = {saved(sv.name): sv.shape.num_elements() for sv in op.saved(list(ins))}
    split_axes = {a for a, d in degrees if d > 1}

    def count(launches: Sequence[Any]) -> tuple[int, bool]:
        summed: set[Any] = set()
        n, big = 0, False
        for launch in launches:
            reads = {launch.args[name].ref for name, role in launch.kernel.stores
                     if role in (Role.INPUT, Role.INOUT)}
            if reads & summed:
                n += 1
                big = big or any(sizes.get(r, 0) >= PARTIAL_SUMS_MIN for r in reads & summed)
                summed.clear()
            summed |= {launch.args[name].ref for name, role in launch.kernel.stores
                       if role is Role.SUM and _shared_by_points(launch.args[name], split_axes)}
        return n, big
    return count(op.forward(list(ins), True)), count(op.backward(list(ins), list(needs)))


@functools.lru_cache(maxsize=4096)
def _local_stores(op: Operator, ins: tuple[TensorShape, ...], needs: tuple[bool, ...],
                  degrees: tuple[tuple[str, int], ...]
                  ) -> tuple[tuple[frozenset[Ref], frozenset[Ref]], tuple[frozenset[Ref],
                                                                         frozenset[Ref]]]:
    """Per pass (forward, backward): the refs the operator's launches bind, and those that
    several points ADD-reduce into whole (a Sum, or an output whose split misses a launch axis
    of degree > 1) with fewer than PARTIAL_SUMS_MIN elements: bigger sums the executor keeps
    as partial sums, one piece per point, not as Legion reductions."""
    split_axes = {a for a, d in degrees if d > 1}
    sizes = {saved(sv.name): sv.shape.num_elements() for sv in op.saved(list(ins))}
    for w in op.weights(list(ins)):
        sizes[Ref(RefKind.WEIGHT, w.name)] = sizes[Ref(RefKind.GRAD_WEIGHT, w.name)] = (
            w.shape.num_elements())

    def scan(launches: Sequence[Any]) -> tuple[frozenset[Ref], frozenset[Ref]]:
        bound: set[Ref] = set()
        reduced: set[Ref] = set()
        for launch in launches:
            for name, role in launch.kernel.stores:
                arg = launch.args[name]
                bound.add(arg.ref)
                writes = role in (Role.SUM, Role.OUTPUT, Role.INOUT)
                if (writes and _shared_by_points(arg, split_axes)
                        and (role is Role.SUM or arg.ref.kind is RefKind.GRAD_WEIGHT)
                        and sizes.get(arg.ref, PARTIAL_SUMS_MIN) < PARTIAL_SUMS_MIN):
                    reduced.add(arg.ref)
        return frozenset(bound), frozenset(reduced)

    fwd = scan(op.forward(list(ins), True))
    bwd = scan(op.backward(list(ins), list(needs)))
    return (fwd[0], bwd[0]), (fwd[1], bwd[1])


def own_stores(op: Operator, ins: tuple[TensorShape, ...], needs: tuple[bool, ...],
               degrees: tuple[tuple[str, int], ...]) -> tuple[int, int]:
    """(forward, backward): how many stores the operator's launches add to a fused task of a
    whole pass: all they bind but the inputs of the forward and the output gradients of the
    backward (those its producer's and its consumer's launches bind). What the DP charges
    `RuntimeSpec.task_store` for, where the simulator counts each group's stores."""
    (fb, bb), _ = _local_stores(op, ins, needs, degrees)
    return (sum(r.kind is not RefKind.INPUT for r in fb),
            sum(r.kind is not RefKind.GRAD_OUTPUT for r in bb))


_GRAD_WEIGHT = RefKind.GRAD_WEIGHT.value


def _node_store(kind: RefKind, gid: int, key: Any) -> tuple[Any, ...]:
    """How the step names a store of one node's own (a weight, its gradient, a saved product)."""
    return (kind.value, gid, key)


def _stores(op: Operator, ins: tuple[TensorShape, ...], needs: tuple[bool, ...],
            degrees: tuple[tuple[str, int], ...], gid: int, inputs: tuple[int, ...],
            outputs: tuple[int, ...]
            ) -> tuple[tuple[frozenset[Any], frozenset[Any]],
                       tuple[frozenset[Any], frozenset[Any]]]:
    """`_local_stores` with each ref named as the whole step names its store: an input or
    output by its tensor (the producer's output is the consumer's input), a gradient by its
    tensor's, weights and saved products by their node."""
    def key(r: Ref) -> Any:
        k = r.kind
        if k is RefKind.INPUT or k is RefKind.GRAD_INPUT:
            t = inputs[r.key] if isinstance(r.key, int) and r.key < len(inputs) else r.key
            return ("t" if k is RefKind.INPUT else "d", t)
        if k is RefKind.OUTPUT or k is RefKind.GRAD_OUTPUT:
            t = outputs[r.key] if isinstance(r.key, int) and r.key < len(outputs) else r.key
            return ("t" if k is RefKind.OUTPUT else "d", t)
        return _node_store(k, gid, r.key)

    (fb, bb), (fr, br) = _local_stores(op, ins, needs, degrees)
    return ((frozenset(map(key, fb)), frozenset(map(key, bb))),
            (frozenset(map(key, fr)), frozenset(map(key, br))))


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


def _charge(br: OpBreakdown, seconds: float, link: str, what: str) -> None:
    """Communication of an operator, and the links it used for `what` ("moves", "grads")."""
    br.communication += seconds
    if seconds > 0 and link:
        setattr(br, what, join_links((getattr(br, what), link)))


def _owner(node: PNode) -> str:
    """The computation a parallel operator feeds (its name starts with the consumer's)."""
    return node.name.split(":")[0]


def _batch_of(pcg: PCG) -> int:
    return pcg.tensors[pcg.inputs[0]].sizes[0] if pcg.inputs else 1


def _master_ratio(ws: ParallelTensorShape) -> float:
    """Bytes of a weight's float32 master copy per byte of the weight as its operator reads it
    (2 for a bf16/fp16 operator's weight under mixed precision, else 1)."""
    return ws.dtype.master.itemsize / ws.dtype.itemsize
