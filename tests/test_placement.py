"""Placement: an operator given processors [1:2] by its plan runs only there."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from legate.core import TaskContext, VariantCode, get_legate_runtime
from legate.core import types as ty
from legate.core.task import OutputStore, task

import unity_legion.executor.executor as exmod
import unity_legion.executor.fusion as fusion_mod
from unity_legion.executor.executor import GraphExecutor
from unity_legion.mappers.placement import placed
from unity_legion.operators.linear import Linear
from unity_legion.pcg import ComputationGraph
from unity_legion.runtime import machine_info
from unity_legion.types import MachineView, OpConfig, TensorShape

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
    monkeypatch.setattr(fusion_mod, "placed", spy)   # fused groups are placed there
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


# ---------------------------------------------------------------------------------------------
# optimizer state partitioned like its weight
# ---------------------------------------------------------------------------------------------

def _record_updates(monkeypatch) -> list[tuple[str, dict, dict, tuple[int, int]]]:
    """Spy on the executor's launches: (kernel, split per store, degrees, processor span) of
    every optimizer update."""
    records: list[tuple[str, dict, dict, tuple[int, int]]] = []
    real_issue = exmod.GraphExecutor._issue

    def spy_issue(self, launch, stores, degrees, reduced, where, *rest):
        if launch.kernel.name.startswith("optimizers."):
            records.append((launch.kernel.name,
                            {n: a.split for n, a in launch.args.items()},
                            {a: d for a, d in degrees.items() if d > 1}, where.span(),
                            tuple(stores[launch.args["param"].ref].shape)))
        return real_issue(self, launch, stores, degrees, reduced, where, *rest)

    monkeypatch.setattr(exmod.GraphExecutor, "_issue", spy_issue)
    return records


def _two_linears(first: OpConfig, second: OpConfig) -> tuple[GraphExecutor, int, int]:
    g = ComputationGraph()
    x = g.add_input(TensorShape((None, 5)), "x")
    (h,) = g.add_node(Linear(4), [x], "first")
    (o,) = g.add_node(Linear(3, use_bias=False), [h], "second")
    ex = GraphExecutor(g, [o])
    ex.set_plan({0: first, 1: second})
    rng = np.random.default_rng(1)
    for key, spec in ex.weight_specs():
        ex.set_weight(key, rng.standard_normal(spec.shape.dims).astype(np.float32))
    return ex, x, o


@pytest.mark.parametrize("rule_name", ["adam", "momentum"])
def test_optimizer_state_is_partitioned_like_its_weight(monkeypatch, rule_name: str) -> None:
    """A Linear with {"out": 2} on processors [0:2] holds its kernel split by columns (and its
    bias split) there: its update, slots included, runs over the same tiles on [0:2]. A weight
    its operator holds whole (here: the second Linear, serial on processor 1) is updated by
    rows over that operator's processors only, not over the whole job."""
    _needs_two()
    from unity_legion.executor.executor import Objective
    from unity_legion.operators.losses import MeanSquaredError
    from unity_legion.operators.optimizers import ROWS, AdamRule, SGDRule

    rule = AdamRule() if rule_name == "adam" else SGDRule(momentum=0.9)
    ex, x, o = _two_linears(OpConfig.of({"out": 2}, MachineView("cpu", 0, (2,), (1,))),
                            OpConfig.of({}, MachineView("cpu", 1, (1,), (1,))))
    records = _record_updates(monkeypatch)
    rng = np.random.default_rng(2)
    res = ex.train_step({x: rng.standard_normal((6, 5)).astype(np.float32)},
                        [rng.standard_normal((6, 3)).astype(np.float32)],
                        Objective((MeanSquaredError(),), ((),)), rule, 0.1, 1)
    assert res.applied
    slots = {"adam": ("m", "v"), "momentum": ("velocity",)}[rule_name]
    stores = ("param", "grad") + slots
    # updates go grouped by layout (so they fuse), not in weight order: find each by its shape
    by_shape = {r[4]: r for r in records}
    assert len(by_shape) == len(records) == 3
    # first/kernel (5, 4): columns split 2 ways, as the forward's "out" splits it, on [0:2]
    assert by_shape[(5, 4)][1] == {s: (None, "w1") for s in stores}
    assert by_shape[(5, 4)][2:4] == ({"w1": 2}, (0, 2))
    # first/bias (4,): split 2 ways on [0:2]
    assert by_shape[(4,)][1] == {s: ("w0",) for s in stores}
    assert by_shape[(4,)][2:4] == ({"w0": 2}, (0, 2))
    # second/kernel (4, 3), whole on processor 1: rows, one point, there
    assert by_shape[(4, 3)][1] == {s: (ROWS, None) for s in stores}
    assert by_shape[(4, 3)][2:4] == ({}, (1, 2))
    # the layout the executor reports is the one it launched
    assert ex.update_layout((0, "kernel"), 6)[:2] == ((None, "w1"), {"w1": 2})


