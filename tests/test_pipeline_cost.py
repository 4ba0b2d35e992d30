"""The pipelined step's price follows what the executor does (issue 14; cost/pipeline.py): the
Simulator's own timelines, with each stage's passes over each micro-batch issued in the
schedule's order. Pure Python, no runtime."""

from __future__ import annotations

import dataclasses

import pytest

from unity_legion.cost import Simulator, preset
from unity_legion.cost.machine import LinkSpec, RuntimeSpec
from unity_legion.cost.op_cost import OpCost
from unity_legion.operators.linear import Linear
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.pcg.pipeline import PipelineSpec, Stage
from unity_legion.pcg.pcg import data_parallel_config
from unity_legion.types import MachineView, OpConfig, TensorShape

FOUR = preset("dgx-h100", 1, 4)
FAST = LinkSpec(1e30, 0.0)
# no task overheads, free memory traffic and links: only the kernels' times
IDEAL = dataclasses.replace(FOUR, device=dataclasses.replace(
    FOUR.device, launch_overhead=0.0, mem_bandwidth=1e30), intra=FAST, inter=FAST)


@dataclasses.dataclass
class FixedCost:
    """Every operator `forward` seconds forward, twice that backward, one launch each."""

    forward: float = 1e-3

    def op_cost(self, op, inputs, config, device, needs_input_grad=None) -> OpCost:
        return OpCost(self.forward, 2 * self.forward)


def chain(layers: int, width: int = 256) -> ComputationGraph:
    g = ComputationGraph()
    t = g.add_input(TensorShape((None, width)), "x")
    for i in range(layers):
        (t,) = g.add_node(Linear(width, activation="relu"), [t], f"fc{i}")
    return g


def even_stages(g: ComputationGraph, stages: int, m: int, schedule: str,
                devices: list[tuple[int, ...]] | None = None) -> PipelineSpec:
    names = [n.name for n in g.nodes]
    per = len(names) // stages
    devices = devices or [(k,) for k in range(stages)]
    return PipelineSpec(tuple(Stage(f"s{k}", tuple(names[k * per:(k + 1) * per]), devices[k])
                              for k in range(stages)), m, schedule)


def placed(g: ComputationGraph, spec: PipelineSpec, kind: str = "gpu") -> dict[int, OpConfig]:
    where = {op: st.devices for st in spec.stages for op in st.operators}
    return {n.id: OpConfig.of({}, MachineView(kind, where[n.name][0], (1,), (1,)))
            for n in g.nodes}


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("m", [1, 2, 4, 8])
def test_bubble_is_s_minus_1_over_m_plus_s_minus_1_without_overheads(schedule, m):
    # 3 equal stages of 2 operators: f + b = 2 x (1 + 2) ms per micro-batch; both schedules fill
    # and drain the pipe in S - 1 slots (the runtime runs a stage's next ready pass meanwhile)
    g = chain(6)
    spec = even_stages(g, 3, m, schedule)
    r = Simulator(IDEAL, FixedCost()).simulate_pipeline(g, 32, placed(g, spec), spec)
    slot, S = 6e-3, 3
    assert r.step_time == pytest.approx((m + S - 1) * slot)
    assert r.bubble == pytest.approx((S - 1) * slot)
    assert r.bubble / r.step_time == pytest.approx((S - 1) / (m + S - 1))


