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
import itertools
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
    # of `seconds`, the part that is delay (messages' latency), not the links' occupancy:
    # transfers in flight together overlap it (0: all of it occupies the links)
    latency: float = 0.0


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
    return priced(profile_key(src, dst, machine), src.nbytes, src.piece_bytes, machine)


def profile_key(src: Layout, dst: Layout, machine: MachineModel) -> tuple[int, bool]:
    """The key of the pair's profile (worked out here if new): what its price depends on
    besides the sizes. Keys are never reused, so a caller may memoise prices by them."""
    if src.shape.dims != dst.shape.dims and src.shape.sizes != dst.shape.sizes:
        raise ValueError(f"transfer: shapes differ ({src.shape} vs {dst.shape})")
    fold = machine.runtime.reduction == "fold"
    per_node = machine.devices_per_node
    pair = (src.pattern, dst.pattern, per_node)
    canon = _CANON.get(pair)
    if canon is None:
        if len(_CANON) > 400_000:         # bound the memos in a long search
            for memo in (_CANON, _FORMS, _PROFILES, _TILES, _TILE_FORMS):
                memo.clear()
        form = canonical(src, dst, per_node)          # interned: keys hash cheaply
        canon = _FORMS.get(form)
        if canon is None:
            canon = _FORMS[form] = next(_FORM_IDS)
        _CANON[pair] = canon
    key = (canon, fold)
    if key not in _PROFILES:
        _PROFILES[key] = _profile(src, dst, machine, fold)
    return key


def priced(key: tuple[int, bool], nbytes: float, piece: float, machine: MachineModel
           ) -> Transfer:
    """The price of the profile `key` (profile_key) for a tensor of `nbytes`, `piece` bytes
    a piece."""
    return _price(_PROFILES[key], nbytes, piece, machine)


