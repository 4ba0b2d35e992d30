"""Profiling one training step: per-operator rows, timelines, a picture; off records nothing."""

from __future__ import annotations

import numpy as np

from unity_legion import keras
from unity_legion.executor import tasks as tasks_mod
from unity_legion.executor.executor import LOSS_LABEL

L = keras.layers


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12,)), L.Dense(16, activation="relu", name="d1"),
                              L.Dense(4, name="d2")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], strategy="data_parallel")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 12)).astype(np.float32)
    y = rng.integers(0, 4, size=64)
    return model, x, y


def test_profile_step_rows_times_and_picture(tmp_path, capsys):
    model, x, y = _model()
    path = tmp_path / "profile.png"
    prof = model.profile_step(x, y, batch_size=32, path=str(path))
    graph, _ = model.strategy.graph_for(model)
    rows = prof.rows()
    for n in graph.nodes:
        assert n.name in rows, n.name
        assert rows[n.name]["kernel"] > 0
        assert rows[n.name]["sim_kernel"] > 0
    # the step is re-issued from its recording: the host's time goes to submitting each task,
    # counted for its first step's operator (the forward's task starts with d1)
    assert prof.replayed and rows["d1"]["host"] > 0
    assert LOSS_LABEL in rows
    assert prof.wall > 0 and prof.lanes >= 1
    total = sum(r["kernel"] for r in rows.values())
    assert 0 < total <= prof.wall * prof.lanes
    for lane, a, b, _name, _phase in prof.kernels:
        assert 0 <= a <= b <= prof.wall and lane >= 0
    assert prof.sim_step and prof.sim_step > 0 and prof.sim_tasks
    assert path.exists() and path.stat().st_size > 0
    out = capsys.readouterr().out
    assert "d1" in out and "simulated" in out
    assert model.optimizer.iterations == 3   # two warm-up steps and the profiled one


def test_profiling_off_records_nothing():
    model, x, y = _model()
    tasks_mod.TRACE.clear()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    model.train_on_batch(x[:32], y[:32])
    assert tasks_mod.TRACE == []
    assert model._executor.profiler is None


def test_profile_step_passes_the_loss_scale():
    """Under loss scaling profile_step's steps (warm-up and profiled) run with the optimizer's
    scale and update it as fit's do: a scale that overflows float16 gradients skips all three
    steps (weights unchanged) and halves it thrice; a sane one counts three finite steps."""
    from unity_legion.keras import mixed_precision
    mixed_precision.set_global_policy("mixed_float16")
    try:
        for scale, want_scale, want_count in ((1e38, 0.125e38, 0), (2.0 ** 10, 2.0 ** 10, 3)):
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((12,)), L.Dense(16, activation="relu"),
                                      L.Dense(4, activation="softmax", dtype="float32")])
            opt = mixed_precision.LossScaleOptimizer(keras.optimizers.Adam(0.01),
                                                     initial_scale=scale)
            model.compile(optimizer=opt, loss="sparse_categorical_crossentropy",
                          strategy="data_parallel")
            rng = np.random.default_rng(0)
            x = rng.normal(size=(32, 12)).astype(np.float32)
            y = rng.integers(0, 4, size=32)
            before = model.get_weights()
            model.profile_step(x, y, batch_size=32, verbose=False)
            assert (opt.scale, opt.step_counter) == (want_scale, want_count)
            assert opt.iterations == want_count
            changed = any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
            assert changed == (want_count > 0)
    finally:
        mixed_precision.set_global_policy("float32")


def test_a_job_plans_and_prices_with_its_machines_cached_calibration(tmp_path, monkeypatch):
    """A CPU job takes the calibration cached for this machine and rank count in place of the
    local preset's defaults, for its search and for the profile's simulator; a calibration of
    another job shape (or a GPU job) is not used."""
    from dataclasses import replace

    from unity_legion.cost import PRESETS
    from unity_legion.cost.calibration import Calibration, write_calibration
    from unity_legion.keras.trainer import job_model
    from unity_legion.profiling.calibrate import calibration_path, with_gathers
    from unity_legion.runtime import machine_info
    from unity_legion.search.plan import running_machine

    monkeypatch.setenv("UNITY_LEGION_CACHE", str(tmp_path))
    m = machine_info()
    default, _ = job_model(m)
    assert default == running_machine(m.ranks, m.processors, "cpu")
    model, x, y = _model()
    plain = model.profile_step(x, y, batch_size=32, verbose=False).sim_step

    # a machine whose every blocking read of a result costs 50 ms more
    base = PRESETS["local"].with_nodes(m.ranks, m.processors // m.ranks)
    slow = replace(base, runtime=replace(base.runtime, sync=base.runtime.sync + 0.05),
                   source="measured (a test's figures)")
    write_calibration(calibration_path(), Calibration(slow, {"linear": 0.5}))
    machine, cost = job_model(m)
    # (with the meetings priced as this job's executors run them: with_gathers)
    assert machine == with_gathers(Calibration(slow)).machine
    assert cost.efficiency == {"linear": 0.5}
    priced = model.profile_step(x, y, batch_size=32, verbose=False).sim_step
    assert priced > plain + 0.04
    # another shape of job, or GPUs: the calibration does not describe them
    assert running_machine(m.ranks, 2 * m.processors, "cpu", calibrated=slow) != slow
    assert running_machine(m.ranks, m.processors, "gpu", calibrated=slow).device.kind == "gpu"


def test_on_cpus_the_profile_prices_the_plan_with_its_operators_measured(monkeypatch):
    """The simulated side of a CPU job's profile comes from its own operators measured on its
    processors (profiling.measured_cost), not from the roofline alone."""
    import unity_legion.profiling as profiling_mod
    from unity_legion.cost.measure import MeasuredCost

    made: list[MeasuredCost] = []
    real = profiling_mod.measured_cost

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(profiling_mod, "measured_cost", spy)
    model, x, y = _model()
    prof = model.profile_step(x, y, batch_size=32, verbose=False)
    assert len(made) == 1 and prof.sim_step and prof.sim_step > 0
    # it measured the plan's operators (a cost per operator, from measurements it cached)
    assert made[0]._memo
