"""One operator's parallel configuration: a degree per launch axis and the devices it runs on.

Pure data, shared by the strategy files, the search, the cost model and the executor. The axes are
the operator's own (`Operator.parallel_dims`: "sample" for the batch, "out" / "in" for a Linear's
output and input features, "heads" for attention, ...); an axis not named runs whole (degree 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from unity_legion.types.machine_view import MachineView


@dataclass(frozen=True)
class OpConfig:
    degrees: tuple[tuple[str, int], ...] = ()          # sorted (axis, degree) pairs, degree > 1
    view: MachineView = field(default_factory=MachineView)

    @classmethod
    def of(cls, degrees: Mapping[str, int], view: MachineView | None = None,
           device_type: str = "cpu", start: int = 0) -> "OpConfig":
        """A config from a {axis: degree} mapping; the view defaults to `start` plus as many
        contiguous devices as the degrees' product."""
        for axis, d in degrees.items():
            if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                raise ValueError(f"degree of axis {axis!r} must be a positive integer, got {d!r}")
        pairs = tuple(sorted((a, int(d)) for a, d in degrees.items() if d > 1))
        if view is None:
            view = MachineView.contiguous(device_type, start, math.prod(d for _, d in pairs))
        return cls(pairs, view)

    def degree(self, axis: str) -> int:
        return dict(self.degrees).get(axis, 1)

    def as_dict(self) -> dict[str, int]:
        return dict(self.degrees)

    @property
    def num_points(self) -> int:
        return math.prod(d for _, d in self.degrees)

    def __str__(self) -> str:
        inner = " x ".join(f"{a}={d}" for a, d in self.degrees) or "serial"
        return f"{inner} on {self.view.label()}"
