"""The GPU side, as far as a machine without a GPU can check it: every kernel's task has a GPU
variant (scripts/check_gpu.py), the check's harness is right (run on numpy against PyTorch CPU),
a job that asked for GPUs and found none says so before training, GPU views with a dtype the GPU
kernels cannot run are refused before launch, and the CPU view path of the kernels is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from launch import REPO, VENV_BIN, run_with_env

from unity_legion.operators._aten import DeviceDtypeError, check_device_dtype, view, xp

PYTHON = str(VENV_BIN / "python")
CHECK = str(REPO / "scripts" / "check_gpu.py")


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_check_gpu_counts_a_gpu_variant_for_every_kernel(tmp_path: Path):
    r = run_with_env([PYTHON, CHECK], tmp_path, timeout_s=300)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = _last_json(r.stdout)
    assert doc["gpu"] is False  # no GPU on the test machines: counts only
    assert doc["kernels"] >= 80
    assert doc["gpu_variants"] == doc["kernels"]
    assert "checked" not in doc


@pytest.mark.slow
def test_check_gpu_harness_on_cpu_matches_torch(tmp_path: Path):
    # the device check's own code, on numpy arrays against PyTorch CPU: what a GPU run does
    # with CuPy arrays against PyTorch CUDA
    r = run_with_env([PYTHON, CHECK, "--device", "cpu"], tmp_path)
    doc = _last_json(r.stdout)
    assert doc["device"] == "cpu" and doc["checked"] >= 60
    # operators added since may fail here for reasons of their own: name them
    assert doc["mlp_rel_error"] <= 1e-4
    assert doc["max_rel_error"] <= 1e-4, doc["failures"]


NO_GPU = "--gpus 1 was asked for but Legate found no GPU on this machine"


def _machine_info(tmp_path: Path, config: str):
    script = tmp_path / "info.py"
    script.write_text("from unity_legion.runtime import machine_info\n"
                      "print('INFO', machine_info())\n")
    r = run_with_env([PYTHON, str(script)], REPO, config, timeout_s=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_gpus_asked_but_none_found_is_reported(tmp_path: Path):
    r = _machine_info(tmp_path, "--cpus 1 --gpus 1 --sysmem 1000")
    assert NO_GPU in r.stderr and "runs on 1 CPU processor(s) per rank instead" in r.stderr, \
        r.stderr[-2000:]
    assert "(--gpus 1 asked, 0 found)" in r.stdout


def test_no_warning_when_no_gpu_was_asked(tmp_path: Path):
    r = _machine_info(tmp_path, "--cpus 1 --sysmem 1000")
    assert "no GPU" not in r.stderr and "asked" not in r.stdout


@pytest.mark.slow
def test_train_script_with_gpus_but_none_says_so_before_training(tmp_path: Path):
    argv = [str(VENV_BIN / "legate"), "--cpus", "1", "--gpus", "1", "--sysmem", "1000",
            str(REPO / "scripts" / "train.py"), "--epochs", "1"]
    r = run_with_env(argv, tmp_path, "")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert NO_GPU in r.stderr, r.stderr[-2000:]
    # the run line, printed before the first epoch, says what runs
    assert "1 rank(s) x 1 CPU processor(s) (--gpus 1 asked, 0 found)" in r.stdout


def test_gpu_kernel_dtype_error_names_operator_and_dtype():
    with pytest.raises(DeviceDtypeError, match=r"operator 'dense' \(linear\).*complex64"):
        check_device_dtype("operator 'dense' (linear)", "complex64", "gpu")
    check_device_dtype("operator 'dense' (linear)", "complex64", "cpu")  # CPU: not this check
    # bfloat16 runs on GPUs as on CPUs: uint16 stores widened in the task body (precision.py)
    for dt in ("float32", "float64", "int32", "int64", "bool", "float16", "bfloat16"):
        check_device_dtype("x", dt if dt == "bfloat16" else np.dtype(dt), "gpu")


def test_strategy_with_gpu_views_refused_without_gpus():
    from unity_legion import keras
    from unity_legion.strategy.builtin import by_name
    from unity_legion.strategy.strategy import StrategyError

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    strategy = by_name("data_parallel", model, 2, "gpu")
    with pytest.raises(StrategyError,
                       match=r"runs on gpu devices; the machine has 2 cpu \(0 gpu\)"):
        strategy.compile(model, 8, {"cpu": 2, "gpu": 0})


def test_cpu_views_are_numpy_backed_and_the_module_is_numpy():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = view(a)
    t += 1  # shares the memory
    assert a[0, 0] == 1 and t.device.type == "cpu" and xp(a) is np


def test_running_machine_takes_the_gpu_framebuffer():
    from unity_legion.search.plan import running_machine

    gpu = running_machine(1, 4, "gpu", memory=2 * 2**30)
    assert gpu.device.kind == "gpu" and gpu.device.memory == 2 * 2**30
    assert running_machine(1, 4, "gpu").device.memory > 2 * 2**30
    assert running_machine(1, 2, "cpu") == running_machine(1, 2, "cpu", None)
    h200 = running_machine(1, 8, "gpu", gpu_name="NVIDIA H200")
    assert h200.device.name.startswith("H200") and "H200" in h200.source
    assert running_machine(1, 8, "gpu", gpu_name="some GPU").device.name.startswith("H100")


def test_gpu_view_placed_without_gpus_is_refused_before_launch():
    from unity_legion.mappers.placement import placed
    from unity_legion.runtime import runtime
    from unity_legion.types import MachineView

    runtime()
    with pytest.raises(ValueError, match=r"uses gpu devices \[0, 1\) but the machine has 0"):
        with placed(MachineView.contiguous("gpu", 0, 1)):
            pass
