"""Two hosts, not two ranks on one: a real `mpirun` job across two network namespaces.

Each "host" is a network namespace (its own loopback and one end of a veth pair, 10.77.0.1/24
and 10.77.0.2/24) with its own hostname (a UTS namespace: Open MPI and UCX tell nodes apart by
hostname; with one name the two ranks took themselves for one node and MPI_Comm_split_type
failed). `legate --launcher mpirun --nodes 2 --ranks-per-node 1` runs inside the first; mpirun
starts its daemon on the second through an rsh agent (a script that enters that namespace with
`ip netns exec` instead of ssh). UCX and Open MPI are pinned to the veth device, UCX without
shared memory: the only way between the ranks is the veth pair. A small MLP trains a few steps
under a strategy with views on both nodes and equals the one-rank run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from launch import VENV_BIN, run_with_env
from test_strategy_views import _doc
from test_strategy import split_mlp

pytestmark = pytest.mark.slow

ADDRESSES = ("10.77.0.1", "10.77.0.2")
DEVICE = "veth0"   # the veth end's name in both namespaces
CPUS = 2           # per rank: devices 0-1 on the first host, 2-3 on the second
STEPS = 4
TIMEOUT_S = 300

# Views over the 2 x 2 devices, named by split_mlp("th"): a node x device grid over both hosts,
# one device per host (strided), the second device of each host, the second host alone.
OPERATORS = {
    "th_fc1": {"degrees": {"out": 2, "sample": 2}, "view": {"dims": [2, 2], "strides": [2, 1]}},
    "th_relu": {"degrees": {"sample": 2}, "view": {"dims": [2, 1], "strides": [2, 1]}},
    "th_fc2": {"degrees": {"in": 2}, "view": {"start": 1, "dims": [2], "strides": [2]}},
    "th_out": {"degrees": {"sample": 2}, "view": {"start": 2, "dims": [2]}},
}

# Trains split_mlp("th") STEPS SGD steps under the strategy file; every rank prints its host and
# how many Linear kernel pieces ran in its process, rank 0 the losses.
_SCRIPT = """
import json, os, socket, sys
sys.path.insert(0, {tests!r})
import numpy as np
import unity_legion.operators.linear as linear
from test_strategy import _data, split_mlp, train_losses
from unity_legion import keras
from unity_legion.runtime import machine_info
from unity_legion.strategy import Strategy

pieces = 0
_rows = linear._rows
def counted(a):   # every Linear kernel reshapes its pieces through _rows, in the process running it
    global pieces
    pieces += 1
    return _rows(a)
linear._rows = counted

info = machine_info()
strategy = Strategy.load({path!r})
per_rank = info.cpus_per_rank
used = {{d for cfg in strategy.configs.values() for d in cfg.view.devices()}}
build = lambda: split_mlp("th")
keras.utils.set_random_seed(1)
ref = build()
weights = ref.get_weights()
xs, ys = _data(ref, "sparse_categorical_crossentropy")
losses = train_losses(build, "sparse_categorical_crossentropy", lambda m: strategy, weights, xs,
                      ys, 0.05, steps={steps})
