"""The simulator's fused groups and partial sums, as the executor runs them (pure Python)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from unity_legion.cost import MachineError, Simulator, preset
from unity_legion.operators.linear import Linear
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.pcg.pcg import lift
from unity_legion.types import MachineView, OpConfig, TensorShape


def _chain(layers: int, width: int = 64) -> tuple[ComputationGraph, int]:
    g = ComputationGraph()
    t = g.add_input(TensorShape((None, width)), "x")
    for i in range(layers):
        (t,) = g.add_node(Linear(width), [t], f"fc{i}")
    g.set_outputs([t])
    return g, t


def _machine(fusion: int, reduction: str = "partials"):
    base = preset("local")
    return replace(base, runtime=replace(base.runtime, fusion=fusion, reduction=reduction,
                                         fused_issue=1e-5, fused_step=2e-6))


DP = OpConfig.of({"sample": 2}, MachineView.contiguous("cpu", 0, 2))
SERIAL = OpConfig.of({"sample": 1}, MachineView.contiguous("cpu", 0, 1))


def test_launches_on_the_same_devices_run_as_one_task_per_group() -> None:
    g, _ = _chain(6)
    unfused = Simulator(_machine(0, "fold"), optimizer_slots=0).simulate(g, 64, {}, None, DP)
    fused = Simulator(_machine(128), optimizer_slots=0).simulate(g, 64, {}, None, DP)
    # feeds (2) + forward and loss (one group) + backward (one) + the updates (one group)
    assert fused.launches < unfused.launches / 3
    assert fused.host < unfused.host and fused.runtime < unfused.runtime
    assert fused.step_time < unfused.step_time
    # the devices pay one task overhead per group, not per launch
    assert max(fused.busy) < max(unfused.busy)


def test_a_group_holds_at_most_fusion_steps() -> None:
    g, _ = _chain(8)
    small = Simulator(_machine(2), optimizer_slots=0).simulate(g, 64, {}, None, SERIAL)
    big = Simulator(_machine(128), optimizer_slots=0).simulate(g, 64, {}, None, SERIAL)
    assert small.launches > big.launches + 8


def test_a_view_change_starts_a_new_group() -> None:
    g, _ = _chain(6)
    same = Simulator(_machine(128), optimizer_slots=0).simulate(g, 64, {}, None, DP)
    # alternate the two devices' serial views: every operator's launches are a group of their own
    plan = {n.id: OpConfig.of({"sample": 1}, MachineView.contiguous("cpu", n.id % 2, 1))
            for n in g.nodes}
    alternating = Simulator(_machine(128), optimizer_slots=0).simulate(g, 64, plan)
    assert alternating.launches >= same.launches + 6


def test_partial_sums_price_a_pass_over_the_copies_not_folds() -> None:
    sim = Simulator(_machine(128), optimizer_slots=0)
    g, _ = _chain(1, width=1024)
    pcg = lift(g, 64, {}, None, DP)
    (weight,) = [w for (nid, name), w in pcg.weights.items() if name == "kernel"]
    assert weight.copy_degree == 2
    settle = sim._grad_sync_time(weight, [0, 1])
    assert settle == pytest.approx(sim.settle_time(2, weight.num_bytes(), 2))
    folded = Simulator(_machine(128, "fold"), optimizer_slots=0)._grad_sync_time(weight, [0, 1])
    assert settle < folded
    # across ranks (nodes) the settling points first read the other node's copies of their
    # rows: one round trip of the inter-node link and those bytes
    from unity_legion.cost.machine import LinkSpec

    two = replace(_machine(128), nodes=2, devices_per_node=1, inter=LinkSpec(1e9, 16e-3))
    fetch = 16e-3 + weight.num_bytes() / 2 / 1e9
    across = Simulator(two, optimizer_slots=0)
    assert across.partials_fetch(weight, [0, 1]) == pytest.approx(fetch)
    assert across._grad_sync(weight, [0, 1]) == pytest.approx((settle + fetch, 16e-3))
    assert sim.partials_fetch(weight, [0, 1]) == 0.0


def test_over_two_nodes_the_updates_wait_for_the_other_nodes_partial_sums() -> None:
    """A data-parallel step over two nodes adds each gradient's partial sums after reading the
    other node's copies: its updates start one inter-node round trip later, shared by every
    weight's sums (banked and whole), not one per weight."""
    from unity_legion.cost.machine import LinkSpec

    steps = {}
    for width in (32, 256):   # banked gradients (< 4096 elements) and whole partial sums
        g, _ = _chain(6, width)
        for latency in (0.0, 20e-3):
            base = replace(_machine(128).with_nodes(2, 1), inter=LinkSpec(1e12, latency))
            steps[width, latency] = Simulator(base, optimizer_slots=0).simulate(
                g, 64, {}, None, DP).step_time
        extra = steps[width, 20e-3] - steps[width, 0.0]
        assert 20e-3 - 1e-9 <= extra < 2 * 20e-3, (width, extra)


