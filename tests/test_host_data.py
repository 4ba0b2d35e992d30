"""Values moved between host arrays and stores by tasks (executor/host_data.py): what several
ranks use instead of attachments, checked on one rank in-process and, whole programs, on two."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from launch import REPO, run_with_env

SCRIPT = Path(__file__).with_name("host_data_script.py")


@pytest.mark.parametrize("arr", [np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5,
                                 np.arange(7, dtype=np.int64) * -3,
                                 np.array([2.5], dtype=np.float64)])
def test_load_and_copy_move_every_value(arr):
    from unity_legion.executor import host_data
    from unity_legion.executor.executor import _STORAGE_TYPE, read
    from unity_legion.runtime import runtime

    rt = runtime()
    dst = rt.create_store(_STORAGE_TYPE[arr.dtype], arr.shape)
    key = host_data.load(rt, arr.copy(), dst)
    other = rt.create_store(dst.type, dst.shape)
    host_data.copy(rt, dst, other)
    np.testing.assert_array_equal(read(other), arr)
    np.testing.assert_array_equal(read(dst), arr)
    host_data.release(key)
    assert key not in host_data._HOST


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.float16])
def test_gather_flattens_stores_one_after_another(dtype):
    from unity_legion.executor import host_data
    from unity_legion.executor.executor import _STORAGE_TYPE, read
    from unity_legion.runtime import runtime

    rt = runtime()
    arrays = [np.arange(6).reshape(2, 3).astype(dtype), np.array([7], dtype=dtype),
              (np.arange(5) * 2 - 3).astype(dtype)]
    stores = []
    for arr in arrays:
        stores.append(rt.create_store(_STORAGE_TYPE[arr.dtype], arr.shape))
        host_data.load(rt, arr, stores[-1])
    got = read(host_data.gather(rt, stores), direct=True)
    np.testing.assert_array_equal(got, np.concatenate([a.reshape(-1) for a in arrays]))


def _run(tmp_path: Path, name: str, ranks: int) -> dict[str, np.ndarray]:
    legate = [str(Path(sys.prefix) / "bin" / "legate")]
    if ranks > 1:
        legate += ["--launcher", "mpirun", "--nodes", "1", "--ranks-per-node", str(ranks)]
    out = tmp_path / name
    proc = run_with_env([*legate, "--cpus", str(2 // ranks), "--sysmem", str(2000 // ranks),
                         str(SCRIPT), "--out", str(out)], REPO, "", 600)
    assert proc.returncode == 0 and "HOST-DATA-OK" in proc.stdout, \
        (proc.stdout + proc.stderr)[-4000:]
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.slow
def test_two_ranks_attach_nothing_and_train_as_one_rank(tmp_path):
    """Weights set from the host, fit over staged data, steps fed per call, evaluate, predict:
    on 2 ranks nothing is attached (the script refuses it) and every figure equals 1 rank's."""
    one, two = _run(tmp_path, "one.npz", 1), _run(tmp_path, "two.npz", 2)
    assert sorted(one) == sorted(two)
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)
