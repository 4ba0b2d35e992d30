"""Pipelined execution (issue 14 item 4): a pipelined strategy trains exactly as the serial run
(per-step losses and final weights, 1e-5 relative) under GPipe and 1F1B, with each stage's
launches on its own processors, micro-batches issued in the schedule's order, one update per
step; fit / evaluate / predict run pipelined; what cannot run exactly is refused before anything
launches. Needs LEGATE_CONFIG="--cpus 2" (two stages of one processor); 4 processors and 2 ranks
run in fresh processes."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest

import unity_legion.executor.executor as exmod
import unity_legion.executor.fusion as fusion_mod
from launch import REPO, run_with_env
from unity_legion import keras
from unity_legion.pcg.pipeline import (PipelineError, PipelineSpec, Stage, micro_batch_sizes,
                                       schedule_order, stage_sequence)
from unity_legion.runtime import machine_info
from unity_legion.strategy import Strategy, StrategyError
from unity_legion.types import MachineView, OpConfig

L = keras.layers
BATCH = 16


def mlp(name: str) -> keras.Model:
    x = keras.Input(shape=(12,), name=f"{name}_x")
    h = L.Dense(16, name=f"{name}_fc1")(x)
    h = L.Activation("relu", name=f"{name}_relu")(h)
    h = L.Dense(8, activation="tanh", name=f"{name}_fc2")(h)
    y = L.Dense(4, activation="softmax", name=f"{name}_out")(h)
    return keras.Model(x, y, name=name)


def serial(model: keras.Model) -> Strategy:
    return Strategy.for_graph(model, {n.name: OpConfig() for n in model.graph.nodes})


def two_stages(m: int, schedule: str, cut: int = 2):
    """Operators [:cut] on processor 0, the rest on processor 1, `m` micro-batches."""
    def strategy(model: keras.Model) -> Strategy:
        names = [n.name for n in model.graph.nodes]
        spec = PipelineSpec((Stage("front", tuple(names[:cut]), (0,)),
                             Stage("back", tuple(names[cut:]), (1,))), m, schedule)
        cfgs = {n: OpConfig.of({}, MachineView("cpu", 0 if i < cut else 1, (1,), (1,)))
                for i, n in enumerate(names)}
        return Strategy.for_graph(model, cfgs, devices=2, pipeline=spec)
    return strategy


def _data(n: int = BATCH, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 12)).astype(np.float32),
            rng.integers(0, 4, n).astype(np.int64))


def _train(strategy_of, weights, optimizer, steps: int = 5):
    model = mlp("pe")
    model.set_weights(weights)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  strategy=strategy_of(model))
    x, y = _data()
    losses = [float(model.train_on_batch(x, y)) for _ in range(steps)]
    return losses, model.get_weights(), model


def _fit_grouped(strategy_of, weights, optimizer, steps: int = 5):
    """_train's steps on the same batch as one fit epoch of `steps` batches issued together
    (steps_per_execution): the epoch's mean loss and the weights."""
    model = mlp("pe")
    model.set_weights(weights)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  strategy=strategy_of(model), steps_per_execution=steps)
    x, y = _data()
    hist = model.fit(np.tile(x, (steps, 1)), np.tile(y, steps), batch_size=len(x), epochs=1,
                     shuffle=False, verbose=0)
    return hist.history["loss"][0], model.get_weights()


def _needs_two() -> None:
    if machine_info().processors < 2:
        pytest.fail("these tests need LEGATE_CONFIG='--cpus 2' (make test sets it)")


@pytest.fixture(scope="module")
def weights():
    keras.utils.set_random_seed(3)
    return mlp("pe").get_weights()


# --------------------------------------------------------------------------- schedules (pure)

