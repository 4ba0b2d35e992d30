"""Pipeline parallelism in planning (issue 14 items 2, 3, 7): the Pipeline and Batch parallel
operators, pipelined strategies (JSON, validation, explain), the pipelined step's price (bubbles,
stage transfers, memory per schedule) and the search placing stages. Pure Python, no runtime."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from unity_legion.cost import Simulator, preset
from unity_legion.cost.op_cost import OpCost
from unity_legion.operators.elementwise import Add
from unity_legion.operators.linear import Linear
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.pcg.parallel_ops import Batch, Partition, Pipeline
from unity_legion.pcg.pipeline import (PipelineError, PipelineSpec, Stage, boundary_tensors,
                                       lift_pipelined)
from unity_legion.search.pipeline import cut_points, linear_partition, units_of
from unity_legion.search.unity import SearchOptions, search
from unity_legion.strategy.strategy import Strategy, StrategyError
from unity_legion.types import (MachineView, OpConfig, ParallelShapeError, ParallelTensorShape,
                                TensorShape)

FOUR = preset("dgx-h100", 1, 4)


def chain(width: int = 256, layers: int = 4) -> ComputationGraph:
    g = ComputationGraph()
    t = g.add_input(TensorShape((None, width)), "x")
    for i in range(layers):
        (t,) = g.add_node(Linear(width, activation="relu"), [t], f"fc{i}")
    return g


def two_branches() -> ComputationGraph:
    """Two independent chains, a -> a2 and b -> b2, with two outputs."""
    g = ComputationGraph()
    x = g.add_input(TensorShape((None, 64)), "x")
    (a,) = g.add_node(Linear(64), [x], "a")
    (a2,) = g.add_node(Linear(64), [a], "a2")
    (b,) = g.add_node(Linear(64), [x], "b")
    (b2,) = g.add_node(Linear(64), [b], "b2")
    g.set_outputs([a2, b2])
    return g


def stages(*groups: tuple[tuple[str, ...], tuple[int, ...]], m: int = 4,
           schedule: str = "1f1b") -> PipelineSpec:
    return PipelineSpec(tuple(Stage(f"s{i}", ops, devs) for i, (ops, devs) in enumerate(groups)),
                        m, schedule)


def placed(g: ComputationGraph, spec: PipelineSpec, sample: int = 1) -> dict[int, OpConfig]:
    """Each operator data-parallel (`sample` ways) on its stage's first devices."""
    where = {op: st.devices for st in spec.stages for op in st.operators}
    out = {}
    for n in g.nodes:
        devs = where[n.name]
        out[n.id] = OpConfig.of({"sample": sample} if sample > 1 else {},
                                MachineView("gpu", devs[0], (sample,), (1,)))
    return out


# --------------------------------------------------------------------------- shape rules

def test_pipeline_cuts_the_sample_dim_and_batch_puts_it_back():
    whole = ParallelTensorShape.of(TensorShape((32, 256)), (2, 1))
    micro = Pipeline(4).infer(whole)
    assert micro.sizes == (8, 256) and micro.degrees == (2, 1)
    assert Batch(4).infer(micro) == whole
    assert Pipeline(4).backward_op() == Batch(4) and Batch(4).backward_op() == Pipeline(4)
    assert Pipeline(4).bytes_moved(whole) == 0 == Batch(4).bytes_moved(micro)
    assert Pipeline(4).describe() == "pipeline(4)"


@pytest.mark.parametrize("m, degree, words", [(3, 1, "do not divide"), (64, 1, "exceed"),
                                              (8, 8, "cannot be cut 8 ways")])
def test_pipeline_shape_errors(m, degree, words):
    shape = ParallelTensorShape.of(TensorShape((32, 16)), (degree, 1))
    with pytest.raises(ParallelShapeError, match=words):
        Pipeline(m).infer(shape)


