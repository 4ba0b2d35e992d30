"""scripts/bench_simulator.py on 2 ranks (mpirun): the calibration, the operator measurements and
the real steps run SPMD on both ranks without diverging, and rank 0 prints the summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from launch import REPO, VENV_BIN, run_with_env

pytestmark = pytest.mark.slow


def test_bench_simulator_on_two_ranks(tmp_path: Path) -> None:
    argv = [str(VENV_BIN / "legate"), "--launcher", "mpirun", "--nodes", "1",
            "--ranks-per-node", "2", "--cpus", "1", "--sysmem", "2000",
            # ranks whose string sets iterate in different orders: they must still agree
            str(REPO / "tests" / "rank_hash_seed.py"), "0,1",
            str(REPO / "scripts" / "bench_simulator.py"),
            "--only", "mlp/data,mlp/serial0", "--rounds", "1", "--steps", "2", "--warmup", "1",
            "--repeats", "2", "--cache", str(tmp_path / "costs")]
    proc = run_with_env(argv, tmp_path, "", timeout_s=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["ranks"] == 2 and summary["processors"] == 2
    assert summary["strategies"] == 2
    for key in ("median_abs_rel_error", "max_abs_rel_error", "median_rel_error"):
        assert isinstance(summary[key], float) and math.isfinite(summary[key]), summary
    assert abs(summary["median_rel_error"]) <= summary["max_abs_rel_error"]
    for row in summary["per_strategy"]:
        assert row["real_ms"] > 0 and row["predicted_ms"] > 0, row
    # only rank 0 prints: one table, one summary
    assert sum(1 for line in lines if line.startswith("strategy ")) == 1
    assert sum(1 for line in lines if line.startswith("{")) == 1
    # the calibration of a 2-rank job is cached apart from a one-rank one's (2 nodes x 1)
    cals = list((tmp_path / "costs").glob("machine-*-2ranks.json"))
    assert len(cals) == 1, list((tmp_path / "costs").iterdir())
    machine = json.loads(cals[0].read_text())["machine"]
    assert machine["nodes"] == 2 and machine["devices_per_node"] == 1
    assert machine["inter"]["latency"] > 0


def test_bench_simulator_driver_runs_each_strategy_in_its_own_job(tmp_path: Path) -> None:
    """Run by plain Python, the script starts one Legate job per strategy; the first job's
    calibration is cached and read by the next (one calibration file), and one table and one
    summary come back."""
    argv = [str(VENV_BIN / "python"), str(REPO / "scripts" / "bench_simulator.py"),
            "--only", "mlp/data,mlp/serial0", "--rounds", "1", "--steps", "1", "--warmup", "1",
            "--repeats", "2", "--cache", str(tmp_path / "costs")]
    proc = run_with_env(argv, tmp_path, "", timeout_s=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    # three passes (the default) of one job per strategy, merged into one row per strategy:
    # each figure the median of the three, not moved by one slow job
    assert summary["jobs"] == 6 and summary["strategies"] == 2, summary
    assert summary["ranks"] == 1 and summary["processors"] == 2
    assert [r["strategy"] for r in summary["per_strategy"]] == ["mlp/data", "mlp/serial0"]
    for r in summary["per_strategy"]:
        assert len(r["real_ms_passes"]) == 3
        assert r["real_ms"] == pytest.approx(sorted(r["real_ms_passes"])[1], abs=1e-3)
        assert r["rel_error"] == pytest.approx((r["predicted_ms"] - r["real_ms"]) / r["real_ms"],
                                               abs=1e-3)
    assert sum(1 for line in lines if line.startswith("strategy ")) == 1
    assert len(list((tmp_path / "costs").glob("machine-*.json"))) == 1


def test_bench_simulator_driver_names_an_unknown_strategy(tmp_path: Path) -> None:
    argv = [str(VENV_BIN / "python"), str(REPO / "scripts" / "bench_simulator.py"),
            "--only", "mlp/data,mlp/nonsense"]
    proc = run_with_env(argv, tmp_path, "", timeout_s=120)
    assert proc.returncode != 0
    assert "unknown strategies ['mlp/nonsense']" in proc.stderr


def test_bench_simulator_large_size_reaches_each_job(tmp_path: Path) -> None:
    """--size large is handed to every strategy's job: the job builds the large models (its
    step's simulated work is several times the small one's) and the summary names the size."""
    works = {}
    for size in ("small", "large"):
        argv = [str(VENV_BIN / "python"), str(REPO / "scripts" / "bench_simulator.py"),
                "--only", "mlp/serial0", "--size", size, "--passes", "1", "--rounds", "1",
                "--steps", "1",
                "--warmup", "1", "--repeats", "2", "--cache", str(tmp_path / "costs")]
        proc = run_with_env(argv, tmp_path, "", timeout_s=900)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        assert summary["size"] == size
        works[size] = summary["per_strategy"][0]["work_ms"]
    # 1024-wide layers against 512-wide ones: four times the products' work
    assert works["large"] > 2.5 * works["small"], works
