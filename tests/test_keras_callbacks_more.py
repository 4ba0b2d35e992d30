"""ReduceLROnPlateau, CSVLogger, LambdaCallback: against real Keras 3 (torch backend, in a
subprocess: tests/keras_oracle.py) fed the same logs, and in our own fits."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from keras_oracle import real_keras
from unity_legion import keras

cbs = keras.callbacks

# Per case: the callback's arguments and the logs of successive epochs.
VAL_LOSS = [1.0, 0.9, 0.95, 0.9, 0.91, 0.92, 0.8, 0.85, 0.86, 0.87, 0.88, 0.89]
RLR_CASES = [
    ({"factor": 0.5, "patience": 2}, [{"loss": 1.0, "val_loss": v} for v in VAL_LOSS]),
    ({"factor": 0.5, "patience": 1, "cooldown": 2, "min_lr": 0.02, "min_delta": 0.05},
     [{"loss": 1.0, "val_loss": v} for v in VAL_LOSS]),
    ({"monitor": "val_accuracy", "mode": "max", "factor": 0.2, "patience": 1, "min_delta": 0},
     [{"val_accuracy": a} for a in (0.5, 0.6, 0.6, 0.7, 0.65, 0.64, 0.9, 0.9)]),
    ({"monitor": "loss", "mode": "min", "factor": 0.1, "patience": 0, "min_lr": 1e-4},
     [{"loss": v} for v in (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)]),
    ({"monitor": "val_loss", "patience": 1}, [{"loss": 1.0}, {"loss": 0.5}]),  # not in the logs
]
CSV_CASES = [
    ({}, [[{"loss": 0.5, "accuracy": 0.25}, {"loss": 0.25, "accuracy": 0.5}]]),
    ({"separator": ";"}, [[{"loss": 0.5, "val_loss": 0.75, "learning_rate": 0.1},
                          {"loss": 1 / 3, "val_loss": 0.5}]]),
    ({"append": True}, [[{"b": 1.5, "a": 2.0}], [{"b": 3.0, "a": 4.0}, {"b": 5.0, "a": 6.0}]]),
    ({}, [[{"loss": 0.5, "per_class": [1, 2, 3]}]]),
]

ORACLE = """
import os, warnings
model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
for i, (kwargs, seq) in enumerate(rlr_cases):
    model.optimizer.learning_rate = 0.1
    cb = keras.callbacks.ReduceLROnPlateau(**kwargs)
    cb.set_model(model)
    cb.on_train_begin()
    logged, after = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for e, logs in enumerate(seq):
            logs = dict(logs)
            cb.on_epoch_end(e, logs)
            logged.append(logs["learning_rate"])
            after.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
    out[f"rlr{i}"] = [logged, after]
for i, (kwargs, fits) in enumerate(csv_cases):
    path = os.path.join(csv_dir, f"k{i}.csv")
    for seq in fits:
        cb = keras.callbacks.CSVLogger(path, **kwargs)
        cb.on_train_begin()
        for e, logs in enumerate(seq):
            cb.on_epoch_end(e, dict(logs))
        cb.on_train_end()
    with open(path, "rb") as f:
        out[f"csv{i}"] = f.read().decode()
# the hooks a fit calls on a LambdaCallback, by the new names and by the older ones
calls = []
def rec(name):
    def hook(*a, **kw):   # Keras passes a batch hook's logs by keyword
        a = a + tuple(kw.values())
        calls.append([name] + list(a[:-1]) + [sorted(a[-1] or {})])
    return hook