def test_lift_pipelined_wraps_the_micro_batch_graph():
    g = chain()
    spec = stages((("fc0", "fc1"), (0, 1)), (("fc2", "fc3"), (2, 3)), m=4)
    pcg = lift_pipelined(g, 32, spec, placed(g, spec, 2))
    first, last = pcg.nodes[0], pcg.nodes[-1]
    assert isinstance(first.op, Pipeline) and isinstance(last.op, Batch)
    assert pcg.tensors[pcg.inputs[0]].sizes == (32, 256)
    assert pcg.tensors[first.outputs[0]].sizes == (8, 256)
    assert pcg.tensors[pcg.outputs[0]].sizes == (32, 256)
    assert [n.id for n in pcg.nodes] == list(range(len(pcg.nodes)))
    comps = [n for n in pcg.nodes if not n.is_parallel]
    assert all(pcg.tensors[n.outputs[0]].sizes[0] == 8 for n in comps)
    assert any(isinstance(n.op, Partition) for n in pcg.nodes)   # micro-batch split over 2


# --------------------------------------------------------------------------- strategies

def pipelined_strategy(m: int = 4, schedule: str = "gpipe") -> tuple[ComputationGraph, Strategy]:
    g = chain()
    spec = stages((("fc0", "fc1"), (0, 1)), (("fc2", "fc3"), (2, 3)), m=m, schedule=schedule)
    cfgs = {g.nodes[n].name: c for n, c in placed(g, spec, 2).items()}
    return g, Strategy.for_graph(g, cfgs, source="search", device_type="gpu", devices=4,
                                 pipeline=spec)


def test_strategy_json_round_trip_keeps_the_pipeline():
    g, s = pipelined_strategy(schedule="gpipe")
    doc = json.loads(s.to_json())
    assert doc["pipeline"]["micro_batches"] == 4 and doc["pipeline"]["schedule"] == "gpipe"
    assert doc["pipeline"]["stages"][1] == {"name": "s1", "operators": ["fc2", "fc3"],
                                            "devices": [2, 3]}
    back = Strategy.from_json(s.to_json())
    assert back == s and back.pipeline == s.pipeline
    back.validate(g, 32)
    # an operator the strategy leaves out runs data-parallel on its stage's devices
    partial = dataclasses.replace(s, configs={})
    cfg = partial.config_for(g.nodes[3], 32)
    assert cfg.view.devices() == [2, 3] and cfg.degree("sample") == 2
    partial.validate(g, 32)


def test_explain_and_draw_show_the_stages(tmp_path):
    g, s = pipelined_strategy()
    text = s.explain(g, 32, machine=FOUR)
    assert "pipeline: 2 stage(s), 4 micro-batches of 8 samples, schedule gpipe" in text
    assert "s0" in text and "s1" in text and "[2:4]" in text and "bubble" in text
    s.draw(g, 32, tmp_path / "pipe.png")
    assert (tmp_path / "pipe.png").stat().st_size > 0


def test_compile_keeps_the_pipeline_in_the_plan():
    """The executor runs pipelined plans (tests/test_pipeline_exec.py): compile hands the
    stages, micro-batches and schedule over with the configurations."""
    g, s = pipelined_strategy()
    plan = s.compile(g, 32)
    assert plan.pipeline == s.pipeline
    assert {plan.configs[n.id].view.devices()[0] for n in g.nodes if n.name in ("fc2", "fc3")} \
        == {2}
    with pytest.raises(StrategyError, match="do not divide the batch"):
        s.compile(g, 30)


def strategy_doc(pipeline: dict) -> str:
    g, s = pipelined_strategy()
    doc = json.loads(s.to_json())
    doc["pipeline"] = pipeline
    return g, json.dumps(doc)


def test_overlapping_stages_are_refused_naming_the_stage():
    g, text = strategy_doc({"micro_batches": 4, "stages": [
        {"name": "first", "operators": ["fc0", "fc1"], "devices": [0, 1]},
        {"name": "second", "operators": ["fc2", "fc3"], "devices": [1, 2]}]})
    with pytest.raises(StrategyError, match=r"stage 'second' overlaps stage 'first' in devices "
                                            r"\[1\]"):
        Strategy.from_json(text)


