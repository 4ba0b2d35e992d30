"""Collectives priced over the devices that take part (cost/collectives.py, layout.py,
transfer.py): hierarchical all-reduce against its closed form, tensor-parallel groups inside a
node on NVLink and across nodes on the network, per-pair copies, and the simulator and the
mapping DP pricing the same moves alike. Pure Python, no runtime."""

from __future__ import annotations

from dataclasses import replace

import pytest

from graphs import self_attention
from unity_legion.cost import Simulator, preset
from unity_legion.cost.collectives import INTER, INTRA, collective_time, group_shape, link_name
from unity_legion.cost.layout import arg_layout, spread, whole
from unity_legion.cost.op_cost import AnalyticCost
from unity_legion.cost.transfer import transfer
from unity_legion.operators.attention import MultiHeadAttention
from unity_legion.operators.base import Ref, RefKind
from unity_legion.operators.linear import Linear
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.pcg.pcg import data_parallel_config, lift, node_shapes
from unity_legion.search.dp import setup
from unity_legion.types import MachineView, OpConfig, ParallelTensorShape, TensorShape

H100x8 = preset("dgx-h100", 8)          # 8 nodes x 8 GPUs
A_I, B_I = H100x8.intra.latency, H100x8.intra.bandwidth
A_E, B_E = H100x8.inter.latency, H100x8.inter.bandwidth
MB = 2**20


def test_hierarchical_all_reduce_matches_the_closed_form() -> None:
    b = 64 * MB
    # L devices in each of M nodes: reduce-scatter in the node, L rings across nodes on 1/L
    # each, all-gather in the node
    for devices, (L, M) in [(range(8), (8, 1)), (range(0, 64, 8), (1, 8)),
                            (range(64), (8, 8)), ([0, 1, 8, 9], (2, 2))]:
        assert group_shape(devices, H100x8) == (L, M)
        want = (2 * (L - 1) * (A_I + b / (L * B_I))
                + 2 * (M - 1) * (A_E + b / (L * M * B_E)))
        assert collective_time("all_reduce", b, list(devices), H100x8) == pytest.approx(want)
        half = collective_time("reduce_scatter", b, list(devices), H100x8)
        assert half == pytest.approx(want / 2)
        assert collective_time("all_gather", b, list(devices), H100x8) == pytest.approx(half)
    # inside one node it is the ring on NVLink; one device per node the ring on the NICs
    assert collective_time("all_reduce", b, list(range(8)), H100x8) == pytest.approx(
        2 * 7 * A_I + 2 * 7 / 8 * b / B_I)
    assert collective_time("all_reduce", b, [0], H100x8) == 0.0
    with pytest.raises(ValueError, match="all_reduce"):
        collective_time("broadcast", b, [0, 1], H100x8)


def test_links_are_named_by_the_groups_nodes() -> None:
    assert link_name([3], H100x8) == ""
    assert link_name(range(8), H100x8) == INTRA
    assert link_name(range(0, 64, 8), H100x8) == INTER
    assert link_name(range(16), H100x8) == f"{INTRA}+{INTER}"


def _row_parallel(view: MachineView):
    """A Linear split by input features 8 ways (partial sums out), and its output's layout."""
    op, x = Linear(1024), TensorShape((64, 4096))
    cfg = OpConfig.of({"in": 8}, view)
    ns = node_shapes(op, [x], cfg)
    return op, x, cfg, arg_layout(op, [x], cfg, Ref(RefKind.OUTPUT, 0), ns.outputs[0])