@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("stages, m", [(2, 4), (3, 5), (4, 2), (1, 3)])
def test_schedule_order_keeps_each_stage_sequence_and_dependencies(schedule, stages, m):
    order = schedule_order(stages, m, schedule)
    assert len(order) == 2 * stages * m
    for s in range(stages):
        assert [sl for sl in order if sl.stage == s] == stage_sequence(stages, m, schedule, s)
    seen = set()
    for sl in order:
        if sl.phase == "F" and sl.stage > 0:
            assert ("F", sl.stage - 1, sl.micro) in seen
        if sl.phase == "B":
            assert ("F", sl.stage, sl.micro) in seen
            if sl.stage < stages - 1:
                assert ("B", sl.stage + 1, sl.micro) in seen
        seen.add((sl.phase, sl.stage, sl.micro))
    for s in range(stages):   # activations held at once: all m (GPipe), stages - s (1F1B)
        held = peak = 0
        for sl in stage_sequence(stages, m, schedule, s):
            held += 1 if sl.phase == "F" else -1
            peak = max(peak, held)
        assert peak == (m if schedule == "gpipe" else min(m, stages - s))


def test_gpipe_issues_all_forwards_first_and_1f1b_interleaves():
    g = [f"{sl.phase}{sl.stage}{sl.micro}" for sl in schedule_order(2, 3, "gpipe")]
    assert g == ["F00", "F01", "F10", "F02", "F11", "F12", "B12", "B02", "B11", "B01", "B10",
                 "B00"]
    f = [f"{sl.phase}{sl.stage}{sl.micro}" for sl in schedule_order(2, 3, "1f1b")]
    assert f == ["F00", "F01", "F10", "B10", "B00", "F11", "F02", "B11", "B01", "F12", "B12",
                 "B02"]


def test_micro_batch_sizes():
    assert micro_batch_sizes(16, 4) == [4, 4, 4, 4]
    assert micro_batch_sizes(10, 4) == [3, 3, 2, 2]     # a short last batch of an epoch
    assert micro_batch_sizes(3, 4) == [1, 1, 1]
    with pytest.raises(PipelineError):
        micro_batch_sizes(0, 4)


# --------------------------------------------------------------------------- training

@pytest.mark.parametrize("m, schedule", [(2, "gpipe"), (4, "1f1b"), (4, "gpipe"), (16, "1f1b")])
def test_pipelined_training_equals_serial(weights, m, schedule):
    _needs_two()
    sgd = lambda: keras.optimizers.SGD(0.05)
    want, want_w, _ = _train(serial, weights, sgd())
    got, got_w, model = _train(two_stages(m, schedule), weights, sgd())
    assert want[0] != want[-1]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for a, b in zip(got_w, want_w):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert model._executor.pipeline is not None


def test_1f1b_holds_only_the_micro_batches_in_flight(weights):
    """Under 1F1B a stage's activations are stored for the micro-batches in flight on it
    (S - s: 2 on the first of two stages, 1 on the last) where GPipe stores all of them, and
    training still equals the serial run (the test above); the buffers follow the issue order."""
    from unity_legion.executor.pipeline import activation_buffers

    _needs_two()
    held = {}
    for schedule in ("gpipe", "1f1b"):
        _, _, model = _train(two_stages(8, schedule), weights, keras.optimizers.SGD(0.05),
                             steps=2)
        pool = model._executor._pool
        held[schedule] = {key[-3] for key in pool if key[0] == "act" and
                          key[-4] == "activations"}
    assert held["gpipe"] == set(range(8)) and held["1f1b"] == {0, 1}, held
    buffers = activation_buffers(schedule_order(4, 8, "1f1b"))
    assert [1 + max(i for (s, _m), i in buffers.items() if s == st) for st in range(4)] \
        == [4, 3, 2, 1]


