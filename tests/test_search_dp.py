"""The machine-mapping DP (unity_legion.search): exact against brute force on small graphs, sensible
choices, memory-aware, consistent with the simulator. Pure Python, no runtime."""

from __future__ import annotations

import dataclasses
import random

import pytest

from graphs import self_attention
from unity_legion.cost import Simulator, preset
from unity_legion.cost.op_cost import AnalyticCost
from unity_legion.models import ZOO
from unity_legion.operators.activation import Activation
from unity_legion.operators.concat import Concat
from unity_legion.operators.elementwise import Add
from unity_legion.operators.embedding import Embedding
from unity_legion.operators.linear import Linear
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.search import (Parallel, Series, best_mapping, brute_force_mapping,
                                 candidate_configs, plan_cost)
from unity_legion.search.cache import MappingCache
from unity_legion.search.decompose import GraphIndex
from unity_legion.search.dp import setup
from unity_legion.strategy.builtin import data_parallel
from unity_legion.types import DataType, TensorShape

FOUR = preset("dgx-h100", 1, 4)          # one node of 4 GPUs
TWO_BY_TWO = preset("dgx-h100", 2, 2)    # 2 nodes x 2 GPUs: node and device splits
SMALL_AXES = lambda node: {"sample", "out", "features", "columns"}  # noqa: E731
# attention split by heads only: its input is gathered whole, once for query and value
HEAD_AXES = lambda node: ({"heads"} if node.op.op_type == "multi_head_attention"  # noqa: E731
                          else {"sample", "out"})


def chain(width: int = 256, layers: int = 3) -> ComputationGraph:
    g = ComputationGraph()
    t = g.add_input(TensorShape((None, width)), "x")
    for i in range(layers):
        (t,) = g.add_node(Linear(width, activation="relu"), [t], f"fc{i}")
    return g


def residual() -> ComputationGraph:
    g = ComputationGraph()
    x = g.add_input(TensorShape((None, 128)), "x")
    (a,) = g.add_node(Linear(128), [x], "a")
    (b,) = g.add_node(Linear(128), [a], "b")
    (s,) = g.add_node(Add(), [a, b], "add")
    g.add_node(Linear(16), [s], "head")
    return g


def branches(join: str) -> ComputationGraph:
    g = ComputationGraph()
    x = g.add_input(TensorShape((None, 256)), "x")
    (a,) = g.add_node(Linear(512), [x], "left")
    (b,) = g.add_node(Linear(512), [x], "right")
    (j,) = g.add_node(Add() if join == "add" else Concat(), [a, b], "join")
    g.add_node(Linear(8), [j], "head")
    return g


def two_inputs() -> ComputationGraph:
    """Two sources (a table and a dense MLP) joined by a concat: a parallel block at the top."""
    g = ComputationGraph()
    ids = g.add_input(TensorShape((None, 1), DataType.INT64), "ids")
    dense = g.add_input(TensorShape((None, 64)), "dense")
    (e,) = g.add_node(Embedding(5000, 64, combiner="sum"), [ids], "table")
    (d,) = g.add_node(Linear(64), [dense], "bottom")
    (c,) = g.add_node(Concat(), [e, d], "cat")
    g.add_node(Linear(4), [c], "top")
    return g


def random_graph(seed: int, nodes: int = 5) -> ComputationGraph:
    rng = random.Random(seed)
    g = ComputationGraph()
    tensors = [g.add_input(TensorShape((None, 64)), "x")]
    for i in range(nodes):
        if len(tensors) >= 2 and rng.random() < 0.4:
            a, b = rng.sample(tensors, 2)
            (t,) = g.add_node(Add(), [a, b], f"add{i}")
        else:
            (t,) = g.add_node(Linear(64), [rng.choice(tensors)], f"fc{i}")
        tensors.append(t)
    return g


def _same(graph: ComputationGraph, batch: int, machine, **kw) -> None:
    dp = best_mapping(graph, batch, machine, **kw)
    bf = brute_force_mapping(graph, batch, machine, **kw)
    assert dp.estimate == pytest.approx(bf.estimate, rel=1e-9)
    mc = setup(graph, batch, machine, None, None, kw.get("allowed_axes"), None)
    assert dp.stats["blocks_solved"] > 0
    assert plan_cost(mc, dp.configs, 0.0) + mc.constant() == pytest.approx(dp.estimate)


