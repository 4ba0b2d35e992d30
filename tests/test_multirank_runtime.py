"""Two Legate ranks on one machine (mpirun over loopback) form one runtime.

Each run starts fresh processes: one Legate runtime per process, and the
pytest process already owns one.  The environment comes from
``<venv>/unity_legion_env.sh`` (written by ``make setup``), sourced again here
so the test also works when pytest was started without it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from launch import run_with_env

pytestmark = pytest.mark.slow

TIMEOUT_S = 240

SCRIPT = textwrap.dedent(
    """
    import legate.core as lc
    rt = lc.get_legate_runtime()
    assert rt.node_count == 2, rt.node_count
    import cupynumeric as cn
    total = float(cn.arange(100_000, dtype=cn.float64).sum())
    assert total == 4999950000.0, total
    print(f"RANK-OK {rt.node_id} of {rt.node_count} sum={total:.0f}", flush=True)
    """
)


def _run_with_env(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # One CPU processor per rank: 2 ranks on a 2-core machine.
    return run_with_env(argv, cwd, "--cpus 1 --sysmem 1000", TIMEOUT_S)


def _check_two_ranks(proc: subprocess.CompletedProcess[str]) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    ranks = sorted(
        line.split()[1] for line in proc.stdout.splitlines() if line.startswith("RANK-OK")
    )
    assert ranks == ["0", "1"], out[-4000:]


def test_mpirun_two_ranks_form_one_runtime(tmp_path: Path) -> None:
    mpirun = Path(sys.prefix) / "bin" / "mpirun"
    proc = _run_with_env(
        [
            str(mpirun), "-np", "2", "--oversubscribe", "--bind-to", "none",
            sys.executable, "-c", SCRIPT,
        ],
        cwd=tmp_path,
    )
    _check_two_ranks(proc)


def test_legate_driver_mpirun_launcher(tmp_path: Path) -> None:
    script = tmp_path / "two_ranks.py"
    script.write_text(SCRIPT)
    legate = Path(sys.prefix) / "bin" / "legate"
    proc = _run_with_env(
        [
            str(legate), "--launcher", "mpirun", "--nodes", "1",
            "--ranks-per-node", "2", "--cpus", "1", "--sysmem", "1000", str(script),
        ],
        cwd=tmp_path,
    )
    _check_two_ranks(proc)
