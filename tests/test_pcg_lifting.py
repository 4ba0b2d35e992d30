"""Lifting a computation graph to a PCG: parallel shapes follow from each operator's launches
under its configuration, and parallel operators appear exactly where neighbours disagree."""

from __future__ import annotations

import pytest

from unity_legion.operators.activation import Activation
from unity_legion.operators.linear import Linear
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.pcg.parallel_ops import Combine, FusedParallelOp, Partition, Reduce, Replicate
from unity_legion.pcg.pcg import PCGError, data_parallel_config, lift, node_shapes
from unity_legion.types import OpConfig, TensorShape


def mlp() -> tuple[ComputationGraph, list[int]]:
    g = ComputationGraph()
    x = g.add_input(TensorShape((None, 16)), "x")
    (h,) = g.add_node(Linear(32, activation="relu"), [x], "fc1")
    (o,) = g.add_node(Linear(8), [h], "fc2")
    return g, [o]


def test_linear_shapes_under_each_form() -> None:
    x = TensorShape((12, 16))
    ns = node_shapes(Linear(32), [x], OpConfig.of({"sample": 2}))
    assert ns.inputs[0].degrees == (2, 1) and ns.outputs[0].degrees == (2, 1)
    assert ns.weights["kernel"].copy_degree == 2          # data parallel replicates weights
    ns = node_shapes(Linear(32), [x], OpConfig.of({"out": 4}))
    assert ns.inputs[0].copy_degree == 4                  # column-parallel reads x whole
    assert ns.weights["kernel"].degrees == (1, 4) and ns.outputs[0].degrees == (1, 4)
    ns = node_shapes(Linear(32), [x], OpConfig.of({"in": 2, "sample": 2}))
    assert ns.inputs[0].degrees == (2, 2)
    assert ns.outputs[0].sum_degree == 2 and ns.outputs[0].degrees == (2, 1)
    assert ns.weights["kernel"].degrees == (2, 1) and ns.weights["kernel"].copy_degree == 2


def test_data_parallel_mlp_moves_only_at_the_ends() -> None:
    g, outs = mlp()
    dp = data_parallel_config(4)
    pcg = lift(g, 12, {}, outs, default=dp)
    kinds = [type(n.op) for n in pcg.parallel_nodes()]
    assert kinds == [Partition, Combine]                  # scatter the batch, gather the output
    assert pcg.tensors[pcg.outputs[0]].degrees == (1, 1)


def test_megatron_mlp_needs_no_movement_between_its_layers() -> None:
    g, outs = mlp()
    pcg = lift(g, 12, {0: OpConfig.of({"out": 4}), 1: OpConfig.of({"in": 4})}, outs)
    ops = [n.op for n in pcg.parallel_nodes()]
    # x replicated to the 4 column shards; fc2's partial sums reduced at the end
    assert ops == [Replicate(4), Reduce(4)]


def test_mismatched_neighbours_get_a_fused_conversion() -> None:
    g, outs = mlp()
    pcg = lift(g, 12, {0: OpConfig.of({"sample": 2}), 1: OpConfig.of({"out": 2})}, outs)
    between = [n for n in pcg.parallel_nodes() if n.name.startswith("fc2:in")]
    assert len(between) == 1
    assert between[0].op == FusedParallelOp((Combine(0, 2), Replicate(2)))
    assert pcg.bytes_moved() > 0


def test_bad_configurations_name_the_operator() -> None:
    g, outs = mlp()
    with pytest.raises(PCGError, match="operator 'fc1'.*cannot split axis 'heads'"):
        lift(g, 12, {0: OpConfig.of({"heads": 2})}, outs)
    with pytest.raises(PCGError, match="operator 'fc2'.*axis 'out' has extent 8, cannot split it 16"):
        lift(g, 12, {1: OpConfig.of({"out": 16})}, outs)
    with pytest.raises(PCGError, match="cannot split axis 'in'"):   # fused relu: no partial sums
        node_shapes(Linear(4, activation="relu"), [TensorShape((3, 5))], OpConfig.of({"in": 2}))


def test_activation_default_is_sample_only() -> None:
    ns = node_shapes(Activation("relu"), [TensorShape((6, 4))], OpConfig.of({"sample": 3}))
    assert ns.outputs[0].degrees == (3, 1)