@pytest.mark.parametrize("m, batch, words", [(3, 32, "3 micro-batches do not divide the batch "
                                                     "of 32"),
                                             (64, 32, "64 micro-batches exceed the batch of 32")])
def test_micro_batch_count_must_divide_the_batch(m, batch, words):
    g, s = pipelined_strategy(m=m)
    with pytest.raises(StrategyError, match=words):
        s.validate(g, batch)
    s.validate(g)   # the batch is not known yet: nothing to check it against


def test_a_boundary_that_cuts_no_edge_is_refused():
    g = two_branches()
    spec = stages((("a", "a2"), (0, 1)), (("b", "b2"), (2, 3)), m=2)
    s = Strategy.for_graph(g, {}, device_type="gpu", devices=4, pipeline=spec)
    with pytest.raises(StrategyError, match="boundary between stage 's0' and stage 's1' cuts "
                                            "no edge"):
        s.validate(g, 8)


def test_other_bad_pipelines_name_the_stage():
    g = chain()
    with pytest.raises(StrategyError, match="operator 'fc3' is in no stage"):
        Strategy.for_graph(g, {}, devices=4, pipeline=stages(
            (("fc0", "fc1"), (0, 1)), (("fc2",), (2, 3)))).validate(g, 8)
    with pytest.raises(StrategyError, match="stage 's0': operator 'fc1' reads 'fc0:0', made by "
                                            "the later stage 's1'"):
        Strategy.for_graph(g, {}, devices=4, pipeline=stages(
            (("fc1", "fc2", "fc3"), (0, 1)), (("fc0",), (2, 3)))).validate(g, 8)
    _, s = pipelined_strategy()
    wrong = dict(s.configs, fc3=OpConfig.of({"sample": 2}, MachineView("gpu", 0, (2,), (1,))))
    with pytest.raises(StrategyError, match=r"stage 's1': operator 'fc3' runs on devices \[0, 1\] "
                                            r"outside the stage's \[2, 3\]"):
        dataclasses.replace(s, configs=wrong).validate(g, 32)
    with pytest.raises(PipelineError, match="unknown schedule 'zigzag'"):
        stages((("fc0",), (0,)), m=2, schedule="zigzag")
    with pytest.raises(StrategyError, match="stage 's1': uses gpu device 5 but the machine has 4"):
        Strategy.for_graph(g, {}, device_type="gpu", devices=4, pipeline=stages(
            (("fc0", "fc1"), (0, 1)), (("fc2", "fc3"), (4, 5)))).validate(g, 8)


# --------------------------------------------------------------------------- the price

@dataclasses.dataclass
class FixedCost:
    """A cost model with known times: every operator 1 ms forward, 2 ms backward."""

    def op_cost(self, op, inputs, config, device, needs_input_grad=None) -> OpCost:
        return OpCost(1e-3, 2e-3)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_bubble_transfers_and_memory_against_hand_computation(schedule):
    g = chain(256, 5)
    spec = stages((("fc0", "fc1"), (0,)), (("fc2", "fc3"), (1,)), (("fc4",), (2,)), m=4,
                  schedule=schedule)
    sim = Simulator(FOUR, FixedCost(), optimizer_slots=2)
    r = sim.simulate_pipeline(g, 32, placed(g, spec), spec)
    dev = FOUR.device
    micro = 8
    out_bytes = micro * 256 * 4
    loss = dev.launch_overhead + 3 * out_bytes / dev.mem_bandwidth   # the last stage's loss
    assert [st.forward for st in r.stages] == pytest.approx([2e-3, 2e-3, 1e-3 + loss])
    assert [st.backward for st in r.stages] == pytest.approx([4e-3, 4e-3, 2e-3])
    slot = 6e-3
    assert r.slot == pytest.approx(slot)
    # one device per stage: each boundary is one copy of a micro-batch's activations
    x = FOUR.intra.latency + out_bytes / FOUR.intra.bandwidth
    assert r.transfers == pytest.approx((x, x))
    # once per step, per linear: kernel and bias updated (weight, gradient, 2 slots, each read
    # and written); no copies to sum on one device
    w_bytes = 256 * 256 * 4 + 256 * 4
    update = 2 * dev.launch_overhead + w_bytes * 8 / dev.mem_bandwidth
    assert [st.sync for st in r.stages] == pytest.approx([2 * update, 2 * update, update])
    # the step is the timeline's (tests/test_pipeline_cost.py): the busiest stage's m slots and
    # updates, plus the last stage's slot at least (it follows the first micro-batch), at most
    # the additive (m + S - 1) slots, copies, updates and losses; the bubble is what the busiest
    # device does not compute
    assert 4 * slot + 3e-3 < r.step_time <= (4 + 3 - 1) * slot + 4 * 2 * x + 2 * update + 4 * loss
    assert r.bubble == pytest.approx(r.step_time - 4 * slot - 2 * update)
    # memory: weights x (2 + slots), and the activations of the micro-batches in flight
    held = [4, 4, 4] if schedule == "gpipe" else [3, 2, 1]
    for st, layers, k, d in zip(r.stages, (2, 2, 1), held, (0, 1, 2)):
        assert st.in_flight == k
        assert r.memory[d] == pytest.approx(layers * (w_bytes * 4 + k * out_bytes))
    assert r.memory[3] == 0.0


