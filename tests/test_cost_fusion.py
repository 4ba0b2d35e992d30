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
    # across ranks (nodes) the executor folds: partial sums are one rank's
    two = replace(_machine(128), nodes=2, devices_per_node=1)
    assert Simulator(two, optimizer_slots=0)._grad_sync_time(weight, [0, 1]) == pytest.approx(
        folded)


def test_runtime_fusion_figures_are_checked() -> None:
    base = preset("local").runtime
    with pytest.raises(MachineError, match="fusion must be an integer >= 0"):
        replace(base, fusion=-1)
    with pytest.raises(MachineError, match="fused_step must be a number >= 0"):
        replace(base, fused_step=-1.0)
