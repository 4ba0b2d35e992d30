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