def test_data_parallel_weights_keep_the_rows_split_over_the_view(monkeypatch) -> None:
    _needs_two()
    from unity_legion.executor.executor import Objective
    from unity_legion.operators.losses import MeanSquaredError
    from unity_legion.operators.optimizers import ROWS, SGDRule

    both = MachineView("cpu", 0, (2,), (1,))
    ex, x, o = _two_linears(OpConfig.of({"sample": 2}, both), OpConfig.of({"in": 2}, both))
    records = _record_updates(monkeypatch)
    rng = np.random.default_rng(3)
    ex.train_step({x: rng.standard_normal((6, 5)).astype(np.float32)},
                  [rng.standard_normal((6, 3)).astype(np.float32)],
                  Objective((MeanSquaredError(),), ((),)), SGDRule(momentum=0.5), 0.1, 1)
    # replicated kernel and bias: rows over the view; the second kernel is split by rows ("in")
    assert sorted((r[4], r[1]["param"], r[2], r[3]) for r in records) == sorted([
        ((5, 4), (ROWS, None), {ROWS: 2}, (0, 2)), ((4,), (ROWS,), {ROWS: 2}, (0, 2)),
        ((4, 3), ("w0", None), {"w0": 2}, (0, 2))])


def test_the_simulator_prices_the_update_layout_the_executor_runs() -> None:
    import math

    from unity_legion.cost.simulator import Simulator
    from unity_legion.pcg.pcg import node_shapes

    _needs_two()
    both, second = MachineView("cpu", 0, (2,), (1,)), MachineView("cpu", 1, (1,), (1,))
    for first_cfg in (OpConfig.of({"out": 2}, both), OpConfig.of({"in": 2}, both),
                      OpConfig.of({"sample": 2}, both), OpConfig.of({}, second)):
        ex, _, _ = _two_linears(first_cfg, OpConfig.of({}, second))
        n = ex.graph.nodes[0]
        shapes = ex._shapes(6)
        for key, _spec in ex.weight_specs():
            if key[0] != 0:
                continue
            _split, degrees, view = ex.update_layout(key, 6)
            ws = node_shapes(n.op, [shapes[t] for t in n.inputs], first_cfg).weights[key[1]]
            devices = len(first_cfg.view.devices()[:first_cfg.num_points])
            assert math.prod(degrees.values()) == Simulator.update_points(ws, devices), (
                first_cfg, key)
            assert view == first_cfg.view


# ---------------------------------------------------------------------------------------------
# non-contiguous machine views: each point on its own device
# ---------------------------------------------------------------------------------------------