@pytest.mark.parametrize("name,graph,machine,axes", [
    ("chain", chain(), FOUR, None),
    ("residual", residual(), FOUR, SMALL_AXES),
    ("branches-add", branches("add"), TWO_BY_TWO, SMALL_AXES),
    ("branches-concat", branches("concat"), TWO_BY_TWO, SMALL_AXES),
    ("embedding", two_inputs(), TWO_BY_TWO, SMALL_AXES),
    ("self-attention", self_attention(16, 64, 4, 8), TWO_BY_TWO, HEAD_AXES),
    ("self-attention-cpu", self_attention(16, 64, 4, 8), preset("local"), HEAD_AXES),
])
def test_dp_equals_brute_force(name, graph, machine, axes) -> None:
    _same(graph, 64, machine, allowed_axes=axes)


@pytest.mark.parametrize("name,graph,machine", [
    ("branches-concat", branches("concat"), FOUR),
    ("embedding", two_inputs(), FOUR),
])
def test_dp_equals_brute_force_with_uneven_splits(name, graph, machine) -> None:
    _same(graph, 64, machine, allowed_axes=SMALL_AXES, uneven_splits=True)


@pytest.mark.parametrize("seed", range(4))
def test_dp_equals_brute_force_on_random_graphs(seed) -> None:
    _same(random_graph(seed), 32, FOUR, allowed_axes=SMALL_AXES)


def test_decomposition_shapes() -> None:
    g = branches("concat")
    index = GraphIndex(g, [n.outputs[0] for n in g.nodes[-1:]])
    top = index.block([n.id for n in g.nodes])
    assert isinstance(top, Series) and top.own == (2, 3)      # join, head are bottlenecks
    assert isinstance(index.block(top.segments[0]), Parallel)  # left | right
    g = two_inputs()
    index = GraphIndex(g, [g.nodes[-1].outputs[0]])
    top = index.block([n.id for n in g.nodes])
    assert isinstance(index.block(top.segments[0]), Parallel)


def test_candidates_respect_axes_devices_and_extents() -> None:
    g = chain(width=4, layers=1)
    node = g.nodes[0]
    shapes = [TensorShape((64, 4))]
    cands = candidate_configs(node, shapes, 8, "gpu")
    assert cands[0].degrees == ()
    assert all(c.num_points <= 8 and c.degree("out") <= 4 and c.degree("in") <= 4 for c in cands)
    assert len({c.degrees for c in cands}) == len(cands)
    only = candidate_configs(node, shapes, 8, "gpu", allowed_axes={"sample"})
    assert {c.degree("sample") for c in only} == {1, 2, 4, 8} and len(only) == 4
    assert candidate_configs(node, shapes, 8, "gpu") == cands   # deterministic


def test_wide_linear_goes_tensor_parallel() -> None:
    g = ComputationGraph()
    x = g.add_input(TensorShape((None, 8192)), "x")
    g.add_node(Linear(8192), [x], "wide")
    r = best_mapping(g, 8, FOUR)
    cfg = r.configs[0]
    assert cfg.num_points == 4 and cfg.degree("sample") < 4, cfg
    sim = Simulator(FOUR)
    dp_plan = data_parallel(g, 4, "gpu", 8).plan(g)
    assert sim.simulate(g, 8, r.configs).step_time < sim.simulate(g, 8, dp_plan).step_time


def test_memory_aware() -> None:
    # wide layers at a large batch: the fastest plan is data parallel (replicated weights),
    # plans that shard the weights need less memory
    g = chain(width=4096, layers=3)
    roomy = best_mapping(g, 4096, FOUR)
    assert roomy.fits
    need = roomy.peak_memory
    tiny = dataclasses.replace(FOUR, device=dataclasses.replace(FOUR.device, memory=1024.0))
    least = best_mapping(g, 4096, tiny)
    assert not least.fits and least.excess == pytest.approx(least.peak_memory - 1024.0)
    assert "excess" in repr(least)
    assert least.peak_memory < need
    # a device that holds less than the fastest plan needs, but enough for a sharded plan
    cap = (need + least.peak_memory) / 2
    tight = dataclasses.replace(FOUR, device=dataclasses.replace(FOUR.device, memory=cap))
    r = best_mapping(g, 4096, tight)
    assert r.fits and r.peak_memory <= cap and r.memory_weight > 0
    off = best_mapping(g, 4096, tiny, memory_limit=False)
    assert not off.fits


@pytest.mark.parametrize("name", ["mlp", "bert_large"])
def test_never_worse_than_data_parallel_in_the_simulator(name) -> None:
    model = ZOO[name].build_small()
    g = model.graph
    for machine in (FOUR, preset("dgx-h100", 2)):
        n = machine.num_devices
        r = best_mapping(g, 64, machine)
        sim = Simulator(machine)
        ours = sim.simulate(g, 64, r.configs).step_time
        base = sim.simulate(g, 64, data_parallel(g, n, "gpu", 64).plan(g)).step_time
        assert ours <= base * 1.0001, (name, n, ours, base)
        s = r.strategy(model)
        assert s.source == "search" and set(s.configs) == {nd.name for nd in g.nodes}


