"""Measured operator costs, as the cost model reads them: the measurement record, its disk cache,
and `MeasuredCost`, the CostModel that answers from them. Nothing here runs anything.

`MeasuredCost` implements the CostModel protocol for the local device kind. What it does not find
in memory or in the disk cache it asks its `measurer` for: an `OpMeasurer` (the protocol below),
which whoever builds the cost model hands in (dependency injection). The one that runs operators
through the executor is `unity_legion.profiling.LocalMeasurer` (`profiling.measured_cost()` builds a
`MeasuredCost` with it); how it measures (CPU time per thread, in three parts: the issuing
thread's host cost, the processors' device cost per point, the runtime's threads' cost) is told
in `unity_legion.profiling.measure`. Without a measurer (`measure=False`) nothing is ever
measured: a measurement missing from the cache is priced by the fallback (a search on a machine
without legate, or in a hurry).

Results are cached on disk, as JSON under `cache_dir` (default `$UNITY_LEGION_CACHE`, else
`~/.cache/unity_legion/costs`), keyed by the operator's type and attributes (`op.describe()`),
its input shapes and dtypes, the configuration's degrees, which inputs need gradients, the
device kind and a fingerprint of this machine (CPU model, core count, numpy and legate versions;
the measurer's: it adds the job's ranks when there are several, as per-rank figures of an N-rank
job are not those of a one-rank job), in a file per version of the operators' kernels
(`kernels_digest`): a second search on the same machine measures nothing (`hits` / `misses`
count it), and a changed kernel is measured anew.

A device that is not this machine's (a GPU preset on a machine without GPUs, any device whose
name does not start with "local") is priced by the fallback, `AnalyticCost`.

Several ranks (`legate --launcher mpirun --ranks-per-node N`): every rank runs the same
measuring code (the executor is SPMD: every rank must issue the same Legate operations in the
same order). Rank 0's measurement is shared by the measurer, so every rank holds the same
figures; rank 0 alone decides what the disk cache holds (and writes it), so that all ranks
measure the same operators in the same order, and every rank checks that it asks for the same
operator as rank 0 (a clear error, not a deadlock, when they diverge).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, Sequence, TypeVar

import numpy as np

from unity_legion.cost.machine import DeviceSpec
from unity_legion.cost.op_cost import AnalyticCost, CostModel, OpCost, priced
from unity_legion.operators.base import Operator
from unity_legion.types import OpConfig, TensorShape

T = TypeVar("T")

CACHE_ENV = "UNITY_LEGION_CACHE"
SCHEMA = "unity_legion.op_costs"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where measurements live: `cache_dir`, else $UNITY_LEGION_CACHE, else
    ~/.cache/unity_legion/costs."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "unity_legion" / "costs"


@cache
def machine_fingerprint() -> str:
    """What makes a measurement from this machine valid here: CPU model, logical cores, numpy and
    legate versions (read without importing legate)."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        legate = metadata.version("legate")
    except metadata.PackageNotFoundError:
        legate = "none"
    parts = [platform.machine(), model, str(os.cpu_count()), np.__version__, legate]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@cache
