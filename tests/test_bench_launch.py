"""scripts/bench_launch.py: the launch-cost table runs and its figures are what they claim."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from launch import REPO, VENV_BIN, run_with_env

pytestmark = pytest.mark.slow


def test_bench_launch_prints_every_part_and_the_loaded_chain(tmp_path: Path) -> None:
    argv = [str(VENV_BIN / "python"), str(REPO / "scripts" / "bench_launch.py"),
            "--launches", "40", "--points", "1,2"]
    proc = run_with_env(argv, tmp_path, "--cpus 2 --sysmem 1000", timeout_s=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])["rows"]
    assert set(rows) == {f"{k} p={p}" for k in ("before", "after", "replayed") for p in (1, 2)}
    for r in rows.values():
        assert all(math.isfinite(v) for v in r.values()), r
        assert r["end_to_end_us"] > 0
    for p in (1, 2):
        # each launch of the loaded chain waits for the one before and computes for 1 ms, so
        # what it adds beyond that is a positive cost; one fused or replayed launch of an
        # empty kernel costs less end to end than one issued alone
        assert rows[f"before p={p}"]["loaded_us"] > 0
        assert rows[f"replayed p={p}"]["end_to_end_us"] < rows[f"before p={p}"]["end_to_end_us"]
