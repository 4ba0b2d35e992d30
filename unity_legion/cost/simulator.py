"""Simulate one training iteration of a PCG on a machine model: step time, memory, breakdown.

The iteration becomes a task graph: each computation's forward on the devices of its machine
view, each parallel operator's data movement, the backward of both in reverse order, the
gradient synchronisation of every replicated weight (a ring all-reduce among its copies) and the
optimizer update. Tasks are scheduled in that (topological) order onto per-device compute
timelines and per-device network timelines: a task starts when its inputs are ready and its
resources are free, so communication overlaps computation wherever the dependencies allow.

Communication time: a parallel operator's bytes go over the slowest link it crosses (inside a
node or between nodes), spread over the devices that receive them; alpha-beta per message.
Memory per device: weights, gradients and optimizer slots of the pieces it holds, plus every
activation piece kept for the backward pass, plus replicated input copies (peak: the end of the
forward pass).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from unity_legion.cost.machine import LinkSpec, MachineModel
from unity_legion.cost.op_cost import AnalyticCost, CostModel, OpCost
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.pcg.parallel_ops import (Combine, FusedParallelOp, ParallelOp, Partition, Reduce,
                                           Replicate)
from unity_legion.pcg.parallel_tensor import ParallelTensorShape
from unity_legion.pcg.pcg import PCG, PNode, lift
from unity_legion.strategy.config import OpConfig


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

    @property
    def peak_memory(self) -> float:
        return max(self.memory) if self.memory else 0.0

    def idle(self, device: int) -> float:
        return self.step_time - self.busy[device]


class SimulationError(ValueError):
    """A strategy that cannot run on the machine model (too many devices, a bad view)."""


class Simulator:
    def __init__(self, machine: MachineModel, cost: CostModel | None = None,
                 optimizer_slots: int = 2) -> None:
        self.machine = machine
        self.cost = cost or AnalyticCost()
        self.optimizer_slots = optimizer_slots  # Adam keeps 2 slots per weight

    # ------------------------------------------------------------------ public
    def simulate(self, graph: ComputationGraph, batch: int, plan: Mapping[int, OpConfig],
                 outputs: Sequence[int] | None = None, default: OpConfig | None = None
                 ) -> SimResult:
        pcg = lift(graph, batch, plan, outputs, default)
        return self.simulate_pcg(graph, pcg)

    def simulate_pcg(self, graph: ComputationGraph, pcg: PCG) -> SimResult:
        m = self.machine
        dev = m.device
        n = m.num_devices
        for node in pcg.computations():
            lo, hi = node.config.view.span()  # type: ignore[union-attr]
            if hi > n:
                raise SimulationError(f"operator {node.name!r} uses devices [{lo}, {hi}) but "
                                      f"machine {m.name!r} has {n}")
        shapes = graph.bind_batch(_batch_of(pcg))
        compute_free = [0.0] * n
        net_free = [0.0] * n
        busy = [0.0] * n
        ready: dict[int, float] = {t: 0.0 for t in pcg.inputs}   # tensor -> time available
        devices_of: dict[int, list[int]] = {t: [0] for t in pcg.inputs}
        breakdown: dict[str, OpBreakdown] = {}
        costs: dict[int, OpCost] = {}
        comm_times: dict[int, float] = {}

        def run(devs: list[int], start: float, duration: float, timeline: list[float]) -> float:
            begin = max([start] + [timeline[d] for d in devs])
            for d in devs:
                timeline[d] = begin + duration
            return begin + duration

        # forward
        for node in pcg.nodes:
            start = max(ready[t] for t in node.inputs) if node.inputs else 0.0
            if node.is_parallel:
                src = devices_of[node.inputs[0]]
                dst = self._consumer_devices(pcg, node)
                t = self._comm_time(node.op, pcg.tensors[node.inputs[0]], src + dst)  # type: ignore[arg-type]
                comm_times[node.id] = t
                end = run(sorted(set(src + dst)), start, t, net_free)
                out_devs = dst
                br = breakdown.setdefault(_owner(node), OpBreakdown())
                br.communication += t
            else:
                devs = node.config.view.devices()[:node.config.num_points]  # type: ignore[union-attr]
                gnode = graph.nodes[node.source]  # type: ignore[index]
                c = self.cost.op_cost(gnode.op, [shapes[t] for t in gnode.inputs], node.config,
                                      dev)  # type: ignore[arg-type]
                costs[node.id] = c
                end = run(devs, start, c.forward, compute_free)
                for d in devs:
                    busy[d] += c.forward
                out_devs = devs
                br = breakdown.setdefault(node.name, OpBreakdown(start=end - c.forward))
                br.compute += c.forward
            for t in node.outputs:
                ready[t] = end
                devices_of[t] = out_devs
        forward_end = max(ready.values()) if ready else 0.0

        # backward, in reverse; gradients flow from consumers to producers
        grad_ready: dict[int, float] = {t: forward_end for t in pcg.outputs}
        for node in reversed(pcg.nodes):
            start = max((grad_ready.get(t, forward_end) for t in node.outputs), default=forward_end)
            if node.is_parallel:
                src = devices_of[node.outputs[0]]
                dst = devices_of[node.inputs[0]]
                t = comm_times[node.id]
                end = run(sorted(set(src + dst)), start, t, net_free)
                breakdown.setdefault(_owner(node), OpBreakdown()).communication += t
            else:
                devs = devices_of[node.outputs[0]] if node.outputs else [0]
                c = costs[node.id]
                end = run(devs, start, c.backward, compute_free)
                for d in devs:
                    busy[d] += c.backward
                br = breakdown[node.name]
                br.compute += c.backward
                # gradient sync of replicated weights, then the update
                for (nid, wname), ws in pcg.weights.items():
                    if nid != node.source:
                        continue
                    sync = self._allreduce_time(ws, devs)
                    sync_end = run(devs, end, sync, net_free) if sync else end
                    br.communication += sync
                    upd = self._update_time(ws)
                    upd_end = run(devs, sync_end, upd, compute_free)
                    for d in devs:
                        busy[d] += upd
                    br.compute += upd
                    br.end = max(br.end, upd_end)
                br.end = max(br.end, end)
            for t in node.inputs:
                grad_ready[t] = max(grad_ready.get(t, 0.0), end)
        step = max(compute_free + net_free)
        return SimResult(step, self._memory(graph, pcg, shapes), breakdown, busy)

    # ------------------------------------------------------------------ pieces
    def _consumer_devices(self, pcg: PCG, node: PNode) -> list[int]:
        out = node.outputs[0]
        for c in pcg.nodes:
            if out in c.inputs:
                if c.is_parallel:
                    return self._consumer_devices(pcg, c)
                return c.config.view.devices()[:c.config.num_points]  # type: ignore[union-attr]
        return [0]  # a model output: gathered where the loss runs

    def _link(self, devices: Sequence[int]) -> LinkSpec:
        nodes = {self.machine.node_of(d) for d in devices}
        return self.machine.intra if len(nodes) <= 1 else self.machine.inter

    def _comm_time(self, op: ParallelOp, shape: ParallelTensorShape, devices: Sequence[int]
                   ) -> float:
        link = self._link(devices)
        if len(set(devices)) <= 1:
            return 0.0  # every piece already on one device: a view, no transfer
        ops = op.ops if isinstance(op, FusedParallelOp) else (op,)
        total = 0.0
        for o in ops:
            out = o.infer(shape)
            if isinstance(o, (Partition, Replicate)):
                receivers = shape.num_pieces * (o.degree - 1)
            else:  # Combine, Reduce: each output piece receives k - 1 pieces
                receivers = out.num_pieces
            per_device = o.bytes_moved(shape) / max(receivers, 1)
            total += link.time(per_device)
            shape = out
        return total

    def _allreduce_time(self, ws: ParallelTensorShape, devices: Sequence[int]) -> float:
        c = ws.copy_degree
        if c <= 1:
            return 0.0
        link = self._link(devices)
        return 2 * (c - 1) * link.latency + 2 * (c - 1) / c * ws.piece_bytes() / link.bandwidth

    def _update_time(self, ws: ParallelTensorShape) -> float:
        dev = self.machine.device
        touched = ws.piece_bytes() * (3 + 2 * self.optimizer_slots)   # w, g, slots: read + write
        return dev.launch_overhead + touched / dev.mem_bandwidth

    def _memory(self, graph: ComputationGraph, pcg: PCG, shapes: Mapping[int, object]
                ) -> list[float]:
        mem: dict[int, float] = defaultdict(float)
        per_weight = 2 + self.optimizer_slots  # weight, gradient, slots
        for node in pcg.computations():
            devs = node.config.view.devices()[:node.config.num_points]  # type: ignore[union-attr]
            held = sum(pcg.tensors[t].piece_bytes() for t in node.outputs)
            held += sum(pcg.tensors[t].piece_bytes() for t in node.inputs
                        if pcg.tensors[t].copy_degree > 1)
            held += sum(ws.piece_bytes() * per_weight for (nid, _), ws in pcg.weights.items()
                        if nid == node.source)
            for d in devs:
                mem[d] += held
        return [mem[d] for d in range(self.machine.num_devices)]


def _owner(node: PNode) -> str:
    """The computation a parallel operator feeds (its name starts with the consumer's)."""
    return node.name.split(":")[0]


def _batch_of(pcg: PCG) -> int:
    return pcg.tensors[pcg.inputs[0]].sizes[0] if pcg.inputs else 1