def kernels_digest() -> str:
    """A digest of the operators' sources (their kernels): a measurement taken before a kernel
    changed prices the old kernel, so each version of them has a cache file of its own."""
    import unity_legion.operators as ops

    h = hashlib.sha256()
    for path in sorted(Path(ops.__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class Measurement:
    """One operator under one configuration, as measured (seconds, medians)."""

    forward: float            # seconds of one point's tasks on its processor (kernels, wrapper)
    backward: float
    forward_host: float       # the issuing thread's seconds for the pass's launches
    backward_host: float
    forward_runtime: float    # the runtime's own threads' seconds for the pass (all launches)
    backward_runtime: float
    forward_kernel: float     # kernels alone: per launch its slowest point, summed
    backward_kernel: float
    forward_wall: float       # issue + run + fence of the pass, blocking
    backward_wall: float
    launches_forward: int
    launches_backward: int
    points: int               # tasks per launch
    repeats: int
    processors: int           # local processors the measurement ran on

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Measurement":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


class CostCache:
    """A JSON file of measurements (key -> entry); writes are atomic and merge with what other
    processes wrote meanwhile."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            if self._entries is None:
                self._entries = self._load()
            return self._entries.get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        with self._lock:
            entries = self._load()
            entries[key] = entry
            self._entries = entries
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump({"schema": SCHEMA, "version": 1, "entries": entries}, f, indent=1)
            os.replace(tmp, self.path)


def cost_key(op: Operator, inputs: Sequence[TensorShape], config: OpConfig,
             needs_input_grad: Sequence[bool], device_kind: str, fingerprint: str) -> str:
    return json.dumps([op.describe(), [[list(s.dims), s.dtype.value] for s in inputs],
                       [list(d) for d in config.degrees], [bool(n) for n in needs_input_grad],
                       device_kind, fingerprint])


class OpMeasurer(Protocol):
    """What runs operators on this machine's processors for `MeasuredCost`. It is implemented
    above the executor (`unity_legion.profiling.LocalMeasurer`) and handed in by whoever builds
    the cost model: cost/ never runs anything itself."""

    def fingerprint(self) -> str:
        """What a measurement taken here is valid for (part of the disk cache's key and file
        name): this machine, and the job's ranks when there are several."""
        ...

    def gpus(self) -> int:
        """GPU processors of the running job (0: a "local" GPU device is not measured)."""
        ...

    def ranks(self) -> int:
        """Ranks of the running job (several: the ranks agree through `share`)."""
        ...

    def is_rank0(self) -> bool:
        ...

    def share(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (`obj` itself on one rank)."""
        ...

    def measure(self, op: Operator, inputs: Sequence[TensorShape], config: OpConfig,
                needs_input_grad: Sequence[bool], repeats: int, warmup: int,
                device_kind: str) -> "Measurement":
        """Run `op` under `config` forward and backward and return the medians; on several
        ranks every rank calls it alike and all get rank 0's figures."""
        ...


@dataclass
class MeasuredCost:
    """The CostModel of this machine's processors, measured by `measurer` (see the module doc).

    measure=False never runs anything: a measurement missing from the cache is priced by the
    fallback (a search on a machine without legate, or in a hurry); measuring needs a
    measurer."""

    cache_dir: str | os.PathLike[str] | None = None
    repeats: int = 5
    warmup: int = 2
    measure: bool = True
    measurer: OpMeasurer | None = None
    fallback: CostModel = field(default_factory=AnalyticCost)
    hits: int = 0              # answered from memory or the disk cache
    misses: int = 0            # measured (or, with measure=False, priced by the fallback)
    fallbacks: int = 0         # devices that are not this machine's, priced by the fallback

    _memo: dict[str, Measurement] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.measure and self.measurer is None:
            raise ValueError("MeasuredCost: measuring needs a measurer (e.g. "
                             "unity_legion.profiling.LocalMeasurer()), or pass measure=False")
        # without a measurer nothing runs here: the job is taken to be this one machine's
        self.fingerprint = (machine_fingerprint() if self.measurer is None
                            else self.measurer.fingerprint())
        self.cache = CostCache(cache_root(self.cache_dir)
                               / f"ops-{self.fingerprint}-{kernels_digest()}.json")

    def is_local(self, device: DeviceSpec) -> bool:
        """Whether `device` is one of this machine's processors (then it is measured)."""
        if not device.name.startswith("local"):
            return False
        return device.kind == "cpu" or (device.kind == "gpu" and self.measurer is not None
                                        and self.measurer.gpus() > 0)

    def measurement(self, op: Operator, inputs: Sequence[TensorShape], config: OpConfig,
                    needs_input_grad: Sequence[bool] | None = None,
                    device_kind: str = "cpu") -> Measurement | None:
        """The measurement of `op` under `config` (from memory, disk or a new run); None when it
        is not cached and measure=False."""
        needs = needed_grads(inputs, needs_input_grad)
        key = cost_key(op, inputs, config, needs, device_kind, self.fingerprint)
        m = self._memo.get(key)
        ranks = self.measurer
        multi = m is None and ranks is not None and ranks.ranks() > 1
        if multi:
            assert ranks is not None
            # rank 0 decides from its cache; every rank must be asking for the same operator
            first, entry = ranks.share((key, self.cache.get(key)) if ranks.is_rank0() else None)
            if first != key:
                raise RuntimeError("MeasuredCost: the ranks asked for different operators (they "
                                   "must issue the same measurements in the same order); rank "
                                   f"0: {first}, this rank: {key}")
        if m is None:
            entry = entry if multi else self.cache.get(key)
            if entry is not None:
                try:
                    m = Measurement.from_dict(entry)
                except (KeyError, TypeError):
                    m = None
        if m is not None:
            self._memo[key] = m
            self.hits += 1
            return m
        self.misses += 1
        if not self.measure or self.measurer is None:
            return None
        m = self.measurer.measure(op, inputs, config, needs, self.repeats, self.warmup,
                                  device_kind)
        self._memo[key] = m
        if self.measurer.is_rank0():
            self.cache.put(key, asdict(m) | {"op": op.describe(), "config": str(config)})
        return m

    def op_cost(self, op: Operator, inputs: Sequence[TensorShape], config: OpConfig,
                device: DeviceSpec, needs_input_grad: Sequence[bool] | None = None) -> OpCost:
        if not self.is_local(device):
            self.fallbacks += 1
            return _fallback(self.fallback, op, inputs, config, device, needs_input_grad)
        m = self.measurement(op, inputs, config, needs_input_grad, device.kind)
        if m is None:
            return _fallback(self.fallback, op, inputs, config, device, needs_input_grad)
        return OpCost(m.forward, m.backward, m.launches_forward, m.launches_backward,
                      m.forward_host, m.backward_host, fills_included=True,
                      runtime_forward=m.forward_runtime, runtime_backward=m.backward_runtime,
                      kernel_forward=m.forward_kernel, kernel_backward=m.backward_kernel)


def _fallback(model: CostModel, op: Operator, inputs: Sequence[TensorShape], config: OpConfig,
              device: DeviceSpec, needs: Sequence[bool] | None) -> OpCost:
    return priced(model, op, inputs, config, device, needs)


def needed_grads(inputs: Sequence[TensorShape], needs: Sequence[bool] | None
                 ) -> tuple[bool, ...]:
    """Which inputs need a gradient: those asked for (all, by default) that are floats."""
    if needs is None:
        return tuple(s.dtype.is_float for s in inputs)
    return tuple(bool(n) and s.dtype.is_float for n, s in zip(needs, inputs))