def test_a_tensor_parallel_group_in_one_node_uses_nvlink_across_two_the_network() -> None:
    inside = MachineView("gpu", 0, (8,), (1,))
    across = MachineView("gpu", 4, (8,), (1,))             # devices 4..11: two nodes
    _, _, _, part_in = _row_parallel(inside)
    _, _, _, part_across = _row_parallel(across)
    assert part_in.shape.sum_degree == 8 and part_in.groups() == [tuple(range(8))]
    # Reduce then Partition by samples over the same devices: one reduce-scatter, no more
    piece = part_in.shape.piece_bytes()
    for partial, view in [(part_in, inside), (part_across, across)]:
        want = spread(ParallelTensorShape.of(partial.shape.logical(), (8, 1)), view.devices())
        moved = transfer(partial, want, H100x8)
        assert moved.seconds == pytest.approx(
            collective_time("reduce_scatter", piece, view.devices(), H100x8))
    assert transfer(part_in, spread(ParallelTensorShape.of(part_in.shape.logical(), (8, 1)),
                                    inside.devices()), H100x8).link == INTRA
    slow = transfer(part_across, spread(ParallelTensorShape.of(part_across.shape.logical(),
                                                               (8, 1)), across.devices()), H100x8)
    assert INTER in slow.link
    # Reduce then Replicate (every member reads the sum): an all-reduce
    copies = spread(ParallelTensorShape.of(part_in.shape.logical(), copy_degree=8),
                    inside.devices())
    assert transfer(part_in, copies, H100x8).seconds == pytest.approx(
        collective_time("all_reduce", piece, inside.devices(), H100x8))


def test_weight_gradients_all_reduce_over_their_replicas_only() -> None:
    """Megatron inside a node, data parallel across: (sample 8 x out 8) on 64 devices, sample
    outermost in the launch grid. Each kernel tile's replicas are the 8 devices of one local
    rank in the 8 nodes: one ring on the NICs over 1/8 of the weight."""
    op, x = Linear(4096), TensorShape((512, 1024))
    cfg = OpConfig.of({"sample": 8, "out": 8}, MachineView("gpu", 0, (64,), (1,)))
    ns = node_shapes(op, [x], cfg)
    kernel = arg_layout(op, [x], cfg, Ref(RefKind.WEIGHT, "kernel"), ns.weights["kernel"])
    assert kernel.groups()[0] == tuple(range(0, 64, 8))
    sync = Simulator(H100x8).weight_sync(kernel)
    b = ns.weights["kernel"].piece_bytes()
    assert sync.link == INTER
    assert sync.seconds == pytest.approx(2 * 7 * A_E + 2 * 7 / 8 * b / B_E)
    # data parallel over the 64: the whole weight, hierarchically (NVLink, then the NICs)
    dp = OpConfig.of({"sample": 64}, MachineView("gpu", 0, (64,), (1,)))
    wdp = arg_layout(op, [x], dp, Ref(RefKind.WEIGHT, "kernel"),
                     node_shapes(op, [x], dp).weights["kernel"])
    full = float(4096 * 1024 * 4)
    assert Simulator(H100x8).weight_sync(wdp).seconds == pytest.approx(
        2 * 7 * (A_I + full / (8 * B_I)) + 2 * 7 * (A_E + full / (64 * B_E)))


def test_point_to_point_copies_take_the_link_between_the_pair() -> None:
    s = ParallelTensorShape.of(TensorShape((256, 1024)))
    b = s.num_bytes()
    assert transfer(whole(s, 0), whole(s, 0), H100x8).seconds == 0.0
    near = transfer(whole(s, 0), whole(s, 5), H100x8)
    far = transfer(whole(s, 0), whole(s, 13), H100x8)
    assert (near.link, far.link) == (INTRA, INTER)
    assert near.seconds == pytest.approx(A_I + b / B_I)
    assert far.seconds == pytest.approx(A_E + b / B_E)
    # pieces moved device by device between two views of 8 in different nodes: each pair
    # sends one piece over its own NIC, side by side
    split = ParallelTensorShape.of(TensorShape((256, 1024)), (8, 1))
    moved = transfer(spread(split, list(range(8))), spread(split, list(range(8, 16))), H100x8)
    assert moved.link == INTER
    assert moved.seconds == pytest.approx(A_E + split.piece_bytes() / B_E)
    with pytest.raises(ValueError, match="shapes differ"):
        transfer(whole(s), whole(ParallelTensorShape.of(TensorShape((2, 2)))), H100x8)


