"""Callbacks with Keras 3's names, hooks and arguments."""

from __future__ import annotations

import csv
import math
import os
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from unity_legion.keras import backup as backup_file


class Callback:
    def __init__(self) -> None:
        self.model: Any = None
        self.params: dict[str, Any] = {}

    def set_model(self, model: Any) -> None:
        self.model = model

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def on_train_begin(self, logs: dict | None = None) -> None: ...
    def on_train_end(self, logs: dict | None = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None: ...
    # on_batch_begin / on_batch_end: the older names, which the training-batch hooks call
    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_batch_end(self, batch: int, logs: dict | None = None) -> None: ...

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.on_batch_end(batch, logs)

    def on_test_begin(self, logs: dict | None = None) -> None: ...
    def on_test_end(self, logs: dict | None = None) -> None: ...
    def on_test_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None: ...
    def on_predict_begin(self, logs: dict | None = None) -> None: ...
    def on_predict_end(self, logs: dict | None = None) -> None: ...
    def on_predict_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None: ...


class CallbackList:
    """Calls a hook on every callback in order."""

    def __init__(self, callbacks: Sequence[Callback] | None, model: Any, params: dict[str, Any]) -> None:
        self.callbacks = list(callbacks or [])
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be keras.callbacks.Callback instances, got {cb!r}")
            cb.set_model(model)
            cb.set_params(params)

    def __getattr__(self, hook: str) -> Callable[..., None]:
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call(*args: Any) -> None:
            for cb in self.callbacks:
                getattr(cb, hook)(*args)
        return call


class History(Callback):
    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.epoch = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)


class TerminateOnNaN(Callback):
    """Stops training at the first batch whose loss is NaN or infinite. The executor does not apply
    such a step, so the weights stay those of the last good step."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True


def _monitor_mode(monitor: str, mode: str) -> Callable[[float, float], bool]:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        mode = "max" if ("acc" in monitor or monitor.endswith("auc")) else "min"
    return (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)


class EarlyStopping(Callback):
    """Keras 3's EarlyStopping. With restore_best_weights the best epoch's weights are put back
    when training ends, whether or not it stopped early."""

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 verbose: int = 0, mode: str = "auto", baseline: float | None = None,
                 restore_best_weights: bool = False, start_from_epoch: int = 0) -> None:
        super().__init__()
        self.monitor = monitor
        self.min_delta = abs(min_delta)
        self.patience = patience
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self._better = _monitor_mode(monitor, mode)
        self._sign = 1.0 if self._better(1.0, 0.0) else -1.0
        self.wait = 0
        self.stopped_epoch = 0
        self.best_weights: list[np.ndarray] | None = None
        self.best_epoch = 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.wait = 0
        self.stopped_epoch = 0
        self.best = -math.inf * self._sign
        self.best_weights = None
        self.best_epoch = 0

    def _is_improvement(self, value: float, reference: float) -> bool:
        return self._better(value - self._sign * self.min_delta, reference)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        current = (logs or {}).get(self.monitor)
        if current is None:  # Keras warns and skips the epoch (e.g. validation_freq > 1)
            warnings.warn(f"EarlyStopping: the monitored metric {self.monitor!r} is not in the "
                          f"logs (available: {sorted(logs or {})})", stacklevel=2)
            return
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Saves the model at the end of every epoch, or only when the monitored value improves:
    its weights to `*.weights.h5` (Keras 3's format) or `*.weights.npz`, or the whole model to
    `*.keras` (save_weights_only=False). Every file is written atomically."""

    def __init__(self, filepath: str, monitor: str = "val_loss", verbose: int = 0,
                 save_best_only: bool = False, save_weights_only: bool = False, mode: str = "auto",
                 save_freq: str | int = "epoch", initial_value_threshold: float | None = None) -> None:
        super().__init__()
        filepath = os.fspath(filepath)
        self._whole_model = filepath.endswith(".keras")
        if not filepath.endswith((".weights.h5", ".weights.npz")) and not self._whole_model:
            raise ValueError(f"ModelCheckpoint: filepath must end in '.weights.h5' (or "
                             f"'.weights.npz') for weights, or '.keras' for the whole model, got "
                             f"{filepath!r}")
        if self._whole_model and save_weights_only:
            raise ValueError(f"ModelCheckpoint: with save_weights_only=True the filepath must end "
                             f"in '.weights.h5', got {filepath!r}")
        if save_freq != "epoch":
            raise NotImplementedError("ModelCheckpoint: only save_freq='epoch' is supported")
        self.filepath = filepath
        self.monitor = monitor
        self.verbose = verbose
        self.save_best_only = save_best_only
        self._better = _monitor_mode(monitor, mode)
        self.best = initial_value_threshold

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        path = self._format(epoch, logs)
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:  # as Keras: warn, and save as if save_best_only were False
                warnings.warn(f"ModelCheckpoint: can save the best model only with "
                              f"{self.monitor!r} in the logs (available: {sorted(logs)})",
                              stacklevel=2)
            elif self.best is not None and not self._better(current, self.best):
                return
            else:
                self.best = current
        if self.verbose:
            print(f"Epoch {epoch + 1}: saving model to {path}")
        if self._whole_model:
            self.model.save(path)
        else:
            self.model.save_weights(path)

    def _format(self, epoch: int, logs: dict) -> str:
        try:
            return self.filepath.format(epoch=epoch + 1, **logs)
        except KeyError as exc:
            raise KeyError(f"ModelCheckpoint: filepath {self.filepath!r} names {exc} which is not in "
                           f"the logs {sorted(logs)}") from None


