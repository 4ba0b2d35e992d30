"""A training script with keras.callbacks.BackupAndRestore, run under legate by
tests/test_backup_restore.py, once whole and again after it killed itself (SIGKILL).

UL_TEST_KILL chooses where it kills itself (the test is deterministic that way):
  batch:E:B    before step B of epoch E (0-based) runs
  epoch:E      at the end of epoch E, right after its backup was written
  write:N      halfway through writing the N-th backup (1-based): a torn temporary file
At the end it writes the final weights, optimizer state and step count to --out.
"""

from __future__ import annotations

import argparse
import os
import signal

import numpy as np

from unity_legion import keras


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillingBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose N-th write stops halfway (UL_TEST_KILL=write:N)."""

    def __init__(self, *args, kill_write: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kill_write = kill_write
        self.writes = 0

    def _write_file(self, path: str, data: bytes) -> None:
        self.writes += 1
        if self.writes == self.kill_write:
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            die()
        super()._write_file(path, data)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--backup", default=None, help="backup_dir; none: no BackupAndRestore")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--save-freq", default="epoch")
    p.add_argument("--double", action="store_true")
    args = p.parse_args()
    kill = os.environ.get("UL_TEST_KILL", "")
    what, *where = kill.split(":") if kill else ("", )
    where = [int(v) for v in where]

    rng = np.random.default_rng(5)
    x = rng.normal(size=(90, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64) + (x[:, 3] > 1).astype(np.int64)
    model = keras.Sequential([keras.Input(shape=(8,)),
                              keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.3),
                              keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    callbacks = []
    if args.backup:
        freq = args.save_freq if args.save_freq == "epoch" else int(args.save_freq)
        callbacks.append(KillingBackup(args.backup, save_freq=freq,
                                       double_checkpoint=args.double,
                                       kill_write=where[0] if what == "write" else 0))
    epoch_now = [0]

    def batch_begin(batch, logs):
        if what == "batch" and [epoch_now[0], batch] == where:
            die()

    def epoch_begin(epoch, logs):
        epoch_now[0] = epoch

    def epoch_end(epoch, logs):
        if what == "epoch" and [epoch] == where:
            die()
    callbacks.append(keras.callbacks.LambdaCallback(on_epoch_begin=epoch_begin,
                                                    on_epoch_end=epoch_end,
                                                    on_train_batch_begin=batch_begin))
    hist = model.fit(x, y, batch_size=16, epochs=args.epochs, verbose=0, callbacks=callbacks)
    out = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    out |= {f"opt/{k}": v for k, v in model._optimizer_variables().items()}
    out["iterations"] = np.array(model.optimizer.iterations)
    out["epochs_run"] = np.array(hist.epoch, dtype=np.int64)
    out["last_loss"] = np.array(hist.history["loss"][-1])
    if model._rank() == 0:
        np.savez(args.out, **out)


if __name__ == "__main__":
    main()
