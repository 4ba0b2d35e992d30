"""The decomposed cost the machine-mapping DP minimises, built from the Simulator's own pieces.

For a plan (a placed OpConfig per node) the estimated step time is

    sum over nodes  unary(node, config)              compute fwd + bwd (+ zero-fills), gradient
                                                     all-reduce and optimizer update of its
                                                     trainable weights (the update over the
                                                     weight's tiles on the node's devices), the
                                                     transfer of graph inputs to it (from device 0)
                                                     and of model outputs to the loss (there and back)
  + sum over edges  pairwise(edge, producer config, consumer config)
                                                     the parallel ops `lift` inserts between the
                                                     producer's output and the consumer's input
                                                     (moved forward, and backward if it has a gradient)
  + constant                                         loss launches, gradient accumulations:
                                                     independent of the plan

with sums replaced by max where the DP splits the machine between parallel branches. Every term
is priced with Simulator.comm_time / grad_sync_time / update_time / stream_time and the cost
model's op_cost, as the simulator prices them; the simulator additionally overlaps communication
with computation, so its step time is usually lower. Memory per device of a node: its output
pieces, its replicated input pieces, its weights x (2 + optimizer slots) (as Simulator.memory).
Tables are memoised by (operator, input shapes, gradient flags; the resource's shape, and
resources' relative position), so identical layers (BERT's 24), the same layer on another part
of the machine, and the same layer in another graph (a MappingCache) share them.

With a collective library (Simulator.by_groups: the GPU presets) transfers and gradient sums are
priced as the simulator prices them, over the devices that exchange pieces: each candidate's
layouts (cost/layout.py) give an edge's price per pair of placed candidates
(Simulator.transfer: per device pair, hierarchically) and a weight's all-reduce over its copies
(Simulator.weight_sync); otherwise by the class of the devices involved (one, one node, several).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from unity_legion.cost.layout import Layout, arg_layout, spread, whole
from unity_legion.cost.machine import MachineModel
from unity_legion.cost.op_cost import AnalyticCost, CostModel, priced
from unity_legion.cost.simulator import Simulator, own_stores
from unity_legion.cost.transfer import priced_seconds, profile_key
from unity_legion.operators.base import SAMPLE, Ref, RefKind
from unity_legion.pcg.graph import ComputationGraph, Node
from unity_legion.pcg.parallel_ops import (FusedParallelOp, Partition, Reduce, Replicate,
                                          conversion, convertible)
from unity_legion.pcg.pcg import NodeShapes, node_shapes
from unity_legion.search.cache import MappingCache
from unity_legion.search.candidates import Resource, candidate_configs, place, shifted
from unity_legion.search.decompose import Edge, GraphIndex
from unity_legion.types import OpConfig, ParallelShapeError, ParallelTensorShape, effective_degree

INF = float("inf")


@dataclass(frozen=True, eq=False)
class _Local:
    """A node's candidates placed on a resource shape at device 0, and their geometry."""

    cfgs: tuple[OpConfig, ...]
    idx: np.ndarray          # index of each among the node's degree candidates
    start: np.ndarray        # first device
    single: np.ndarray       # one device
    mask: np.ndarray         # nodes used, as a bitmask


def _cost_identity(cost: CostModel) -> tuple:
    """What a cache's tables depend on in a cost model: an analytic one by its figures (its
    equality would compare its private memo, and a fresh but identical one per call is fine);
    any other (a measuring one, whose repr shows its changing counters) by identity."""
    if isinstance(cost, AnalyticCost):
        return ("analytic", tuple(sorted(cost.efficiency.items())), cost.memory_efficiency)
    return (type(cost).__qualname__, id(cost))


