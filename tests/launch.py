"""Running a fresh process (one Legate runtime each) with the project's environment.

The environment comes from ``<venv>/unity_legion_env.sh`` (written by ``make setup``), sourced
again here so these tests also work when pytest was started without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

import pytest

ENV_FILE = Path(sys.prefix) / "unity_legion_env.sh"
REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.prefix) / "bin"


def run_with_env(argv: list[str], cwd: Path, legate_config: str = "--cpus 1 --sysmem 1000",
                 timeout_s: int = 600, overrides: Mapping[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    """`argv` in the project's environment; `overrides` are set after the environment file is
    sourced (it sets UCX / Open MPI interface selection for loopback, which they replace)."""
    if not ENV_FILE.is_file():
        pytest.fail(f"{ENV_FILE} is missing: run `make setup`")
    env = dict(os.environ)
    env["LEGATE_CONFIG"] = legate_config
    if overrides:
        argv = ["env", *(f"{k}={v}" for k, v in overrides.items()), *argv]
    return subprocess.run(["sh", "-c", '. "$0" && exec "$@"', str(ENV_FILE), *argv], cwd=cwd,
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout_s)
