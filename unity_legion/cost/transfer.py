"""Re-distributing a tensor from one layout to another: priced per device pair and per node,
hierarchically. Pure Python (numpy for the bookkeeping).

A conversion (the parallel operators `lift` puts between a producer and a consumer) runs in two
phases, priced from which device holds which piece (cost/layout.py):

1. partial sums: the devices holding the partial copies of one tile reduce-scatter it
   (`collective_time`, hierarchical), so each then holds 1/k of the sum: the part it reads
   itself where the consumer's pieces split the tile k ways among them (a Reduce followed by a
   Partition is a reduce-scatter and no more), otherwise an even share. With the runtime's
   "fold" reduction, each of the k copies is instead folded whole into the reader's piece.
2. movement: every device fetches what its consumer piece needs and it does not hold. Bytes a
   node needs that no device of it holds cross the network once per node, spread over the NICs
   of its reading devices (one per device), from the nodes that hold them; the rest (held by a
   node-mate, or relayed by one from its NIC) comes over NVLink. Both sides are priced at the
   receivers (a one-to-many copy is pipelined, as NCCL's broadcast is): seconds = the slowest
   device's intra-node part + the slowest node's inter-node part, each latency x the peers it
   receives from + bytes / bandwidth. A copy between two devices is thus priced on the link
   between the pair; an all-gather inside a node on NVLink; one across nodes as the
   hierarchical formula; a Reduce then Replicate as an all-reduce.

Pieces are compared on a grid of cells, per dim the least common multiple of both degrees. The
pattern of a transfer (which shares of the tensor go where) does not depend on the tensor's
sizes, only on the two layouts' degrees and pieces: it is worked out once per pair of patterns
(`_Profile`) and priced for each size, which the mapping DP's many candidate pairs need.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from unity_legion.cost.collectives import (INTER, INTRA, group_shape, join_links, link_name,
                                            shaped_time)
from unity_legion.cost.layout import Layout
from unity_legion.cost.machine import MachineModel


@dataclass(frozen=True)
class Transfer:
    seconds: float
    link: str          # the links used: "", INTRA, INTER or INTRA+INTER


@functools.lru_cache(maxsize=4096)
def _cell_tiles(degrees: tuple[int, ...], grid: tuple[int, ...]) -> np.ndarray:
    """Per cell of `grid` (row-major), the tile (row-major id) of a tiling by `degrees`."""
    coords = np.indices(grid).reshape(len(grid), -1) if grid else np.zeros((0, 1), dtype=int)
    tid = np.zeros(coords.shape[1], dtype=np.int64)
    for c, k, g in zip(coords, degrees, grid):
        tid = tid * k + c * k // g
    return tid


def _occupancy(layout: Layout, row: dict[int, int], cell_tiles: np.ndarray) -> np.ndarray:
    """(device row x cell): 1 where a device holds a piece of `layout` covering the cell."""
    per_tile = np.zeros((len(row), math.prod(layout.shape.degrees)))
    per_tile[[row[p[0]] for p in layout.pieces], layout.tile_ids()] = 1.0
    return per_tile[:, cell_tiles]


def transfer(src: Layout, dst: Layout, machine: MachineModel) -> Transfer:
    """What converting `src` (the producer's pieces) to `dst` (the consumer's) costs."""
    if src.shape.dims != dst.shape.dims and src.shape.sizes != dst.shape.sizes:
        raise ValueError(f"transfer: shapes differ ({src.shape} vs {dst.shape})")
    fold = machine.runtime.reduction == "fold"
    key = (src.pattern, dst.pattern, machine.devices_per_node, fold)
    prof = _PROFILES.get(key)
    if prof is None:
        if len(_PROFILES) > 200_000:      # bound the memo in a long search
            _PROFILES.clear()
        prof = _PROFILES[key] = _profile(src, dst, machine, fold)
    return _price(prof, src.nbytes, src.piece_bytes, machine)


@dataclass(frozen=True)
class _Profile:
    """A transfer's pattern, independent of the tensor's size: the partial sums' groups
    (their (devices per node, nodes), one per distinct shape, and links), and per device / per
    node the peers it receives from and the share of the tensor it receives over NVLink / its
    NIC (only rows that some size could make the slowest)."""

    k: int                                   # partial copies summed per tile (1: none)
    groups: tuple[tuple[int, int], ...] = ()
    group_links: str = ""
    intra: tuple[tuple[float, float], ...] = ()     # (peers, share of the tensor)
    inter: tuple[tuple[float, float], ...] = ()


_PROFILES: dict[tuple, _Profile] = {}


def _price(p: _Profile, nbytes: float, piece: float, machine: MachineModel) -> Transfer:
    seconds, links = 0.0, p.group_links
    if p.k > 1 and machine.runtime.reduction == "fold":
        seconds += p.k * machine.runtime.fold.time(piece)  # type: ignore[union-attr]
    elif p.groups:
        seconds += max(shaped_time("reduce_scatter", piece, lo, no, machine)
                       for lo, no in p.groups)
    if nbytes > 0:
        for rows, link, name in ((p.intra, machine.intra, INTRA),
                                 (p.inter, machine.inter, INTER)):
            if rows:
                seconds += max(n * link.latency + f * nbytes / link.bandwidth for n, f in rows)
                links = join_links((links, name))
    return Transfer(seconds, links)


def _rows(peers: np.ndarray, share: np.ndarray, mask: np.ndarray
          ) -> tuple[tuple[float, float], ...]:
    """The distinct (peers, share) rows that some size could make the slowest (a row with
    no more peers and no more share than another never is)."""
    rows = set(zip(peers[mask].tolist(), share[mask].tolist()))
    keep = [r for r in rows if not any(o != r and o[0] >= r[0] and o[1] >= r[1] for o in rows)]
    return tuple(sorted(keep))


def _profile(src: Layout, dst: Layout, machine: MachineModel, fold: bool) -> _Profile:
    s, d = src.shape, dst.shape
    grid = tuple(math.lcm(a, b) for a, b in zip(s.degrees, d.degrees))
    devs = sorted({p[0] for p in src.pieces} | {p[0] for p in dst.pieces})
    if len(devs) <= 1:
        return _Profile(1)
    row = {dev: i for i, dev in enumerate(devs)}
    ncells = math.prod(grid)
    src_tile = _cell_tiles(s.degrees, grid)             # per cell: the tile of src holding it
    need = _occupancy(dst, row, _cell_tiles(d.degrees, grid)) > 0
    k = s.sum_degree // max(d.sum_degree, 1)
    rows = np.array([row[p[0]] for p in src.pieces])
    tiles = src.tile_ids()
    groups: tuple[tuple[int, int], ...] = ()
    group_links = ""
    if k > 1:
        # phase 1: the partial copies of each tile (k of them per group) are summed
        reps = np.array([p[2] for p in src.pieces]) // k
        _, gid = np.unique(tiles * (int(reps.max()) + 1) + reps, return_inverse=True)
        gid = gid.reshape(-1)
        members: dict[int, set[int]] = defaultdict(set)
        for g, dev in zip(gid.tolist(), (p[0] for p in src.pieces)):
            members[g].add(dev)
        hold = np.zeros((len(devs), ncells))
        if fold:
            # each of the k copies folded whole into a reader's piece: held whole there
            first = np.unique(gid, return_index=True)[1]
            np.add.at(hold, rows[first], (src_tile[None, :] == tiles[first][:, None]))
        else:
            shapes: dict[tuple[int, int], tuple[int, ...]] = {}
            for m in members.values():
                g = tuple(sorted(m))
                shapes.setdefault(group_shape(g, machine), g)
            groups = tuple(sorted(shapes))
            group_links = join_links(link_name(g, machine) for g in shapes.values())
            box = src_tile[None, :] == tiles[:, None]           # piece x cell: its tile
            wants = need[rows] & box                             # what its device reads there
            in_group = np.zeros((len(gid), int(gid.max()) + 1))
            in_group[np.arange(len(gid)), gid] = 1.0
            cover = in_group.T @ wants
            # the scatter matches the reads where each member reads its own 1/k of the tile
            aligned = (wants.sum(1) * k == box.sum(1)) & ((cover[gid] == 1) | ~box).all(1)
            broken = np.zeros(len(cover), dtype=bool)
            np.logical_or.at(broken, gid, ~aligned)
            on_dev = np.zeros((len(rows), len(devs)))
            on_dev[np.arange(len(rows)), rows] = 1.0
            hold = on_dev.T @ np.where(~broken[gid][:, None], wants, box / k)
        hold = np.minimum(hold, 1.0)
    else:
        hold = np.minimum(_occupancy(src, row, src_tile), 1.0)
    missing = need * (1.0 - hold)                       # per device: the share it lacks
    if not missing.any():
        return _Profile(k, groups, group_links)
    node_of = np.array(devs) // machine.devices_per_node
    first = np.ones(len(devs), dtype=bool)
    first[1:] = node_of[1:] != node_of[:-1]
    starts = np.flatnonzero(first)                      # devs are sorted: nodes are runs
    node_idx = np.cumsum(first) - 1
    # per node: what its readers need that no device of it holds, spread over their NICs
    nhold = np.minimum(np.add.reduceat(hold, starts, axis=0), 1.0)
    nneed = np.logical_or.reduceat(need, starts, axis=0)
    lack = nneed * (1.0 - nhold)
    reads = need.any(1)
    per_nic = lack.sum(1) / ncells / np.maximum(np.add.reduceat(reads, starts), 1)
    # the other nodes holding some of what a node lacks: one message each
    from_nodes = ((lack > 0).astype(np.float32) @ (nhold > 0).T.astype(np.float32)) > 0
    np.fill_diagonal(from_nodes, False)
    inter = _rows(from_nodes.sum(1), per_nic, per_nic > 0)
    # per device: the rest of what it lacks (held by a node-mate, or relayed from a NIC)
    own = np.maximum(missing.sum(1) / ncells - per_nic[node_idx], 0.0)
    peers = np.zeros(len(devs))
    if (own > 0).any():
        lacks, has = (missing > 0).astype(np.float32), (hold > 0).astype(np.float32)
        ends = np.append(starts[1:], len(devs))
        for a, b, relay in zip(starts.tolist(), ends.tolist(), (per_nic > 0).tolist()):
            # node-mates holding some of what a device lacks, or relaying from their NICs
            talk = (lacks[a:b] @ has[a:b].T > 0) | (relay & reads[a:b])[None, :]
            np.fill_diagonal(talk, False)
            peers[a:b] = talk.sum(1)
    intra = _rows(np.maximum(peers, 1), own, own > 1e-12)
    return _Profile(k, groups, group_links, intra, inter)