@pytest.mark.parametrize("m", [1, 2, 4])
def test_m_micro_batches_move_m_boundary_transfers_each_way(m):
    # free kernels, a slow link between the two stages' devices: the step is the boundary's
    # copies, one per micro-batch forward and its gradient back; they take the link one after
    # another, and their messages' latency is a delay the copies in flight overlap
    slow = LinkSpec(1e9, 1e-4)
    machine = dataclasses.replace(IDEAL, intra=slow)
    g = chain(2)
    spec = even_stages(g, 2, m, "gpipe")
    r = Simulator(machine, FixedCost(0.0)).simulate_pipeline(g, 64, placed(g, spec), spec)
    busy = (64 // m) * 256 * 4 / slow.bandwidth
    assert r.transfers == pytest.approx((slow.latency + busy,))
    assert r.step_time == pytest.approx(2 * (m * busy + slow.latency))
    assert r.work == pytest.approx(2 * m * busy)


def test_a_pipelined_step_is_priced_as_replayed_not_walked():
    # the executor re-issues pipelined steps from a recording as it does plain ones: their
    # host costs are `issue`, not the walked steps' walk_issue
    replayed = RuntimeSpec(issue=1e-4)
    walked = dataclasses.replace(replayed, walk_issue=1e-3)
    g = chain(4)
    spec = even_stages(g, 2, 2, "1f1b")
    hosts = [Simulator(dataclasses.replace(IDEAL, runtime=rt), FixedCost(1e-5))
             .simulate_pipeline(g, 32, placed(g, spec), spec) for rt in (replayed, walked)]
    for r in hosts:
        assert r.host == pytest.approx(r.launches * 1e-4)


def test_a_host_issue_bound_pipeline_is_priced_by_its_issue_time():
    # 1 ms of the host per launch, 10 us kernels: the devices wait for the host
    issuing = dataclasses.replace(IDEAL, runtime=RuntimeSpec(issue=1e-3))
    g = chain(4)
    steps = []
    for m in (2, 4):
        spec = even_stages(g, 2, m, "1f1b")
        r = Simulator(issuing, FixedCost(1e-5)).simulate_pipeline(g, 32, placed(g, spec), spec)
        # per micro-batch: 4 forward, 4 backward launches and the loss; per step the attached
        # arrays (input, target) and 8 updates (each layer's kernel and bias)
        assert r.launches == 9 * m + 2 + 8
        assert r.host == pytest.approx(r.launches * 1e-3)
        assert r.host <= r.step_time <= r.host + 1e-3
        steps.append(r.step_time)
    assert steps[1] / steps[0] == pytest.approx((9 * 4 + 10) / (9 * 2 + 10), rel=0.02)


def test_on_gpus_the_host_issues_while_the_devices_compute():
    # 0.1 ms per launch, 1 ms kernels: issue hides behind the stages' work (no shared cores)
    machine = dataclasses.replace(IDEAL, runtime=RuntimeSpec(issue=1e-4))
    g = chain(6)
    spec = even_stages(g, 3, 4, "1f1b")
    r = Simulator(machine, FixedCost()).simulate_pipeline(g, 32, placed(g, spec), spec)
    ideal = Simulator(IDEAL, FixedCost()).simulate_pipeline(g, 32, placed(g, spec), spec)
    assert r.host == pytest.approx(r.launches * 1e-4)
    assert r.step_time < ideal.step_time + 0.25 * r.host   # mostly overlapped
    assert r.step_time >= ideal.step_time


def test_cpu_processors_of_one_rank_share_memory_across_the_boundary():
    g = chain(2)
    spec = even_stages(g, 2, 2, "gpipe", [(0,), (1,)])
    one_rank = preset("local", 1, 2)
    r = Simulator(one_rank).simulate_pipeline(g, 16, placed(g, spec, "cpu"), spec)
    assert r.transfers == (0.0,)
    # on two ranks the activations cross between them
    two_ranks = preset("local", 2, 1)
    r2 = Simulator(two_ranks).simulate_pipeline(g, 16, placed(g, spec, "cpu"), spec)
    x = two_ranks.inter.latency + 8 * 256 * 4 / two_ranks.inter.bandwidth
    assert r2.transfers == pytest.approx((x,))


@pytest.mark.parametrize("machine", [FOUR, preset("local", 1, 4)], ids=["gpu", "local-cpu"])
def test_one_stage_one_micro_batch_is_the_unpipelined_step(machine):
    # (both re-issued from a recording, with their tasks' own temporaries)
    g = chain(4)
    kind = machine.device.kind
    spec = PipelineSpec((Stage("all", tuple(n.name for n in g.nodes), (0, 1, 2, 3)),), 1)
    plan = {n.id: data_parallel_config(4, 32, kind) for n in g.nodes}
    sim = Simulator(machine, FixedCost())
    piped = sim.simulate_pipeline(g, 32, plan, spec)
    plain = sim.simulate(g, 32, plan)
    # the same launches; the pipelined timeline lets a task whose inputs are ready run in an
    # earlier idle period of its devices (an update before another's gradient sum), which the
    # unpipelined one, in issue order, does not
    assert piped.launches == plain.launches
    assert piped.step_time == pytest.approx(plain.step_time, rel=0.01)
    assert piped.step_time <= plain.step_time * (1 + 1e-9)


def _piped_steps(nodes: int, runtimes: list[RuntimeSpec]) -> list[float]:
    """The step time of a 4-layer chain in 2 GPipe stages of 4 micro-batches on 4 devices over
    `nodes` nodes, with each of `runtimes`."""
    g = chain(4)
    spec = even_stages(g, 2, 4, "gpipe")
    base = dataclasses.replace(IDEAL, nodes=nodes, devices_per_node=4 // nodes)
    return [Simulator(dataclasses.replace(base, runtime=rt), FixedCost())
            .simulate_pipeline(g, 32, placed(g, spec), spec).step_time for rt in runtimes]


def test_the_step_reads_each_micro_batch_on_one_rank_and_one_gather_over_several():
    # a blocking read per micro-batch's loss on one node, after the work; over several nodes
    # the executor gathers them into one store and maps it once (executor.read_all), a round
    # trip from the read's issue that runs while the step's work does
    for nodes in (1, 2):
        no_read, read, longer = _piped_steps(nodes, [RuntimeSpec(sync=s) for s in (0.0, 10.0,
                                                                                 20.0)])
        if nodes == 1:
            assert read - no_read == pytest.approx(4 * 10.0)
            assert longer - read == pytest.approx(4 * 10.0)
        else:
            assert longer - read == pytest.approx(10.0)
            assert read - 10.0 < no_read   # issued before the work is done


def test_a_pipelined_step_posts_its_losses_and_only_fences():
    # (executor/pipeline.py posts every micro-batch's losses to the step's box: the step
    # ends with a fence, and over several ranks the boxes' exchange, posted_sync, whatever a
    # read would cost)
    for nodes in (1, 2):
        short, cheap, dear = _piped_steps(nodes, [RuntimeSpec(sync=s, posted_sync=p) for s, p in
                                                  ((10.0, 0.0), (20.0, 0.0), (20.0, 5.0))])
        assert cheap == pytest.approx(short)
        assert dear - cheap == pytest.approx(5.0)


def test_pipelined_steps_issued_in_groups_share_one_read():
    # fit's steps_per_execution runs pipelined steps in groups too (PipelineRunner.train_steps):
    # one step in N reads its micro-batches' losses and waits
    g = chain(4)
    spec = even_stages(g, 2, 4, "gpipe")
    machine = dataclasses.replace(IDEAL, runtime=RuntimeSpec(sync=10.0))

    def step(group: int) -> float:
        return Simulator(machine, FixedCost(), steps_per_read=group).simulate_pipeline(
            g, 32, placed(g, spec), spec).step_time

    each, grouped = step(1), step(4)
    assert each - grouped == pytest.approx(3 / 4 * 4 * 10.0, rel=0.01)   # 3 of 4 reads saved
    assert step(2) > grouped