def test_an_all_gather_across_nodes_crosses_the_network_once_per_node() -> None:
    """Samples split over 16 devices (2 nodes), every device reading all of them: the bytes a
    node lacks cross once, over its 8 NICs, then NVLink (the hierarchical all-gather)."""
    s = ParallelTensorShape.of(TensorShape((1024, 1024)), (16, 1))
    rep = ParallelTensorShape.of(TensorShape((1024, 1024)), copy_degree=16)
    b = s.num_bytes()
    moved = transfer(spread(s, list(range(16))), spread(rep, list(range(16))), H100x8)
    assert moved.link == f"{INTRA}+{INTER}"
    assert moved.seconds == pytest.approx(
        collective_time("all_gather", b, list(range(16)), H100x8))


def _mlp() -> ComputationGraph:
    g = ComputationGraph()
    t = g.add_input(TensorShape((None, 1024)), "x")
    (t,) = g.add_node(Linear(4096, activation="relu"), [t], "up")
    (t,) = g.add_node(Linear(1024), [t], "down")
    g.add_node(Linear(16), [t], "head")
    return g


def test_gradient_sums_run_under_the_backward_pass() -> None:
    """Data parallel over 2 nodes: each layer's gradient sum takes the links once that layer's
    gradient is done, so all but the first layer's (done last) run while the backward goes on.
    Issued in the updates' order instead, every sum waited behind the first layer's (bert_large
    on 8 x 8 H100s was priced 359 ms for 281)."""
    g = ComputationGraph()
    t = g.add_input(TensorShape((None, 4096)), "x")
    for i in range(8):
        (t,) = g.add_node(Linear(4096, activation="relu"), [t], f"fc{i}")
    res = Simulator(preset("dgx-h100", 2)).simulate(g, 8192, {},
                                                    default=data_parallel_config(16))
    compute = res.busy[0]
    sums = sum(b.communication for b in res.breakdown.values())
    assert sums > 0.3 * compute   # enough to tell overlapped sums from sums after the pass
    assert res.step_time <= compute + res.breakdown["fc0"].communication + 0.1 * sums


def test_the_simulator_and_the_dp_price_the_same_moves_and_sums() -> None:
    machine = preset("dgx-h100", 2, 4)
    g, batch = _mlp(), 64
    ids = {n.name: n.id for n in g.nodes}
    view = MachineView("gpu", 2, (4,), (1,))          # devices 2..5: across both nodes
    plan = {ids["up"]: OpConfig.of({"out": 4}, view),
            ids["down"]: OpConfig.of({"in": 4}, view),
            ids["head"]: OpConfig.of({"sample": 8}, MachineView("gpu", 0, (8,), (1,)))}
    sim = Simulator(machine)
    res = sim.simulate(g, batch, plan)
    mc = setup(g, batch, machine, None, None, None, None)
    index = mc.index
    edge = next(e for e in index.edges if e.src == ids["down"] and e.dst == ids["head"])
    # the simulator's communication of `head`: the Reduce + Partition feeding it, forward and
    # backward, and its weights' all-reduces
    syncs = sum(sim.weight_sync(mc.layout(ids["head"], plan[ids["head"]], RefKind.WEIGHT, w)
                                ).seconds for w in ("kernel", "bias"))
    assert res.breakdown["head"].communication == pytest.approx(
        mc.edge_one(edge, plan[ids["down"]], plan[ids["head"]]) + syncs)
    # its inputs are gathered from devices 2..5 in both nodes; its weights' 8 copies span both
    assert res.breakdown["head"].moves == f"{INTRA}+{INTER}"
    assert res.breakdown["head"].grads == f"{INTRA}+{INTER}"
    assert res.breakdown["up"].grads == ""          # split by output features: no copies
    # the PCG's inserted operator is what both priced
    pcg = lift(g, batch, plan)
    assert any(n.is_parallel and n.name.startswith("head") for n in pcg.nodes)
    # column- then row-parallel: no movement between up and down
    e2 = next(e for e in index.edges if e.src == ids["up"] and e.dst == ids["down"])
    assert mc.edge_one(e2, plan[ids["up"]], plan[ids["down"]]) == 0.0


