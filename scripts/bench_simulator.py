"""How well the simulator predicts real training steps on this machine.

    legate --cpus 2 --sysmem 4000 scripts/bench_simulator.py

    legate --launcher mpirun --nodes 1 --ranks-per-node 2 --cpus 1 --sysmem 2000 \
        scripts/bench_simulator.py

On several ranks the "local" machine model is ranks x processors per rank, with the link between
ranks measured (see `unity_legion.cost.calibrate`); every rank runs this same script (the same
Legate operations in the same order), the calibration and the operator costs are rank 0's,
broadcast, the real step is rank 0's wall clock of train_on_batch (which reads the loss: the
ranks meet every step), and only rank 0 prints.

For each strategy (a {node_id: OpConfig} plan over a zoo model; nodes it does not name run
data-parallel, as the executor runs them) it measures the real training step through Keras'
train_on_batch with the plan set on the model's executor (median of several steps after warm-up,
in rounds), and predicts it with the Simulator (SGD: no optimizer slots) on the "local"
machine model measured by `unity_legion.cost.calibrate`, with `MeasuredCost`. The calibration
and the operator costs are measured in this run (into a fresh cache) unless --cache names a
cache directory to use; the machine's parallel capacity (`RuntimeSpec.cores`, which other jobs
on the machine change from minute to minute) is measured just before and after each strategy's
timed steps, and its median is the one that strategy is predicted with. Strategies run one
after another, each timed and its operators measured while only its model is alive (Legate's
cost per launch grows with the stores alive).

Prints a table (strategy, real ms, predicted ms, error) and, on its LAST line, one JSON object:
median_abs_rel_error, max_abs_rel_error (fractions), strategies (count) and per-strategy figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of timed steps per strategy")
    p.add_argument("--steps", type=int, default=5, help="timed steps per strategy and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before the first round")
    p.add_argument("--repeats", type=int, default=7, help="repeats per operator measurement")
    p.add_argument("--cache", default=None,
                   help="cost cache directory to use (default: a fresh one, measured now)")
    p.add_argument("--only", default=None, help="comma-separated strategy names to run")
    return p.parse_args()


@dataclass
class Case:
    name: str
    model: str
    describe: str
    build: Callable[[], Any]              # -> keras model
    # (graph, processors) -> {node_id: OpConfig}; None: Unity's search plans it (on the
    # calibrated local machine model, with the measured operator costs)
    plan: Callable[[Any, int], dict] | None
    batch: int


def main() -> None:
    args = parse_args()
    from unity_legion import runtime

    machine_info = runtime.machine_info()
    from unity_legion.cost import MeasuredCost
    from unity_legion.cost.calibrate import local_calibration

    from unity_legion.cost.measure import bcast

    procs = machine_info.processors
    # one cache directory for all ranks: rank 0's (it alone reads and writes it)
    cache = args.cache or bcast(tempfile.mkdtemp(prefix="unity_legion_costs_")
                                if machine_info.rank == 0 else None)
    t_start = time.perf_counter()
    cal = local_calibration(cache)
    assert cal is not None
    machine = cal.machine
    cases = build_cases(procs)
    if args.only:
        wanted = set(args.only.split(","))
        cases = [c for c in cases if c.name in wanted]
    rng = np.random.default_rng(0)
    cost = MeasuredCost(cache_dir=cache, repeats=args.repeats)
    rows: list[dict[str, Any]] = []
    cores_seen: list[float] = []
    # one strategy's model at a time: Legate's cost per launch grows with the stores and
    # instances alive (four ResNeXt models alive at once made each step ~2.5x slower than the
    # simulator's one-model prediction), so each is timed and its operators measured alone
    families: dict[str, list[Case]] = {}
    for case in cases:
        families.setdefault(case.name, []).append(case)
    for family in families.values():
        rows += run_family(family, args, procs, machine, cost, rng, cores_seen)
        gc.collect()
    if machine_info.rank != 0:
        return
    errs = [abs(r["rel_error"]) for r in rows]
    print(f"simulator vs real steps on {machine_info} ({machine.name}: "
          f"{machine.device.flops_fp32 / 1e9:.0f} GFLOP/s, "
          f"{machine.device.mem_bandwidth / 1e9:.1f} GB/s, task {machine.device.launch_overhead * 1e6:.0f} us, "
          f"issue {machine.runtime.issue * 1e6:.0f} us, sync {machine.runtime.sync * 1e6:.0f} us, "
          f"fold {machine.runtime.fold.bandwidth / 1e9 if machine.runtime.fold else 0:.2f} GB/s, "
          f"cores {min(cores_seen):.2f}-{max(cores_seen):.2f} over the strategies"
          + (f"; {machine.nodes} nodes x {machine.devices_per_node}, between nodes "
             f"{machine.inter.latency * 1e6:.0f} us + {machine.inter.bandwidth / 1e9:.2f} GB/s"
             if machine.nodes > 1 else "") + ")")
    print(f"operator costs: {cost.misses} measured, {cost.hits} cached; load "
          f"{os.getloadavg()[0]:.1f}; {time.perf_counter() - t_start:.0f} s")
    print(f"{'strategy':<18}{'model':<12}{'real ms':>9}{'pred ms':>9}{'error':>8}"
          f"{'span':>8}{'work':>8}{'cores':>7}  plan")
    for r in rows:
        print(f"{r['strategy']:<18}{r['model']:<12}{r['real_ms']:>9.1f}{r['predicted_ms']:>9.1f}"
              f"{r['rel_error'] * 100:>7.1f}%{r['span_ms']:>8.1f}{r['work_ms']:>8.1f}"
              f"{r['cores']:>7.2f}  {r['plan']}")
    # the search's strategy measured against data parallelism, per model (target: <= 1)
    real = {r["strategy"]: r["real_ms"] for r in rows}
    search_vs_dp = {k.split("/")[0]: round(v / real[k.split("/")[0] + "/data"], 4)
                    for k, v in real.items()
                    if k.endswith("/search") and k.split("/")[0] + "/data" in real}
    if search_vs_dp:
        print("measured step of the search's strategy / data parallel's: " + ", ".join(
            f"{k} {v:.3f}" for k, v in search_vs_dp.items()))
    summary = {"median_abs_rel_error": round(statistics.median(errs), 4) if errs else None,
               "max_abs_rel_error": round(max(errs), 4) if errs else None,
               "strategies": len(rows), "processors": procs, "ranks": machine_info.ranks,
               "search_vs_data_parallel_measured": search_vs_dp,
               "per_strategy": rows}
    if args.cache is None:
        shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps(summary))


def run_family(family: list[Case], args: argparse.Namespace, procs: int, machine: Any,
               cost: Any, rng: np.random.Generator, cores_seen: list[float]) -> list[dict]:
    """Real steps of each case of one model family (in rounds over the cases, the machine's
    parallel capacity measured between rounds), then the simulator's prediction of each."""
    from unity_legion import keras
    from unity_legion.cost import Simulator
    from unity_legion.cost.calibrate import measure_cores
    from unity_legion.models import ZOO
    from unity_legion.pcg.pcg import data_parallel_config

    prepared = []
    for case in family:
        model = case.build()
        entry = ZOO[case.model]
        xs, ys = entry.synthetic(model, case.batch, rng)
        if case.plan is None:
            from unity_legion.search.unity import SearchOptions, search

            found = search(model, case.batch, machine, cost,
                           SearchOptions(budget=16, optimizer_slots=0))  # SGD, as timed
            strategy = found.strategy
            case.describe = (f"search: {found.chosen}, "
                             f"{len(strategy.substitutions)} substitution(s)")
            model.compile(optimizer=keras.optimizers.SGD(0.01), loss=entry.loss,
                          strategy=strategy)
            graph, outputs = strategy.graph_for(model)
            plan = strategy.plan(model)
        else:
            model.compile(optimizer=keras.optimizers.SGD(0.01), loss=entry.loss,
                          strategy="data_parallel")
            graph, outputs = model.graph, model._output_ids
            plan = case.plan(model.graph, procs)
            model._executor.set_plan(plan)
        x = xs if len(xs) > 1 else xs[0]
        y = ys if len(ys) > 1 else ys[0]
        for _ in range(args.warmup):
            model.train_on_batch(x, y)
        prepared.append((case, model, plan, x, y, graph, outputs))
    real: dict[str, list[float]] = {c.name: [] for c in family}
    cores: dict[str, list[float]] = {c.name: [] for c in family}
    measure_cores()   # its tasks registered before anything is timed
    for _ in range(args.rounds):
        for case, model, _, x, y, _, _ in prepared:
            model.train_on_batch(x, y)   # back in this model's steady state
            # the parallel capacity is a figure of the moment (other jobs share the cores): the
            # one each strategy's steps had, measured just before and just after them
            cores[case.name].append(measure_cores(repeats=1, warmup=0))
            for _ in range(args.steps):
                t = time.perf_counter()
                model.train_on_batch(x, y)
                real[case.name].append(time.perf_counter() - t)
            cores[case.name].append(measure_cores(repeats=1, warmup=0))
    rows = []
    for case, model, plan, _, _, graph, outputs in prepared:
        capacity = statistics.median(cores[case.name])
        cores_seen.append(capacity)
        sim = Simulator(replace(machine, runtime=replace(machine.runtime, cores=capacity)), cost,
                        optimizer_slots=0)
        t = time.perf_counter()
        r = sim.simulate(graph, case.batch, plan, outputs=outputs,
                         default=data_parallel_config(procs, case.batch))
        sim_s = time.perf_counter() - t
        measured = statistics.median(real[case.name])
        err = (r.step_time - measured) / measured
        rows.append({"strategy": case.name, "model": case.model, "plan": case.describe,
                     "real_ms": round(measured * 1e3, 2), "predicted_ms": round(r.step_time * 1e3, 2),
                     "rel_error": round(err, 4), "launches": r.launches,
                     "host_ms": round(r.host * 1e3, 2), "span_ms": round(r.span * 1e3, 2),
                     "work_ms": round(r.work * 1e3, 2), "cores": round(capacity, 3),
                     "simulate_s": round(sim_s, 3)})
    return rows


