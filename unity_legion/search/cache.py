"""A cache shared by best_mapping calls on different graphs. Pure Python.

Unity's search calls the machine-mapping DP on many graphs that differ in a few rewritten nodes.
Everything the DP computes is keyed by STRUCTURE, never by node id or name: an operator's key is
(operator, input shapes, gradient flags, graph-input / model-output flags, allowed axes), interned
to a small int; cost tables are keyed by those ints and by resources relative to each other; a
solved block by its operators, edges (position-relative) and boundary. So unchanged layers of a
rewritten graph hit the cache.

One cache is valid for one (batch, machine, cost model, device type, optimizer slots): the first
call binds it, a call with another context raises ValueError. (The allowed-axes policy is part of
every operator's key, so it may vary.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CacheStats:
    block_hits: int = 0
    block_misses: int = 0
    table_hits: int = 0
    table_misses: int = 0


@dataclass
class MappingCache:
    """Structural memo tables of the mapping DP (see the module doc); pass to best_mapping."""

    context: tuple | None = None
    keys: dict[tuple, int] = field(default_factory=dict)            # operator key -> int
    shape_ids: dict[Any, int] = field(default_factory=dict)         # ParallelTensorShape -> int
    shapes: list[Any] = field(default_factory=list)                 # int -> ParallelTensorShape
    degrees: dict[int, list] = field(default_factory=dict)          # key -> degree configs
    node_shapes: dict[tuple, Any] = field(default_factory=dict)     # (key, degrees) -> NodeShapes
    unary: dict[tuple, tuple] = field(default_factory=dict)         # (key, block shape) -> arrays
    unary_one: dict[tuple, tuple] = field(default_factory=dict)     # (key, degrees, where) -> s, B
    local: dict[tuple, Any] = field(default_factory=dict)           # (key, shape) -> placements
    ends: dict[int, tuple] = field(default_factory=dict)            # key -> piece shape ids
    pairs: dict[tuple, tuple] = field(default_factory=dict)         # edge keys -> piece prices
    edges: dict[tuple, Any] = field(default_factory=dict)           # (keys, relative) -> table
    steps: dict[tuple, tuple] = field(default_factory=dict)         # (parallel op, shape) -> step
    comm: dict[tuple, float] = field(default_factory=dict)          # (shape ids, class) -> s
    convertible: dict[tuple[int, int], bool] = field(default_factory=dict)  # shape ids -> ok
    blocks: dict[tuple, tuple] = field(default_factory=dict)        # signature -> solved block
    # device groups (Simulator.by_groups): where an argument's pieces live, interned, and the
    # price of moving a tensor between two of them (the same pair recurs across edges, nodes
    # of the same shapes and graphs: priced once)
    layout_keys: dict[tuple, int] = field(default_factory=dict)     # (shapes, cfg, arg) -> id
    layout_ids: dict[Any, int] = field(default_factory=dict)        # Layout -> id
    layouts: list[Any] = field(default_factory=list)                # id -> Layout
    layout_shapes: list[int] = field(default_factory=list)          # id -> its shape's id
    prices: dict[tuple, float] = field(default_factory=dict)        # (profile, bytes) -> s
    moves: dict[tuple[int, int], float] = field(default_factory=dict)  # (src, dst) ids -> s
    stats: CacheStats = field(default_factory=CacheStats)

    def bind(self, context: tuple) -> None:
        """Check (or, on first use, record) the context this cache's tables are valid for."""
        if self.context is None:
            self.context = context
        elif self.context != context:
            raise ValueError("MappingCache: built for another batch, machine, cost model or "
                             "device type; use a fresh cache")

    def key_id(self, key: tuple) -> int:
        k = self.keys.get(key)
        if k is None:
            k = self.keys[key] = len(self.keys)
        return k

    def shape_id(self, shape: Any) -> int:
        if shape is None:
            return -1
        i = self.shape_ids.get(shape)
        if i is None:
            i = self.shape_ids[shape] = len(self.shapes)
            self.shapes.append(shape)
        return i

    def clear(self) -> None:
        """Drop every table (e.g. to bound memory in a long search); the context stays bound."""
        context = self.context
        self.__init__()  # type: ignore[misc]
        self.context = context