def test_explain_names_the_links_of_moves_and_gradient_sums() -> None:
    """bert-like, Megatron inside a node, data parallel across two: attention's inputs are
    gathered inside the node, its weights' gradients summed across the nodes."""
    from unity_legion.models import ZOO
    from unity_legion.strategy.builtin import expert

    machine = preset("dgx-h100", 2, 4)
    model = ZOO["bert_large"].build_small()
    st = expert(model, 8, "gpu", 16, 4)
    text = st.explain(model, 16, machine=machine)
    assert "links: moves / grads" in text
    rows = [line for line in text.splitlines() if " multi_head_attention " in line]
    # moves inside the node; the head-split projections' copies across the nodes, and the
    # output bias (no head axis: copies on all 8) hierarchically
    assert rows and all(f"{INTRA} / {INTRA}+{INTER}" in r for r in rows), rows


def test_an_operator_waits_for_its_device_not_for_the_step() -> None:
    """Two branches of one input on one device: the second's forward waits for the first's
    (its input was ready at once), and no operator waits longer than the step (the column once
    showed each operator's span over two simulated steps)."""
    g = ComputationGraph()
    t = g.add_input(TensorShape((None, 2048)), "x")
    g.add_node(Linear(4096), [t], "a")
    g.add_node(Linear(4096), [t], "b")
    machine = preset("dgx-h100", 1, 1)
    sim = Simulator(machine)
    res = sim.simulate(g, 4096, {}, default=data_parallel_config(1))
    a, b = res.breakdown["a"], res.breakdown["b"]
    assert a.waited + b.waited > 0.2 * min(a.compute, b.compute)
    assert all(br.waited < res.step_time for br in res.breakdown.values())


def _random_layout(rng, shape: ParallelTensorShape, devices: list[int]):
    """`shape`'s pieces on `devices` in a random order (a point may share a device)."""
    from unity_legion.cost.layout import Layout
    import itertools
    reps = shape.sum_degree * shape.copy_degree
    pieces = [(int(rng.choice(devices)), tile, r)
              for tile in itertools.product(*(range(d) for d in shape.degrees))
              for r in range(reps)]
    return Layout(shape, tuple(pieces))


def _fresh(src, dst, machine) -> float:
    """A transfer's price with the memos emptied: worked out from these very layouts."""
    from unity_legion.cost import transfer as tr
    for memo in (tr._CANON, tr._FORMS, tr._PROFILES, tr._TILES, tr._TILE_FORMS):
        memo.clear()
    return transfer(src, dst, machine).seconds


