"""Measured operator costs (their disk cache; measured through unity_legion.profiling), the
calibration of the "local" machine, the runtime part of machine files, and what the simulator makes
of a CPU machine's runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from unity_legion.cost import (PRESETS, AnalyticCost, LinkSpec, MachineError, MachineModel,
                               MeasuredCost, RuntimeSpec, Simulator, preset)
from unity_legion.cost import measure
from unity_legion.cost.calibration import Calibration
from unity_legion.cost.measure import Measurement, kernels_digest
from unity_legion.profiling import calibrate as cal
from unity_legion.profiling import measure as profiling_measure
from unity_legion.profiling import measured_cost
from unity_legion.operators.linear import Linear
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.pcg.pcg import data_parallel_config
from unity_legion.types import OpConfig, TensorShape

LOCAL = PRESETS["local"].device
X = [TensorShape((16, 32))]


def _no_measuring(*args, **kwargs):
    raise AssertionError("nothing should be measured here")


# ------------------------------------------------------------------------------------------------
# MeasuredCost: cache, sizes, fallback
# ------------------------------------------------------------------------------------------------

def test_second_measurement_is_a_cache_hit_and_runs_nothing(tmp_path, monkeypatch) -> None:
    cost = measured_cost(tmp_path, repeats=1, warmup=1)
    first = cost.op_cost(Linear(32), X, OpConfig(), LOCAL)
    assert (cost.misses, cost.hits) == (1, 0)
    assert first.forward > 0 and first.backward > 0 and first.issue_forward > 0
    assert first.runtime_forward is not None and first.runtime_forward >= 0
    assert first.fills_included
    assert (first.launches_forward, first.launches_backward) == (1, 2)
    assert cost.op_cost(Linear(32), X, OpConfig(), LOCAL) == first   # from memory
    assert (cost.misses, cost.hits) == (1, 1)

    monkeypatch.setattr(profiling_measure, "measure_op", _no_measuring)
    again = measured_cost(tmp_path)                                 # a new search: from disk
    assert again.op_cost(Linear(32), X, OpConfig(), LOCAL) == first
    assert (again.misses, again.hits) == (0, 1)
    (path,) = tmp_path.glob("ops-*.json")
    data = json.loads(path.read_text())
    assert data["schema"] == "unity_legion.op_costs"
    (entry,) = data["entries"].values()
    assert entry["op"] == Linear(32).describe() and entry["config"] == str(OpConfig())

    # another configuration, another shape, other gradients needed, another op: misses
    for other in [(Linear(32), X, OpConfig.of({"sample": 2}), None),
                  (Linear(32), [TensorShape((8, 32))], OpConfig(), None),
                  (Linear(32), X, OpConfig(), [False]),
                  (Linear(16), X, OpConfig(), None)]:
        with pytest.raises(AssertionError, match="nothing should be measured"):
            again.op_cost(*other[:3], LOCAL, needs_input_grad=other[3])


def test_a_damaged_cache_file_is_measured_again(tmp_path) -> None:
    cost = measured_cost(tmp_path, repeats=1, warmup=0)
    cost.cache.path.parent.mkdir(parents=True, exist_ok=True)
    cost.cache.path.write_text("{not json")
    assert cost.op_cost(Linear(8), [TensorShape((4, 8))], OpConfig(), LOCAL).forward > 0
    assert cost.misses == 1
    assert len(json.loads(cost.cache.path.read_text())["entries"]) == 1


def test_measured_cost_grows_with_the_piece_size(tmp_path) -> None:
    cost = measured_cost(tmp_path, repeats=5, warmup=1)
    small = cost.measurement(Linear(256), [TensorShape((8, 256))], OpConfig())
    big = cost.measurement(Linear(256), [TensorShape((2048, 256))], OpConfig())
    assert small is not None and big is not None
    # 256 times the flops: the kernels take far longer, and so does the whole pass
    assert big.forward_kernel > 8 * small.forward_kernel
    assert big.backward_kernel > 8 * small.backward_kernel
    assert big.forward > small.forward and big.backward > small.backward
    assert big.forward_wall > 0 and big.processors >= 1 and big.points == 1


def test_the_backward_is_measured_after_evicting_the_caches_and_not_charged_for_it(
        monkeypatch) -> None:
    """Each measured backward pass starts on caches the eviction filled (as a step's backward
    finds them); the eviction's CPU time is taken out of the backward's cost: a much costlier
    eviction leaves the measured backward about as it was."""
    seen: list[float] = []
    real_evict = profiling_measure.evict_cache

    def evict() -> float:
        seen.append(real_evict())
        return seen[-1]

    def measure(extra_s: float) -> Measurement:
        def costly() -> float:
            t = time.thread_time()
            while time.thread_time() - t < extra_s:
                pass
            return evict() + (time.thread_time() - t) - seen[-1]

        monkeypatch.setattr(profiling_measure, "evict_cache", costly if extra_s else evict)
        return profiling_measure.measure_op(Linear(256), [TensorShape((512, 256))], OpConfig(),
                                            repeats=5, warmup=1)

    plain = measure(0.0)
    assert len(seen) == 6 and all(s > 0 for s in seen)   # once per backward pass
    slow = measure(0.02)   # 20 ms of eviction a pass: several times the backward itself
    assert slow.backward < plain.backward + 0.01, (plain.backward, slow.backward)
    assert profiling_measure.job_fingerprint().endswith(f"-m{profiling_measure.METHOD}")


def test_a_pass_warms_what_its_neighbours_just_wrote_once() -> None:
    """In a step an operator's input (forward) and its output gradient (backward) were just
    written by the operators next to it: the measured launch that first reads each reads it
    untimed beforehand; nothing else is warmed (weights, saved tensors: written long before)."""
    op, x = Linear(32), [TensorShape((16, 32))]
    forward, backward = op.forward(x, True), op.backward(x, [True])
    assert profiling_measure.warmed_args(forward, "f") == [("x",)]
    # both backward launches read dy; the first warms it, the weight gradients' launch finds
    # it warm (and its x, read long after the forward, stays cold)
    assert [launch.args["dy"].ref for launch in backward] == [backward[0].args["dy"].ref] * 2
    assert profiling_measure.warmed_args(backward, "b") == [("dy",), ()]


def test_devices_that_are_not_this_machine_fall_back_to_analytic(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(profiling_measure, "measure_op", _no_measuring)
    cost = measured_cost(tmp_path)
    gpu = preset("dgx-h100").device
    got = cost.op_cost(Linear(1024), [TensorShape((64, 1024))], OpConfig.of({"sample": 4}), gpu)
    want = AnalyticCost().op_cost(Linear(1024), [TensorShape((64, 1024))],
                                  OpConfig.of({"sample": 4}), gpu)
    assert got == want and got.issue_forward is None
    assert (cost.fallbacks, cost.misses, cost.hits) == (1, 0, 0)
    assert not cost.is_local(gpu) and cost.is_local(LOCAL)
    assert not list(tmp_path.glob("ops-*.json"))
    # measure=False: a local device missing from the cache is priced analytically too
    lazy = MeasuredCost(cache_dir=tmp_path, measure=False)
    assert lazy.op_cost(Linear(32), X, OpConfig(), LOCAL) == AnalyticCost().op_cost(
        Linear(32), X, OpConfig(), LOCAL)
    assert lazy.misses == 1


def test_cache_dir_comes_from_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(measure.CACHE_ENV, str(tmp_path / "c"))
    assert measure.cache_root() == tmp_path / "c"
    assert MeasuredCost(measure=False).cache.path.parent == tmp_path / "c"
    monkeypatch.delenv(measure.CACHE_ENV)
    assert measure.cache_root().parts[-3:] == (".cache", "unity_legion", "costs")


def test_cost_package_does_not_import_legate() -> None:
    # nor does importing the profiling package: its functions import the executor
    code = ("import sys, unity_legion.cost, unity_legion.cost.measure, "
            "unity_legion.cost.calibration, unity_legion.profiling;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('legate', 'cupynumeric')"
            " or m.startswith('unity_legion.executor')];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


class _FakeMeasurer:
    """An OpMeasurer that runs nothing: MeasuredCost asks whatever it is handed."""

    def __init__(self) -> None:
        self.asked: list[tuple] = []

    def fingerprint(self) -> str:
        return "fake"

    def gpus(self) -> int:
        return 0

    def ranks(self) -> int:
        return 1

    def is_rank0(self) -> bool:
        return True

    def share(self, obj):
        return obj

    def measure(self, op, inputs, config, needs, repeats, warmup, device_kind) -> Measurement:
        self.asked.append((op.describe(), tuple(needs), repeats, warmup, device_kind))
        return Measurement(1e-3, 2e-3, 1e-4, 2e-4, 1e-5, 2e-5, 9e-4, 1.9e-3, 2e-3, 3e-3,
                           1, 2, 1, repeats, 1)


def test_the_measurer_is_injected_and_its_figures_cached(tmp_path) -> None:
    fake = _FakeMeasurer()
    cost = MeasuredCost(cache_dir=tmp_path, repeats=3, warmup=1, measurer=fake)
    got = cost.op_cost(Linear(32), X, OpConfig(), LOCAL)
    assert fake.asked == [(Linear(32).describe(), (True,), 3, 1, "cpu")]
    assert (got.forward, got.backward, got.issue_forward) == (1e-3, 2e-3, 1e-4)
    assert cost.cache.path == tmp_path / f"ops-fake-{kernels_digest()}.json"
    again = MeasuredCost(cache_dir=tmp_path, measurer=_FakeMeasurer())
    assert again.op_cost(Linear(32), X, OpConfig(), LOCAL) == got and again.hits == 1
    # measurements of other kernels (an older version of the operators) are not this one's
    cost.cache.path.rename(tmp_path / "ops-fake-0123456789ab.json")
    later = _FakeMeasurer()
    MeasuredCost(cache_dir=tmp_path, measurer=later).op_cost(Linear(32), X, OpConfig(), LOCAL)
    assert len(later.asked) == 1
    # a "local" GPU is measured only where the measurer has GPUs
    assert not cost.is_local(replace(LOCAL, kind="gpu"))
    with pytest.raises(ValueError, match="needs a measurer"):
        MeasuredCost(cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------------

def test_calibration_measures_positive_figures_and_is_cached(tmp_path, monkeypatch) -> None:
    c = cal.local_calibration(tmp_path)
    assert c is not None
    m = c.machine
    d = m.device
    assert m.name == "local" and d.kind == "cpu" and m.num_devices >= 1
    assert d.flops_fp32 > 1e8 and d.mem_bandwidth > 1e7 and d.launch_overhead > 0
    rt = m.runtime
    # one rank, fused: partial sums (Legion's folds only across ranks), fused-group figures
    assert rt.issue > 0 and rt.sync > 0 and rt.reduction == "partials" and rt.cores >= 1
    assert rt.fusion > 0 and rt.fused_issue > 0 and rt.fused_step >= 0
    assert rt.analysis >= 0 and c.probes["cores"] == rt.cores
    # per store a fused task binds: the host adding it, Legion analysing it, the processor
    # wrapping it (over stores written and read as a step's are)
    assert rt.issue_store > 0 and rt.analysis_store > 0 and rt.task_store > 0
    assert c.probes["issue_store_s"] == rt.issue_store
    assert rt.fold.bandwidth > 0 and m.intra.bandwidth > 0
    assert 0 < c.memory_efficiency <= 1 and all(0 < f <= 1 for f in c.efficiency.values())
    assert c.analytic().factor("linear") == c.efficiency["linear"]
    # cached: a second call measures nothing and gives the same machine
    monkeypatch.setattr(cal, "calibrate", _no_measuring)
    assert cal.local_machine(tmp_path) == m
    assert Calibration.from_json(c.to_json()) == c


def test_local_machine_without_a_calibration(tmp_path) -> None:
    assert cal.local_machine(tmp_path, measure=False) == PRESETS["local"]
    assert cal.local_calibration(tmp_path, measure=False) is None


def test_bad_calibration_files_are_ignored_or_named(tmp_path) -> None:
    path = cal.calibration_path(tmp_path)
    path.write_text("[1, 2]")
    assert cal.cached_calibration(tmp_path) is None
    with pytest.raises(MachineError, match="not a unity_legion calibration"):
        Calibration.from_json("[1, 2]")
    with pytest.raises(MachineError, match="not valid JSON"):
        Calibration.from_json("{")
    good = json.loads(Calibration(PRESETS["local"]).to_json())
    good["machine"]["runtime"]["reduction"] = "fold"
    del good["machine"]["runtime"]["fold"]
    with pytest.raises(MachineError, match="'fold' needs a 'fold' link"):
        Calibration.from_json(json.dumps(good))
    old = json.loads(Calibration(PRESETS["local"]).to_json())
    old["version"] = 1   # measured before fused groups: measured again
    with pytest.raises(MachineError, match="version 1"):
        Calibration.from_json(json.dumps(old))


# ------------------------------------------------------------------------------------------------
# The runtime part of machine files
# ------------------------------------------------------------------------------------------------

def test_machine_files_with_a_runtime(tmp_path) -> None:
    m = preset("local")
    path = tmp_path / "m.json"
    path.write_text(m.to_json())
    assert MachineModel.load(path) == m
    data = json.loads(m.to_json())
    del data["runtime"]                      # older files: the data-sheet default
    path.write_text(json.dumps(data))
    assert MachineModel.load(path).runtime == RuntimeSpec()

    def bad(change, match: str) -> None:
        data = json.loads(m.to_json())
        change(data["runtime"])
        path.write_text(json.dumps(data))
        with pytest.raises(MachineError, match=match):
            MachineModel.load(path)

    bad(lambda r: r.update(reduction="tree"), "reduction must be one of ring, fold, partials")
    bad(lambda r: r.update(issue=-1), "runtime issue must be a number >= 0, got -1")
    bad(lambda r: r.update(cores="two"), "runtime cores must be a number >= 0")
    bad(lambda r: r.update(reduction="fold", fold=None), "'fold' needs a 'fold' link")
    bad(lambda r: r["fold"].update(bandwidth=0), "link bandwidth must be a positive number")
    bad(lambda r: r.update(speed=3), "runtime: .*speed")
    data = json.loads(m.to_json())
    data["runtime"] = [1]
    path.write_text(json.dumps(data))
    with pytest.raises(MachineError, match="'runtime' must be an object"):
        MachineModel.load(path)


# ------------------------------------------------------------------------------------------------
# The simulator on a CPU machine's runtime
# ------------------------------------------------------------------------------------------------

def _mlp(width: int = 512) -> tuple[ComputationGraph, list[int]]:
    g = ComputationGraph()
    x = g.add_input(TensorShape((None, width)), "x")
    (h,) = g.add_node(Linear(width, activation="relu"), [x], "fc1")
    (o,) = g.add_node(Linear(width), [h], "fc2")
    return g, [o]


def test_folding_replicated_gradients_costs_every_copy() -> None:
    g, outs = _mlp()
    base = preset("local")   # (one rank sums as partial sums: tests/test_cost_fusion.py)
    local = replace(base, runtime=replace(base.runtime, reduction="fold"))
    sim = Simulator(local, optimizer_slots=0)
    dp = sim.simulate(g, 64, {}, outs, default=data_parallel_config(2))
    serial = sim.simulate(g, 64, {}, outs, default=OpConfig())
    kernel_bytes = 512 * 512 * 4
    fold = local.runtime.fold.time(kernel_bytes)
    # each replicated kernel's two copies are folded whole; a serial weight is written in place
    assert dp.breakdown["fc2"].communication >= 2 * fold
    assert serial.breakdown["fc2"].communication == 0
    ring = Simulator(replace(local, runtime=RuntimeSpec()), optimizer_slots=0)
    assert ring.simulate(g, 64, {}, outs, default=data_parallel_config(2)).breakdown[
        "fc2"].communication < dp.breakdown["fc2"].communication


def test_threads_sharing_cores_are_time_sliced() -> None:
    g, outs = _mlp(64)
    base = preset("local")
    one = replace(base, runtime=RuntimeSpec(issue=1e-3, sync=1e-4, reduction="fold",
                                            fold=LinkSpec(1e9, 1e-4), cores=1.0))
    r = Simulator(one, optimizer_slots=0).simulate(g, 64, {}, outs,
                                                   default=data_parallel_config(2))
    # time-sliced on one core: at least the span and all the work, at most both one after the
    # other
    assert max(r.span, r.work) <= r.step_time <= r.span + r.work + 1e-12
    assert r.work >= r.host + sum(r.busy) and r.host >= r.launches * 1e-3
    # host actions: 2 attached arrays, 2 forward launches, 1 loss, 3 backward (fc2's input and
    # weight gradients; fc1 needs no input gradient), 4 updates
    assert r.launches == 2 + 2 + 1 + 3 + 4
    free = replace(base, runtime=RuntimeSpec(issue=1e-3))
    r2 = Simulator(free, optimizer_slots=0).simulate(g, 64, {}, outs,
                                                     default=data_parallel_config(2))
    assert r2.step_time == r2.span < r.step_time