# ------------------------------------------------------------------------------------------------
# Strategies
# ------------------------------------------------------------------------------------------------

def _cfg(degrees: dict[str, int], start: int = 0) -> Any:
    from unity_legion.strategy.config import OpConfig

    return OpConfig.of(degrees, start=start)


def _axes(graph: Any, node: Any) -> set[str]:
    shapes = [graph.tensors[t].shape for t in node.inputs]
    return {pd.axis for pd in node.op.parallel_dims(shapes)}


def serial_on(device: int) -> Callable[[Any, int], dict]:
    def plan(graph: Any, procs: int) -> dict:
        return {n.id: _cfg({}, start=min(device, procs - 1)) for n in graph.nodes}
    return plan


def data_parallel(graph: Any, procs: int) -> dict:
    return {}   # the executor's (and the simulator's default) data parallelism


def megatron(linear_filter: Callable[[Any], bool] = lambda n: True) -> Callable[[Any, int], dict]:
    """Linear layers alternately split by output features and by input features (the second of
    each pair reads the first's split output as is); everything else data-parallel."""
    def plan(graph: Any, procs: int) -> dict:
        out: dict = {}
        pending_in = False
        for n in graph.nodes:
            if n.op.op_type != "linear" or not linear_filter(n):
                continue
            axes = _axes(graph, n)
            if pending_in and "in" in axes:
                out[n.id] = _cfg({"in": procs})
                pending_in = False
            elif "out" in axes:
                out[n.id] = _cfg({"out": procs})
                pending_in = True
        return out
    return plan