def test_transfer_prices_are_invariant_where_the_memo_shares_them() -> None:
    """Transfers share a profile up to relabelling nodes and the devices inside a node, and
    up to permuting the tensor's dims (cells are counted, not placed): priced from scratch,
    a relabelled / permuted pair costs exactly what the original costs, partial sums included."""
    import numpy as np
    from unity_legion.cost.layout import Layout
    rng = np.random.default_rng(7)
    per = H100x8.devices_per_node
    shapes = [((8, 1, 4, 2), 1, 1, (1, 1, 2, 8), 1, 1), ((2, 1, 1, 1), 4, 1, (1, 1, 4, 1), 1, 2),
              ((1, 2, 1, 1), 8, 2, (2, 1, 1, 1), 1, 1), ((4, 1, 1, 4), 1, 1, (1, 1, 1, 1), 1, 16)]
    for sd, ss, sc, dd, ds, dc in shapes:
        t = TensorShape((16, 8, 8, 16))
        s = ParallelTensorShape.of(t, sd, ss, sc)
        d = ParallelTensorShape.of(t, dd, ds, dc)
        for _ in range(4):
            devs = sorted(rng.choice(64, size=int(rng.integers(4, 24)), replace=False).tolist())
            a, b = _random_layout(rng, s, devs), _random_layout(rng, d, devs)
            base = _fresh(a, b, H100x8)
            # relabel: nodes permuted, devices inside each node permuted
            node_perm, dev_perm = rng.permutation(8), rng.permutation(per)
            move = {x: int(node_perm[x // per]) * per + int(dev_perm[x % per]) for x in range(64)}
            # permute the dims (the same for both layouts)
            dims = rng.permutation(4).tolist()

            def image(lay: Layout) -> Layout:
                shp = lay.shape
                new = ParallelTensorShape(tuple(shp.dims[i] for i in dims), shp.replicas,
                                          shp.dtype)
                return Layout(new, tuple((move[x], tuple(tile[i] for i in dims), r)
                                         for x, tile, r in lay.pieces))

            a2, b2 = image(a), image(b)
            assert _fresh(a2, b2, H100x8) == pytest.approx(base, rel=1e-12, abs=1e-15)
            # and the memo (profiled on the original) gives it too
            transfer(a, b, H100x8)
            assert transfer(a2, b2, H100x8).seconds == pytest.approx(base, rel=1e-12,
                                                                       abs=1e-15)


def test_the_dp_prices_an_edge_as_the_simulator_whatever_it_memoised() -> None:
    """MappingCost prices a move once per pair of layouts, by its profile and sizes: the same
    seconds as Simulator.transfer for every pair of candidates of an edge."""
    g = ComputationGraph()
    x = g.add_input(TensorShape((64, 256)), "x")
    h = g.add_node(Linear(512), [x], "fc1")[0]
    y = g.add_node(Linear(256), [h], "fc2")[0]
    mc = setup(g, 64, H100x8, None, [y], None, "gpu")
    from unity_legion.search.candidates import Resource
    e = next(e for n in mc.index.nodes for e in mc.index.touching[n.id] if e.tensor == h)
    whole_res = Resource.whole(8, 8)
    parts = whole_res.splits()[0]
    for ru, rv in [(whole_res, whole_res), parts, parts[::-1]]:
        table = mc.edge(e, ru, rv)
        pa, pb = mc.placed(e.src, ru), mc.placed(e.dst, rv)
        sim = Simulator(H100x8)
        for i in range(0, len(pa), 3):
            for j in range(0, len(pb), 3):
                ia = mc.layout_id(e.src, pa[i], RefKind.OUTPUT, e.out)
                ib = mc.layout_id(e.dst, pb[j], RefKind.INPUT, e.inp)
                if ia < 0 or ib < 0 or table[i, j] == float("inf"):
                    continue
                want = sim.transfer(mc.layout(e.src, pa[i], RefKind.OUTPUT, e.out),
                                    mc.layout(e.dst, pb[j], RefKind.INPUT, e.inp)).seconds
                assert table[i, j] == pytest.approx(want * (2 if mc._req.get(e.tensor) else 1),
                                                    rel=1e-12, abs=1e-15)


def test_a_tensor_read_twice_alike_moves_once() -> None:
    """Self-attention reads its input as query and as value; split by heads it wants both
    gathered whole: lift gathers once (both arguments bind the same pieces), and the DP prices
    the second edge at nothing where the two arguments' layouts agree."""
    machine = preset("dgx-h100", 1)
    g, batch = self_attention(128, 512, 8, 16), 16
    ids = {n.name: n.id for n in g.nodes}
    every = MachineView("gpu", 0, (8,), (1,))
    plan = {ids["embed"]: OpConfig.of({"sample": 8}, every),
            ids["attention"]: OpConfig.of({"heads": 8}, every),
            ids["head"]: OpConfig.of({"sample": 8}, every)}
    pcg = lift(g, batch, plan)
    feeding = [n for n in pcg.parallel_nodes() if n.name.startswith("attention:")]
    assert len(feeding) == 1
    attention = next(n for n in pcg.computations() if n.name == "attention")
    assert attention.inputs[0] == attention.inputs[1] == feeding[0].outputs[0]
    mc = setup(g, batch, machine, None, None, None, None)
    first, second = sorted((e for e in mc.index.edges if e.dst == ids["attention"]),
                           key=lambda e: e.inp)
    moved = mc.edge_one(first, plan[ids["embed"]], plan[ids["attention"]])
    assert moved > 0
    assert mc.edge_one(second, plan[ids["embed"]], plan[ids["attention"]]) == 0
    # the simulator prices the one gather, as the DP does
    res = Simulator(machine).simulate(g, batch, plan)
    sim = Simulator(machine)
    syncs = sum(sim.weight_sync(mc.layout(ids["attention"], plan[ids["attention"]],
                                          RefKind.WEIGHT, ws.name)).seconds
                for ws in mc.index.by_id[ids["attention"]].weights)
    assert res.breakdown["attention"].communication == pytest.approx(moved + syncs)


class _InputGradientsLast(AnalyticCost):
    """The roofline, with every input gradient ready only when the whole backward ends."""

    def op_cost(self, op, inputs, config, device, needs_input_grad=None):  # type: ignore[no-untyped-def]
        return replace(super().op_cost(op, inputs, config, device, needs_input_grad),
                       input_grads_at=1.0)


def test_input_gradients_leave_while_weight_gradients_are_computed() -> None:
    """Megatron's pair of dense layers inside a node, between layers split by samples: the
    gradient of the pair's input is summed over the devices (reduce, then split by samples)
    after the first layer's backward. Its launches write the input gradient first, each a task
    of its own on a GPU, so the exchange runs while the weight gradient is computed (as
    Megatron-LM overlaps it); at the end of the whole backward it would add to the step."""
    g = ComputationGraph()
    t = g.add_input(TensorShape((None, 2048)), "x")
    plan: dict[int, OpConfig] = {}
    every = MachineView("gpu", 0, (8,), (1,))
    for i in range(4):
        (t,) = g.add_node(Linear(2048), [t], f"pre{i}")
        plan[g.nodes[-1].id] = OpConfig.of({"sample": 8}, every)
        (t,) = g.add_node(Linear(8192, activation="relu"), [t], f"up{i}")
        plan[g.nodes[-1].id] = OpConfig.of({"out": 8}, every)
        (t,) = g.add_node(Linear(2048), [t], f"down{i}")
        plan[g.nodes[-1].id] = OpConfig.of({"in": 8}, every)
    machine = preset("dgx-h100", 1)
    overlapped = Simulator(machine).simulate(g, 4096, plan)
    late = Simulator(machine, _InputGradientsLast()).simulate(g, 4096, plan)
    assert overlapped.busy[0] == pytest.approx(late.busy[0])
    gathered = sum(overlapped.breakdown[f"up{i}"].communication for i in range(4))
    assert gathered > 0
    # each backward exchange into `pre` hides under the `up` layer's weight-gradient product
    assert overlapped.step_time < late.step_time - 0.2 * gathered
    # the operators say when their input gradients are written
    ins = [TensorShape((4096, 2048))]
    assert Linear(8192).input_grads_share(ins, [True]) == 0.5
    assert Linear(8192).input_grads_share(ins, [False]) == 1.0
    mha = MultiHeadAttention(num_heads=8, key_dim=64)
    seq = [TensorShape((8, 128, 512))] * 2
    assert 0.5 < mha.input_grads_share(seq, [True, True]) < 1.0
    kinds = [launch.writes_input_grad for launch in mha.backward(seq, [True, True])]
    first_weights_only = kinds.index(False, 1)
    assert any(kinds) and not any(kinds[first_weights_only:])