def test_pipelined_training_with_adam_equals_serial(weights):
    _needs_two()
    want, want_w, _ = _train(serial, weights, keras.optimizers.Adam(0.01))
    got, got_w, _ = _train(two_stages(4, "1f1b", cut=3), weights, keras.optimizers.Adam(0.01))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for a, b in zip(got_w, want_w):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_rewritten_graph_runs_pipelined(weights):
    """A strategy whose substitutions rewrite the graph: its stages name the rewritten graph's
    operators (the activation split off fc2 starts the second stage)."""
    from unity_legion.executor.rewritten import RewrittenExecutor
    from unity_legion.substitutions.apply import AppliedRule

    _needs_two()

    def strategy(model: keras.Model) -> Strategy:
        front = ("pe_fc1", "pe_relu", "pe_fc2")
        spec = PipelineSpec((Stage("front", front, (0,)),
                             Stage("back", ("pe_fc2.act", "pe_out"), (1,))), 4, "gpipe")
        cfgs = {n: OpConfig.of({}, MachineView("cpu", 0 if n in front else 1, (1,), (1,)))
                for n in front + spec.stages[1].operators}
        return Strategy.for_graph(model, cfgs, devices=2, pipeline=spec, substitutions=[
            AppliedRule("unfuse_linear_activation", ("pe_fc2",))])

    want, want_w, _ = _train(serial, weights, keras.optimizers.SGD(0.05))
    got, got_w, model = _train(strategy, weights, keras.optimizers.SGD(0.05))
    assert isinstance(model._executor, RewrittenExecutor)
    assert model._executor.inner.pipeline is not None
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for a, b in zip(got_w, want_w):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_fit_evaluate_predict_run_pipelined(weights):
    """fit over 40 samples in batches of 16 (a short last batch of 8: uneven micro-batches
    of 3, 3, 2) gives the serial run's history, evaluation and predictions."""
    _needs_two()
    x, y = _data(40, seed=9)
    out = {}
    for name, strategy_of in (("serial", serial), ("pipe", two_stages(3, "1f1b"))):
        model = mlp("fp")
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.05),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                      strategy=strategy_of(model))
        hist = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        out[name] = (hist.history["loss"], model.evaluate(x, y, batch_size=16, verbose=0),
                     model.predict(x, batch_size=16, verbose=0))
    np.testing.assert_allclose(out["pipe"][0], out["serial"][0], rtol=1e-5)
    np.testing.assert_allclose(out["pipe"][1], out["serial"][1], rtol=1e-5)
    np.testing.assert_allclose(out["pipe"][2], out["serial"][2], rtol=1e-5, atol=1e-7)


def test_grouped_steps_run_pipelined(weights):
    """steps_per_execution=3 (fit, evaluate and predict issue 3 steps before one read) on a
    pipelined plan gives the serial run's one step at a time, a non-finite batch inside a
    group skipped there as here."""
    _needs_two()
    x, y = _data(40, seed=11)
    x[9, 3] = np.nan   # the second batch of 8: inside the first group
    out = {}
    for name, strategy_of, group in (("serial", serial, 1), ("pipe", two_stages(4, "gpipe"), 3)):
        model = mlp("gp")
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.05),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                      strategy=strategy_of(model), steps_per_execution=group)
        hist = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        finite = np.isfinite(x).all(axis=1)
        out[name] = (hist.history["loss"], model.get_weights(), model.optimizer.iterations,
                     model.evaluate(x[finite], y[finite], batch_size=8, verbose=0),
                     model.predict(x[finite], batch_size=8, verbose=0))
    (l1, w1, n1, e1, p1), (l3, w3, n3, e3, p3) = out["serial"], out["pipe"]
    assert n1 == n3 == 8   # 5 steps an epoch, one skipped
    np.testing.assert_allclose(l3, l1, rtol=1e-5)
    for a, b in zip(w3, w1):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(e3, e1, rtol=1e-5)
    np.testing.assert_allclose(p3, p1, rtol=1e-5, atol=1e-7)


def test_stages_launch_on_their_processors_in_the_schedules_order(weights, monkeypatch):
    """Every launch of a pipelined step (operators, loss, gradient sums, updates) runs on one
    stage's processor, never over both; the forwards go stage by stage per micro-batch in
    1F1B's order."""
    _needs_two()
    model = mlp("pl")
    model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy",
                  strategy=two_stages(2, "1f1b")(model))
    x, y = _data()
    model.train_on_batch(x, y)   # (stores made, tasks registered)
    ex = model._executor
    views: list[tuple[int, int]] = []
    passes: list[tuple[str, int, int]] = []
    real_placed, real_fwd, real_bwd = exmod.placed, ex._forward, ex._backward_nodes

    @contextlib.contextmanager
    def spy(view):
        views.append(view.span())
        with real_placed(view):
            yield

    def fwd(*a, **k):
        passes.append(("F", ex.view.start, ex._scratch_tag[-1]))
        return real_fwd(*a, **k)

    def bwd(*a, **k):
        passes.append(("B", ex.view.start, ex._scratch_tag[-1]))
        return real_bwd(*a, **k)

    monkeypatch.setattr(exmod, "placed", spy)
    monkeypatch.setattr(fusion_mod, "placed", spy)
    monkeypatch.setattr(ex, "_forward", fwd)
    monkeypatch.setattr(ex, "_backward_nodes", bwd)
    model.train_on_batch(x, y)
    assert set(views) == {(0, 1), (1, 2)}, views
    assert passes == [("F", 0, 0), ("F", 0, 1), ("F", 1, 0), ("B", 1, 0), ("B", 0, 0),
                      ("F", 1, 1), ("B", 1, 1), ("B", 0, 1)]