def test_runtime_fusion_figures_are_checked() -> None:
    base = preset("local").runtime
    with pytest.raises(MachineError, match="fusion must be an integer >= 0"):
        replace(base, fusion=-1)
    with pytest.raises(MachineError, match="fused_step must be a number >= 0"):
        replace(base, fused_step=-1.0)


def _norm_net() -> ComputationGraph:
    from unity_legion.operators.batch_norm import BatchNorm

    g = ComputationGraph()
    t = g.add_input(TensorShape((None, 64)), "x")
    for i in range(3):
        (t,) = g.add_node(Linear(64), [t], f"fc{i}")
        (t,) = g.add_node(BatchNorm(), [t], f"bn{i}")
    g.set_outputs([t])
    return g


def test_batch_statistics_over_several_points_end_the_group() -> None:
    """A batch norm split over two processors reads statistics every point added into: its
    forward and its backward each end the fused group there (and, for statistics big enough
    to be partial sums, those are added by a task of their own: the executor's groups); on one
    processor nothing ends."""
    from unity_legion.cost.simulator import _barriers
    from unity_legion.operators.batch_norm import BatchNorm

    # (statistics of 64 channels: too small for partial sums, no task adding them)
    by_sample = (("sample", 2),)
    small, big = (TensorShape((32, 64)),), (TensorShape((32, 4096)),)
    assert _barriers(BatchNorm(), small, (True,), by_sample) == ((1, False), (1, False))
    assert _barriers(BatchNorm(), big, (True,), by_sample) == ((1, True), (1, True))
    assert _barriers(Linear(8), small, (True,), by_sample) == ((0, False), (0, False))
    # split by samples the statistics are shared; split by channels each point's are its own
    bn = (BatchNorm(), (TensorShape((32, 64)),), (True,))
    assert _barriers(*bn, (("sample", 2),)) == ((1, False), (1, False))
    assert _barriers(*bn, (("channels", 2),)) == ((0, False), (0, False))
    g = _norm_net()
    apart = _machine(128)
    apart = replace(apart, runtime=replace(apart.runtime, gather=None))
    dp = Simulator(apart, optimizer_slots=0).simulate(g, 64, {}, None, DP)
    serial = Simulator(apart, optimizer_slots=0).simulate(g, 64, {}, None, SERIAL)
    # three norms, two barriers each (forward, backward): more tasks than on one processor
    # (whose plan has breaks of its own: its loss runs on both processors)
    assert dp.launches - serial.launches >= 3, (dp.launches, serial.launches)
    # where the points exchange the statistics inside the task (the executor's gathers, one
    # rank), nothing ends there: a task per pass, each read a meeting of its points
    meets = replace(_machine(128), runtime=replace(_machine(128).runtime, gather=3e-5))
    met = Simulator(meets, optimizer_slots=0).simulate(g, 64, {}, None, DP)
    assert met.launches < dp.launches - 3, (met.launches, dp.launches)
    assert met.step_time < dp.step_time
    # over two nodes (two ranks) the points are in different processes: no meeting
    two = replace(meets, nodes=2, devices_per_node=1)
    assert Simulator(two, optimizer_slots=0).simulate(g, 64, {}, None, DP).launches >= (
        dp.launches)


