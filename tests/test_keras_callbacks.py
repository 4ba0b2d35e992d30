"""Callbacks: hook order, EarlyStopping, ModelCheckpoint, LearningRateScheduler, TerminateOnNaN."""

from __future__ import annotations

import numpy as np
import pytest

from unity_legion import keras

cbs = keras.callbacks


HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
         "on_train_batch_begin", "on_train_batch_end", "on_test_begin", "on_test_end",
         "on_test_batch_begin", "on_test_batch_end", "on_predict_begin", "on_predict_end",
         "on_predict_batch_begin", "on_predict_batch_end")


class Recorder(cbs.Callback):
    """Records every hook call as (hook, batch or epoch if any); keeps the last logs seen."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []
        self.last_logs: dict = {}


def _recording(name):
    def hook(self, *args):
        self.calls.append((name,) + tuple(a for a in args if not isinstance(a, dict)))
        if args and isinstance(args[-1], dict):
            self.last_logs = dict(args[-1])
    return hook


for _hook in HOOKS:
    setattr(Recorder, _hook, _recording(_hook))


class WeightsPerEpoch(cbs.Callback):
    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


# ---------------------------------------------------------------------- hook order
def test_fit_hook_order_and_counts(compiled_mlp, cls_data):
    x, y = cls_data
    rec = Recorder()
    model = compiled_mlp()
    model.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[rec],
              validation_data=(x[:12], y[:12]), validation_batch_size=5)
    epoch = lambda e: ([("on_epoch_begin", e)]
                       + [c for b in range(4) for c in (("on_train_batch_begin", b),
                                                        ("on_train_batch_end", b))]
                       + [("on_test_begin",)]
                       + [c for b in range(3) for c in (("on_test_batch_begin", b),
                                                        ("on_test_batch_end", b))]
                       + [("on_test_end",), ("on_epoch_end", e)])
    assert rec.calls == [("on_train_begin",)] + epoch(0) + epoch(1) + [("on_train_end",)]
    assert rec.model is model
    assert rec.params == {"epochs": 2, "steps": 4, "verbose": 0}
    assert set(rec.last_logs) == {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_epoch_end_logs_match_history_and_batch_logs_are_running_means(compiled_mlp, cls_data):
    x, y = cls_data

    class Logs(cbs.Callback):
        def __init__(self):
            super().__init__()
            self.epoch_logs, self.batch_logs = [], []

        def on_train_batch_end(self, batch, logs=None):
            self.batch_logs.append(dict(logs))

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_logs.append(dict(logs))

    cb = Logs()
    model = compiled_mlp()
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb])
    assert [l["loss"] for l in cb.epoch_logs] == history.history["loss"]
    assert len(cb.batch_logs) == 6
    assert cb.batch_logs[2]["loss"] == history.history["loss"][0]      # last batch = epoch mean
    assert set(cb.batch_logs[0]) == {"loss", "accuracy"}


def test_evaluate_and_predict_hooks(compiled_mlp, cls_data):
    x, y = cls_data
    model = compiled_mlp()
    rec = Recorder()
    model.evaluate(x, y, batch_size=20, verbose=0, callbacks=[rec])
    assert rec.calls == [("on_test_begin",), ("on_test_batch_begin", 0), ("on_test_batch_end", 0),
                         ("on_test_batch_begin", 1), ("on_test_batch_end", 1), ("on_test_end",)]
    assert set(rec.last_logs) == {"loss", "accuracy"}
    rec = Recorder()
    model.predict(x, batch_size=30, verbose=0, callbacks=[rec])
    assert rec.calls == [("on_predict_begin",), ("on_predict_batch_begin", 0),
                         ("on_predict_batch_end", 0), ("on_predict_batch_begin", 1),
                         ("on_predict_batch_end", 1), ("on_predict_end",)]


def test_callback_can_stop_training(compiled_mlp, cls_data):
    x, y = cls_data

    class StopAfterTwoBatches(cbs.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                self.model.stop_training = True

    model = compiled_mlp()
    history = model.fit(x, y, batch_size=5, epochs=5, verbose=0, callbacks=[StopAfterTwoBatches()])
    assert model.optimizer.iterations == 2 and history.epoch == [0]


# ---------------------------------------------------------------------- EarlyStopping
def test_early_stopping_on_a_plateau(compiled_mlp, cls_data):
    x, y = cls_data
    model = compiled_mlp(optimizer=keras.optimizers.SGD(0.0))      # lr 0: the loss is flat
    stop = cbs.EarlyStopping(monitor="loss", patience=2)
    # unshuffled: the same batches every epoch, so the epoch's mean is the same to the bit
    # (shuffled batches of other sizes sum the same per-sample losses in another order)
    history = model.fit(x, y, batch_size=37, epochs=20, verbose=0, callbacks=[stop],
                        shuffle=False)
    assert len(history.history["loss"]) == 3
    assert stop.stopped_epoch == 2 and model.stop_training


def test_early_stopping_min_delta(compiled_mlp, cls_data):
    x, y = cls_data
    model = compiled_mlp(optimizer=keras.optimizers.SGD(0.01))   # improves, but by little
    stop = cbs.EarlyStopping(monitor="loss", patience=1, min_delta=1.0)
    history = model.fit(x, y, batch_size=37, epochs=20, verbose=0, callbacks=[stop])
    assert len(history.history["loss"]) == 2
    assert history.history["loss"][1] < history.history["loss"][0]


@pytest.mark.parametrize("mode,epochs_run", [("min", 6), ("max", 2), ("auto", 6)])
def test_early_stopping_mode(compiled_mlp, cls_data, mode, epochs_run):
    """Full-batch gradient descent with a small step: the loss falls every epoch. In 'max' mode
    that is no improvement, so training stops after `patience` epochs."""
    x, y = cls_data
    model = compiled_mlp(optimizer=keras.optimizers.SGD(0.05))
    stop = cbs.EarlyStopping(monitor="loss", patience=1, mode=mode)
    history = model.fit(x, y, batch_size=37, epochs=6, verbose=0, callbacks=[stop])
    losses = history.history["loss"]
    assert len(losses) == epochs_run
    assert np.all(np.diff(losses) < 0)


def test_early_stopping_restore_best_weights(compiled_mlp, cls_data, weights_equal):
    x, y = cls_data
    model = compiled_mlp(optimizer=keras.optimizers.SGD(0.05))
    per_epoch = WeightsPerEpoch()
    stop = cbs.EarlyStopping(monitor="loss", mode="max", patience=2, restore_best_weights=True)
    history = model.fit(x, y, batch_size=37, epochs=10, verbose=0, callbacks=[per_epoch, stop])
    assert len(history.history["loss"]) == 3 and stop.best_epoch == 0
    weights_equal(model.get_weights(), per_epoch.weights[0])
    assert not np.array_equal(per_epoch.weights[2][0], per_epoch.weights[0][0])


def test_early_stopping_restores_best_weights_without_stopping(compiled_mlp, cls_data,
                                                               weights_equal):
    """Keras 3: the best weights are restored when training ends, even if it did not stop early."""
    x, y = cls_data
    model = compiled_mlp(optimizer=keras.optimizers.SGD(0.05))
    per_epoch = WeightsPerEpoch()
    stop = cbs.EarlyStopping(monitor="loss", mode="max", patience=10, restore_best_weights=True)
    history = model.fit(x, y, batch_size=37, epochs=3, verbose=0, callbacks=[per_epoch, stop])
    assert len(history.history["loss"]) == 3 and stop.stopped_epoch == 0
    weights_equal(model.get_weights(), per_epoch.weights[0])


def test_early_stopping_missing_monitor_warns(compiled_mlp, cls_data):
    """val_loss exists only every second epoch (validation_freq=2): Keras warns and goes on."""
    x, y = cls_data
    model = compiled_mlp()
    stop = cbs.EarlyStopping(monitor="val_loss", patience=0)
    with pytest.warns(UserWarning, match="val_loss"):
        history = model.fit(x, y, batch_size=37, epochs=3, verbose=0, callbacks=[stop],
                            validation_data=(x, y), validation_freq=2)
    assert len(history.history["loss"]) == 3


def test_early_stopping_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        cbs.EarlyStopping(mode="sideways")


# ---------------------------------------------------------------------- ModelCheckpoint
def test_model_checkpoint_every_epoch(compiled_mlp, cls_data, tmp_path, weights_equal):
    x, y = cls_data
    model = compiled_mlp()
    per_epoch = WeightsPerEpoch()
    ckpt = cbs.ModelCheckpoint(str(tmp_path / "ckpt-{epoch:02d}.weights.npz"))
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[per_epoch, ckpt])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-01.weights.npz", "ckpt-02.weights.npz", "ckpt-03.weights.npz"]
    fresh = compiled_mlp()
    for epoch in range(3):
        fresh.load_weights(tmp_path / f"ckpt-{epoch + 1:02d}.weights.npz")
        weights_equal(fresh.get_weights(), per_epoch.weights[epoch])


def test_model_checkpoint_save_best_only_and_log_names(compiled_mlp, cls_data, tmp_path,
                                                       weights_equal):
    x, y = cls_data
    model = compiled_mlp(optimizer=keras.optimizers.SGD(0.05))
    per_epoch = WeightsPerEpoch()
    # monitor the training loss in 'max' mode: it falls every epoch, so only epoch 1 is "best"
    ckpt = cbs.ModelCheckpoint(str(tmp_path / "best-{epoch}-{loss:.3f}.weights.npz"),
                               monitor="loss", mode="max", save_best_only=True)
    history = model.fit(x, y, batch_size=37, epochs=3, verbose=0, callbacks=[per_epoch, ckpt])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"best-1-{history.history['loss'][0]:.3f}.weights.npz"]
    # a fixed file name in min mode: overwritten by each better epoch, ends as the last one
    ckpt = cbs.ModelCheckpoint(str(tmp_path / "best.weights.npz"), monitor="loss",
                               save_best_only=True)
    model.fit(x, y, batch_size=37, epochs=3, verbose=0, callbacks=[ckpt])
    fresh = compiled_mlp()
    fresh.load_weights(tmp_path / "best.weights.npz")
    weights_equal(fresh.get_weights(), model.get_weights())


def test_model_checkpoint_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"'\.weights\.h5'.*'\.keras'"):
        cbs.ModelCheckpoint(str(tmp_path / "model.h5"))       # Keras 2's name: refused
    with pytest.raises(ValueError, match=r"save_weights_only=True.*'\.weights\.h5'"):
        cbs.ModelCheckpoint(str(tmp_path / "model.keras"), save_weights_only=True)


# ---------------------------------------------------------------------- LearningRateScheduler
def test_lr_scheduler_sets_rate_and_training_uses_it(compiled_mlp, cls_data, weights_equal):
    x, y = cls_data
    model = compiled_mlp(optimizer=keras.optimizers.SGD(0.1))
    seen = []

    class SeeRate(cbs.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(self.model.optimizer.learning_rate)

    per_epoch = WeightsPerEpoch()
    sched = cbs.LearningRateScheduler(lambda epoch, lr: lr if epoch == 0 else 0.0)
    w0 = model.get_weights()
    history = model.fit(x, y, batch_size=10, epochs=3, verbose=0,
                        callbacks=[sched, SeeRate(), per_epoch])
    assert seen == [0.1, 0.0, 0.0]
    assert history.history["learning_rate"] == [0.1, 0.0, 0.0]
    assert model.optimizer.learning_rate == 0.0
    assert not np.array_equal(per_epoch.weights[0][0], w0[0])        # epoch 1 trained
    weights_equal(per_epoch.weights[1], per_epoch.weights[0])         # lr 0: frozen after
    weights_equal(per_epoch.weights[2], per_epoch.weights[0])


def test_lr_scheduler_equals_plain_sgd_with_that_rate(compiled_mlp, cls_data):
    """An epoch-only schedule (old Keras signature) giving 0.03 equals SGD(0.03) throughout."""
    x, y = cls_data
    scheduled = compiled_mlp(optimizer=keras.optimizers.SGD(0.5))
    scheduled.fit(x, y, batch_size=10, epochs=2, verbose=0, shuffle=False,
                  callbacks=[cbs.LearningRateScheduler(lambda epoch: 0.03)])
    plain = compiled_mlp(optimizer=keras.optimizers.SGD(0.03))
    plain.fit(x, y, batch_size=10, epochs=2, verbose=0, shuffle=False)
    for a, b in zip(scheduled.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_lr_scheduler_rejects_a_non_number(compiled_mlp, cls_data, weights_equal):
    x, y = cls_data
    model = compiled_mlp()
    w0 = model.get_weights()
    with pytest.raises(ValueError, match="float"):
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[cbs.LearningRateScheduler(lambda epoch, lr: "fast")])
    weights_equal(model.get_weights(), w0)


# ---------------------------------------------------------------------- TerminateOnNaN
@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # inf/NaN in the kernels
def test_terminate_on_nan_keeps_the_last_good_weights(compiled_mlp, cls_data, weights_equal,
                                                      capsys):
    x, y = cls_data
    bad = x.copy()
    bad[13, 2] = np.inf                                    # in the second batch of 10
    model = compiled_mlp()
    history = model.fit(bad, y, batch_size=10, epochs=3, verbose=0, shuffle=False,
                        callbacks=[cbs.TerminateOnNaN()])
    assert "Invalid loss" in capsys.readouterr().out
    assert history.epoch == [0] and model.optimizer.iterations == 1
    assert np.isfinite(history.history["loss"][0])
    reference = compiled_mlp()                             # one good step on the first batch
    reference.fit(x[:10], y[:10], batch_size=10, epochs=1, verbose=0, shuffle=False)
    weights_equal(model.get_weights(), reference.get_weights())
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # inf/NaN in the kernels
def test_terminate_on_nan_from_a_diverging_learning_rate(make_mlp, reg_data):
    x, y = reg_data
    model = make_mlp(classes=2)
    model.compile(optimizer=keras.optimizers.SGD(1e18), loss="mse")
    rec = Recorder()
    history = model.fit(x * 1e3, y, batch_size=4, epochs=5, verbose=0,
                        callbacks=[cbs.TerminateOnNaN(), rec])
    ends = [c for c in rec.calls if c[0] == "on_train_batch_end"]
    assert history.epoch == [0] and len(ends) < 8                # stopped inside epoch 1
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