def canonical(src: Layout, dst: Layout, per_node: int) -> tuple:
    """The pair's degrees, replicas and pieces up to what the price does not depend on.

    A transfer's price depends on which pieces share a device and which devices share a node,
    never on their numbers (every device has its own NVSwitch port and NIC, every node the same
    links): devices are relabelled as they first appear, nodes numbered in order of appearance
    and the devices of each node likewise. Nor does it depend on the order of the tensor's dims
    (cells are counted, never placed) or on dims neither layout splits: those are dropped and
    the rest sorted by their pair of degrees. So the same two layers on another part of the
    machine, or a split of another dim alike, share one profile."""
    order = _dim_order(src.shape.degrees, dst.shape.degrees)
    nodes: dict[int, int] = {}
    used: list[int] = []                 # per relabelled node: its devices seen so far
    new: dict[int, int] = {}
    devs = src.piece_devices + dst.piece_devices
    for d in dict.fromkeys(devs):
        n = nodes.get(d // per_node)
        if n is None:
            n = nodes[d // per_node] = len(used)
            used.append(0)
        new[d] = n * per_node + used[n]
        used[n] += 1
    return (per_node, _tiles_of(src, order), _tiles_of(dst, order), tuple(map(new.__getitem__, devs)))


@functools.lru_cache(maxsize=4096)
def _dim_order(src: tuple[int, ...], dst: tuple[int, ...]) -> tuple[int, ...]:
    """The dims either tiling splits, sorted by their pair of degrees (see `canonical`)."""
    return tuple(sorted((i for i in range(len(src)) if src[i] > 1 or dst[i] > 1),
                        key=lambda i: (src[i], dst[i])))


def _tiles_of(layout: Layout, order: tuple[int, ...]) -> int:
    """An id of the layout's degrees, replicas and (tile, replica) per piece, its dims taken
    in `order` (interned per layout pattern: the pair's forms are compared often)."""
    key = (layout.pattern, order)
    i = _TILES.get(key)
    if i is None:
        deg = layout.shape.degrees
        form = (tuple(deg[k] for k in order), layout.shape.replicas,
                tuple((tuple(t[k] for k in order), r) for _, t, r in layout.pieces))
        j = _TILE_FORMS.get(form)
        if j is None:
            j = _TILE_FORMS[form] = len(_TILE_FORMS)
        i = _TILES[key] = j
    return i


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


_PROFILES: dict[tuple, _Profile] = {}    # (canonical pair, fold) -> profile
_CANON: dict[tuple, int] = {}            # (src pattern, dst pattern, devices per node) -> form id
_FORMS: dict[tuple, int] = {}            # canonical form -> its id (never reused)
_FORM_IDS = itertools.count()
_TILES: dict[tuple, int] = {}            # (layout pattern, dim order) -> its tiles' form id
_TILE_FORMS: dict[tuple, int] = {}


def _price(p: _Profile, nbytes: float, piece: float, machine: MachineModel) -> Transfer:
    links = p.group_links
    if nbytes > 0:
        links = join_links((links,) + tuple(name for rows, name in ((p.intra, INTRA),
                                                                     (p.inter, INTER)) if rows))
    total, delay = _seconds_and_delay(p, nbytes, piece, machine)
    return Transfer(total, links, delay)


def priced_seconds(key: tuple[int, bool], nbytes: float, piece: float, machine: MachineModel
                   ) -> float:
    """`priced(...).seconds` without naming the links (the mapping DP's many pairs)."""
    return seconds(_PROFILES[key], nbytes, piece, machine)


def seconds(p: _Profile, nbytes: float, piece: float, machine: MachineModel) -> float:
    """The profile's seconds for a tensor of `nbytes`, `piece` bytes a piece."""
    return _seconds_and_delay(p, nbytes, piece, machine)[0]


def _seconds_and_delay(p: _Profile, nbytes: float, piece: float, machine: MachineModel
                       ) -> tuple[float, float]:
    """The profile's seconds and, of them, the point-to-point messages' latency."""
    total, delay = _reduced_seconds(p, piece, machine), 0.0
    for each, latency in _point_to_point(p, nbytes, machine):
        total += each
        delay += latency
    return total, delay


def _reduced_seconds(p: _Profile, piece: float, machine: MachineModel) -> float:
    """The profile's partial sums: folded copies, or reduce-scatters in their groups."""
    if p.k > 1 and machine.runtime.reduction == "fold":
        return p.k * machine.runtime.fold.time(piece)  # type: ignore[union-attr]
    if p.groups:
        return max(shaped_time("reduce_scatter", piece, lo, no, machine) for lo, no in p.groups)
    return 0.0


def _point_to_point(p: _Profile, nbytes: float, machine: MachineModel
                    ) -> list[tuple[float, float]]:
    """Per link the profile's pieces cross (NVLink, then the NICs), (seconds, latency) of its
    slowest row: of the seconds, the messages' latency is a delay that transfers in flight
    together overlap (Transfer.latency)."""
    out = []
    if nbytes > 0:
        for rows, link in ((p.intra, machine.intra), (p.inter, machine.inter)):
            if rows:
                lat, bw = link.latency, link.bandwidth
                out.append(max((n * lat + f * nbytes / bw, n * lat) for n, f in rows))
    return out


def _rows(peers: np.ndarray, share: np.ndarray, mask: np.ndarray
          ) -> tuple[tuple[float, float], ...]:
    """The distinct (peers, share) rows that some size could make the slowest (a row with
    no more peers and no more share than another never is)."""
    rows = set(zip(peers[mask].tolist(), share[mask].tolist()))
    keep = [r for r in rows if not any(o != r and o[0] >= r[0] and o[1] >= r[1] for o in rows)]
    return tuple(sorted(keep))


def _sum_by(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """(n x cells): the rows of `values` summed by `index` (each row added in order)."""
    order = np.argsort(index, kind="stable")
    at = index[order]
    starts = np.flatnonzero(np.r_[True, at[1:] != at[:-1]])
    out = np.zeros((n, values.shape[1]),
                   dtype=np.int64 if values.dtype == bool else values.dtype)
    out[at[starts]] = np.add.reduceat(values[order], starts, axis=0, dtype=out.dtype)
    return out


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(rows of a x rows of b): whether the two boolean rows share a cell. On bits packed
    8 to a byte, not a matrix product: these matrices are small, and a BLAS product's threads
    cost more than they save (3x on two busy cores)."""
    pa, pb = np.packbits(a, axis=1), np.packbits(b, axis=1)
    return (pa[:, None, :] & pb[None, :, :]).any(2)  # type: ignore[no-any-return]


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
            cover = _sum_by(gid, wants, int(gid.max()) + 1)     # per group: members reading
            # the scatter matches the reads where each member reads its own 1/k of the tile
            aligned = (wants.sum(1) * k == box.sum(1)) & ((cover[gid] == 1) | ~box).all(1)
            broken = np.zeros(len(cover), dtype=bool)
            np.logical_or.at(broken, gid, ~aligned)
            hold = _sum_by(rows, np.where(~broken[gid][:, None], wants, box / k), len(devs))
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
    from_nodes = _overlap(lack > 0, nhold > 0)
    np.fill_diagonal(from_nodes, False)
    inter = _rows(from_nodes.sum(1), per_nic, per_nic > 0)
    # per device: the rest of what it lacks (held by a node-mate, or relayed from a NIC)
    own = np.maximum(missing.sum(1) / ncells - per_nic[node_idx], 0.0)
    peers = np.zeros(len(devs))
    if (own > 0).any():
        lacks, has = missing > 0, hold > 0
        ends = np.append(starts[1:], len(devs))
        relays = per_nic > 0
        width = ends - starts
        if (width == width[0]).all():
            # nodes alike (the usual case): every node's devices at once
            n, w = len(starts), int(width[0])
            pl = np.packbits(lacks, axis=1).reshape(n, w, 1, -1)
            ph = np.packbits(has, axis=1).reshape(n, 1, w, -1)
            talk = (pl & ph).any(3) | (relays[:, None] & reads.reshape(n, w))[:, None, :]
            talk[:, np.arange(w), np.arange(w)] = False
            peers = talk.sum(2).reshape(-1).astype(float)
        for a, b, relay in ([] if (width == width[0]).all() else
                            zip(starts.tolist(), ends.tolist(), relays.tolist())):
            # node-mates holding some of what a device lacks, or relaying from their NICs
            talk = _overlap(lacks[a:b], has[a:b]) | (relay & reads[a:b])[None, :]
            np.fill_diagonal(talk, False)
            peers[a:b] = talk.sum(1)
    intra = _rows(np.maximum(peers, 1), own, own > 1e-12)
    return _Profile(k, groups, group_links, intra, inter)