# --------------------------------------------------------------------------- refused

def bn_model(name: str) -> keras.Model:
    x = keras.Input(shape=(12,), name=f"{name}_x")
    h = L.Dense(16, name=f"{name}_fc1")(x)
    h = L.BatchNormalization(name=f"{name}_bn")(h)
    y = L.Dense(4, activation="softmax", name=f"{name}_out")(h)
    return keras.Model(x, y, name=name)


def test_batch_norm_is_refused_naming_the_operator_and_its_stage():
    model = bn_model("bn")
    s = two_stages(4, "gpipe")(model)
    with pytest.raises(StrategyError, match=r"stage 'front': operator 'bn_bn' \(batch_norm\) "
                                            r"normalises with its batch's statistics"):
        s.compile(model, 16, 2)
    with pytest.raises(StrategyError, match="bn_bn"):
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", strategy=s)
    # frozen (inference mode: the moving statistics) it runs exactly: accepted
    s.compile(model, 16, 2, frozen=[(n.id, w.name) for n in model.graph.nodes
                                   if n.name == "bn_bn" for w in n.weights])


def test_bad_pipelines_are_refused_before_anything_runs():
    model = mlp("bad")
    names = [n.name for n in model.graph.nodes]
    with pytest.raises(StrategyError, match="do not divide the batch"):
        two_stages(3, "gpipe")(model).compile(model, 16, 2)
    with pytest.raises(StrategyError, match="exceed the batch"):
        two_stages(32, "gpipe")(model).compile(model, 16, 2)
    with pytest.raises(PipelineError, match="overlaps stage 'a'"):
        PipelineSpec((Stage("a", tuple(names[:2]), (0, 1)), Stage("b", tuple(names[2:]), (1,))),
                     2)
    wrong = Strategy.for_graph(model, {n: OpConfig.of({}, MachineView("cpu", 1, (1,), (1,)))
                                       for n in names}, devices=2,
                               pipeline=two_stages(2, "gpipe")(model).pipeline)
    with pytest.raises(StrategyError, match=f"stage 'front': operator '{names[0]}' runs on "
                                            f"devices \\[1\\] outside"):
        wrong.compile(model, 16, 2)


def test_set_plan_refuses_a_pipeline_outside_the_job():
    from unity_legion.executor.executor import GraphExecutor

    _needs_two()
    model = mlp("job")
    names = [n.name for n in model.graph.nodes]
    ex = GraphExecutor(model.graph, model.graph.outputs)
    spec = PipelineSpec((Stage("a", tuple(names[:2]), (0,)),
                         Stage("b", tuple(names[2:]), (machine_info().processors,))), 2)
    with pytest.raises(PipelineError, match="stage 'b': uses device"):
        ex.set_plan({}, spec)
    assert ex.pipeline is None and ex.plan == {}


# --------------------------------------------------------------------------- other machines

_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
from test_pipeline_exec import _data, _fit_grouped, _train, mlp, serial
from unity_legion import keras
from unity_legion.pcg.pipeline import PipelineSpec, Stage
from unity_legion.runtime import machine_info
from unity_legion.strategy import Strategy
from unity_legion.types import MachineView, OpConfig

procs = machine_info().processors
assert procs == {procs}, machine_info()


def view(start, n):
    return MachineView("cpu", start, (n,), (1,))


def plan(model, layout, m, schedule):
    # layout: per stage (operator indices, devices, {{operator index: degrees}})
    names = [n.name for n in model.graph.nodes]
    stages, cfgs = [], {{}}
    for s, (ops, devs, degs) in enumerate(layout):
        stages.append(Stage(f"s{{s}}", tuple(names[i] for i in ops), tuple(devs)))
        for i in ops:
            d = degs.get(i, {{}})
            k = int(np.prod(list(d.values()))) if d else 1
            cfgs[names[i]] = OpConfig.of(d, view(devs[0], k))
    return Strategy.for_graph(model, cfgs, devices=procs,
                              pipeline=PipelineSpec(tuple(stages), m, schedule))


