"""Placement: an operator given processors [1:2] by its plan runs only there."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from legate.core import TaskContext, VariantCode, get_legate_runtime
from legate.core import types as ty
from legate.core.task import OutputStore, task

import unity_legion.executor.executor as exmod
from unity_legion.executor.executor import GraphExecutor
from unity_legion.mappers.machine_view import MachineView
from unity_legion.mappers.placement import placed
from unity_legion.operators.linear import Linear
from unity_legion.pcg import ComputationGraph, TensorShape
from unity_legion.runtime import machine_info
from unity_legion.strategy.config import OpConfig

_SEEN: list[str] = []


@task(variants=(VariantCode.CPU,))
def _report_machine(ctx: TaskContext, out: OutputStore) -> None:
    _SEEN.append(str(ctx.machine))
    np.asarray(out)[...] = 0


def _needs_two() -> None:
    if machine_info().processors < 2:
        pytest.fail("the placement tests need LEGATE_CONFIG='--cpus 2' (make test sets it)")


def test_a_placed_launch_is_mapped_inside_its_processor_range() -> None:
    _needs_two()
    _SEEN.clear()
    store = get_legate_runtime().create_store(ty.int64, (3,))
    with placed(MachineView("cpu", 1, (1,), (1,))):
        _report_machine(store)
    get_legate_runtime().issue_execution_fence(block=True)
    assert _SEEN == ["Machine(preferred_target: CPU, CPU: Proc([1,2], 2 per node))"]


def test_an_operator_planned_on_processor_1_launches_only_there(monkeypatch) -> None:
    _needs_two()
    views: list[tuple[int, int]] = []
    real = exmod.placed

    @contextlib.contextmanager
    def spy(view):
        views.append(view.span())
        with real(view):
            yield

    g = ComputationGraph()
    x = g.add_input(TensorShape((None, 4)), "x")
    (h,) = g.add_node(Linear(3), [x], "first")
    (o,) = g.add_node(Linear(2), [h], "second")
    ex = GraphExecutor(g, [o], input_grads=True)
    ex.set_plan({1: OpConfig.of({}, MachineView("cpu", 1, (1,), (1,)))})
    rng = np.random.default_rng(0)
    for key, spec in ex.weight_specs():
        ex.set_weight(key, rng.standard_normal(spec.shape.dims).astype(np.float32))
    monkeypatch.setattr(exmod, "placed", spy)
    ex.predict_step({x: rng.standard_normal((6, 4)).astype(np.float32)})
    # forward: "first" data-parallel over both processors, "second" alone on processor 1
    assert views == [(0, 2), (1, 2)]


def test_a_plan_outside_the_machine_is_refused() -> None:
    g = ComputationGraph()
    x = g.add_input(TensorShape((None, 4)), "x")
    (o,) = g.add_node(Linear(2), [x], "only")
    ex = GraphExecutor(g, [o])
    n = machine_info().processors
    with pytest.raises(ValueError, match=rf"operator 'only': uses cpu devices \[{n}, {n + 1}\) "
                                         rf"but the machine has {n}"):
        ex.set_plan({0: OpConfig.of({}, MachineView("cpu", n, (1,), (1,)))})
