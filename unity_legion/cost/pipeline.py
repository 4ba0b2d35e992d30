"""The price of a pipelined training step: the step's timeline as the executor issues it, plus
each stage's costs, stage-boundary transfers and activation memory per schedule. Pure Python.

The step is simulated on the Simulator's own event timelines (cost/simulator.py: host issue,
the runtime's analysis, fused groups, per-device compute and network timelines, reductions,
time-slicing of shared cores) for the PCG lifted at the micro-batch size, with the passes in
the order the executor's PipelineRunner issues them (executor/pipeline.py; a `Staging`):

- the inputs and targets are attached once per step (the micro-batches are row slices of them);
- per slot of pcg.pipeline.schedule_order, one stage's forward or backward launches over one
  micro-batch, issued by the one host thread (each micro-batch has its own activations); the
  loss of a micro-batch follows the forward of the stage making the model outputs, on that
  stage's glue devices (the first run of consecutive devices of the stage, as the executor's);
- a tensor made by one stage and read by a later one moves between their devices once per
  micro-batch (and its gradient back), on the network timelines (`boundary_transfer`: priced
  per device pair and node by cost/transfer.py; free between CPU processors of one rank, which
  share its memory); no launch: Legate moves it;
- weight gradients add up over the micro-batches (the backward kernels add into them), so the
  gradient sums and optimizer updates run once per step, after the last micro-batch's backward;
- the host reads every micro-batch's loss back and waits for the step (GraphExecutor._drain).

The bubble and the overlap of stages are thus what the timelines give: with S equal stages of
f + b seconds per micro-batch and nothing else, both schedules take (m + S - 1)(f + b), a
bubble of (S - 1)(f + b); issue time, per-launch overheads and boundary copies add where the
executor pays them, and a pipeline whose host issues launches more slowly than its stages
compute them is priced by its issue time. (On GPUs the host issues while the devices compute,
as in the unpipelined simulation; where they share the cores, they are time-sliced.)

Per stage (for explain and the search's memory limit): F_s / B_s its operators' forward /
backward time per micro-batch (one point of each launch), plus its parallel operators and, on
the last stage, the loss; R_s, once per step, its weights' gradient sums and updates. Memory per
device of stage s: its weights' pieces x (2 + optimizer slots) plus, per micro-batch in flight,
the activation pieces it keeps (outputs, replicated inputs; as Simulator.memory), averaged over
the stage's devices: GPipe keeps all m, 1F1B at most S - s (PipelineSpec.in_flight).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

from unity_legion.cost.layout import Layout, arg_layout
from unity_legion.cost.op_cost import priced
from unity_legion.operators.base import SAMPLE, Ref, RefKind
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.pcg.pcg import lift, node_shapes
from unity_legion.pcg.pipeline import PipelineSpec, schedule_order
from unity_legion.types import MachineView, OpConfig, TensorShape, effective_degree

if TYPE_CHECKING:
    from unity_legion.cost.simulator import Simulator


@dataclass(frozen=True)
class StageCost:
    name: str
    devices: tuple[int, ...]
    forward: float            # seconds per micro-batch
    backward: float
    sync: float               # seconds per step: gradient sums and updates of its weights
    weight_bytes: float       # per device (weights, gradients, optimizer slots)
    activation_bytes: float   # per device, one micro-batch
    in_flight: int            # micro-batches whose activations it holds at most

    @property
    def slot(self) -> float:
        return self.forward + self.backward

    @property
    def memory(self) -> float:
        return self.weight_bytes + self.in_flight * self.activation_bytes


@dataclass(frozen=True)
class PipelineCost:
    step_time: float                    # the simulated step (the timelines' period)
    bubble: float                       # seconds of the step the busiest device does not compute
    slot: float                         # the slowest stage's seconds per micro-batch
    transfers: tuple[float, ...]        # seconds per micro-batch across each boundary, one way
    stages: tuple[StageCost, ...]
    memory: list[float] = field(default_factory=list)   # bytes per device
    micro_batches: int = 1
    schedule: str = "1f1b"
    host: float = 0.0                   # seconds of the issuing thread per step
    launches: int = 0                   # launches the host issues per step
    work: float = 0.0                   # host + device + copy seconds per step

    @property
    def peak_memory(self) -> float:
        return max(self.memory) if self.memory else 0.0

    def fits(self, capacity: float) -> bool:
        return self.peak_memory <= capacity


def price_pipeline(sim: "Simulator", graph: ComputationGraph, batch: int,
                   configs: Mapping[int, OpConfig], spec: PipelineSpec,
                   outputs: Sequence[int] | None = None) -> PipelineCost:
    """Price one pipelined step of `graph` at `batch` samples with a placed config per node id
    (each on its stage's devices) on the simulator's machine (see the module doc)."""
    from unity_legion.cost.simulator import Staging, boundary_transfer

    stage_of = spec.assign(graph, batch)
    spec.check_configs(graph, stage_of, configs, batch)
    outs = list(outputs) if outputs is not None else graph.outputs
    micro = spec.micro_batch(batch)
    glue = [_glue(st.devices) for st in spec.stages]
    kind = sim.machine.device.kind
    configs = dict(configs)
    for g in graph.nodes:   # not configured: data-parallel over its stage's glue (the executor's)
        if g.id not in configs:
            devs = glue[stage_of[g.id]]
            k = effective_degree(micro, len(devs))
            configs[g.id] = OpConfig.of({SAMPLE: k} if k > 1 else {},
                                        MachineView.contiguous(kind, devs[0], k))
    pcg = lift(graph, micro, configs, outs)
    producers = [graph.tensors[t].producer for t in outs]
    staging = Staging(stage_of, tuple((sl.phase, sl.stage, sl.micro) for sl in schedule_order(
        spec.num_stages, spec.micro_batches, spec.schedule)), tuple(tuple(g) for g in glue),
        max((stage_of[p] for p in producers if p is not None), default=0), spec.micro_batches)
    timeline = sim.simulate_pcg(graph, pcg, staging)
    shapes = graph.bind_batch(micro)
    dev = sim.machine.device
    S = spec.num_stages
    fwd, bwd, sync = [0.0] * S, [0.0] * S, [0.0] * S
    sync_delay = [0.0] * S   # the gradient sums' latency, overlapped (Transfer.latency)
    wbytes, abytes = [0.0] * S, [0.0] * S
    req = _needs_grad(graph, shapes)
    consumed = {t for g in graph.nodes for t in g.inputs}
    gnodes = {g.id: g for g in graph.nodes}
    by_name = {g.name: g for g in graph.nodes}
    devices_of: dict[int, list[int]] = {}
    # the executor does not gather model outputs: the loss reads them where they are made
    skipped = {n.id for n in pcg.nodes
               if n.is_parallel and any(t in pcg.outputs for t in n.outputs)}
    per_weight = 2 + sim.optimizer_slots
    for node in pcg.nodes:
        if node.id in skipped:
            continue
        if node.is_parallel:
            owner = by_name.get(node.name.split(":")[0])
            if owner is None:
                continue
            s = stage_of[owner.id]
            dst = _devs(configs[owner.id])
            src = devices_of.get(node.inputs[0], dst[:1])
            shape = pcg.tensors[node.inputs[0]]
            t = sim.comm_time(node.op, shape, sorted(set(src + dst)))  # type: ignore[arg-type]
            fwd[s] += t
            if any(req.get(gt, False) for gt in owner.inputs):
                bwd[s] += t
            for o in node.outputs:
                devices_of[o] = dst
            continue
        g = gnodes[node.source]  # type: ignore[index]
        s = stage_of[g.id]
        cfg = node.config
        assert cfg is not None
        devs = _devs(cfg)
        ins = [shapes[t] for t in g.inputs]
        c = priced(sim.cost, g.op, ins, cfg, dev, [req.get(t, False) for t in g.inputs])
        fill = 0.0
        if not c.fills_included:
            fill = sum(sim.stream_time(pcg.tensors[t].piece_bytes()) for t in node.outputs
                       if pcg.tensors[t].sum_degree > 1)
        fwd[s] += c.forward + fill
        if any(req.get(t, False) or t not in consumed for t in g.outputs):
            bwd[s] += c.backward
        for (nid, wname), ws in pcg.weights.items():
            if nid != g.id:
                continue
            wbytes_node = ws.piece_bytes() * per_weight
            # a weight's pieces sit on its operator's devices: spread over the stage's (an average)
            wbytes[s] += wbytes_node * len(devs) / len(spec.stages[s].devices)
            if any(w.name == wname and w.trainable for w in g.weights):
                # over the devices holding each tile's copies (cost/collectives.py)
                summed = sim.weight_sync(arg_layout(g.op, ins, cfg, Ref(RefKind.WEIGHT, wname),
                                                    ws))
                sync[s] += summed.seconds - summed.latency
                sync_delay[s] = max(sync_delay[s], summed.latency)
                points = sim.update_points(ws, len(devs))
                sync[s] += sim.update_time(ws, points) * -(-points // max(len(devs[:points]), 1))
        held = sum(pcg.tensors[t].piece_bytes() for t in node.outputs)
        held += sum(pcg.tensors[t].piece_bytes() for t in node.inputs
                    if pcg.tensors[t].copy_degree > 1)
        abytes[s] += held * len(devs) / len(spec.stages[s].devices)
        for o in node.outputs:
            devices_of[o] = devs
    # the loss on the last stage, per micro-batch (reading each model output split by samples)
    last = spec.stages[-1].devices
    for t in outs:
        fwd[-1] += sim.stream_time(3 * shapes[t].num_bytes(), len(last))
    transfers = [0.0] * (S - 1)
    for t, stage, layout in _stage_inputs(graph, stage_of, configs, shapes):
        p = gnodes[graph.tensors[t].producer]  # type: ignore[index]
        pin = [shapes[u] for u in p.inputs]
        made = node_shapes(p.op, pin, configs[p.id]).outputs[p.outputs.index(t)]
        src = arg_layout(p.op, pin, configs[p.id], Ref(RefKind.OUTPUT, p.outputs.index(t)), made)
        # priced as the timeline's moves; a tensor that skips stages is charged to the
        # boundary into its reader's stage
        transfers[stage - 1] += boundary_transfer(sim, src, layout).seconds
    sync = [t + d for t, d in zip(sync, sync_delay)]
    stages = tuple(StageCost(st.name, st.devices, fwd[i], bwd[i], sync[i], wbytes[i], abytes[i],
                             spec.in_flight(i)) for i, st in enumerate(spec.stages))
    memory = [0.0] * sim.machine.num_devices
    for st in stages:
        for d in st.devices:
            if d < len(memory):
                memory[d] = st.memory
    busiest = max(timeline.busy, default=0.0)
    return PipelineCost(timeline.step_time, max(timeline.step_time - busiest, 0.0),
                        max(st.slot for st in stages), tuple(transfers), stages, memory,
                        spec.micro_batches, spec.schedule, timeline.host, timeline.launches,
                        timeline.work)


def _glue(devices: tuple[int, ...]) -> list[int]:
    """A stage's glue devices: the first run of consecutive devices (PipelineRunner.of)."""
    run = 1
    while run < len(devices) and devices[run] == devices[0] + run:
        run += 1
    return list(devices[:run])


def _stage_inputs(graph: ComputationGraph, stage_of: Mapping[int, int],
                  configs: Mapping[int, OpConfig], shapes: Mapping[int, TensorShape]
                  ) -> list[tuple[int, int, Layout]]:
    """(tensor, reading stage, the layout its first reader there wants) for every tensor made in
    an earlier stage: what crosses the boundaries once per micro-batch."""
    seen: set[tuple[int, int]] = set()
    out = []
    for n in graph.nodes:
        for i, t in enumerate(n.inputs):
            p = graph.tensors[t].producer
            s = stage_of[n.id]
            if p is None or stage_of[p] == s or (t, s) in seen:
                continue
            seen.add((t, s))
            ins = [shapes[u] for u in n.inputs]
            want = node_shapes(n.op, ins, configs[n.id]).inputs[i]
            out.append((t, s, arg_layout(n.op, ins, configs[n.id], Ref(RefKind.INPUT, i), want)))
    return out


def _devs(cfg: OpConfig) -> list[int]:
    return cfg.view.devices()[:cfg.num_points]


def _needs_grad(graph: ComputationGraph, shapes: Mapping[int, object]) -> dict[int, bool]:
    """Which tensors carry a gradient (some upstream weight is trainable; no input gradients),
    the executor's rule as the Simulator applies it."""
    req: dict[int, bool] = {t: False for t in graph.inputs}
    for g in graph.nodes:
        r = any(req.get(t, False) for t in g.inputs) or any(w.trainable for w in g.weights)
        for t in g.outputs:
            req[t] = r and shapes[t].dtype.is_float  # type: ignore[attr-defined]
    return req
