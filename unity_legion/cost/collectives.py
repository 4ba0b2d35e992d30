"""Collectives priced over the devices that take part, hierarchically. Pure Python.

A collective runs over a group of devices; on a machine of nodes (NVLink/NVSwitch inside a node,
one NIC per device between nodes) a group with L devices in each of M nodes runs as the collective
libraries run it (NCCL's hierarchical algorithms): a reduce-scatter inside each node, the
collective across nodes on the 1/L share each device holds (the L devices of a node each drive
their own NIC, so L rings run side by side), an all-gather inside each node. For b bytes per
device, with link (alpha, beta) = (latency, bandwidth) inside (i) and between (e) nodes:

    all-reduce     2 (L - 1) (a_i + b / (L B_i))  +  2 (M - 1) (a_e + b / (L M B_e))
    reduce-scatter   (L - 1) (a_i + b / (L B_i))  +    (M - 1) (a_e + b / (L M B_e))
    all-gather       as reduce-scatter (b: the gathered size)

which is the ring formula on the one link where M = 1 or L = 1. Groups that run side by side
(the data-parallel replicas of each tile of a weight) hold disjoint devices, and every device has
its own NVSwitch port and NIC, so they do not contend: a collective over several groups takes as
long as its slowest group. `link_name` says which links a group uses (the per-operator breakdown
shows it).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

from unity_legion.cost.machine import MachineModel

KINDS = ("all_reduce", "reduce_scatter", "all_gather")

INTRA, INTER = "intra-node", "inter-node"


def group_shape(devices: Iterable[int], machine: MachineModel) -> tuple[int, int]:
    """(L, M): the most distinct devices of the group in one node, and the nodes it spans."""
    per_node = Counter(machine.node_of(d) for d in set(devices))
    if not per_node:
        return 0, 0
    return max(per_node.values()), len(per_node)


def collective_time(kind: str, nbytes: float, devices: Sequence[int],
                    machine: MachineModel) -> float:
    """Seconds of one collective of `kind` over `devices`, `nbytes` per device (all-reduce: the
    buffer each holds; reduce-scatter: its input; all-gather: its output); see the module doc."""
    if kind not in KINDS:
        raise ValueError(f"collective kind must be one of {', '.join(KINDS)}, got {kind!r}")
    local, nodes = group_shape(devices, machine)
    return shaped_time(kind, nbytes, local, nodes, machine)


def shaped_time(kind: str, nbytes: float, local: int, nodes: int,
                machine: MachineModel) -> float:
    """`collective_time` for a group of `local` devices in each of `nodes` nodes."""
    if nbytes <= 0 or local * nodes <= 1:
        return 0.0
    i, e = machine.intra, machine.inter
    one_way = ((local - 1) * (i.latency + nbytes / (local * i.bandwidth))
               + (nodes - 1) * (e.latency + nbytes / (local * nodes * e.bandwidth)))
    return 2 * one_way if kind == "all_reduce" else one_way


def groups_time(kind: str, nbytes: float, groups: Iterable[Sequence[int]],
                machine: MachineModel) -> float:
    """Seconds of the same collective run side by side over disjoint `groups` (the slowest)."""
    return max((collective_time(kind, nbytes, g, machine) for g in groups), default=0.0)


def link_name(devices: Iterable[int], machine: MachineModel) -> str:
    """The links a group's collective uses: "" (one device), INTRA, INTER or both."""
    local, nodes = group_shape(devices, machine)
    if local * nodes <= 1:
        return ""
    if nodes == 1:
        return INTRA
    return INTER if local == 1 else f"{INTRA}+{INTER}"


def join_links(names: Iterable[str]) -> str:
    """Several link names as one ("intra-node+inter-node" where both occur)."""
    parts = {p for n in names for p in n.split("+") if p}
    return "+".join(p for p in (INTRA, INTER) if p in parts)