print("RANK", json.dumps({{"rank": info.rank, "ranks": info.ranks, "cpus": info.cpus,
                          "host": socket.gethostname(), "netns": os.readlink("/proc/self/ns/net"),
                          "pieces": pieces, "nodes_used": sorted({{d // per_rank for d in used}})}}),
      flush=True)
if info.rank == 0:
    print("LOSSES", json.dumps(losses), flush=True)
"""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _must(proc: subprocess.CompletedProcess[str], what: str) -> None:
    """As root with the tools present, the hosts must be made: a failure here is the test's,
    saying what failed (a skip would hide a broken set-up from CI)."""
    if proc.returncode != 0:
        pytest.fail(f"cannot set up two network-namespace hosts: {what} failed "
                    f"(exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}")


def _cleanup(names: list[str]) -> None:
    """End every process left in our namespaces (a job that hung past its timeout leaves mpirun,
    its daemon and the ranks there), then delete them; deleting one removes its veth end."""
    for ns in names:
        pids = _ip("netns", "pids", ns).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    for ns in names:
        _ip("netns", "del", ns)


@pytest.fixture
def hosts() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth pair, named uniquely; removed whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root; this test runs as uid "
                    f"{os.geteuid()}")
    for tool in ("ip", "unshare", "hostname"):
        if shutil.which(tool) is None:
            pytest.skip(f"cannot set up two network-namespace hosts: `{tool}` is not installed")
    tag = f"ul{os.getpid()}{secrets.token_hex(3)}"
    names = [f"{tag}a", f"{tag}b"]
    made: list[str] = []
    try:
        for ns in names:
            _must(_ip("netns", "add", ns), f"`ip netns add {ns}`")
            made.append(ns)
        _must(_ip("link", "add", DEVICE, "netns", names[0], "type", "veth", "peer", "name",
                  DEVICE, "netns", names[1]), "creating the veth pair")
        for ns, addr in zip(names, ADDRESSES):
            _must(_ip("-n", ns, "addr", "add", f"{addr}/24", "dev", DEVICE), f"address {addr}")
            _must(_ip("-n", ns, "link", "set", "lo", "up"), f"loopback up in {ns}")
            _must(_ip("-n", ns, "link", "set", DEVICE, "up"), f"{DEVICE} up in {ns}")
        yield names[0], names[1]
    finally:
        _cleanup(made)
        assert not set(made) & set(_ip("netns", "list").stdout.split()), "namespaces left"


def _veth_bytes(ns: str) -> int:
    (link,) = json.loads(_ip("-j", "-s", "-n", ns, "link", "show", DEVICE).stdout)
    return int(link["stats64"]["rx"]["bytes"]) + int(link["stats64"]["tx"]["bytes"])


def _parse(proc: subprocess.CompletedProcess[str]) -> tuple[list[dict], list[float]]:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    ranks = sorted((json.loads(ln.split(" ", 1)[1]) for ln in proc.stdout.splitlines()
                    if ln.startswith("RANK ")), key=lambda r: r["rank"])
    losses = [json.loads(ln.split(" ", 1)[1]) for ln in proc.stdout.splitlines()
              if ln.startswith("LOSSES ")]
    assert len(losses) == 1, out[-6000:]
    return ranks, losses[0]


def test_mpirun_across_two_namespace_hosts_trains_like_one_rank(tmp_path: Path,
                                                                hosts: tuple[str, str]) -> None:
    first, second = hosts
    strategy = tmp_path / "two_hosts.json"
    strategy.write_text(json.dumps(_doc(split_mlp("th"), 2 * CPUS, OPERATORS)))
    script = tmp_path / "train_two_hosts.py"
    script.write_text(textwrap.dedent(_SCRIPT).format(tests=str(Path(__file__).parent),
                                                      path=str(strategy), steps=STEPS))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{a} slots=1\n" for a in ADDRESSES))
    # mpirun's "ssh": the command runs in the host's namespace under the host's own hostname
    agent = tmp_path / "netns_agent.sh"
    agent.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        # called as: agent [options] HOST COMMAND...
        while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done
        host=$1; shift
        case "$host" in
            {ADDRESSES[0]}) ns={first} ;;
            {ADDRESSES[1]}) ns={second} ;;
            *) echo "netns agent: unknown host $host" >&2; exit 255 ;;
        esac
        exec ip netns exec "$ns" unshare --uts /bin/sh -c "hostname $ns && $*"
        """))
    agent.chmod(0o755)
    pinned = {"UCX_TLS": "tcp,self", "UCX_NET_DEVICES": DEVICE, "UCX_WARN_UNUSED_ENV_VARS": "n",
              "OMPI_MCA_btl": "self,tcp", "OMPI_MCA_btl_tcp_if_include": DEVICE,
              "OMPI_MCA_oob_tcp_if_include": DEVICE, "PRTE_MCA_oob_tcp_if_include": DEVICE,
              "PRTE_MCA_plm_ssh_agent": str(agent)}
    legate = [str(VENV_BIN / "legate"), "--launcher", "mpirun", "--nodes", "2",
              "--ranks-per-node", "1", "--cpus", str(CPUS), "--sysmem", "1000",
              f"--launcher-extra=--hostfile {hostfile}", str(script)]
    before = _veth_bytes(second)
    proc = run_with_env(["ip", "netns", "exec", first, "unshare", "--uts", "/bin/sh", "-c",
                         f'hostname {first} && exec "$@"', "sh", *legate], tmp_path, "",
                        TIMEOUT_S, pinned)
    ranks, two = _parse(proc)
    moved = _veth_bytes(second) - before
    # one rank per namespace: two hosts, one runtime over both
    assert [r["rank"] for r in ranks] == [0, 1], proc.stdout[-4000:]
    assert [r["host"] for r in ranks] == [first, second]
    assert ranks[0]["netns"] != ranks[1]["netns"]
    assert all(r["ranks"] == 2 and r["cpus"] == 2 * CPUS for r in ranks)
    # the strategy's views cover devices of both nodes, and each host ran Linear pieces
    assert ranks[0]["nodes_used"] == [0, 1]
    assert all(r["pieces"] > 0 for r in ranks), ranks
    assert moved > 10_000, f"only {moved} bytes crossed the veth pair"

    one = run_with_env([sys.executable, str(script)], tmp_path, f"--cpus {2 * CPUS} "
                       "--sysmem 2000", TIMEOUT_S)
    ranks1, want = _parse(one)
    assert len(ranks1) == 1 and ranks1[0]["ranks"] == 1
    # the same pieces of work, split between the hosts
    assert sum(r["pieces"] for r in ranks) == ranks1[0]["pieces"], (ranks, ranks1)
    assert len(two) == STEPS and want[0] != want[-1]
    assert all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(two, want)), (two, want)