def test_gradient_accumulations_run_on_the_consumers_processors() -> None:
    """A tensor read by two operators on processor 0 only: the accumulation of its gradient
    runs there too (GraphExecutor._backward_nodes): no backward work on processor 1."""
    g = ComputationGraph()
    x = g.add_input(TensorShape((None, 32)), "x")
    (h,) = g.add_node(Linear(32), [x], "fc")
    (a,) = g.add_node(Linear(32), [h], "a")
    (b,) = g.add_node(Linear(32), [h], "b")
    from unity_legion.operators.elementwise import Add

    (o,) = g.add_node(Add(), [a, b], "add")
    g.set_outputs([o])
    sim = Simulator(_machine(128), optimizer_slots=0)
    sim.trace = True
    res = sim.simulate(g, 64, {}, None, SERIAL)
    backward = {dev for dev, _a, _b, _name, phase in res.tasks if phase == "backward"}
    assert backward == {0}, backward   # (the loss runs on every processor, as the executor's)


def _runtime_with(g: ComputationGraph, config: OpConfig, banks: bool = True,
                  **costs: float) -> float:
    """The runtime thread's seconds of a step, with no per-store costs but `costs`; `banks`:
    small weight gradients summed in banks, as the executor does on one rank."""
    base = _machine(128)
    runtime = replace(base.runtime, **({"analysis_store": 0.0, "analysis_reduction": 0.0}
                                       | costs))
    machine = replace(base, runtime=runtime)
    sim = Simulator(machine, optimizer_slots=0)
    sim.sum_banks = banks
    return sim.simulate(g, 64, {}, None, config).runtime


def test_legions_work_grows_with_the_stores_a_fused_task_binds() -> None:
    g, _ = _chain(6)
    none = _runtime_with(g, SERIAL)
    one = _runtime_with(g, SERIAL, analysis_store=1e-3) - none
    two = _runtime_with(g, SERIAL, analysis_store=2e-3) - none
    assert one > 6 * 1e-3      # every layer's input, weights and output at least, once each
    assert two == pytest.approx(2 * one)
    # over two points every store is analysed for each
    assert _runtime_with(g, DP, analysis_store=1e-3) - _runtime_with(g, DP) > 1.5 * one


def test_small_sums_over_points_cost_legion_a_reduction_each_unless_banked() -> None:
    per = 1e-3
    small, _ = _chain(4, width=32)     # weights of 1024 and biases of 32 elements: both reduced
    wide, _ = _chain(4, width=128)     # weights of 16384: partial sums; biases reduced
    extra = {name: _runtime_with(g, DP, False, analysis_reduction=per)
             - _runtime_with(g, DP, False) for name, g in (("small", small), ("wide", wide))}
    # per layer: 2 (or 1) reduced stores x 2 points
    assert extra["small"] == pytest.approx(4 * 2 * 2 * per)
    assert extra["wide"] == pytest.approx(4 * 1 * 2 * per)
    # in banks (the executor's default on one rank) none is a Legion reduction; the bank is
    # one store more for the backward's task, and its sums are added by a task of their own
    for g in (small, wide):
        assert _runtime_with(g, DP, analysis_reduction=per) == _runtime_with(g, DP)
    assert (_runtime_with(small, DP, analysis_store=per)
            < _runtime_with(small, DP, False, analysis_store=per))
    # one point adds into its stores in place: nothing to reduce
    assert _runtime_with(small, SERIAL, analysis_reduction=per) == _runtime_with(small, SERIAL)


def _busy_with(g: ComputationGraph, config: OpConfig, task_store: float) -> tuple[float, float]:
    """(busiest device's seconds, step time) of a step, with `task_store` per store."""
    base = _machine(128)
    machine = replace(base, runtime=replace(base.runtime, task_store=task_store))
    r = Simulator(machine, optimizer_slots=0).simulate(g, 64, {}, None, config)
    return max(r.busy), r.step_time


def test_each_device_converts_every_store_its_fused_task_binds() -> None:
    g, _ = _chain(6)
    busy0, step0 = _busy_with(g, SERIAL, 0.0)
    busy1, step1 = _busy_with(g, SERIAL, 1e-3)
    busy2, _ = _busy_with(g, SERIAL, 2e-3)
    # every layer's input, weights and output at least, once each, before the first kernel
    assert busy1 - busy0 > 6 * 1e-3
    assert busy2 - busy0 == pytest.approx(2 * (busy1 - busy0))
    assert step1 - step0 > 6 * 1e-3   # on the critical path: one device does all of it
    # on two points each device binds its own pieces of the same stores, in more groups (the
    # updates read sums over the points: a group of their own), so at least as many
    dp0, _ = _busy_with(g, DP, 0.0)
    dp1, _ = _busy_with(g, DP, 1e-3)
    assert busy1 - busy0 <= dp1 - dp0 < 3 * (busy1 - busy0)