def all_linear(axis: str) -> Callable[[Any, int], dict]:
    def plan(graph: Any, procs: int) -> dict:
        return {n.id: _cfg({axis: procs}) for n in graph.nodes
                if n.op.op_type == "linear" and axis in _axes(graph, n)}
    return plan


def branches_apart(graph: Any, procs: int) -> dict:
    """mlp_unify: branch a serial on processor 0, branch b serial on the last one (they run at
    the same time); the add and the softmax data-parallel."""
    out = {}
    for n in graph.nodes:
        if "_a_dense_" in n.name:
            out[n.id] = _cfg({}, start=0)
        elif "_b_dense_" in n.name:
            out[n.id] = _cfg({}, start=procs - 1)
    return out


def mixed_mlp(graph: Any, procs: int) -> dict:
    """mlp_unify: the first layer of each branch data-parallel, the rest split by output
    features; the softmax serial on processor 0."""
    out = {}
    for n in graph.nodes:
        if n.op.op_type == "linear" and n.name.endswith("_dense_0"):
            out[n.id] = _cfg({"sample": procs})
        elif n.op.op_type == "linear":
            out[n.id] = _cfg({"out": procs})
        elif n.op.op_type == "activation":
            out[n.id] = _cfg({})
    return out


def head_serial(graph: Any, procs: int) -> dict:
    """Everything data-parallel but the classifier head (the last Linear), serial on the last
    processor."""
    last = [n for n in graph.nodes if n.op.op_type == "linear"][-1]
    return {last.id: _cfg({}, start=procs - 1)}


