"""scripts/bench_fit.py: fit with a read after every step and with steps grouped, both timed, and
with the loss and metrics read back from their stores instead of posted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch import REPO, VENV_BIN, run_with_env

pytestmark = pytest.mark.slow


def test_bench_fit_times_both_settings(tmp_path: Path) -> None:
    argv = [str(VENV_BIN / "python"), str(REPO / "scripts" / "bench_fit.py"),
            "--widths", "16,32,4", "--batch-size", "8", "--steps", "6", "--group", "3",
            "--rounds", "1", "--strategy", "data_parallel"]
    proc = run_with_env(argv, tmp_path, "--cpus 2 --sysmem 1000", timeout_s=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["group"] == 3 and out["processors"] == 2 and out["strategy"] == "data_parallel"
    assert out["step_s_each_read"] > 0 and out["step_s_grouped"] > 0   # (timings: README)
    assert out["speedup"] == pytest.approx(out["step_s_each_read"] / out["step_s_grouped"],
                                           rel=0.01)
    assert out["metrics"] == ["accuracy"] and out["step_s_each_read_stores"] > 0
    assert out["posted_speedup"] == pytest.approx(
        out["step_s_each_read_stores"] / out["step_s_each_read"], rel=0.01)