class MappingCost:
    def __init__(self, graph: ComputationGraph, index: GraphIndex, batch: int,
                 machine: MachineModel, cost: CostModel | None = None, device_type: str = "gpu",
                 allowed_axes: Callable[[Node], set[str] | None] | None = None,
                 optimizer_slots: int = 2, cache: MappingCache | None = None) -> None:
        self.graph, self.index, self.batch, self.machine = graph, index, batch, machine
        self.cost = cost or AnalyticCost()
        self.device_type = device_type
        self.allowed_axes = allowed_axes
        self.slots = optimizer_slots
        self.sim = Simulator(machine, self.cost, optimizer_slots)
        self.n = machine.num_devices
        self.per_node = machine.devices_per_node
        self.all_devs = list(range(self.n))
        self.shapes = graph.bind_batch(batch)
        self._req, self._trainable = self._gradients()
        consumed = {t for n in index.nodes for t in n.inputs}
        self._consumed = consumed
        self._out_set = set(index.outputs)
        self._in_set = set(graph.inputs)
        # structural tables live in the (possibly shared) cache; id-keyed ones here
        self.store = cache if cache is not None else MappingCache()
        self.store.bind((batch, machine, _cost_identity(self.cost), device_type,
                         optimizer_slots))
        self._kid: dict[int, int] = {}
        self._reads_input: dict[int, bool] = {}
        self._writes_output: dict[int, bool] = {}
        # collectives over the devices that take part (Simulator.by_groups): layouts interned
        # in the cache by (operator shapes key, degrees, view, argument), transfers priced once
        # per pair of layouts; per placed candidates of a node on a resource, their layout ids
        self.by_groups = self.sim.by_groups
        self._end_ids: dict[tuple, np.ndarray] = {}
        self._skid: dict[int, int] = {}
        self._placed: dict[tuple, list[OpConfig]] = {}
        self._devinfo: dict[OpConfig, tuple[list[int], frozenset[int], frozenset[int]]] = {}
        self._steps_ok: bool | None = None
        self._steps_checked = 0

    # ------------------------------------------------------------------ graph facts
    def _gradients(self) -> tuple[dict[int, bool], dict[int, set[str]]]:
        """Which tensors get a gradient (the simulator's and executor's rule)."""
        req: dict[int, bool] = {t: False for t in self.graph.inputs}
        trainable: dict[int, set[str]] = {}
        for g in self.index.nodes:
            trainable[g.id] = {ws.name for ws in g.weights if ws.trainable}
            r = any(req.get(t, False) for t in g.inputs) or bool(trainable[g.id])
            for t in g.outputs:
                req[t] = r and self.shapes[t].dtype.is_float
        return req, trainable

    def inputs_of(self, node: Node) -> list:
        return [self.shapes[t] for t in node.inputs]

    def node_key(self, nid: int) -> int:
        """What a node's costs depend on (identical layers, in any graph, share it), interned
        to an int so that table keys hash cheaply."""
        k = self._kid.get(nid)
        if k is None:
            n = self.index.by_id[nid]
            axes = self.allowed_axes(n) if self.allowed_axes else None
            full = (n.op, tuple(self.inputs_of(n)),
                    tuple(self._req.get(t, False) for t in n.inputs),
                    self._backward(n), tuple(sorted(self._trainable.get(nid, ()))),
                    tuple(t in self._in_set for t in n.inputs),
                    tuple(t in self._out_set for t in n.outputs),
                    None if axes is None else tuple(sorted(axes)))
            k = self._kid[nid] = self.store.key_id(full)
            self._reads_input[nid] = any(full[5])
            self._writes_output[nid] = any(full[6])
            self._skid[nid] = self.store.key_id(("shapes",) + full[:2])
        return k

    def reads_input(self, nid: int) -> bool:
        self.node_key(nid)
        return self._reads_input[nid]

    def where_class(self, nid: int, res: Resource) -> tuple:
        """The part of a resource a node's unary cost depends on: its shape, and for a node
        reading a graph input (which arrives on device 0) whether it starts at node 0 / device 0."""
        if self.by_groups and (self.reads_input(nid) or self._writes_output[nid]):
            # moved from device 0 / to every device: the exact place matters
            return (res.nodes, res.devs, res.node0, res.dev0)
        if self.reads_input(nid):
            return (res.nodes, res.devs, res.node0 == 0, res.dev0 == 0)
        return (res.nodes, res.devs)

    def _backward(self, n: Node) -> bool:
        return any(self._req.get(t, False) or t not in self._consumed for t in n.outputs)

    # ------------------------------------------------------------------ candidates
    def degrees(self, nid: int) -> list[OpConfig]:
        key = self.node_key(nid)
        hit = self.store.degrees.get(key)
        if hit is None:
            n = self.index.by_id[nid]
            axes = self.allowed_axes(n) if self.allowed_axes else None
            shapes: dict = {}
            hit = self.store.degrees[key] = candidate_configs(
                n, self.inputs_of(n), self.n, self.device_type, axes, self.per_node, shapes)
            self.node_key(nid)
            for deg, ns in shapes.items():     # checked for legality already: keep them
                self.store.node_shapes.setdefault((self._skid[nid], deg), ns)
        return hit

    def local(self, nid: int, res: Resource) -> _Local:
        """The node's candidates placed on a resource of `res`'s shape at device 0 (placement
        depends on the shape only; elsewhere the views move by `res.offset`)."""
        key = (self.node_key(nid), res.nodes, res.devs)
        hit = self.store.local.get(key)
        if hit is None:
            origin = Resource(0, res.nodes, 0, res.devs, res.per_node)
            idx, cfgs = [], []
            for i, d in enumerate(self.degrees(nid)):
                c = place(d, origin)
                if c is not None:
                    idx.append(i)
                    cfgs.append(c)
            info = [self.devinfo(c) for c in cfgs]
            hit = self.store.local[key] = _Local(
                tuple(cfgs), np.array(idx, dtype=np.int64),
                np.array([c.view.start for c in cfgs], dtype=np.int64),
                np.array([len(i[1]) == 1 for i in info], dtype=bool),
                # node bitmasks (Python ints beyond 62 nodes, so that shifting cannot overflow)
                np.array([sum(1 << m for m in i[2]) for i in info],
                         dtype=np.int64 if self.machine.nodes <= 62 else object))
        return hit

    def count(self, nid: int, res: Resource) -> int:
        return len(self.local(nid, res).cfgs)

    def placed(self, nid: int, res: Resource) -> list[OpConfig]:
        """The node's candidates placed on `res` (the DP's domain of the node there)."""
        key = (self.node_key(nid), res)
        hit = self._placed.get(key)
        if hit is None:
            off = res.offset
            hit = self._placed[key] = [shifted(c, off) for c in self.local(nid, res).cfgs]
        return hit

    def node_shapes(self, nid: int, cfg: OpConfig) -> NodeShapes | None:
        self.node_key(nid)
        key = (self._skid[nid], cfg.degrees)     # shapes depend on the operator and inputs only
        tab = self.store.node_shapes
        if key not in tab:
            n = self.index.by_id[nid]
            try:
                tab[key] = node_shapes(n.op, self.inputs_of(n), cfg)
            except (ParallelShapeError, ValueError):
                tab[key] = None
        return tab[key]

    def devinfo(self, cfg: OpConfig) -> tuple[list[int], frozenset[int], frozenset[int]]:
        hit = self._devinfo.get(cfg)
        if hit is None:
            devs = cfg.view.devices()[:max(cfg.num_points, 1)]
            hit = self._devinfo[cfg] = (devs, frozenset(devs),
                                        frozenset(self.machine.node_of(d) for d in devs))
        return hit

    # ------------------------------------------------------------------ unary
    def unary(self, nid: int, res: Resource) -> tuple[np.ndarray, np.ndarray]:
        """(seconds, bytes per device) of each placed candidate of the node on `res`."""
        key = (self.node_key(nid), self.where_class(nid, res))
        tab = self.store.unary
        hit = tab.get(key)
        if hit is None:
            self.store.stats.table_misses += 1
            pairs = [self.unary_one(nid, shifted(c, res.offset))
                     for c in self.local(nid, res).cfgs]
            hit = tab[key] = (np.array([p[0] for p in pairs], dtype=float),
                              np.array([p[1] for p in pairs], dtype=float))
        else:
            self.store.stats.table_hits += 1
        return hit

    def unary_one(self, nid: int, cfg: OpConfig) -> tuple[float, float]:
        """(seconds, bytes per device) of one placed candidate. Memoised by what it depends
        on: degrees, whether the view spans nodes (the gradient all-reduce's link), and for a
        graph-input reader whether it is device 0 alone / inside node 0."""
        devs, _, nodes = self.devinfo(cfg)
        where: tuple = (len(nodes) > 1,)
        if self.by_groups:
            # the groups follow from the view: invariant under moving it by whole nodes, except
            # for a node moving graph inputs or model outputs
            v = cfg.view
            io = self.reads_input(nid) or self._writes_output[nid]
            where = (v.start if io else v.start % self.per_node, v.dims, v.strides)
        elif self.reads_input(nid):
            where += (devs == [0], max(devs) < self.per_node)
        key = (self.node_key(nid), cfg.degrees, where)
        tab = self.store.unary_one
        hit = tab.get(key)
        if hit is None:
            hit = tab[key] = self._unary_one(nid, cfg)
        return hit

    def _unary_one(self, nid: int, cfg: OpConfig) -> tuple[float, float]:
        n = self.index.by_id[nid]
        ns = self.node_shapes(nid, cfg)
        if ns is None:
            return INF, INF
        sim, ins = self.sim, self.inputs_of(n)
        devs = self.devinfo(cfg)[0]
        needs = [self._req.get(t, False) for t in n.inputs]
        c = priced(self.cost, n.op, ins, cfg, self.machine.device, needs)
        fill = 0.0
        if not c.fills_included:
            fill = (sum(sim.stream_time(s.piece_bytes()) for s in ns.outputs if s.sum_degree > 1)
                    + sum(sim.stream_time(sv.shape.num_bytes() / max(len(devs), 1))
                          for sv in n.op.saved(ins) if sv.zero))
        fwd, bwd = c.forward, c.backward
        rt = self.machine.runtime
        if rt.fusion:
            # launches run as steps of fused tasks (the simulator's groups): the kernels, and
            # a step's dispatch and its issuing instead of a task each
            (fwd, bwd), step = c.kernels(self.machine.device.launch_overhead), rt.fused_step
            fwd += c.launches_forward * step
            bwd += c.launches_backward * step
            if rt.task_store:   # the stores its launches add to their group's task
                sf, sb = own_stores(n.op, tuple(ins), tuple(needs), cfg.degrees)
                fwd += sf * rt.task_store
                bwd += sb * rt.task_store
        t = fwd + fill + (bwd if self._backward(n) else 0.0)
        for name in sorted(self._trainable.get(nid, ())):
            ws = ns.weights[name]
            # the optimizer update runs on the node's devices, over the weight's own tiles
            # (or its rows), as the executor runs it: it depends on the configuration
            points = sim.update_points(ws, len(devs))
            rounds = -(-points // max(len(devs), 1))
            sparse = sim.sparse_update_time(n.op, ins, name, ws, len(devs))
            if sparse is not None:   # the used rows only, no gradient to sum
                t += sparse * rounds
                continue
            if self.by_groups:
                t += sim.weight_sync(self.layout(nid, cfg, RefKind.WEIGHT, name)).seconds
            else:
                t += sim.grad_sync_time(ws, devs)
            t += sim.update_time(ws, points) * rounds
        for j, tid in enumerate(n.inputs):            # graph inputs arrive whole on device 0
            if tid in self._in_set and self.by_groups:
                t += sim.transfer(whole(ParallelTensorShape.of(self.shapes[tid])),
                                  self.layout(nid, cfg, RefKind.INPUT, j)).seconds
            elif tid in self._in_set:
                t += self._move(ParallelTensorShape.of(self.shapes[tid]), ns.inputs[j],
                                [0] + devs, False)
        # model outputs go to the loss and back, but where this configuration splits nothing
        # but samples: the loss runs where the output is (GraphExecutor.loss_placement)
        moves_output = any(a != SAMPLE for a, _d in cfg.degrees)
        for i, tid in enumerate(n.outputs):
            if tid in self._out_set and moves_output:
                s = ns.outputs[i]
                want = ParallelTensorShape.of(
                    s.logical(), (effective_degree(s.sizes[0], self.n),) + (1,) * (s.rank - 1))
                if self.by_groups:
                    if self._convertible(s, want):
                        t += 2 * sim.transfer(self.layout(nid, cfg, RefKind.OUTPUT, i),
                                              spread(want, self.all_devs)).seconds
                    continue
                t += 2 * self._move(s, want, devs + self.all_devs, False, strict=False)
        per_weight = 2 + self.slots
        mem = (sum(s.piece_bytes() for s in ns.outputs)
               + sum(s.piece_bytes() for s in ns.inputs if s.copy_degree > 1)
               + sum(ws.piece_bytes() * per_weight for ws in ns.weights.values()))
        return t, float(mem)

    # ------------------------------------------------------------------ device groups
    def layout(self, nid: int, cfg: OpConfig, kind: RefKind, key: int | str) -> Layout:
        """Where the pieces of a node's argument live under a placed candidate."""
        i = self.layout_id(nid, cfg, kind, key)
        assert i >= 0
        return self.store.layouts[i]  # type: ignore[no-any-return]

    def layout_id(self, nid: int, cfg: OpConfig, kind: RefKind, key: int | str) -> int:
        """`layout`'s id, interned in the cache (equal layouts of different nodes, or graphs,
        share it); -1 where the candidate is illegal (no shapes)."""
        self.node_key(nid)
        st = self.store
        k = (self._skid[nid], cfg.degrees, cfg.view, kind, key)
        i = st.layout_keys.get(k)
        if i is None:
            ns = self.node_shapes(nid, cfg)
            if ns is None:
                i = -1
            else:
                shape = (ns.inputs[key] if kind is RefKind.INPUT else  # type: ignore[index]
                         ns.outputs[key] if kind is RefKind.OUTPUT else ns.weights[key])  # type: ignore[index]
                n = self.index.by_id[nid]
                lay = arg_layout(n.op, self.inputs_of(n), cfg, Ref(kind, key), shape)
                i = st.layout_ids.get(lay)
                if i is None:
                    i = st.layout_ids[lay] = len(st.layouts)
                    st.layouts.append(lay)
                    st.layout_shapes.append(st.shape_id(shape))
            st.layout_keys[k] = i
        return i

    def _placed_layouts(self, nid: int, res: Resource, kind: RefKind, key: int | str
                        ) -> np.ndarray:
        """Per placed candidate of the node on `res` (`placed` order), its argument's layout id."""
        k = (self.node_key(nid), res, kind, key)
        hit = self._end_ids.get(k)
        if hit is None:
            hit = self._end_ids[k] = np.array(
                [self.layout_id(nid, c, kind, key) for c in self.placed(nid, res)],
                dtype=np.int64)
        return hit

    def _move_ids(self, src: int, dst: int) -> float:
        """Seconds of one move of a tensor from layout `src` to `dst` (interned ids; -1, or
        shapes lift cannot convert: INF), memoised by the pair: the DP meets the same pair for
        every edge whose ends have these shapes, on every resource pair placing them alike."""
        if src < 0 or dst < 0:
            return INF
        st = self.store
        hit = st.moves.get((src, dst))
        if hit is None:
            if not self._convertible_ids(st.layout_shapes[src], st.layout_shapes[dst]):
                hit = INF
            else:
                # Simulator.transfer's price, by its profile (layouts alike up to relabelling
                # devices and dims share it) and the tensor's sizes
                a, b = st.layouts[src], st.layouts[dst]
                key = (profile_key(a, b, self.machine), a.nbytes, a.piece_bytes)
                hit = st.prices.get(key)
                if hit is None:
                    hit = st.prices[key] = priced_seconds(key[0], a.nbytes, a.piece_bytes,
                                                          self.machine)
            st.moves[(src, dst)] = hit
        return hit

    def _convertible(self, src: ParallelTensorShape, dst: ParallelTensorShape) -> bool:
        """Whether parallel operators can turn `src` into `dst` (lift's conversion)."""
        st = self.store
        return self._convertible_ids(st.shape_id(src), st.shape_id(dst))

    def _convertible_ids(self, src: int, dst: int) -> bool:
        """`_convertible` of two interned shapes."""
        tab = self.store.convertible
        ok = tab.get((src, dst))
        if ok is None:
            shapes = self.store.shapes
            ok = tab[(src, dst)] = convertible(shapes[src], shapes[dst])
        return ok

    def _edge_groups(self, e: Edge, a: OpConfig, b: OpConfig) -> float:
        """One move of edge `e`'s tensor from placed candidate `a` to `b`, priced over the
        devices that exchange pieces."""
        return self._move_ids(self.layout_id(e.src, a, RefKind.OUTPUT, e.out),
                              self.layout_id(e.dst, b, RefKind.INPUT, e.inp))

    def _move(self, src: ParallelTensorShape, dst: ParallelTensorShape, devs: list[int],
              both_ways: bool, strict: bool = True) -> float:
        if len(set(devs)) <= 1:
            cls = 0
        elif len({self.machine.node_of(d) for d in devs}) <= 1:
            cls = 1
        else:
            cls = 2
        st = self.store
        return self._comm_ids(st.shape_id(src), st.shape_id(dst), cls, strict) * \
            (2 if both_ways else 1)

    def _comm_ids(self, src: int, dst: int, cls: int, strict: bool = True) -> float:
        """Seconds of converting shape `src` to `dst` (interned ids) on devices of class `cls`:
        0 one device, 1 inside one node, 2 across nodes."""
        key = (src, dst, cls, strict)
        tab = self.store.comm
        hit = tab.get(key)
        if hit is None:
            conv = (src, dst)                 # the conversion, shared by the device classes
            ops = tab.get(conv, False)
            if ops is False:
                shapes = self.store.shapes
                try:
                    ops = conversion(shapes[src], shapes[dst])
                except ParallelShapeError:
                    ops = None
                tab[conv] = ops
            if ops is None:
                hit = INF if strict else 0.0
            elif not ops or cls == 0:
                hit = 0.0
            else:
                op = ops[0] if len(ops) == 1 else FusedParallelOp(ops)
                both = self._both_links(op, self.store.shapes[src])
                if both is None:
                    # a representative device list of the class: the simulator only asks
                    # whether the devices are one, inside one node, or across nodes
                    devs = [0, 1] if cls == 1 else [0, self.per_node]
                    hit = self.sim.comm_time(op, self.store.shapes[src], devs)
                else:
                    tab[(src, dst, 1, strict)], tab[(src, dst, 2, strict)] = both
                    hit = both[cls - 1]
            tab[key] = hit
        return hit

    def _both_links(self, op: Any, shape: ParallelTensorShape) -> tuple[float, float] | None:
        """The simulator's price of `op` inside a node and across nodes (Simulator._comm_time's
        rule, with each step (parallel op, piece shape) memoised: conversions from one piece
        shape share their first steps). Checked against the simulator on the first pairs priced;
        None (price each class with the simulator) if they ever differ."""
        if self._steps_ok is False:
            return None
        rt = self.machine.runtime
        fold, sizes = 0.0, []
        steps, sid = self.store.steps, self.store.shape_id(shape)
        for o in (op.ops if isinstance(op, FusedParallelOp) else (op,)):
            key = (o, sid)
            step = steps.get(key)
            if step is None:
                cur = self.store.shapes[sid]
                out = o.infer(cur)
                if isinstance(o, Reduce) and rt.reduction == "fold":
                    step = (self.store.shape_id(out), o.degree * rt.fold.time(cur.piece_bytes()),
                            None)
                else:
                    if isinstance(o, (Partition, Replicate)):
                        receivers = cur.num_pieces * (o.degree - 1)
                    else:  # Combine, Reduce: each output piece receives k - 1 pieces
                        receivers = out.num_pieces
                    step = (self.store.shape_id(out), 0.0,
                            o.bytes_moved(cur) / max(receivers, 1))
                steps[key] = step
            sid, f, size = step
            fold += f
            if size is not None:
                sizes.append(size)
        m = self.machine
        out2 = (fold + sum(m.intra.time(b) for b in sizes),
                fold + sum(m.inter.time(b) for b in sizes))
        if self._steps_checked < 32:
            self._steps_checked += 1
            real = (self.sim.comm_time(op, shape, [0, 1]),
                    self.sim.comm_time(op, shape, [0, self.per_node]))
            if not all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)
                       for a, b in zip(out2, real)):
                self._steps_ok = False
            return real
        return out2

    # ------------------------------------------------------------------ pairwise
    def _ends(self, nid: int) -> tuple[list[tuple], list[tuple]]:
        """Per output and input of the node: the distinct interned piece shapes over all its
        degree candidates (-1: illegal) and each candidate's index among them."""
        key = self.node_key(nid)
        hit = self.store.ends.get(key)
        if hit is None:
            n = self.index.by_id[nid]
            sid = self.store.shape_id
            all_ns = [self.node_shapes(nid, c) for c in self.degrees(nid)]

            def uniq(ids: list[int]) -> tuple:
                u, inv = np.unique(np.array(ids, dtype=np.int64), return_inverse=True)
                return u, inv.reshape(-1)

            outs = [uniq([sid(ns.outputs[i]) if ns else -1 for ns in all_ns])
                    for i in range(len(n.outputs))]
            ins = [uniq([sid(ns.inputs[j]) if ns else -1 for ns in all_ns])
                   for j in range(len(n.inputs))]
            hit = self.store.ends[key] = (outs, ins)
        return hit

    def _pair(self, e: Edge) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The (class x producer piece x consumer piece) seconds of an edge (NaN: not priced
        yet), shared by every resource pair; the pieces and each degree candidate's piece."""
        key = (self.node_key(e.src), e.out, self.node_key(e.dst), e.inp)
        hit = self.store.pairs.get(key)
        if hit is None:
            ua, inv_a = self._ends(e.src)[0][e.out]
            ub, inv_b = self._ends(e.dst)[1][e.inp]
            comm = np.full((3, len(ua), len(ub)), np.nan)
            comm[:, ua < 0, :] = INF
            comm[:, :, ub < 0] = INF
            hit = self.store.pairs[key] = (comm, ua, ub, inv_a, inv_b)
        return hit

    def _twin(self, e: Edge) -> int | None:
        """The input of `e`'s consumer reading `e`'s tensor before `e.inp` does, if any: where
        the consumer wants both alike, lift moves the tensor once (self-attention's query and
        value), so the second edge costs nothing."""
        n = self.index.by_id[e.dst]
        return next((j for j, t in enumerate(n.inputs[:e.inp]) if t == e.tensor), None)

    def _once(self, e: Edge, twin: int, rv: Resource) -> np.ndarray:
        """Per consumer candidate on `rv` (`local` order), whether it wants inputs `twin` and
        `e.inp` differently (each then moved on its own)."""
        if self.by_groups:
            return (self._placed_layouts(e.dst, rv, RefKind.INPUT, e.inp)
                    != self._placed_layouts(e.dst, rv, RefKind.INPUT, twin))
        ins, idx = self._ends(e.dst)[1], self.local(e.dst, rv).idx
        (ua, inv_a), (ub, inv_b) = ins[twin], ins[e.inp]
        return ub[inv_b][idx] != ua[inv_a][idx]

    def edge(self, e: Edge, ru: Resource, rv: Resource) -> np.ndarray:
        """Seconds of moving edge `e`'s tensor for every (producer, consumer) candidate pair."""
        twin = self._twin(e)
        key = (self.node_key(e.src), e.out, self.node_key(e.dst), e.inp, self._req.get(e.tensor),
               ru.nodes, ru.devs, rv.relative(ru), twin)
        tab = self.store.edges
        hit = tab.get(key)
        if hit is not None:
            self.store.stats.table_hits += 1
            return hit
        self.store.stats.table_misses += 1
        hit = self._edge(e, ru, rv)
        if twin is not None:
            hit = np.where(self._once(e, twin, rv)[None, :], hit, 0.0)
        tab[key] = hit
        return hit

    def _edge(self, e: Edge, ru: Resource, rv: Resource) -> np.ndarray:
        if self.by_groups:
            # many candidates leave (or want) the tensor alike: price each distinct pair of
            # layouts once
            ua, inv_a = np.unique(self._placed_layouts(e.src, ru, RefKind.OUTPUT, e.out),
                                  return_inverse=True)
            ub, inv_b = np.unique(self._placed_layouts(e.dst, rv, RefKind.INPUT, e.inp),
                                  return_inverse=True)
            sub = np.array([[self._move_ids(x, y) for y in ub.tolist()] for x in ua.tolist()],
                           dtype=float).reshape(len(ua), len(ub))
            hit = sub[inv_a.reshape(-1)[:, None], inv_b.reshape(-1)[None, :]]
            if self._req.get(e.tensor, False):
                hit = hit * 2
            return hit
        comm, ua, ub, inv_a, inv_b = self._pair(e)
        la, lb = self.local(e.src, ru), self.local(e.dst, rv)
        # device geometry on the two resources (placed at their offsets)
        sa, sb = la.start + ru.offset, lb.start + rv.offset
        both = (la.mask << ru.node0)[:, None] | (lb.mask << rv.node0)[None, :]
        cls = np.where(la.single[:, None] & lb.single[None, :] & (sa[:, None] == sb[None, :]),
                       0, np.where((both & (both - 1)) == 0, 1, 2))
        ia, ib = inv_a[la.idx][:, None], inv_b[lb.idx][None, :]
        hit = comm[cls, ia, ib]
        missing = np.isnan(hit)
        if missing.any():
            # price each distinct (class, producer piece, consumer piece) once, lazily: a
            # relative position needs only some device classes
            nb = len(ub)
            code = (cls * len(ua) + ia) * nb + ib
            for c in np.unique(code[missing]).tolist():
                cl, rem = divmod(c, len(ua) * nb)
                i, j = divmod(rem, nb)
                comm[cl, i, j] = self._comm_ids(int(ua[i]), int(ub[j]), cl)
            hit = comm[cls, ia, ib]
        if self._req.get(e.tensor, False):
            hit = hit * 2
        return hit

    def edge_one(self, e: Edge, a: OpConfig, b: OpConfig) -> float:
        twin = self._twin(e)
        if twin is not None:
            if self.by_groups:
                same = (self.layout_id(e.dst, b, RefKind.INPUT, e.inp)
                        == self.layout_id(e.dst, b, RefKind.INPUT, twin))
            else:
                sv = self.node_shapes(e.dst, b)
                same = sv is not None and sv.inputs[e.inp] == sv.inputs[twin]
            if same:
                return 0.0
        if self.by_groups:
            return self._edge_groups(e, a, b) * (2 if self._req.get(e.tensor, False) else 1)
        su, sv = self.node_shapes(e.src, a), self.node_shapes(e.dst, b)
        if su is None or sv is None:
            return INF
        _, da, na = self.devinfo(a)
        _, db, nb = self.devinfo(b)
        if len(da) == 1 and da == db:
            cls = 0
        elif len(na | nb) == 1:
            cls = 1
        else:
            cls = 2
        both = self._req.get(e.tensor, False)
        st = self.store
        return self._comm_ids(st.shape_id(su.outputs[e.out]), st.shape_id(sv.inputs[e.inp]),
                              cls) * (2 if both else 1)

    # ------------------------------------------------------------------ plan-independent
    def constant(self) -> float:
        """Seconds every plan pays alike: losses, gradient accumulations (optimizer updates
        depend on the plan: `_unary_one` prices them per node)."""
        sim, total = self.sim, 0.0
        for t in self.index.outputs:
            s = self.shapes[t]
            total += sim.stream_time(3 * s.num_bytes(), effective_degree(s.dims[0], self.n))
        seen: set[int] = set()
        for n in reversed(self.index.nodes):
            if not self._backward(n):
                continue
            for t in n.inputs:
                if self._req.get(t, False):
                    if t in seen:
                        total += sim.stream_time(3 * self.shapes[t].num_bytes(), self.n)
                    seen.add(t)
        return total


def peak_memory(mc: MappingCost, plan: dict[int, OpConfig]) -> list[float]:
    """Bytes per device of a plan (as Simulator.memory computes it, without lifting)."""
    mem = [0.0] * mc.n
    for nid, cfg in plan.items():
        _, m = mc.unary_one(nid, cfg)
        for d in mc.devinfo(cfg)[0]:
            mem[d] += m
    return mem


def ceil_log2(x: int) -> int:
    return max(0, math.ceil(math.log2(max(x, 1))))