def build_cases(procs: int) -> list[Case]:
    from unity_legion.models import ZOO

    mlp = dict(input_dim=512, width=512, layers=3)
    bert = dict(vocab_size=512, max_positions=64, seq_len=32, layers=2, hidden=256, heads=4,
                ffn=1024, classes=4, dropout=0.0)
    rx = dict(image_size=32, blocks=(1, 1, 1, 1), groups=4, width_per_group=4, base_width=16,
              classes=10)

    def mk(name: str, kw: dict) -> Callable[[], Any]:
        return lambda: ZOO[name].build(**kw)

    c: list[Case] = [
        Case("mlp/data", "mlp_unify", "all sample-split", mk("mlp_unify", mlp), data_parallel, 256),
        Case("mlp/serial0", "mlp_unify", "all serial on processor 0", mk("mlp_unify", mlp),
             serial_on(0), 256),
        Case("mlp/megatron", "mlp_unify", "Linear out/in alternating", mk("mlp_unify", mlp),
             megatron(), 256),
        Case("mlp/out", "mlp_unify", "every Linear split by output features",
             mk("mlp_unify", mlp), all_linear("out"), 256),
        Case("mlp/branches", "mlp_unify", "branch a on processor 0, b on the last",
             mk("mlp_unify", mlp), branches_apart, 256),
        Case("mlp/mixed", "mlp_unify", "first layers sample, rest out, softmax serial",
             mk("mlp_unify", mlp), mixed_mlp, 256),
        Case("mlp/search", "mlp_unify", "Unity's search", mk("mlp_unify", mlp), None, 256),
        Case("bert/data", "bert_large", "all sample-split", mk("bert_large", bert),
             data_parallel, 16),
        Case("bert/serial1", "bert_large", "all serial on the last processor",
             mk("bert_large", bert), serial_on(1), 16),
        Case("bert/megatron", "bert_large", "FFN Linear out/in, rest sample",
             mk("bert_large", bert), megatron(lambda n: "_intermediate" in n.name
                                                 or n.name.endswith("_output")), 16),
        Case("bert/head1", "bert_large", "sample, classifier serial on the last",
             mk("bert_large", bert), head_serial, 16),
        Case("bert/search", "bert_large", "Unity's search", mk("bert_large", bert), None, 16),
        Case("resnext/data", "resnext50", "all sample-split", mk("resnext50", rx),
             data_parallel, 16),
        Case("resnext/serial0", "resnext50", "all serial on processor 0", mk("resnext50", rx),
             serial_on(0), 16),
        Case("resnext/head1", "resnext50", "sample, classifier serial on the last",
             mk("resnext50", rx), head_serial, 16),
        Case("resnext/search", "resnext50", "Unity's search", mk("resnext50", rx), None, 16),
    ]
    return c


if __name__ == "__main__":
    main()
