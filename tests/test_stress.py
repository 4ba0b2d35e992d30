"""Many models and strategies trained one after another in one process on 4 processors.

What it guards: a process that trains model after model under `--cpus 4` once aborted inside
Legion ("Illegal discard operation call performed in leaf task ..."): Python's cyclic garbage
collector, run by a processor thread inside a task, freed a Legate store of an earlier model
there. Now collection runs on the main thread only (`unity_legion.runtime.collect_garbage`).
The script drops each model with cycles left to collect, allocates garbage inside the loop and
runs every strategy kind (data parallel, Megatron, table parallel, random per-operator
configurations, fused groups across differently placed operators) over the zoo's small models.
"""

from __future__ import annotations

import sys

import pytest

from launch import REPO, run_with_env

_SCRIPT = r"""
import gc
import numpy as np
from unity_legion import keras, runtime
from unity_legion.models import ZOO
from unity_legion.strategy.builtin import by_name, random_strategy

devices = runtime.machine_info().processors
assert devices == 4, devices
names = ["mlp_unify", "dlrm", "xdl", "candle_uno", "bert_large", "resnext50", "inception_v3"]
kinds = ["data_parallel", "expert", "random0", "random1", "random2"]
rng = np.random.default_rng(0)
trained = 0
for round_ in range(NUM_ROUNDS):
    for i, name in enumerate(names):
        kind = kinds[(round_ + i) % len(kinds)]
        entry = ZOO[name]
        keras.utils.set_random_seed(round_ * 10 + i)
        model = entry.build_small()
        batch = 8
        xs, ys = entry.synthetic(model, 2 * batch, np.random.default_rng(i))
        if kind.startswith("random"):
            strategy = random_strategy(model, devices, int(kind[6:]) + 7 * round_, batch=batch)
        else:
            strategy = by_name(kind, model, devices, batch=batch)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=entry.loss, strategy=strategy)
        x = xs if len(xs) > 1 else xs[0]
        y = ys if len(ys) > 1 else ys[0]
        history = model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        loss = history.history["loss"][-1]
        assert np.isfinite(loss), (name, kind, loss)
        # cycles that hold the model's stores, left for the collector to find later
        junk = [model]
        junk.append(junk)
        del model, junk
        [[{} for _ in range(50)] for _ in range(200)]  # allocations that trigger collections
        trained += 1
        print("TRAINED", name, kind, round(float(loss), 4), flush=True)
gc.collect()
print("DONE", trained)
"""


@pytest.mark.slow
def test_thirty_five_models_and_strategies_in_one_process_on_four_processors(tmp_path) -> None:
    rounds = 5  # 7 models x 5 rounds = 35 trainings
    script = tmp_path / "stress.py"
    script.write_text(_SCRIPT.replace("NUM_ROUNDS", str(rounds)))
    proc = run_with_env([sys.executable, str(script)], REPO, "--cpus 4 --sysmem 6000", 1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert f"DONE {7 * rounds}" in proc.stdout, out[-4000:]
    assert "LEGION ERROR" not in out
