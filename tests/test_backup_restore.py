"""keras.callbacks.BackupAndRestore: a fit interrupted anywhere and run again ends as the fit
without the interruption ends (weights, optimizer state, step count, epoch, shuffling, dropout).

In-process tests interrupt a fit with an exception from a callback (the backup stays: a fit that
raises never reaches on_train_end) and check the file's guarantees; the slow ones run
tests/backup_restore_script.py under legate, have it SIGKILL itself at a chosen point (also in
the middle of writing a backup), run it again and compare with a run never interrupted, also
when the second run has another number of processors (and so another plan)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from launch import REPO, VENV_BIN, run_with_env
from unity_legion import keras
from unity_legion.keras import backup as backup_file

cbs = keras.callbacks
L = keras.layers
EPOCHS = 4


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    return x, (x[:, 0] - x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 0.5)


def model_with_dropout(optimizer=None, hidden: int = 12) -> keras.Model:
    model = keras.Sequential([keras.Input(shape=(6,)), L.Dense(hidden, activation="relu"),
                              L.Dropout(0.25), L.Dense(3)])
    model.compile(optimizer=optimizer or keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


class Crash(Exception):
    pass


def crash_at(epoch: int, batch: int) -> cbs.Callback:
    """Raises before step `batch` of `epoch`: the fit stops there as a killed one would."""
    now = [0]

    def begin(b, logs):
        if (now[0], b) == (epoch, batch):
            raise Crash()
    return cbs.LambdaCallback(on_epoch_begin=lambda e, logs: now.__setitem__(0, e),
                              on_train_batch_begin=begin)


def fit(model: keras.Model, callbacks=(), epochs: int = EPOCHS) -> keras.callbacks.History:
    x, y = data()
    return model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=list(callbacks))


@pytest.fixture(scope="module")
def uninterrupted():
    model = model_with_dropout()
    history = fit(model)
    return model.get_weights(), model._optimizer_variables(), model.optimizer.iterations, history


def assert_same_end(model, history, want) -> None:
    weights, slots, iterations, want_history = want
    assert model.optimizer.iterations == iterations
    for got, ref in zip(model.get_weights(), weights):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    got_slots = model._optimizer_variables()
    assert sorted(got_slots) == sorted(slots)
    for k in slots:
        np.testing.assert_allclose(got_slots[k], slots[k], rtol=0, atol=1e-6)
    last = history.epoch[-1]
    assert last == want_history.epoch[-1]
    # the resumed epochs report what the uninterrupted run reported for them
    for k, values in history.history.items():
        np.testing.assert_allclose(values, want_history.history[k][-len(values):], rtol=1e-6)


@pytest.mark.parametrize("save_freq,crash,resumed_epochs", [
    ("epoch", (2, 3), [2, 3]),     # mid-epoch: back to the end of epoch 1
    ("epoch", (0, 2), [0, 1, 2, 3]),  # before the first backup: from the start
    (3, (2, 0), [1, 2, 3]),        # every 3 batches (7 an epoch): resumes in epoch 1, step 5
])
def test_a_fit_interrupted_and_run_again_ends_as_the_uninterrupted_one(
        tmp_path, uninterrupted, save_freq, crash, resumed_epochs) -> None:
    backup_dir = tmp_path / "backup"
    first = model_with_dropout()
    with pytest.raises(Crash):
        fit(first, [cbs.BackupAndRestore(backup_dir, save_freq=save_freq), crash_at(*crash)])
    again = model_with_dropout()     # the script run again: a new model, compiled again
    history = fit(again, [cbs.BackupAndRestore(backup_dir, save_freq=save_freq)])
    assert history.epoch == resumed_epochs
    assert_same_end(again, history, uninterrupted)
    assert not backup_dir.exists()   # deleted at the end (delete_checkpoint=True)


def test_a_backup_is_kept_with_delete_checkpoint_false_and_a_finished_run_resumes_nothing(
        tmp_path, uninterrupted) -> None:
    backup_dir = tmp_path / "backup"
    model = model_with_dropout()
    fit(model, [cbs.BackupAndRestore(backup_dir, delete_checkpoint=False)])
    arrays, meta = backup_file.read(str(backup_dir / cbs.BackupAndRestore.FILE))
    assert meta["epoch"] == EPOCHS and meta["optimizer"]["iterations"] == 4 * 7
    assert sorted(k for k in arrays if k.startswith("weights/")) == \
        sorted(f"weights/{n}" for n in model._weight_names())
    again = model_with_dropout()
    history = fit(again, [cbs.BackupAndRestore(backup_dir)])
    assert history.epoch == []            # nothing left to run
    for got, ref in zip(again.get_weights(), uninterrupted[0]):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def _crashed_backup(tmp_path, **kwargs):
    backup_dir = tmp_path / "backup"
    with pytest.raises(Crash):
        fit(model_with_dropout(), [cbs.BackupAndRestore(backup_dir, **kwargs), crash_at(3, 0)])
    return backup_dir


def test_a_torn_backup_is_never_loaded(tmp_path) -> None:
    backup_dir = _crashed_backup(tmp_path)
    path = backup_dir / cbs.BackupAndRestore.FILE
    data_ = path.read_bytes()
    path.write_bytes(data_[: len(data_) // 2])
    model = model_with_dropout()
    before = model.get_weights()
    with pytest.warns(UserWarning), pytest.raises(backup_file.BackupError, match="damaged"):
        fit(model, [cbs.BackupAndRestore(backup_dir)])
    for got, ref in zip(model.get_weights(), before):   # nothing was loaded
        np.testing.assert_array_equal(got, ref)


def test_a_backup_whose_contents_changed_fails_its_checksum(tmp_path) -> None:
    backup_dir = _crashed_backup(tmp_path)
    path = str(backup_dir / cbs.BackupAndRestore.FILE)
    with np.load(path, allow_pickle=False) as f:
        entries = {k: f[k] for k in f.files}
    name = next(k for k in entries if k.startswith("weights/"))
    entries[name] = entries[name] + np.float32(1e-3)   # a well-formed file with other values
    np.savez(path, **entries)
    with pytest.warns(UserWarning), pytest.raises(backup_file.BackupError, match="checksum"):
        fit(model_with_dropout(), [cbs.BackupAndRestore(backup_dir)])


def test_double_checkpoint_falls_back_to_the_previous_backup(tmp_path, uninterrupted) -> None:
    backup_dir = _crashed_backup(tmp_path, double_checkpoint=True)
    assert (backup_dir / cbs.BackupAndRestore.PREVIOUS).exists()
    (backup_dir / cbs.BackupAndRestore.FILE).write_bytes(b"not a backup")
    again = model_with_dropout()
    with pytest.warns(UserWarning, match="damaged"):
        history = fit(again, [cbs.BackupAndRestore(backup_dir, double_checkpoint=True)])
    assert history.epoch == [2, 3]       # the backup of epoch 1's end, the one before the last
    assert_same_end(again, history, uninterrupted)


def test_a_temporary_file_left_by_a_killed_write_is_ignored_and_removed(
        tmp_path, uninterrupted) -> None:
    backup_dir = _crashed_backup(tmp_path)
    stale = backup_dir / f"{cbs.BackupAndRestore.FILE}.999{backup_file.TEMP_SUFFIX}"
    stale.write_bytes(b"half a backup")
    again = model_with_dropout()
    history = fit(again, [cbs.BackupAndRestore(backup_dir, delete_checkpoint=False)])
    assert history.epoch == [3] and not stale.exists()
    assert_same_end(again, history, uninterrupted)


def test_a_backup_of_another_model_or_optimizer_is_refused(tmp_path) -> None:
    backup_dir = _crashed_backup(tmp_path)
    with pytest.raises(ValueError, match="shape"):
        fit(model_with_dropout(hidden=10), [cbs.BackupAndRestore(backup_dir)])
    with pytest.raises(ValueError, match="Adam"):
        fit(model_with_dropout(keras.optimizers.SGD(0.1, momentum=0.9)),
            [cbs.BackupAndRestore(backup_dir)])


@pytest.mark.parametrize("kwargs,match", [
    ({"backup_dir": ""}, "backup_dir"),
    ({"backup_dir": "b", "save_freq": 0}, "save_freq"),
    ({"backup_dir": "b", "save_freq": "batch"}, "save_freq"),
])
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        cbs.BackupAndRestore(**kwargs)


# ---------------------------------------------------------------------------------------------
# The optimizer's state is independent of the strategy: moments read from a rewritten graph's
# executor are the model's, and load into an executor of another plan.
def test_optimizer_state_moves_between_strategies() -> None:
    from test_train_rewritten import branchy, compiled, data as rw_data, merged

    x, y = rw_data()
    weights = branchy().get_weights()
    dp = compiled(branchy, "data_parallel", weights, keras.optimizers.Adam(0.01))
    rw = compiled(branchy, merged, weights, keras.optimizers.Adam(0.01))
    assert rw._executor.inner.graph is not rw.graph
    for _ in range(3):
        dp.train_on_batch(x, y)
        rw.train_on_batch(x, y)
    got, want = rw._optimizer_variables(), dp._optimizer_variables()
    assert sorted(got) == sorted(want) and len(want) == 2 * len(weights)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7)
    # swap: each goes on from the other's state, under its own plan
    moved_rw = compiled(branchy, merged, dp.get_weights(), keras.optimizers.Adam(0.01))
    moved_dp = compiled(branchy, "data_parallel", rw.get_weights(), keras.optimizers.Adam(0.01))
    for dst, src in ((moved_rw, dp), (moved_dp, rw)):
        dst.optimizer.set_state(src.optimizer.get_state())
        dst._set_optimizer_variables(src._optimizer_variables())
    for m in (dp, rw, moved_rw, moved_dp):
        for _ in range(2):
            m.train_on_batch(x, y)
    for a, b in ((moved_rw, dp), (moved_dp, rw), (dp, rw)):
        for u, v in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# SIGKILL, for real: the script kills itself at a chosen point (UL_TEST_KILL), then runs again.
SCRIPT = str(REPO / "tests" / "backup_restore_script.py")


def run_script(cwd, out: str, cpus: int = 2, kill: str = "", extra=(), ranks: int = 1):
    legate = [str(VENV_BIN / "legate")]
    if ranks > 1:
        legate += ["--launcher", "mpirun", "--nodes", "1", "--ranks-per-node", str(ranks)]
    argv = ["env", f"UL_TEST_KILL={kill}", *legate, "--cpus", str(cpus),
            "--sysmem", str(2000 // ranks),
            SCRIPT, "--out", out, *extra]
    return run_with_env(argv, cwd, "")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("reference")
    proc = run_script(cwd, "ref.npz")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(cwd / "ref.npz") as f:
        return {k: f[k] for k in f.files}


def _killed_then_resumed(tmp_path, kill: str, extra=(), cpus=(2, 2), ranks=(1, 1)):
    args = ["--backup", "bk", *extra]
    killed = run_script(tmp_path, "out.npz", cpus[0], kill, args, ranks[0])
    assert killed.returncode != 0 and not (tmp_path / "out.npz").exists(), killed.stderr[-3000:]
    resumed = run_script(tmp_path, "out.npz", cpus[1], "", args, ranks[1])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (tmp_path / "bk").exists()
    with np.load(tmp_path / "out.npz") as f:
        return {k: f[k] for k in f.files}


def _assert_matches(got, ref, epochs_run) -> None:
    assert got["epochs_run"].tolist() == epochs_run
    assert sorted(got) == sorted(ref)
    assert int(got["iterations"]) == int(ref["iterations"])
    for k in ref:
        if k not in ("epochs_run", "iterations"):
            np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-6, err_msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("kill,extra,epochs_run", [
    ("batch:2:3", (), [2, 3]),                   # in the middle of epoch 2's steps
    ("epoch:1", (), [2, 3]),                     # right after the backup of epoch 1
    ("write:2", (), [1, 2, 3]),                  # halfway through the 2nd backup's write
    ("write:1", (), [0, 1, 2, 3]),               # halfway through the first: no backup at all
    ("batch:1:4", ("--save-freq", "4"), [1, 2, 3]),   # every 4 batches: resumes inside epoch 1
])
def test_sigkill_and_run_again(tmp_path, reference_run, kill, extra, epochs_run) -> None:
    got = _killed_then_resumed(tmp_path, kill, extra)
    _assert_matches(got, reference_run, epochs_run)


@pytest.mark.slow
def test_sigkill_at_a_random_step(tmp_path, reference_run) -> None:
    rng = np.random.default_rng(int(os.environ.get("UL_TEST_SEED", "2026")))
    epoch, batch = int(rng.integers(0, 4)), int(rng.integers(0, 6))
    got = _killed_then_resumed(tmp_path, f"batch:{epoch}:{batch}", ("--save-freq", "1"))
    # every batch backed up: the resumed run starts in the epoch it was killed in
    # (or in the one before, when killed before its first step)
    first = epoch if batch > 0 else max(epoch - 1, 0)
    _assert_matches(got, reference_run, list(range(first, 4)))


@pytest.mark.slow
def test_resumed_on_another_number_of_processors(tmp_path, reference_run) -> None:
    """Killed with one CPU, run again with two: the second run searches its own plan and goes
    on from the same weights and optimizer state (float sums in another order: 1e-6)."""
    got = _killed_then_resumed(tmp_path, "batch:2:2", (), cpus=(1, 2))
    _assert_matches(got, reference_run, [2, 3])


@pytest.mark.slow
def test_resumed_with_two_ranks(tmp_path, reference_run) -> None:
    """Killed in a one-rank job, run again as two ranks (mpirun): rank 0 reads and writes the
    backup, every rank loads it."""
    got = _killed_then_resumed(tmp_path, "epoch:0", (), cpus=(1, 1), ranks=(1, 2))
    _assert_matches(got, reference_run, [1, 2, 3])
