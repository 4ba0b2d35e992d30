"""What unity_legion.runtime sets before Legate starts: utility threads on small nodes, and a
malloc that keeps freed memory (no Legate needed: pure helpers, and a plain subprocess)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from unity_legion import runtime


@pytest.fixture
def config(monkeypatch: pytest.MonkeyPatch):
    def set_config(text: str, cores: int, local_ranks: int = 1) -> None:
        monkeypatch.setenv("LEGATE_CONFIG", text)
        monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", str(local_ranks))
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    return set_config


def test_one_utility_thread_where_threads_outnumber_cores(config) -> None:
    config("--cpus 2 --sysmem 4000", cores=2)
    assert runtime._default_utility_threads() == 1
    config("--cpus 1", cores=4, local_ranks=2)          # 2 ranks x (1 + 2 + 1) threads > 4
    assert runtime._default_utility_threads() == 1


def test_legates_default_where_cores_suffice(config) -> None:
    config("--cpus 2", cores=16)
    assert runtime._default_utility_threads() is None
    config("--cpus 4 --gpus 1", cores=8)                 # 4 + 1 + 2 + 1 = 8 threads
    assert runtime._default_utility_threads() is None


def test_the_users_utility_setting_is_kept(config) -> None:
    config("--cpus 2 --utility 3", cores=2)
    runtime._default_option("--utility", runtime._default_utility_threads)
    assert os.environ["LEGATE_CONFIG"].split() == ["--cpus", "2", "--utility", "3"]
    config("--cpus 2", cores=2)
    runtime._default_option("--utility", runtime._default_utility_threads)
    assert os.environ["LEGATE_CONFIG"].split() == ["--cpus", "2", "--utility", "1"]


_FAULTS = textwrap.dedent("""
    import resource, sys
    import numpy as np
    if sys.argv[1] == "kept":
        from unity_legion.runtime import _keep_freed_memory
        _keep_freed_memory()
    sizes = [3 * 2**20, 5 * 2**20, 9 * 2**20, 2 * 2**20]
    def step():   # a step's temporaries: alive together, then all freed, over and over
        alive = [np.ones(n // 8) for n in sizes]
        del alive
    for _ in range(3):
        step()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
""")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                    reason="mallopt's settings are glibc's; elsewhere the runtime leaves malloc be")
def test_freed_memory_is_reused_without_page_faults() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], env=env, check=True,
                             capture_output=True, text=True)
        return int(out.stdout.split()[-1])

    default, kept = faults("default"), faults("kept")
    # default: blocks over the (adaptive) mmap threshold, or the trimmed heap top, come back as
    # fresh pages; kept: the same pages serve every allocation after the first ones
    assert kept * 10 < default, (kept, default)