class LearningRateScheduler(Callback):
    def __init__(self, schedule: Callable[..., float], verbose: int = 0) -> None:
        super().__init__()
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        opt = self.model.optimizer
        try:
            lr = self.schedule(epoch, opt.learning_rate)
        except TypeError:  # a schedule of the epoch alone (old Keras API)
            lr = self.schedule(epoch)
        if isinstance(lr, (np.floating, np.integer)):
            lr = float(lr)
        if not isinstance(lr, (int, float)):
            raise ValueError(f"LearningRateScheduler: the schedule must return a float, got {lr!r}")
        opt.learning_rate = lr
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr}.")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)




class ReduceLROnPlateau(Callback):
    """Keras 3's ReduceLROnPlateau: after `patience` epochs without an improvement of `monitor`
    by more than `min_delta`, the learning rate becomes max(lr * factor, min_lr), then `cooldown`
    epochs pass before the waiting starts again. Every epoch's logs get the `learning_rate` it
    ran with; a new rate applies from the next step on."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 verbose: int = 0, mode: str = "auto", min_delta: float = 1e-4, cooldown: int = 0,
                 min_lr: float = 0.0, **kwargs: Any) -> None:
        super().__init__()
        if kwargs:
            raise TypeError(f"ReduceLROnPlateau: unknown argument(s) {sorted(kwargs)}")
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be < 1.0 (the rate is multiplied "
                             f"by it), got {factor}")
        self.monitor = monitor
        self.factor = float(factor)
        self.patience = patience
        self.verbose = verbose
        self.min_delta = abs(min_delta)
        self.cooldown = cooldown
        self.min_lr = float(min_lr)
        self._better = _monitor_mode(monitor, mode)
        self._sign = 1.0 if self._better(1.0, 0.0) else -1.0
        self._reset()

    def _reset(self) -> None:
        self.best: float | None = None
        self.wait = 0
        self.cooldown_counter = 0

    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        if callable(self.model.optimizer._learning_rate):
            raise TypeError("ReduceLROnPlateau: the optimizer's learning rate is a schedule, "
                            "which this callback cannot change; give the optimizer a float "
                            "learning rate")
        self._reset()

    def _is_improvement(self, value: float) -> bool:
        return self.best is None or self._better(value - self._sign * self.min_delta, self.best)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        opt = self.model.optimizer
        logs["learning_rate"] = float(opt.learning_rate)
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"ReduceLROnPlateau: the monitored metric {self.monitor!r} is not in "
                          f"the logs (available: {sorted(logs)})", stacklevel=2)
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current):
            self.best = current
            self.wait = 0
            return
        if self.in_cooldown():
            return
        self.wait += 1
        if self.wait < self.patience:
            return
        old = float(opt.learning_rate)
        if old > self.min_lr:
            new = max(old * self.factor, self.min_lr)
            opt.learning_rate = new
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
            self.cooldown_counter = self.cooldown
            self.wait = 0


class CSVLogger(Callback):
    """Keras 3's CSVLogger: one row per epoch ("epoch" from 0, then the logs' keys sorted; with
    no validation in the first epoch's logs, val_ columns of every key as well, "NA" where a
    value is missing). append=True adds to an existing file, without a second header."""

    def __init__(self, filename: str, separator: str = ",", append: bool = False) -> None:
        super().__init__()
        self.filename = os.fspath(filename)
        self.sep = separator
        self.append = append
        self.keys: list[str] | None = None
        self._file: Any = None
        self._writer: Any = None
        self._header = True

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._header = True
        if self.append and os.path.exists(self.filename):
            with open(self.filename) as f:
                self._header = not f.readline()
        self._close()
        self._file = open(self.filename, "a" if self.append else "w")
        self.keys = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
            if not any(k.startswith("val_") for k in self.keys):
                self.keys += [f"val_{k}" for k in self.keys]
        if self._writer is None:
            self._writer = csv.writer(self._file, delimiter=self.sep)
            if self._header:
                self._writer.writerow(["epoch"] + self.keys)
        self._writer.writerow([epoch] + [_csv_value(logs.get(k, "NA")) for k in self.keys])
        self._file.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        self._close()

    def _close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        self._file = None
        self._writer = None


def _csv_value(v: Any) -> Any:
    """A list-like value as one quoted cell "[a, b]" (as Keras writes it)."""
    if isinstance(v, str) or (isinstance(v, np.ndarray) and v.ndim == 0):
        return v
    if isinstance(v, Iterable):
        return f'"[{", ".join(map(str, v))}]"'
    return v


class LambdaCallback(Callback):
    """A callback made of functions: on_epoch_begin/end(epoch, logs), on_train_begin/end(logs),
    on_train_batch_begin/end(batch, logs) (also by their older names on_batch_begin/end), and
    any other hook by its name."""

    def __init__(self, on_epoch_begin: Callable | None = None, on_epoch_end: Callable | None = None,
                 on_train_begin: Callable | None = None, on_train_end: Callable | None = None,
                 on_train_batch_begin: Callable | None = None,
                 on_train_batch_end: Callable | None = None, **kwargs: Any) -> None:
        super().__init__()
        hooks = dict(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end,
                     on_train_begin=on_train_begin, on_train_end=on_train_end,
                     on_train_batch_begin=on_train_batch_begin,
                     on_train_batch_end=on_train_batch_end, **kwargs)
        for name, fn in hooks.items():
            if not (name.startswith("on_") and callable(getattr(Callback, name, None))):
                raise TypeError(f"LambdaCallback: {name!r} is not a callback hook")
            if fn is not None:
                if not callable(fn):
                    raise TypeError(f"LambdaCallback: {name} must be callable, got {fn!r}")
                setattr(self, name, fn)


class BackupAndRestore(Callback):
    """Keras 3's BackupAndRestore: the training state is backed up into `backup_dir` at the end
    of every epoch (save_freq="epoch") or every `save_freq` batches; a fit that finds a backup
    there (the same script run again after a crash) goes on from it, and ends as the run without
    the interruption would have: weights, the optimizer's slots, step count and learning rate,
    the epoch and step, the shuffling order, the dropout stream and the epoch's running means.

    The backup names weights as the weights files do (no node ids, no strategy): a run resumed
    on another number of processors compiles (searches) its own plan and loads the same state.
    It is one file replaced atomically with a checksum (unity_legion/keras/backup.py); a damaged
    one is never loaded (with double_checkpoint the one before is used instead). At the end of
    a fit the backup is deleted (delete_checkpoint)."""

    FILE = "latest.backup.npz"
    PREVIOUS = "previous.backup.npz"

    def __init__(self, backup_dir: str, save_freq: str | int = "epoch",
                 double_checkpoint: bool = False, delete_checkpoint: bool = True) -> None:
        super().__init__()
        if not backup_dir:
            raise ValueError("BackupAndRestore: backup_dir is empty")
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int)
                                     or save_freq < 1):
            raise ValueError(f"BackupAndRestore: save_freq must be 'epoch' or a positive number "
                             f"of batches, got {save_freq!r}")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.double_checkpoint = bool(double_checkpoint)
        self.delete_checkpoint = bool(delete_checkpoint)
        self._path = os.path.join(self.backup_dir, self.FILE)
        self._prev_path = os.path.join(self.backup_dir, self.PREVIOUS)
        self._epoch = 0
        self._batches = 0
        self._first = 0   # the first batch of the group fit is running

    # ------------------------------------------------------------------ restore
    def on_train_begin(self, logs: dict | None = None) -> None:
        self._batches = 0
        self._remove_temporaries()
        found = self._latest()
        if found is not None:
            self._restore(*found)

    def _latest(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The newest sound backup, or None; a damaged one is an error unless an older sound one
        (double_checkpoint) can stand in."""
        errors = []
        for path in (self._path, self._prev_path):
            if not os.path.exists(path):
                continue
            try:
                return backup_file.read(path)
            except backup_file.BackupError as exc:
                errors.append(str(exc))
                warnings.warn(f"BackupAndRestore: {exc}", stacklevel=3)
        if errors:
            raise backup_file.BackupError(
                f"BackupAndRestore: no sound backup in {self.backup_dir}: {'; '.join(errors)}. "
                f"Remove the directory to start the run again from the beginning.")
        return None

    def _restore(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        model = self.model
        names = model._weight_names()
        weights = {k[len("weights/"):]: v for k, v in arrays.items() if k.startswith("weights/")}
        slots = {k[len("optimizer/"):]: v for k, v in arrays.items()
                 if k.startswith("optimizer/")}
        if set(weights) != set(names):
            missing, extra = sorted(set(names) - set(weights)), sorted(set(weights) - set(names))
            raise backup_file.BackupError(
                f"BackupAndRestore: the backup in {self.backup_dir} is of another model: weights "
                f"missing {missing[:5]}, unexpected {extra[:5]}")
        for n, v in weights.items():
            want = model._spec(names[n]).shape.dims
            if v.shape != want:
                raise backup_file.BackupError(
                    f"BackupAndRestore: the backup in {self.backup_dir} is of another model: "
                    f"weight {n!r} has shape {v.shape} there, {want} in the model")
        saved, mine = meta["optimizer"], model.optimizer.get_state()
        if (saved.get("class"), saved.get("slots")) != (mine["class"], mine["slots"]):
            raise backup_file.BackupError(
                f"BackupAndRestore: the backup in {self.backup_dir} was made with optimizer "
                f"{saved.get('class')!r}; this fit's is {mine['class']!r}")
        # checked: now the model changes (each setter checks its arrays again before writing)
        model._set_weights({names[n]: v for n, v in weights.items()})
        model.optimizer.set_state(dict(saved))
        model._set_optimizer_variables(slots)
        model._executor.random_state = meta["dropout_rng"]
        if model._shuffle_rng is not None:
            model._shuffle_rng.bit_generator.state = meta["shuffle_rng"]
        model._resume_at = (int(meta["epoch"]), int(meta["step"]), meta["totals"])
        self._epoch = int(meta["epoch"])

    # ------------------------------------------------------------------ back up
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._first = batch   # (fit calls the hooks once per steps_per_execution batches)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.save_freq == "epoch":
            return
        self._batches += batch + 1 - self._first
        if self._batches >= self.save_freq:
            self._batches = 0
            totals = self.model._epoch_totals
            self._save(self._epoch, batch + 1, self.model._epoch_rng_state,
                       None if totals is None else totals.state())

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.save_freq == "epoch":
            rng = self.model._shuffle_rng
            self._save(epoch + 1, 0, None if rng is None else rng.bit_generator.state, None)

    def _save(self, epoch: int, step: int, shuffle_rng: Any, totals: Any) -> None:
        """The state after `step` steps of `epoch` (0: at its start), `shuffle_rng` the
        shuffling stream's state at that epoch's start. Every rank gathers (reading weights is
        collective); rank 0 writes."""
        model = self.model
        arrays = {f"weights/{n}": model._get_weight(k) for n, k in model._weight_names().items()}
        arrays |= {f"optimizer/{n}": v for n, v in model._optimizer_variables().items()}
        meta = {"epoch": epoch, "step": step, "totals": totals, "shuffle_rng": shuffle_rng,
                "dropout_rng": model._executor.random_state,
                "optimizer": model.optimizer.get_state()}
        if model._rank() != 0:
            return
        backup_file.commit(backup_file.encode(arrays, meta), self._path,
                           self._prev_path if self.double_checkpoint else None, self._write_file)

    def _write_file(self, path: str, data: bytes) -> None:
        """Write a new backup's bytes (into the temporary file `path`)."""
        backup_file.write_synced(path, data)

    # ------------------------------------------------------------------ clean up
    def on_train_end(self, logs: dict | None = None) -> None:
        if self.delete_checkpoint and self.model._rank() == 0:
            for path in (self._path, self._prev_path):
                if os.path.exists(path):
                    os.remove(path)
            self._remove_temporaries()
            try:
                os.rmdir(self.backup_dir)   # only if nothing else is in it
            except OSError:
                pass

    def _remove_temporaries(self) -> None:
        """Temporary files of writes a crash interrupted (never loaded)."""
        if self.model._rank() != 0 or not os.path.isdir(self.backup_dir):
            return
        for name in os.listdir(self.backup_dir):
            if name.startswith(self.FILE) and name.endswith(backup_file.TEMP_SUFFIX):
                os.remove(os.path.join(self.backup_dir, name))
