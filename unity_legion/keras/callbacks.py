"""Callbacks with Keras 3's names, hooks and arguments."""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Sequence

import numpy as np


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
    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None: ...
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
    """Saves the weights (`.weights.npz`) at the end of every epoch, or only when the monitored
    value improves. Saving a whole model (architecture too) is not supported."""

    def __init__(self, filepath: str, monitor: str = "val_loss", verbose: int = 0,
                 save_best_only: bool = False, save_weights_only: bool = False, mode: str = "auto",
                 save_freq: str | int = "epoch", initial_value_threshold: float | None = None) -> None:
        super().__init__()
        filepath = str(filepath)
        if not filepath.endswith(".weights.npz"):
            raise ValueError(f"ModelCheckpoint: filepath must end in '.weights.npz' (weights only; "
                             f"saving the whole model is not supported), got {filepath!r}")
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


