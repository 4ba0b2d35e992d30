"""How a weight of a rewritten graph is made from the weights of the graph before the rewrite.

Weights are keyed by (node name, weight name) downstream, so a rewrite reports, for every weight
of its new graph, a `WeightSource`: a tree whose leaves are (old node name, weight name) pairs
and whose inner nodes concatenate, add or slice. A node the rewrite did not touch gets the
identity (its own name). Sources compose, so a sequence of rewrites maps back to the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Union

import numpy as np

from .rule import SubstitutionError

WeightRef = tuple[str, str]  # (node name, weight name)


@dataclass(frozen=True)
class WeightSource:
    """mode "concat": the sources joined along `axis` (one source: that weight unchanged);
    "sum": their sum; "slice": [start, stop) of the single source along `axis`."""

    sources: tuple[Union[WeightRef, "WeightSource"], ...]
    axis: int | None = None
    mode: Literal["concat", "sum", "slice"] = "concat"
    start: int | None = None
    stop: int | None = None

    def __post_init__(self) -> None:
        if not self.sources:
            raise SubstitutionError("a weight source needs at least one source")
        if self.mode == "slice" and (len(self.sources) != 1 or self.start is None
                                     or self.stop is None or self.axis is None):
            raise SubstitutionError("a slice takes one source, an axis, a start and a stop")
        if self.mode == "concat" and len(self.sources) > 1 and self.axis is None:
            raise SubstitutionError("a concatenation of several weights needs an axis")

    @staticmethod
    def identity(node: str, weight: str) -> "WeightSource":
        return WeightSource(((node, weight),))

    @property
    def is_identity(self) -> bool:
        return self.mode == "concat" and len(self.sources) == 1 and isinstance(self.sources[0], tuple)

    def leaves(self) -> list[WeightRef]:
        out: list[WeightRef] = []
        for s in self.sources:
            out.extend(s.leaves() if isinstance(s, WeightSource) else [s])
        return out

    def materialize(self, get: Callable[[str, str], np.ndarray]) -> np.ndarray:
        """The weight's value, given the old graph's weights by (node name, weight name)."""
        parts = [s.materialize(get) if isinstance(s, WeightSource) else np.asarray(get(*s))
                 for s in self.sources]
        if self.mode == "sum":
            return sum(parts[1:], parts[0].copy())
        if self.mode == "slice":
            idx = [slice(None)] * parts[0].ndim
            idx[self.axis] = slice(self.start, self.stop)  # type: ignore[index]
            return parts[0][tuple(idx)].copy()
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts, axis=self.axis)

    def shape(self, shape_of: Callable[[WeightRef], tuple[int, ...]]) -> tuple[int, ...]:
        """The shape this source makes, from the shapes of its leaves (checks the tree)."""
        shapes = [s.shape(shape_of) if isinstance(s, WeightSource) else tuple(shape_of(s))
                  for s in self.sources]
        first = shapes[0]
        if self.mode == "sum":
            if any(s != first for s in shapes):
                raise SubstitutionError(f"cannot add weights of shapes {shapes}")
            return first
        if self.mode == "slice":
            ax = self.axis % len(first)  # type: ignore[operator]
            if not 0 <= self.start < self.stop <= first[ax]:  # type: ignore[operator]
                raise SubstitutionError(f"slice [{self.start}, {self.stop}) out of range for "
                                        f"a weight of shape {first}")
            return first[:ax] + (self.stop - self.start,) + first[ax + 1:]  # type: ignore[operator]
        if len(shapes) == 1:
            return first
        ax = self.axis % len(first)  # type: ignore[operator]
        for s in shapes:
            if len(s) != len(first) or s[:ax] + s[ax + 1:] != first[:ax] + first[ax + 1:]:
                raise SubstitutionError(f"cannot concatenate weights of shapes {shapes} on {ax}")
        return first[:ax] + (sum(s[ax] for s in shapes),) + first[ax + 1:]

    def compose(self, resolve: Callable[[WeightRef], "WeightSource"]) -> "WeightSource":
        """This source over an older graph: each leaf replaced by how that weight was made."""
        parts = []
        for s in self.sources:
            sub = s.compose(resolve) if isinstance(s, WeightSource) else resolve(s)
            parts.append(sub.sources[0] if sub.is_identity else sub)
        if self.mode == "concat" and len(parts) == 1:
            p = parts[0]
            return p if isinstance(p, WeightSource) else WeightSource((p,))
        if self.mode == "concat":  # flatten concatenations along the same axis
            flat: list = []
            for p in parts:
                if isinstance(p, WeightSource) and p.mode == "concat" and p.axis == self.axis \
                        and len(p.sources) > 1:
                    flat.extend(p.sources)
                else:
                    flat.append(p)
            parts = flat
        return WeightSource(tuple(parts), self.axis, self.mode, self.start, self.stop)

    def __str__(self) -> str:
        inner = ", ".join(str(s) if isinstance(s, WeightSource) else f"{s[0]}/{s[1]}"
                          for s in self.sources)
        if self.is_identity:
            return inner
        if self.mode == "slice":
            return f"slice({inner}, axis={self.axis}, {self.start}:{self.stop})"
        return f"{self.mode}({inner}{'' if self.axis is None else f', axis={self.axis}'})"