new = keras.callbacks.LambdaCallback(**{h: rec(h) for h in hooks})
old = keras.callbacks.LambdaCallback(on_batch_begin=rec("old_begin"), on_batch_end=rec("old_end"))
net = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
net.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
net.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[new, old], shuffle=False)
out["calls"] = calls
"""
HOOKS = ["on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
         "on_train_batch_begin", "on_train_batch_end"]


def _xy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    return rng.normal(size=(10, 6)).astype(np.float32), rng.integers(0, 3, size=10)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    x, y = _xy()
    workdir = tmp_path_factory.mktemp("real_keras")
    return real_keras(ORACLE, workdir, rlr_cases=RLR_CASES, csv_cases=CSV_CASES, hooks=HOOKS,
                      x=x, y=y, csv_dir=str(workdir))


@pytest.mark.parametrize("case", range(len(RLR_CASES)))
def test_reduce_lr_on_plateau_as_keras(oracle, compiled_mlp, case) -> None:
    kwargs, seq = RLR_CASES[case]
    model = compiled_mlp(optimizer=keras.optimizers.SGD(0.1))
    cb = cbs.ReduceLROnPlateau(**kwargs)
    cb.set_model(model)
    cb.on_train_begin({})
    logged, after = [], []
    for e, logs in enumerate(seq):
        logs = dict(logs)
        if kwargs.get("monitor", "val_loss") in logs:
            cb.on_epoch_end(e, logs)
        else:
            with pytest.warns(UserWarning, match="not in the logs"):
                cb.on_epoch_end(e, logs)
        logged.append(logs["learning_rate"])
        after.append(model.optimizer.learning_rate)
    want_logged, want_after = oracle[f"rlr{case}"]
    # Keras keeps the rate as a float32 variable: equal to float32 precision
    np.testing.assert_allclose(logged, want_logged, rtol=1e-6)
    np.testing.assert_allclose(after, want_after, rtol=1e-6)
    assert len(set(after)) > 1 or case == len(RLR_CASES) - 1   # the cases do reduce


@pytest.mark.parametrize("case", range(len(CSV_CASES)))
def test_csv_logger_writes_the_file_keras_writes(oracle, tmp_path, case) -> None:
    kwargs, fits = CSV_CASES[case]
    path = tmp_path / "log.csv"
    for seq in fits:
        cb = cbs.CSVLogger(str(path), **kwargs)
        cb.on_train_begin({})
        for e, logs in enumerate(seq):
            cb.on_epoch_end(e, dict(logs))
        cb.on_train_end({})
    assert path.read_bytes().decode() == oracle[f"csv{case}"]


def test_lambda_callback_gets_the_hooks_keras_calls(oracle, compiled_mlp) -> None:
    calls = []

    def rec(name):
        return lambda *a: calls.append([name] + list(a[:-1]) + [sorted(a[-1] or {})])
    new = cbs.LambdaCallback(**{h: rec(h) for h in HOOKS})
    old = cbs.LambdaCallback(on_batch_begin=rec("old_begin"), on_batch_end=rec("old_end"))
    x, y = _xy()
    compiled_mlp().fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[new, old],
                       shuffle=False)
    assert calls == oracle["calls"]


def test_lambda_callback_rejects_what_is_not_a_hook() -> None:
    with pytest.raises(TypeError, match="on_epoch_ends"):
        cbs.LambdaCallback(on_epoch_ends=print)
    with pytest.raises(TypeError, match="callable"):
        cbs.LambdaCallback(on_epoch_end=3)


def test_reduce_lr_on_plateau_bad_arguments() -> None:
    with pytest.raises(ValueError, match="factor"):
        cbs.ReduceLROnPlateau(factor=1.0)
    with pytest.raises(ValueError, match="mode"):
        cbs.ReduceLROnPlateau(mode="up")
    with pytest.raises(TypeError, match="epsilon"):
        cbs.ReduceLROnPlateau(epsilon=1e-3)


def test_reduce_lr_on_plateau_refuses_a_schedule_before_training(compiled_mlp, cls_data) -> None:
    x, y = cls_data
    model = compiled_mlp(optimizer=keras.optimizers.SGD(lambda step: 0.1 / (1 + step)))
    w0 = model.get_weights()
    with pytest.raises(TypeError, match="schedule"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[cbs.ReduceLROnPlateau()])
    for a, b in zip(model.get_weights(), w0):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------- in our fits
def test_a_new_learning_rate_applies_from_the_next_step(compiled_mlp, cls_data) -> None:
    """Rate 0 set after step 1: steps 2.. change nothing; before, every step did."""
    x, y = cls_data
    model = compiled_mlp(optimizer=keras.optimizers.SGD(0.1))
    seen = []

    def batch_end(batch, logs):
        seen.append(model.get_weights())
        if batch == 1:
            model.optimizer.learning_rate = 0.0
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False,
              callbacks=[cbs.LambdaCallback(on_train_batch_end=batch_end)])
    first = model.get_weights()
    assert not np.array_equal(seen[0][0], seen[1][0])
    for later in seen[2:]:
        for a, b in zip(later, seen[1]):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(first, seen[1]):
        np.testing.assert_array_equal(a, b)


def test_reduce_lr_on_plateau_and_csv_logger_in_a_fit(compiled_mlp, cls_data, tmp_path) -> None:
    """loss falls every epoch, so mode='max' sees no improvement: the rate halves after each
    epoch from the second on; logs, history and the CSV file show the rate each epoch ran
    with, and the training used it (the same fit with the rates set by hand agrees)."""
    x, y = cls_data
    path = tmp_path / "train.csv"
    model = compiled_mlp(optimizer=keras.optimizers.SGD(0.1))
    w0 = model.get_weights()
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0, shuffle=False, callbacks=[
        cbs.ReduceLROnPlateau(monitor="loss", mode="max", factor=0.5, patience=0),
        cbs.CSVLogger(str(path))])
    assert history.history["learning_rate"] == [0.1, 0.1, 0.05, 0.025]
    assert model.optimizer.learning_rate == 0.0125
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert [float(r["learning_rate"]) for r in rows] == history.history["learning_rate"]
    assert [float(r["loss"]) for r in rows] == history.history["loss"]
    assert all(r["val_loss"] == "NA" for r in rows)
    # by hand: LearningRateScheduler with the same rates
    again = compiled_mlp(optimizer=keras.optimizers.SGD(0.1))
    again.set_weights(w0)
    rates = history.history["learning_rate"]
    h2 = again.fit(x, y, batch_size=8, epochs=4, verbose=0, shuffle=False,
                   callbacks=[cbs.LearningRateScheduler(lambda e: rates[e])])
    np.testing.assert_allclose(h2.history["loss"], history.history["loss"], rtol=1e-6)
    assert all(math.isfinite(v) for v in history.history["loss"])
