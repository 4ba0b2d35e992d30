"""scripts/bench_gil.py: both rows run on 1 and 2 points and print their figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch import REPO, VENV_BIN, run_with_env

pytestmark = pytest.mark.slow


def test_bench_gil_times_both_rows_on_one_and_two_points(tmp_path: Path) -> None:
    argv = [str(VENV_BIN / "python"), str(REPO / "scripts" / "bench_gil.py"),
            "--launches", "3", "--rounds", "2", "--scale", "0.5"]
    proc = run_with_env(argv, tmp_path, "--cpus 2 --sysmem 1000", timeout_s=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(rows) == {"small", "large"}
    for r in rows.values():   # (the ratio itself is a timing: the README gives it, not a test)
        assert r["one_point_ms"] > 0 and r["two_points_ms"] > 0
        assert r["ratio"] == pytest.approx(r["two_points_ms"] / r["one_point_ms"], rel=0.01)
    assert rows["small"]["elements"] < rows["large"]["elements"]