_STRIDED_SCRIPT = """
import sys
import threading
sys.path.insert(0, {tests!r})
import numpy as np
from legate.core import VariantCode, get_legate_runtime
from legate.core import types as ty
from legate.core.task import OutputStore, task

import unity_legion.operators.conv2d as conv_mod
from op_check import randn, run_op
from parallel_check import compare
from unity_legion.executor.executor import GraphExecutor
from unity_legion.mappers.placement import placed
from unity_legion.operators.conv2d import Conv2D
from unity_legion.types import MachineView, OpConfig

rt = get_legate_runtime()
THREADS = []

@task(variants=(VariantCode.CPU,))
def whoami(out: OutputStore) -> None:
    THREADS.append(threading.get_ident())
    np.asarray(out)[...] = 0

# each processor runs its tasks on its own thread: learn which, from a task placed on it alone
proc_of = {{}}
store = rt.create_store(ty.int64, (1,))
for k in range(4):
    with placed(MachineView("cpu", k, (1,), (1,))):
        whoami(store)
    rt.issue_execution_fence(block=True)
    proc_of[THREADS[-1]] = k
assert len(proc_of) == 4, proc_of

seen = []
lock = threading.Lock()
def spy(name, key):
    real = getattr(conv_mod, name)
    def wrapper(*args):
        with lock:
            seen.append((name, key(*args), proc_of[threading.get_ident()]))
        return real(*args)
    setattr(conv_mod, name, wrapper)

spy("_forward_into", lambda x, k, b, out, g, c, start, in_hw: (out.shape[0],) + tuple(start))
spy("_weight_grads", lambda x, gout, dk, db, g, c, start, in_hw: (gout.shape[0],) + tuple(start))
spy("_input_grad_into", lambda pre, y, dy, k, dx, origin, *rest: (dx.shape[0],) + tuple(origin[1:3]))

def planned(config, view):
    def make(*args, **kwargs):
        ex = GraphExecutor(*args, **kwargs)
        ex.set_plan({{0: OpConfig.of(config, view)}})
        return ex
    return make

rng = np.random.default_rng(0)
op = Conv2D(3, 3, padding="same")
x = randn(rng, 3, 8, 6, 2, dtype=np.float64)
serial = run_op(op, [x])
cases = [
    # devices [0, 2]: samples 0-1 on processor 0, sample 2 on processor 2
    ({{"sample": 2}}, MachineView("cpu", 0, (2,), (2,)),
     {{(2, 0, 0): 0, (1, 0, 0): 2}}),
    # a 2-D view, devices [0, 2, 1, 3]: tile (i, j) is point 2i + j
    ({{"height": 2, "width": 2}}, MachineView("cpu", 0, (2, 2), (1, 2)),
     {{(3, 0, 0): 0, (3, 0, 3): 2, (3, 4, 0): 1, (3, 4, 3): 3}}),
]
for config, view, want in cases:
    seen.clear()
    got = run_op(op, [x], serial.weights, output_grads=serial.output_grads,
                 executor=planned(config, view))
    compare(serial, got, f"{{config}} on {{view.devices()}}")
    for name in ("_forward_into", "_weight_grads", "_input_grad_into"):
        ran = {{key: proc for n, key, proc in seen if n == name}}
        assert len([1 for n, _, _ in seen if n == name]) == len(want), (name, seen)
        assert ran == want, (config, name, ran, want)
    print("VIEW-OK", view.devices(), flush=True)
"""


def test_a_strided_view_runs_each_point_on_its_device(tmp_path) -> None:
    """A strided view (devices [0, 2]) and a 2-D view whose points are not in device order
    ([0, 2, 1, 3]) run each launch point on the view's device for it, forward and backward (the
    processor a kernel ran on is known by its thread), and equal the serial run. The old
    placement ran the view's contiguous span, [0, 3) / [0, 4): point 1 on processor 1."""
    import sys
    from pathlib import Path

    from launch import REPO, run_with_env

    script = tmp_path / "strided.py"
    script.write_text(_STRIDED_SCRIPT.format(tests=str(Path(__file__).parent)))
    proc = run_with_env([sys.executable, str(script)], REPO, "--cpus 4 --sysmem 2000", 600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert [ln for ln in proc.stdout.splitlines() if ln.startswith("VIEW-OK")] == [
        "VIEW-OK [0, 2]", "VIEW-OK [0, 2, 1, 3]"], out[-4000:]


def test_point_devices_of_views() -> None:
    assert MachineView("cpu", 0, (2,), (2,)).point_devices(2) == [0, 2]
    assert MachineView("cpu", 0, (2, 2), (1, 2)).point_devices(4) == [0, 2, 1, 3]
    assert MachineView("cpu", 1, (2,), (1,)).point_devices(1) == [1]
    # more points than devices share them in blocks
    assert MachineView("cpu", 0, (2,), (2,)).point_devices(4) == [0, 0, 2, 2]
