"""The calibration of the "local" machine, as the cost model reads it: the measured machine model
and the analytic model's efficiencies (`Calibration`), and its file in the cost cache.

Nothing here measures: `unity_legion.profiling.calibrate` runs the probes on the local machine
(its module doc tells what each figure is) and writes what it found here, as JSON in the cost
cache directory (`measure.cache_root`), keyed by the job's fingerprint (`calibration_file`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from unity_legion.cost.machine import MachineError, MachineModel
from unity_legion.cost.measure import cache_root
from unity_legion.cost.op_cost import MEMORY_EFFICIENCY, AnalyticCost

SCHEMA = "unity_legion.calibration"
# 2: the runtime's fused groups and partial sums are measured (a version-1 file is measured again)
# 3: Legion's work per store bound and per store reduced into (RuntimeSpec.analysis_store, ...)
# 4: the processors' work per store a fused task binds (RuntimeSpec.task_store)
# 5: those per-store figures over stores written and read as a step does, not only read
# 6: the end of a step whose losses its tasks post to the host (RuntimeSpec.posted_sync)
# 7: that over several ranks too (each rank's tasks post, the ranks share their boxes)
VERSION = 7


@dataclass(frozen=True)
class Calibration:
    machine: MachineModel
    efficiency: Mapping[str, float] = field(default_factory=dict)
    memory_efficiency: float = MEMORY_EFFICIENCY
    probes: Mapping[str, float] = field(default_factory=dict)   # raw figures, for reports

    def analytic(self) -> AnalyticCost:
        return AnalyticCost(efficiency=dict(self.efficiency),
                            memory_efficiency=self.memory_efficiency)

    def to_json(self) -> str:
        return json.dumps({"schema": SCHEMA, "version": VERSION,
                           "machine": json.loads(self.machine.to_json()),
                           "efficiency": dict(self.efficiency),
                           "memory_efficiency": self.memory_efficiency,
                           "probes": dict(self.probes)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Calibration":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MachineError(f"calibration: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise MachineError("calibration: not a unity_legion calibration file")
        if data.get("version") != VERSION:
            raise MachineError(f"calibration: version {data.get('version')!r}, this release "
                               f"reads version {VERSION} (measure again)")
        try:
            return cls(MachineModel.from_dict(data["machine"]), dict(data["efficiency"]),
                       float(data["memory_efficiency"]), dict(data.get("probes", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise MachineError(f"calibration: {exc}") from None


def calibration_file(fingerprint: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the calibration of the machine (job) `fingerprint` is cached."""
    return cache_root(cache_dir) / f"machine-{fingerprint}.json"


def read_calibration(path: Path) -> Calibration | None:
    """The calibration in `path`; None when it is missing or not a valid calibration."""
    try:
        return Calibration.from_json(path.read_text())
    except (OSError, MachineError):
        return None


def write_calibration(path: Path, cal: Calibration) -> None:
    """Write `cal` to `path` atomically (a reader sees the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(cal.to_json())
    os.replace(tmp, path)