def _host_with(g: ComputationGraph, config: OpConfig, issue_store: float) -> float:
    """The issuing thread's seconds of a step, with `issue_store` per store a task binds."""
    base = _machine(128)
    machine = replace(base, runtime=replace(base.runtime, issue_store=issue_store))
    return Simulator(machine, optimizer_slots=0).simulate(g, 64, {}, None, config).host


def test_the_host_adds_every_store_to_the_task_it_submits() -> None:
    g, _ = _chain(6)
    serial = _host_with(g, SERIAL, 1e-3) - _host_with(g, SERIAL, 0.0)
    assert serial > 6 * 1e-3   # every layer's input, weights and output at least, once each
    assert _host_with(g, SERIAL, 2e-3) - _host_with(g, SERIAL, 0.0) == pytest.approx(2 * serial)
    # once per task however many points run it (Legion analyses each point; the host adds the
    # store once), so two points cost at most the groups two points need more
    dp = _host_with(g, DP, 1e-3) - _host_with(g, DP, 0.0)
    assert serial <= dp < 2 * serial
    with pytest.raises(MachineError, match="issue_store must be a number >= 0"):
        replace(_machine(128).runtime, issue_store=-1.0)


def test_partial_sums_are_priced_by_the_passes_their_kernel_makes() -> None:
    """operators/glue.add_partials adds one copy at a time into the result (the result read and
    written, the copy read), then zeroes every copy: 4 passes over a piece per copy."""
    sim = Simulator(_machine(128), optimizer_slots=0)
    bw = sim.machine.device.mem_bandwidth
    assert sim.settle_time(2, 8e6, 2) == pytest.approx(4 * 2 * 4e6 / bw)
    assert sim.settle_time(4, 8e6, 2) == pytest.approx(2 * sim.settle_time(2, 8e6, 2))


def test_task_store_figure_is_checked() -> None:
    base = _machine(128)
    with pytest.raises(MachineError, match="task_store must be a number >= 0"):
        replace(base.runtime, task_store=-1.0)


def test_the_dp_charges_the_stores_an_operator_adds_to_its_fused_tasks() -> None:
    from unity_legion.search.dp import setup

    g, _ = _chain(3)
    seconds = {}
    for per in (0.0, 1e-3):
        base = _machine(128)
        machine = replace(base, runtime=replace(base.runtime, task_store=per))
        mc = setup(g, 64, machine, None, None, None, "cpu", optimizer_slots=0)
        seconds[per] = mc.unary_one(g.nodes[1].id, SERIAL)[0]
    # a middle Linear: its weights and output forward; weight gradients, input gradient and
    # what it reads again backward (not its input forward, not its output gradient)
    assert 4 * 1e-3 <= seconds[1e-3] - seconds[0.0] <= 12 * 1e-3


def test_a_serial_plans_loss_joins_its_group_on_its_device() -> None:
    """As the executor places it (GraphExecutor.loss_placement): the loss runs where a
    producer that splits only samples left the output, so a serial plan on device 1 is one
    group on device 1; a split by features sends the output to every device for the loss."""
    g, _ = _chain(4)
    on_one = OpConfig.of({"sample": 1}, MachineView.contiguous("cpu", 1, 1))
    sim = Simulator(_machine(128), optimizer_slots=0)
    sim.trace = True
    r = sim.simulate(g, 64, {n.id: on_one for n in g.nodes})
    loss_devices = {d for d, _a, _b, name, _p in r.tasks if name == "(loss and metrics)"}
    assert loss_devices == {1}
    assert r.launches <= 3   # the batch's two feeds and the one group
    out_split = {n.id: (OpConfig.of({"out": 2}, MachineView.contiguous("cpu", 0, 2))
                        if n.name == "fc3" else on_one) for n in g.nodes}
    r = sim.simulate(g, 64, out_split)
    assert {d for d, _a, _b, name, _p in r.tasks if name == "(loss and metrics)"} == {0, 1}