keras.utils.set_random_seed(3)
weights = mlp("pe").get_weights()
x = _data()[0]
want, want_w, ref = _train(serial, weights, keras.optimizers.SGD(0.05))
want_p = ref.predict(x, batch_size=len(x), verbose=0)
ref.steps_per_execution = 2   # two prediction steps issued, then one read
np.testing.assert_allclose(ref.predict(x, batch_size=len(x) // 2, verbose=0), want_p,
                           rtol=1e-5, atol=1e-7)
for label, layout, m, schedule in {cases!r}:
    got, got_w, mdl = _train(lambda mdl: plan(mdl, layout, m, schedule), weights,
                             keras.optimizers.SGD(0.05))
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=label)
    for a, b in zip(got_w, want_w):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=label)
    # predictions: every micro-batch's outputs read together
    np.testing.assert_allclose(mdl.predict(x, batch_size=len(x), verbose=0), want_p,
                               rtol=1e-5, atol=1e-7, err_msg=label)
    mdl.steps_per_execution = 2
    np.testing.assert_allclose(mdl.predict(x, batch_size=len(x) // 2, verbose=0), want_p,
                               rtol=1e-5, atol=1e-7, err_msg=label)
    # the same 5 steps issued together, read back once (fit's steps_per_execution)
    got_l, got_w = _fit_grouped(lambda mdl: plan(mdl, layout, m, schedule), weights,
                                keras.optimizers.SGD(0.05))
    np.testing.assert_allclose(got_l, np.mean(want), rtol=1e-5, err_msg=label)
    for a, b in zip(got_w, want_w):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=label)
    if machine_info().rank == 0:
        print("PIPE-OK", label, flush=True)
"""


def _run(tmp_path: Path, procs: int, cases: list, argv_prefix: list[str], config: str):
    script = tmp_path / "pipe.py"
    script.write_text(_SCRIPT.format(tests=str(Path(__file__).parent), procs=procs,
                                     cases=cases))
    proc = run_with_env([*argv_prefix, sys.executable, str(script)], REPO, config, 600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("PIPE-OK")] == [
        c[0] for c in cases], out[-4000:]


def test_stages_with_their_own_parallelism_on_four_processors(tmp_path):
    """--cpus 4: two stages of two processors each, each operator with its own configuration
    inside its stage (data parallel, split by output features, serial), and four stages of one
    processor; GPipe and 1F1B."""
    cases = [
        ("2x2-gpipe", [([0, 1], [0, 1], {0: {"sample": 2}, 1: {"sample": 2}}),
                       ([2, 3], [2, 3], {2: {"out": 2}})], 4, "gpipe"),
        ("2x2-1f1b", [([0, 1], [0, 1], {0: {"out": 2}}),
                      ([2, 3], [2, 3], {2: {"sample": 2}, 3: {"sample": 2}})], 8, "1f1b"),
        ("4x1-1f1b", [([0], [0], {}), ([1], [1], {}), ([2], [2], {}), ([3], [3], {})], 4,
         "1f1b"),
    ]
    _run(tmp_path, 4, cases, [], "--cpus 4 --sysmem 2000")


@pytest.mark.slow
def test_pipelined_training_on_two_ranks_equals_serial(tmp_path):
    """2 ranks x 1 CPU (mpirun over loopback): a stage per rank, the boundary tensors and their
    gradients moved between the ranks every micro-batch."""
    mpirun = Path(sys.prefix) / "bin" / "mpirun"
    cases = [("ranks-gpipe", [([0, 1], [0], {}), ([2, 3], [1], {})], 4, "gpipe"),
             ("ranks-1f1b", [([0, 1, 2], [0], {}), ([3], [1], {})], 2, "1f1b")]
    _run(tmp_path, 2, cases, [str(mpirun), "-np", "2", "--oversubscribe", "--bind-to", "none"],
         "--cpus 1 --sysmem 1000")
