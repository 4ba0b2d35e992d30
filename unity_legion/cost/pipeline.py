"""The price of a pipelined training step: bubbles, stage-boundary transfers, per-stage gradient
sums and each stage's activation memory per schedule. Pure Python.

With S stages and m micro-batches (pcg/pipeline.py), stage s spends per micro-batch

    t_s = F_s + B_s

where F_s / B_s are its operators' forward / backward time at the micro-batch size (one point of
each launch, the Simulator's cost model), plus the parallel operators inside the stage, and the
loss for the last stage. Every micro-batch crosses boundary b (between stages b and b + 1) twice:
its activations forward and their gradients back, X_b each: from the producer's pieces to the
pieces the next stage's reader wants, priced per device pair and per node by the Simulator's
`transfer` (cost/transfer.py: NVLink inside a node, one NIC per device between nodes). Both
schedules keep the slowest stage busy for m slots and leave
S - 1 slots of bubble on the critical path (the first micro-batch filling the pipe, the last one
draining it), so

    step = (m + S - 1) x max_s t_s + 2 x sum_b X_b + max_s R_s

where R_s, once per step, sums each trainable weight's gradient over the copies inside stage s
(the Simulator's `weight_sync`: a hierarchical all-reduce over the devices holding each tile's
copies) and updates it. The bubble is
(S - 1) x max_s t_s. Unlike the Simulator's timelines this is an additive estimate: nothing
overlaps inside a slot (a pessimistic figure for a stage whose communication could hide).

Memory per device of stage s: its weights' pieces x (2 + optimizer slots) plus, per micro-batch
in flight, the activation pieces it keeps (outputs, replicated inputs; as Simulator.memory),
averaged over the stage's devices:
GPipe keeps all m, 1F1B at most S - s (PipelineSpec.in_flight).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

from unity_legion.cost.layout import Layout, arg_layout
from unity_legion.cost.op_cost import priced
from unity_legion.operators.base import Ref, RefKind
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.pcg.pcg import lift, node_shapes
from unity_legion.pcg.pipeline import PipelineSpec
from unity_legion.types import OpConfig, TensorShape

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
    step_time: float
    bubble: float                       # seconds of the critical path no stage's slot fills
    slot: float                         # the slowest stage's seconds per micro-batch
    transfers: tuple[float, ...]        # seconds per micro-batch across each boundary, one way
    stages: tuple[StageCost, ...]
    memory: list[float] = field(default_factory=list)   # bytes per device
    micro_batches: int = 1
    schedule: str = "1f1b"

    @property
    def peak_memory(self) -> float:
        return max(self.memory) if self.memory else 0.0

    def fits(self, capacity: float) -> bool:
        return self.peak_memory <= capacity


def step_time(slots: Sequence[float], transfers: Sequence[float], syncs: Sequence[float],
              micro_batches: int) -> tuple[float, float]:
    """(step seconds, bubble seconds) from per-stage slots, per-boundary one-way transfers and
    per-stage gradient sums (the module doc's formula)."""
    slot = max(slots)
    bubble = (len(slots) - 1) * slot
    return micro_batches * slot + bubble + 2 * sum(transfers) + max(syncs, default=0.0), bubble


def price_pipeline(sim: "Simulator", graph: ComputationGraph, batch: int,
                   configs: Mapping[int, OpConfig], spec: PipelineSpec,
                   outputs: Sequence[int] | None = None) -> PipelineCost:
    """Price one pipelined step of `graph` at `batch` samples with a placed config per node id
    (each on its stage's devices) on the simulator's machine (see the module doc)."""
    stage_of = spec.assign(graph, batch)
    spec.check_configs(graph, stage_of, configs, batch)
    outs = list(outputs) if outputs is not None else graph.outputs
    micro = spec.micro_batch(batch)
    pcg = lift(graph, micro, configs, outs)
    shapes = graph.bind_batch(micro)
    dev = sim.machine.device
    S = spec.num_stages
    fwd, bwd, sync = [0.0] * S, [0.0] * S, [0.0] * S
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
                sync[s] += sim.weight_sync(arg_layout(g.op, ins, cfg, Ref(RefKind.WEIGHT, wname),
                                                      ws)).seconds
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
        # priced per device pair and node (cost/transfer.py); a tensor that skips stages is
        # charged to the boundary into its reader's stage
        transfers[stage - 1] += sim.transfer(src, layout).seconds
    stages = tuple(StageCost(st.name, st.devices, fwd[i], bwd[i], sync[i], wbytes[i], abytes[i],
                             spec.in_flight(i)) for i, st in enumerate(spec.stages))
    total, bubble = step_time([st.slot for st in stages], transfers, sync, spec.micro_batches)
    memory = [0.0] * sim.machine.num_devices
    for st in stages:
        for d in st.devices:
            if d < len(memory):
                memory[d] = st.memory
    return PipelineCost(total, bubble, max(st.slot for st in stages), tuple(transfers), stages,
                        memory, spec.micro_batches, spec.schedule)


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