def test_boundary_tensors_and_units():
    g = chain(64, 4)
    stage_of = {0: 0, 1: 0, 2: 1, 3: 1}
    assert boundary_tensors(g, stage_of, 2) == [[g.nodes[1].outputs[0]]]
    assert cut_points(g, g.outputs) == [1, 2, 3]
    assert units_of(g, g.outputs) == [(0,), (1,), (2,), (3,)]
    assert units_of(g, g.outputs, max_units=2) == [(0, 1), (2, 3)]
    # a residual: a feeds both h and the add, so no cut between h and the add (graph inputs
    # reach every stage directly: they never block a cut)
    r = ComputationGraph()
    x = r.add_input(TensorShape((None, 64)), "x")
    (a,) = r.add_node(Linear(64), [x], "a")
    (h,) = r.add_node(Linear(64), [a], "h")
    (y,) = r.add_node(Add(), [a, h], "y")
    r.add_node(Linear(64), [y], "z")
    assert cut_points(r, r.outputs) == [1, 3]
    assert linear_partition([1, 1, 1, 1, 4], 2) == [4]
    assert linear_partition([3, 1, 1, 1, 1, 1], 3) == [1, 3]


# --------------------------------------------------------------------------- the search

def tight(memory_gib: float):
    return dataclasses.replace(FOUR, device=dataclasses.replace(FOUR.device,
                                                                memory=memory_gib * 2**30))


def test_search_pipelines_a_model_that_fits_only_pipelined():
    # 8 x 4096^2 weights: 2 GiB with gradients and Adam's slots; 1.2 GiB per device; weights
    # split only by stages (the search may use data parallelism alone)
    g = chain(4096, 8)
    machine = tight(1.2)
    opts = SearchOptions(budget=2, only_data_parallel=True, pipeline=True)
    r = search(g, 64, machine, options=opts)
    assert r.chosen == "pipeline" and r.fits
    assert r.pipeline_stages >= 2
    assert r.baselines["pipeline"] < math.inf
    assert r.peak_memory <= machine.device.memory
    spec = r.strategy.pipeline
    assert spec is not None and 64 % spec.micro_batches == 0
    r.strategy.validate(g, 64)
    assert r.baseline_fits == {"search": False, "data_parallel": False, "expert": False,
                               "serial": False, "pipeline": True}
    # without pipelines nothing fits
    plain = search(g, 64, machine, options=dataclasses.replace(opts, pipeline=False))
    assert not plain.fits and "pipeline" not in plain.baselines


def test_search_keeps_a_small_model_unpipelined():
    g = chain(256, 4)
    r = search(g, 64, FOUR, options=SearchOptions(budget=4, pipeline=True))
    assert "pipeline" in r.baselines        # it was priced ...
    assert r.chosen != "pipeline" and r.pipeline_stages == 1   # ... and lost
    assert r.strategy.pipeline is None
