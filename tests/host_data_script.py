"""Trains, evaluates and predicts with a data-parallel MLP, run under legate by
tests/test_host_data.py on one rank and on two. On several ranks it fails if the executor
attaches any host buffer to a store (executor/host_data.py says why it must not).
Writes weights, losses, metrics and predictions to --out (rank 0)."""

from __future__ import annotations

import argparse

import numpy as np

from unity_legion import keras
from unity_legion.executor.executor import GraphExecutor
from unity_legion.runtime import machine_info


def refuse_attach(self, arr):
    raise AssertionError(f"a host buffer of shape {arr.shape} was attached on "
                         f"{machine_info().ranks} ranks")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if machine_info().ranks > 1:
        GraphExecutor._store_from_buffer = refuse_attach
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64)
    model = keras.Sequential([keras.Input(shape=(8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], strategy="data_parallel")
    init = [w.copy() for w in model.get_weights()]
    model.set_weights([w * 0.5 for w in init])           # weights loaded from the host
    hist = model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)  # staged data
    step = [model.train_on_batch(x[:16], y[:16]) for _ in range(3)]            # feeds per step
    evaluated = model.evaluate(x, y, batch_size=32, verbose=0)
    predicted = model.predict(x[:20], batch_size=8, verbose=0)
    out = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    out |= {"fit_loss": np.array(hist.history["loss"]), "steps": np.array(step, dtype=np.float64),
            "evaluated": np.array(evaluated, dtype=np.float64), "predicted": predicted}
    if machine_info().rank == 0:
        np.savez(args.out, **out)
        print("HOST-DATA-OK", flush=True)


if __name__ == "__main__":
    main()
