"""The roofline's GPU figures, fitted to operator timings measured on a real GPU. Pure Python.

`scripts/calibrate_gpu.py` times every distinct operator of the zoo's paper-size models (float32,
forward and backward, several batch sizes) on a CUDA GPU; the file it wrote on an H200 ships as
`data/gpu_h200_fp32.json`. `fit()` finds, per operator family, the fraction of peak FLOP/s and of
peak memory bandwidth that best explains those times under the roofline of `op_cost` (time =
floor + max(flops / (peak x e), bytes / (bandwidth x m))), the per-kernel floor, and the ratio of
backward to forward time. The fitted figures are what the GPU presets of `machine.py` carry
(GPU_EFFICIENCY below); tests/test_cost.py re-fits the shipped file and checks they still agree.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from unity_legion.operators.registry import by_op_type

# Peak figures of the GPU the shipped measurements come from (NVIDIA H200 SXM data sheet:
# 67 TFLOP/s fp32 without tensor cores, 4.8 TB/s HBM3e).
H200_FP32_PEAK = 67e12
H200_BANDWIDTH = 4.8e12
SHIPPED = "gpu_h200_fp32.json"
# A case counts as "large" when its forward time is this many floors: its efficiency, not the
# launch floor, sets its time.
LARGE = 8.0
MIN_MEMORY_FRACTION = 0.05


@dataclass(frozen=True)
class Record:
    op_type: str
    flops: float
    nbytes: float
    forward_s: float
    backward_s: float


@dataclass(frozen=True)
class Calibration:
    launch_s: float                          # per-kernel floor (launch and framework dispatch)
    compute: Mapping[str, float]             # fraction of peak FLOP/s, per family
    memory: Mapping[str, float]              # fraction of peak bandwidth, per family
    backward: Mapping[str, float]            # backward / forward time of large cases
    median_abs_log_error: float              # of the fitted forward times, over every case

    def summary(self) -> str:
        rows = [f"{'family':22s} {'compute':>8s} {'memory':>8s} {'bwd/fwd':>8s}"]
        for f in sorted(set(self.compute) | set(self.memory)):
            rows.append(f"{f:22s} {self.compute.get(f, 0):8.3f} {self.memory.get(f, 0):8.3f} "
                        f"{self.backward.get(f, 0):8.2f}")
        rows.append(f"floor {self.launch_s * 1e6:.1f} us; median |log error| "
                    f"{self.median_abs_log_error:.3f}")
        return "\n".join(rows)


def load(path: str | Path | None = None) -> tuple[dict[str, Any], list[Record]]:
    """A measurement file (default: the shipped H200 one): its header and its records."""
    if path is None:
        text = resources.files("unity_legion.cost").joinpath("data", SHIPPED).read_text()
    else:
        text = Path(path).read_text()
    doc = json.loads(text)
    try:
        recs = [Record(r["op_type"], float(r["flops"]), float(r["bytes"]), float(r["forward_s"]),
                       float(r["backward_s"])) for r in doc["records"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path or SHIPPED}: not a GPU measurement file ({exc!r})") from None
    return doc, [r for r in recs if r.forward_s > 0]


def _grid(lo: float, hi: float, n: int) -> list[float]:
    return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]


def family_of(op_type: str) -> str:
    """The cost family a measured op type belongs to (its operator says; an op type no operator
    has is a family of its own)."""
    cls = by_op_type().get(op_type)
    return cls.cost_family if cls is not None else op_type


def fit(records: Sequence[Record], peak_flops: float = H200_FP32_PEAK,
        bandwidth: float = H200_BANDWIDTH) -> Calibration:
    """Per family, the (compute, memory) fractions minimising the median |log error| of the
    forward times, with one per-kernel floor for all families (chosen the same way)."""
    if not records:
        raise ValueError("no measurements to fit")
    families: dict[str, list[Record]] = {}
    for r in records:
        families.setdefault(family_of(r.op_type), []).append(r)
    fractions = np.asarray(_grid(0.002, 1.0, 40))
    # a bandwidth fraction below 5% is never physical; a family whose cases are all
    # compute-bound would otherwise get any small value the data cannot rule out
    memory_fractions = np.asarray(_grid(MIN_MEMORY_FRACTION, 1.0, 40))
    best: tuple[float, float, dict, dict] | None = None
    for floor in _grid(2e-6, 6e-5, 16):
        compute, memory, errs = {}, {}, []
        for fam, rs in families.items():
            flops = np.asarray([r.flops for r in rs])[:, None, None]
            nbytes = np.asarray([r.nbytes for r in rs])[:, None, None]
            real = np.asarray([r.forward_s for r in rs])[:, None, None]
            pred = floor + np.maximum(flops / (peak_flops * fractions[None, :, None]),
                                      nbytes / (bandwidth * memory_fractions[None, None, :]))
            err = np.abs(np.log(pred / real))          # (cases, compute, memory)
            med = np.median(err, axis=0)
            i, j = np.unravel_index(int(np.argmin(med)), med.shape)
            compute[fam] = float(fractions[i])
            if j > 0:
                # at the grid's floor the data only says the family was never memory-bound
                # there: no fraction is known (op_cost's default applies), and a floor taken
                # for one would price a copy of a replicated input 14x too slow
                memory[fam] = float(memory_fractions[j])
            errs.extend(err[:, i, j].tolist())
        score = statistics.median(errs)
        if best is None or score < best[0]:
            best = (score, floor, compute, memory)
    assert best is not None
    score, floor, compute, memory = best
    backward = {}
    for fam, rs in families.items():
        large = [r for r in rs if r.forward_s > LARGE * floor and r.backward_s > 0]
        if large:
            backward[fam] = statistics.median(r.backward_s / r.forward_s for r in large)
    return Calibration(round(floor, 7), _rounded(compute), _rounded(memory), _rounded(backward),
                       score)


def _rounded(d: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in sorted(d.items())}


if __name__ == "__main__":  # python -m unity_legion.cost.gpu_calibration [file]
    import sys

    _, recs = load(sys.argv[1] if len(sys.argv) > 1 else None)
    print(fit(recs).summary())
