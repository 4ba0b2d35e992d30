"""Candidate configurations of one operator, and where the DP may place them. Pure Python.

Split of responsibilities: `candidate_configs` chooses only the DEGREES of a node (one OpConfig per
legal degree assignment, with the default view: the first devices of the machine). The machine
view is chosen by the DP: it places a config inside a `Resource` (a block of nodes x devices the
DP assigned to a part of the graph) with `place`, which gives the view of the resource's first
devices (contiguous in one node, or a 2-D node x device grid with strides (devices_per_node, 1)).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

from unity_legion.pcg.graph import Node
from unity_legion.pcg.pcg import NodeShapes, PCGError, node_shapes
from unity_legion.types import MachineView, OpConfig, ParallelShapeError, TensorShape


def degree_values(devices: int) -> list[int]:
    """Allowed degrees and degree products: powers of two and divisors of `devices`, <= devices."""
    vals = {d for d in range(1, devices + 1) if devices % d == 0}
    p = 1
    while p <= devices:
        vals.add(p)
        p *= 2
    return sorted(vals)


def candidate_configs(node: Node, input_shapes: Sequence[TensorShape], devices: int,
                      device_type: str, allowed_axes: set[str] | None = None,
                      devices_per_node: int | None = None,
                      shapes: dict | None = None) -> list[OpConfig]:
    """The legal degree assignments of `node` on up to `devices` devices: every axis of its
    `parallel_dims` (restricted to `allowed_axes`), each degree within the axis' extent, the
    product of degrees an allowed value (`degree_values`) that a view can hold (with
    `devices_per_node`: fits in one node or fills whole node rows), validated by `node_shapes`.
    Deterministic (sorted by number of points, then degrees); the serial config comes first.
    `shapes`, if given, receives each legal candidate's NodeShapes by degrees (computed anyway)."""
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    allowed = set(degree_values(devices))
    dims = [pd for pd in node.op.parallel_dims(list(input_shapes))
            if allowed_axes is None or pd.axis in allowed_axes]
    dims.sort(key=lambda pd: pd.axis)
    found: dict[tuple[tuple[str, int], ...], OpConfig] = {}

    def rec(i: int, points: int, chosen: tuple[tuple[str, int], ...]) -> None:
        if i == len(dims):
            if points in allowed and _placeable(points, devices, devices_per_node):
                cfg = OpConfig.of(dict(chosen), device_type=device_type)
                if cfg.degrees not in found:
                    ns = _legal(node, input_shapes, cfg)
                    if ns is not None:
                        found[cfg.degrees] = cfg
                        if shapes is not None:
                            shapes[cfg.degrees] = ns
            return
        pd = dims[i]
        for d in sorted(allowed):
            if points * d > devices:
                break
            if pd.size is not None and d > max(pd.size, 1):
                break
            rec(i + 1, points * d, chosen + ((pd.axis, d),) if d > 1 else chosen)

    rec(0, 1, ())
    return sorted(found.values(), key=lambda c: (c.num_points, c.degrees))


def _placeable(points: int, devices: int, per_node: int | None) -> bool:
    if per_node is None or points <= per_node:
        return True
    return points % per_node == 0 and points // per_node <= math.ceil(devices / per_node)


def _legal(node: Node, inputs: Sequence[TensorShape], cfg: OpConfig) -> NodeShapes | None:
    try:
        return node_shapes(node.op, list(inputs), cfg)
    except (PCGError, ParallelShapeError, ValueError):
        return None


@dataclass(frozen=True, order=True)
class Resource:
    """A block of the machine: nodes [node0, node0 + nodes) x devices [dev0, dev0 + devs) of each
    of those nodes (devices numbered node-major, `per_node` per node)."""

    node0: int
    nodes: int
    dev0: int
    devs: int
    per_node: int

    @classmethod
    def whole(cls, nodes: int, per_node: int) -> "Resource":
        return cls(0, nodes, 0, per_node, per_node)

    @property
    def size(self) -> int:
        return self.nodes * self.devs

    def view(self, points: int, device_type: str) -> MachineView | None:
        """The resource's first `points` devices as a view (None: they do not form a grid)."""
        start = self.node0 * self.per_node + self.dev0
        if points <= self.devs:
            return MachineView(device_type, start, (points,), (1,))
        # a node x device grid: as many devices per node as divide `points` (most first)
        for j in range(self.devs, 0, -1):
            if points % j == 0 and points // j <= self.nodes:
                rows = points // j
                if j == self.per_node:
                    return MachineView(device_type, start, (points,), (1,))
                return MachineView(device_type, start, (rows, j), (self.per_node, 1))
        return None

    def splits(self, uneven: bool = False) -> list[tuple["Resource", "Resource"]]:
        """Ways to cut the resource in two: a multi-node block only by nodes (whole nodes keep
        the fast intra-node links together and keep the number of distinct block shapes small),
        a block inside one node by devices; in halves, and (`uneven`, for 4 or more) a quarter
        vs the rest (a small branch beside a big one). The DP tries both orders."""
        by_nodes = self.nodes >= 2
        n = self.nodes if by_nodes else self.devs
        cuts = [n // 2] + ([n // 4] if uneven and n >= 4 and n // 4 != n // 2 else [])
        out = []
        for a in cuts:
            if a < 1:
                continue
            if by_nodes:
                out.append((Resource(self.node0, a, self.dev0, self.devs, self.per_node),
                            Resource(self.node0 + a, self.nodes - a, self.dev0, self.devs,
                                     self.per_node)))
            else:
                out.append((Resource(self.node0, self.nodes, self.dev0, a, self.per_node),
                            Resource(self.node0, self.nodes, self.dev0 + a, self.devs - a,
                                     self.per_node)))
        return out

    @property
    def offset(self) -> int:
        """Number of the first device (views on this block start there)."""
        return self.node0 * self.per_node + self.dev0

    def relative(self, origin: "Resource") -> tuple[int, int, int, int]:
        """Shape and position of this block relative to `origin` (costs are invariant under
        moving every block involved by the same whole nodes / devices within the node)."""
        return (self.nodes, self.devs, self.node0 - origin.node0, self.dev0 - origin.dev0)


def place(config: OpConfig, resource: Resource) -> OpConfig | None:
    """`config`'s degrees on the first devices of `resource` (None if they do not fit there)."""
    points = config.num_points
    if points > resource.size:
        return None
    view = resource.view(points, config.view.device_type)
    return None if view is None else OpConfig(config.degrees, view)


def shifted(config: OpConfig, by: int) -> OpConfig:
    """`config` moved `by` devices (a solved block reused at another position)."""
    if by == 0:
        return config
    return OpConfig(config.degrees, dataclasses.replace(config.view, start=config.view.start + by))