def test_a_replayed_steps_own_temporaries_are_not_bound() -> None:
    """The executor's replays keep a store that one group alone writes and then reads (an
    activation, its gradient) in the task (replay.Recorder.finish): the devices do not convert
    it; weights, their gradients and the batch stay bound. A walked step binds every store."""
    g, _ = _chain(6)
    base = _machine(128)
    machine = replace(base, runtime=replace(base.runtime, task_store=1e-3))
    busy = {}
    for local in (False, True):
        sim = Simulator(machine, optimizer_slots=0)
        sim.local_temporaries = local
        busy[local] = max(sim.simulate(g, 64, {}, None, SERIAL).busy)
    # the five activations between the six layers and their gradients, at least
    assert busy[False] - busy[True] >= 10 * 1e-3 - 1e-9
    # still bound: each layer's weights and weight gradients, the batch
    bound = busy[True] - _busy_with(g, SERIAL, 0.0)[0]
    assert bound >= 6 * 2 * 1e-3 - 3e-3


def test_gradient_sums_in_flight_together_overlap_their_latency() -> None:
    """Over two ranks Legion folds each weight's gradient copies as soon as that gradient is
    done; the folds' round trips overlap (Transfer.latency), their bytes share the link. Six
    layers' sums with a 10 ms fold latency cost about one round trip more, not six."""
    from unity_legion.cost.machine import LinkSpec

    g, _ = _chain(6)
    steps = {}
    for latency in (0.0, 10e-3):
        base = preset("local", 2, 1)
        machine = replace(base, runtime=replace(base.runtime, reduction="fold", fusion=128,
                                                fold=LinkSpec(1e12, latency)))
        steps[latency] = Simulator(machine, optimizer_slots=0).simulate(g, 64, {}, None,
                                                                        DP).step_time
    extra = steps[10e-3] - steps[0.0]
    # two copies folded: about one round trip of 2 x 10 ms (partly hidden behind the step's
    # other work); twelve sums (kernels and biases) one after another would add 240 ms
    assert 10e-3 <= extra < 2 * 2 * 10e-3


@pytest.mark.parametrize("fusion", [0, 128])
def test_over_several_nodes_the_loss_read_runs_while_the_step_does(fusion: int) -> None:
    # one node: the read comes after the work; two: a round trip from its issue (RuntimeSpec.sync)
    g, _ = _chain(6, 256)
    serial = OpConfig.of({"sample": 1}, MachineView.contiguous("cpu", 0, 1))

    def step(nodes: int, sync: float) -> float:
        base = _machine(fusion, "fold").with_nodes(nodes, 1)
        m = replace(base, runtime=replace(base.runtime, sync=sync))
        return Simulator(m, optimizer_slots=0).simulate(g, 256, {}, None, serial).step_time

    assert step(1, 1e-2) - step(1, 0.0) == pytest.approx(1e-2)
    no_read = step(2, 0.0)
    assert step(2, 1e-6) == pytest.approx(no_read)     # a short trip: the work's end decides
    assert step(2, 10.0) < no_read + 10.0               # issued before the work is done
    assert step(2, 20.0) - step(2, 10.0) == pytest.approx(10.0)


@pytest.mark.parametrize("nodes", [1, 2])
def test_one_read_per_group_of_steps_is_shared_by_its_steps(nodes: int) -> None:
    # fit's steps_per_execution: one step in N reads and waits; the others end with their work
    g, _ = _chain(6, 256)
    base = _machine(128, "fold").with_nodes(nodes, 2 // nodes)
    m = replace(base, runtime=replace(base.runtime, sync=0.05))

    def step(group: int, sync: float = 0.05) -> float:
        machine = replace(m, runtime=replace(m.runtime, sync=sync))
        return Simulator(machine, optimizer_slots=0, steps_per_read=group).simulate(
            g, 256, {}, None, DP).step_time

    each = step(1)
    assert step(1, 0.0) < each                     # the read costs something
    free = 2 * step(2) - each                      # a step that does not wait
    assert 0 < free < each
    for group in (4, 8):
        # the steps that do not wait, plus 1/N of what the waiting one adds
        assert step(group) == pytest.approx(free + (each - free) / group, rel=1e-6)
    assert step(8) < step(2) < each
    assert step(8, 0.5) - step(8) == pytest.approx((step(1, 0.5) - each) / 8, rel=1e-6)


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_steps_per_read_is_checked(value) -> None:
    with pytest.raises(ValueError, match="steps_per_read"):
        Simulator(_machine(128), steps_per_read=value)