def test_deterministic() -> None:
    g = ZOO["bert_large"].build_small().graph
    a = best_mapping(g, 32, TWO_BY_TWO)
    b = best_mapping(g, 32, TWO_BY_TWO)
    assert a.configs == b.configs and a.estimate == b.estimate


# --------------------------------------------------------------------------- cross-call cache

def unfuse(graph: ComputationGraph, name: str) -> ComputationGraph:
    """A copy of `graph` with node `name`'s fused activation split off (a Linear without it and
    an Activation): a one-node rewrite like those of Unity's substitutions."""
    g = ComputationGraph()
    remap = {t: g.add_input(graph.tensors[t].shape, graph.tensors[t].name) for t in graph.inputs}
    for n in graph.nodes:
        ins = [remap[t] for t in n.inputs]
        if n.name == name:
            (t,) = g.add_node(dataclasses.replace(n.op, activation="linear"), ins, n.name)
            outs: tuple[int, ...] = g.add_node(Activation(n.op.activation), [t], n.name + "_act")
        else:
            outs = g.add_node(n.op, ins, n.name)
        remap.update(zip(n.outputs, outs))
    return g


def test_cache_gives_the_same_plans_and_hits() -> None:
    g = ZOO["bert_large"].build_small().graph
    layer = next(n.name for n in g.nodes
                 if isinstance(n.op, Linear) and n.op.activation not in ("linear", None))
    g2 = unfuse(g, layer)
    cache = MappingCache()
    for graph in (g, g, g2):
        before = dataclasses.replace(cache.stats)
        cached = best_mapping(graph, 32, TWO_BY_TWO, cache=cache)
        fresh = best_mapping(graph, 32, TWO_BY_TWO)
        assert cached.estimate == pytest.approx(fresh.estimate, rel=1e-12)
        assert cached.configs == fresh.configs
    # the rewritten graph reused the unchanged layers' blocks and tables
    assert cache.stats.block_hits > before.block_hits
    assert cache.stats.table_hits > before.table_hits
    second = best_mapping(g, 32, TWO_BY_TWO, cache=cache)
    assert second.stats["blocks_solved"] == 0 and second.stats["blocks_reused"] > 0


def test_cache_is_bound_to_its_context() -> None:
    cache = MappingCache()
    best_mapping(chain(), 64, FOUR, cache=cache)
    best_mapping(chain(), 64, FOUR, AnalyticCost(), cache=cache)     # an identical cost model
    with pytest.raises(ValueError):
        best_mapping(chain(), 64, TWO_BY_TWO, cache=cache)
    with pytest.raises(ValueError):
        best_mapping(chain(), 32, FOUR, cache=cache)


def diamonds(branches_: int = 2, width: int = 1024) -> ComputationGraph:
    """Identical branches, each with a diamond inside (a segment block whose boundary lies on
    the branch's own devices: solved on one half of the machine, reused shifted on the other)."""
    g = ComputationGraph()
    x = g.add_input(TensorShape((None, width)), "x")
    outs = []
    for i in range(branches_):
        (a,) = g.add_node(Linear(width), [x], f"a{i}")
        (p,) = g.add_node(Linear(width), [a], f"p{i}")
        (q,) = g.add_node(Linear(width), [a], f"q{i}")
        (t,) = g.add_node(Add(), [p, q], f"s{i}")
        outs.append(t)
    (t,) = g.add_node(Concat(), outs, "cat")
    g.add_node(Linear(8), [t], "head")
    return g


def test_reused_blocks_are_moved_to_their_devices() -> None:
    g = diamonds()
    r = best_mapping(g, 8, TWO_BY_TWO, allowed_axes=SMALL_AXES)
    assert r.stats["blocks_reused"] > 0
    mc = setup(g, 8, TWO_BY_TWO, None, None, SMALL_AXES, None)
    # the shifted plan is priced as the DP priced it (a wrong shift would overlap devices)
    assert plan_cost(mc, r.configs, 0.0) + mc.constant() == pytest.approx(r.estimate)
    at = {n.name: r.configs[n.id].view.start for n in g.nodes}
    if at["a0"] // 2 != at["a1"] // 2:     # branches on different nodes: the same layout
        assert at["q1"] - at["p1"] == at["q0"] - at["p0"]
