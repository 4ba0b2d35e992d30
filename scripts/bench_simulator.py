"""How well the simulator predicts real training steps on this machine.

    python scripts/bench_simulator.py               # 1 rank, --cpus 2 (each strategy its own job)
    python scripts/bench_simulator.py --ranks 2     # 2 ranks x 1 CPU (mpirun, over loopback)
    python scripts/bench_simulator.py --size large  # the models at 4-8x the work per step

Run by plain Python (the environment of `.venv/unity_legion_env.sh`), the script is a driver: it
imports no Legate and runs every strategy in a fresh Legate job of its own
(`legate [--launcher mpirun --nodes 1 --ranks-per-node R] --cpus C --sysmem M` this script
`--only NAME --rows-out FILE`), as a training job runs one model: nothing a strategy timed
before leaves behind (in one long-lived runtime ResNeXt's step was seen to drift 12-44% slower
over a run, after the earlier models were freed) can reach the next one. A searched strategy
takes two jobs: one runs Unity's search (measuring the operators it prices) and saves the
strategy, a fresh one times it (a job that had measured a hundred operators timed its steps
20-50% slower). The first job measures the calibration into the shared cost cache; the others read
it. Each job measures the operators of its own plan, after its timed steps, into a cost cache of
its own: the machine's speed drifts from minute to minute, and a prediction is made from what the
operators cost in the minute its steps ran, not in whichever job measured them first (--cache DIR
shares one cost cache between all jobs instead: measured once, reused). Started by a Legate
launcher instead (`legate --cpus 2 --sysmem 4000 scripts/bench_simulator.py`), it runs the
chosen strategies in this one job, one after another. The driver does all of it --passes times
over (default 3; searches in the first pass only) and reports each strategy's median figures:
the machine's speed drifts from job to job.

On several ranks the "local" machine model is ranks x processors per rank, with the link between
ranks measured (see `unity_legion.profiling.calibrate`); every rank runs this same script (the
same Legate operations in the same order), the calibration and the operator costs are rank 0's,
broadcast, the real step is rank 0's wall clock of train_on_batch (which reads the loss: the
ranks meet every step), and only rank 0 prints.

For each strategy (a {node_id: OpConfig} plan over a zoo model; nodes it does not name run
data-parallel, as the executor runs them) it measures the real training step through Keras'
train_on_batch with the plan set on the model's executor (median of several steps after warm-up,
in rounds), and predicts it with the Simulator (SGD: no optimizer slots) on the "local"
machine model measured by `unity_legion.profiling.calibrate`, with `MeasuredCost` (measuring
through `unity_legion.profiling.LocalMeasurer`). The calibration and the operator costs are
measured in this run (into a fresh cache) unless --cache names a cache directory to use; the
machine's parallel capacity (`RuntimeSpec.cores`, which other jobs on the machine change from
minute to minute) is measured just before and after each strategy's timed steps, and its median
is the one that strategy is predicted with.

Prints a table (strategy, real ms, predicted ms, error) and, on its LAST line, one JSON object:
median_abs_rel_error, max_abs_rel_error, median_rel_error (signed: below 0, the simulator predicts
steps faster than they run; fractions), strategies (count) and per-strategy figures.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
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
                   help="cost cache directory to use, shared by every job (default: a fresh "
                        "one, measured now; the driver's jobs then measure their operators "
                        "each into a cache of its own)")
    p.add_argument("--costs", default=None, help=argparse.SUPPRESS)  # a job's operator costs
    p.add_argument("--only", default=None, help="comma-separated strategy names to run")
    p.add_argument("--passes", type=int, default=3,
                   help="driver: times every strategy in this many fresh jobs, pass after pass, "
                        "and reports the median of each figure (the machine's speed drifts "
                        "between jobs: one plan's step was seen 24-29 ms in four jobs in a row, "
                        "the same plan 25.7 and 31.6 ms in two; of two passes the median is "
                        "their mean, which one slow job moves)")
    p.add_argument("--size", choices=sorted(SIZES), default="small",
                   help="model sizes: small (the issue's: steps of 20-80 ms, where per-task "
                        "runtime costs weigh) or large (kernels dominate: steps of 50-300 ms)")
    p.add_argument("--ranks", type=int, default=1,
                   help="driver: ranks of each job (1, or several over mpirun on this machine)")
    p.add_argument("--cpus", type=int, default=None,
                   help="driver: CPU processors per rank (default: 2 on one rank, else 1)")
    p.add_argument("--sysmem", type=int, default=None,
                   help="driver: MiB of system memory per rank (default: 4000 / ranks)")
    p.add_argument("--steps-per-execution", type=int, default=1, metavar="N",
                   help="training steps issued before one read of their losses (fit's "
                        "compile(steps_per_execution=N), GraphExecutor.train_steps): a timed "
                        "step is then a group of N timed whole, over N, and predicted with "
                        "Simulator(steps_per_read=N); pipelined plans too")
    p.add_argument("--rows-out", default=None, help=argparse.SUPPRESS)  # a job of the driver
    p.add_argument("--searched", default=None,
                   help="directory of the search's strategies: loaded from there when saved "
                        "by an earlier run, otherwise saved there")
    p.add_argument("--search-only", action="store_true",
                   help="with --searched: search and save the strategies, time nothing")
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
    # (graph, processors) -> a pcg.pipeline.PipelineSpec: the plan's operators run in stages over
    # micro-batches (the executor's pipelined step), priced by Simulator.simulate_pipeline
    pipeline: Callable[[Any, int], Any] | None = None


def in_legate_job() -> bool:
    """Started by a Legate launcher (its driver sets these for every rank it starts)."""
    return any(k in os.environ for k in ("LEGATE_GLOBAL_RANK", "OMPI_COMM_WORLD_RANK"))


def main() -> None:
    args = parse_args()
    if in_legate_job():
        run_here(args)
    else:
        drive(args)


def drive(args: argparse.Namespace) -> None:
    """Every strategy in a fresh Legate job of its own; one table and summary for all."""
    cases = chosen_cases(args.only, args.size)
    names = [c.name for c in cases]
    search_cases = {c.name for c in cases if c.plan is None}
    if args.ranks < 1:
        raise SystemExit(f"bench_simulator: --ranks must be >= 1, got {args.ranks}")
    if args.passes < 1:
        raise SystemExit(f"bench_simulator: --passes must be >= 1, got {args.passes}")
    cpus = args.cpus or (2 if args.ranks == 1 else 1)
    sysmem = args.sysmem or 4000 // args.ranks
    legate = Path(sys.executable).parent / "legate"
    launcher = ([] if args.ranks == 1 else
                ["--launcher", "mpirun", "--nodes", "1", "--ranks-per-node", str(args.ranks)])
    env = {k: v for k, v in os.environ.items() if k != "LEGATE_CONFIG"}  # the flags below rule
    cache = args.cache or tempfile.mkdtemp(prefix="unity_legion_costs_")
    t_start = time.perf_counter()
    jobs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_simulator_") as tmp:
        searched = str(Path(tmp) / "searched")
        for n_pass, (i, name) in itertools.product(range(args.passes), enumerate(names)):
            # a searched strategy: found (and its operators measured) in one job, timed in
            # the next (in later passes: timed only, as saved by the first)
            searching = name in search_cases and n_pass == 0
            for only_search in ([True, False] if searching else [False]):
                job = f"{n_pass}-{i}{'s' if only_search else ''}"
                out = Path(tmp) / f"{job}.json"
                # the job's operators measured in its own minute (see the module doc)
                costs = args.cache or str(Path(cache) / f"ops-{job}")
                argv = [str(legate), *launcher, "--cpus", str(cpus), "--sysmem", str(sysmem),
                        os.path.abspath(__file__), "--only", name, "--size", args.size,
                        "--cache", cache, "--costs", costs,
                        "--rows-out", str(out), "--rounds", str(args.rounds),
                        "--steps", str(args.steps), "--warmup", str(args.warmup),
                        "--steps-per-execution", str(args.steps_per_execution),
                        "--repeats", str(args.repeats), "--searched", searched]
                argv += ["--search-only"] if only_search else []
                t = time.perf_counter()
                proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True)
                if proc.returncode != 0 or not out.is_file():
                    sys.stderr.write(proc.stdout[-6000:])
                    raise SystemExit(f"bench_simulator: the job for {name} failed "
                                     f"(exit {proc.returncode}): {' '.join(argv)}")
                jobs.append(json.loads(out.read_text()))   # a search's job: no rows
                print(f"{name}{' (search)' if only_search else ''}"
                      f"{f' (pass {n_pass + 1})' if args.passes > 1 else ''}: "
                      f"{time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    if args.cache is None:
        shutil.rmtree(cache, ignore_errors=True)
    report(merged_rows([row for job in jobs for row in job["rows"]], names), jobs[0]["machine"],
           [c for job in jobs for c in job["cores_seen"]],
           sum(j["misses"] for j in jobs), sum(j["hits"] for j in jobs),
           time.perf_counter() - t_start, jobs[0]["processors"], jobs[0]["ranks"],
           f"each strategy in a fresh job of {args.ranks} rank(s) x {cpus} CPU(s)", len(jobs),
           args.size, args.steps_per_execution)


def merged_rows(rows: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """One row per strategy, in `names` order: each number the median over the passes that
    timed it, the error recomputed from the medians, the passes' real steps kept."""
    out = []
    for name in names:
        mine = [r for r in rows if r["strategy"] == name]
        if not mine:
            continue
        row = dict(mine[0])
        for k, v in mine[0].items():
            if isinstance(v, float):   # a measured figure (counts are the plan's: the same)
                row[k] = round(statistics.median(r[k] for r in mine), 4)
        row["rel_error"] = round((row["predicted_ms"] - row["real_ms"]) / row["real_ms"], 4)
        row["real_ms_passes"] = [r["real_ms"] for r in mine]
        out.append(row)
    return out


def run_here(args: argparse.Namespace) -> None:
    """The chosen strategies one after another in this Legate job."""
    from unity_legion import runtime

    machine_info = runtime.machine_info()
    from unity_legion.profiling import local_calibration, measured_cost
    from unity_legion.runtime import bcast

    procs = machine_info.processors
    # one cache directory for all ranks: rank 0's (it alone reads and writes it)
    cache = args.cache or bcast(tempfile.mkdtemp(prefix="unity_legion_costs_")
                                if machine_info.rank == 0 else None)
    t_start = time.perf_counter()
    cal = local_calibration(cache)
    assert cal is not None
    machine = cal.machine
    cases = chosen_cases(args.only, args.size)
    rng = np.random.default_rng(0)
    cost = measured_cost(args.costs or cache, repeats=args.repeats)
    rows: list[dict[str, Any]] = []
    cores_seen: list[float] = []
    # one strategy's model at a time: Legate's cost per launch grows with the stores and
    # instances alive (four ResNeXt models alive at once made each step ~2.5x slower than the
    # simulator's one-model prediction), so each is timed and its operators measured alone
    for case in cases:
        row = run_case(case, args, procs, machine, cost, rng, cores_seen)
        rows += [row] if row is not None else []
        gc.collect()
    if machine_info.rank != 0:
        return
    if args.cache is None:
        shutil.rmtree(cache, ignore_errors=True)
    described = (f"{machine_info} ({machine.name}: "
                 f"{machine.device.flops_fp32 / 1e9:.0f} GFLOP/s, "
                 f"{machine.device.mem_bandwidth / 1e9:.1f} GB/s, "
                 f"task {machine.device.launch_overhead * 1e6:.0f} us, "
                 f"issue {machine.runtime.issue * 1e6:.0f} us, "
                 f"sync {machine.runtime.sync * 1e6:.0f} us, "
                 f"fold {machine.runtime.fold.bandwidth / 1e9 if machine.runtime.fold else 0:.2f} GB/s"
                 + (f"; {machine.nodes} nodes x {machine.devices_per_node}, between nodes "
                    f"{machine.inter.latency * 1e6:.0f} us + {machine.inter.bandwidth / 1e9:.2f} GB/s"
                    if machine.nodes > 1 else "") + ")")
    if args.rows_out:   # a job of the driver: hand the figures back
        with open(args.rows_out, "w") as f:
            json.dump({"rows": rows, "machine": described, "cores_seen": cores_seen,
                       "misses": cost.misses, "hits": cost.hits, "processors": procs,
                       "ranks": machine_info.ranks}, f)
        return
    report(rows, described, cores_seen, cost.misses, cost.hits, time.perf_counter() - t_start,
           procs, machine_info.ranks, "in one job", 1, args.size, args.steps_per_execution)


def chosen_cases(only: str | None, size: str = "small") -> list[Case]:
    """The cases named in `only` (comma-separated; all when None), in the table's order."""
    cases = build_cases(size)
    if only is None:
        return cases
    wanted = only.split(",")
    unknown = sorted(set(wanted) - {c.name for c in cases})
    if unknown:
        raise SystemExit(f"bench_simulator: unknown strategies {unknown}; "
                         f"known: {[c.name for c in cases]}")
    return [c for c in cases if c.name in wanted]


def report(rows: list[dict[str, Any]], described: str, cores_seen: list[float], misses: int,
           hits: int, seconds: float, procs: int, ranks: int, how: str, jobs: int,
           size: str, group: int = 1) -> None:
    """The table, then the summary as one JSON object on the last line."""
    errs = [abs(r["rel_error"]) for r in rows]
    print(f"simulator vs real steps on {described}; cores "
          f"{min(cores_seen, default=0):.2f}-{max(cores_seen, default=0):.2f} over the strategies")
    print(f"model sizes: {size}; {group} step(s) per read; operator costs: {misses} "
          f"measured, {hits} cached; load "
          f"{os.getloadavg()[0]:.1f}; {seconds:.0f} s; {how}")
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
    # ... and against the fastest plan that runs everything on one processor (target: <= 1/1.4)
    search_vs_serial: dict[str, float] = {}
    for k, v in real.items():
        model = k.split("/")[0]
        serial = [ms for name, ms in real.items()
                  if name.startswith(model + "/serial")]
        if k.endswith("/search") and serial:
            search_vs_serial[model] = round(v / min(serial), 4)
    if search_vs_serial:
        print("measured step of the search's strategy / the fastest serial one's: " + ", ".join(
            f"{k} {v:.3f}" for k, v in search_vs_serial.items()))
    signed = [r["rel_error"] for r in rows]
    if signed:   # which way the simulator errs, besides how far
        print(f"error: median {statistics.median(signed) * 100:+.1f}% (signed), "
              f"{sum(e < 0 for e in signed)} of {len(signed)} strategies predicted faster "
              f"than they ran")
    summary = {"median_abs_rel_error": round(statistics.median(errs), 4) if errs else None,
               "median_rel_error": round(statistics.median(signed), 4) if signed else None,
               "max_abs_rel_error": round(max(errs), 4) if errs else None,
               "strategies": len(rows), "processors": procs, "ranks": ranks, "jobs": jobs,
               "size": size, "steps_per_execution": group,
               "search_vs_data_parallel_measured": search_vs_dp,
               "search_vs_serial_measured": search_vs_serial,
               "per_strategy": rows}
    print(json.dumps(summary))


def searched_strategy(case: Case, model: Any, args: argparse.Namespace, machine: Any,
                      cost: Any) -> tuple[Any, str]:
    """The strategy Unity's search finds for `case` (SGD: no optimizer slots, as timed) and
    its description. With --searched DIR, a strategy an earlier job found and saved there is
    loaded instead; one found here is saved there, and with --search-only not returned: the
    search measures many operators, and a job that did so times its steps slower (the drift
    the driver's fresh jobs avoid), so the driver times a searched strategy in a job of its
    own."""
    from unity_legion.runtime import is_rank0
    from unity_legion.search.unity import SearchOptions, search
    from unity_legion.strategy.strategy import Strategy

    saved = Path(args.searched) / (case.name.replace("/", "_") + ".json") if args.searched else None
    if saved is not None and saved.is_file():
        return Strategy.load(saved), saved.with_suffix(".txt").read_text()
    found = search(model, case.batch, machine, cost,
                   SearchOptions(budget=16, optimizer_slots=0,
                                 steps_per_read=args.steps_per_execution))
    describe = f"search: {found.chosen}, {len(found.strategy.substitutions)} substitution(s)"
    if saved is not None and is_rank0():
        saved.parent.mkdir(parents=True, exist_ok=True)
        found.strategy.save(saved)
        saved.with_suffix(".txt").write_text(describe)
    return (None if args.search_only else found.strategy), describe


def run_case(case: Case, args: argparse.Namespace, procs: int, machine: Any, cost: Any,
             rng: np.random.Generator, cores_seen: list[float]) -> dict | None:
    """The case's real steps (in rounds, the machine's parallel capacity measured around each),
    then the simulator's prediction; None for a search that is only saved (--search-only)."""
    from unity_legion import keras
    from unity_legion.cost import Simulator
    from unity_legion.profiling import measure_cores
    from unity_legion.models import ZOO
    from unity_legion.pcg.pcg import data_parallel_config

    model = case.build()
    entry = ZOO[case.model]
    xs, ys = entry.synthetic(model, case.batch, rng)
    if case.plan is None:
        strategy, case.describe = searched_strategy(case, model, args, machine, cost)
        if strategy is None:   # --search-only: found and saved, timed by the next job
            return None
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss=entry.loss, strategy=strategy)
        graph, outputs = strategy.graph_for(model)
        plan = strategy.plan(model)
    else:
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss=entry.loss,
                      strategy="data_parallel")
        graph, outputs = model.graph, model._output_ids
        plan = case.plan(model.graph, procs)
        spec = case.pipeline(model.graph, procs) if case.pipeline is not None else None
        model._executor.set_plan(plan, spec)
        if spec is not None:   # the executor completed it: a config for every operator
            plan = dict(model._executor.plan)
    x = xs if len(xs) > 1 else xs[0]
    y = ys if len(ys) > 1 else ys[0]
    group = args.steps_per_execution
    step = training_steps(model, x, y, group)
    for _ in range(args.warmup):
        step()
    real: list[float] = []
    cores: list[float] = []
    measure_cores()   # its tasks registered before anything is timed
    for _ in range(args.rounds):
        step()   # back in this model's steady state
        # the parallel capacity is a figure of the moment (other jobs share the cores): the one
        # the steps had, measured just before and just after them
        cores.append(measure_cores(repeats=1, warmup=0))
        for _ in range(args.steps):
            t = time.perf_counter()
            step()
            real.append((time.perf_counter() - t) / group)
        cores.append(measure_cores(repeats=1, warmup=0))
    capacity = statistics.median(cores)
    cores_seen.append(capacity)
    sim = Simulator(replace(machine, runtime=replace(machine.runtime, cores=capacity)), cost,
                    optimizer_slots=0, steps_per_read=group)
    t = time.perf_counter()
    measured = statistics.median(real)
    pipeline = case.pipeline(graph, procs) if case.pipeline is not None else None
    if pipeline is not None:
        p = sim.simulate_pipeline(graph, case.batch, plan, pipeline, outputs)
        sim_s = time.perf_counter() - t
        err = (p.step_time - measured) / measured
        return {"strategy": case.name, "model": case.model, "plan": case.describe,
                "real_ms": round(measured * 1e3, 2), "predicted_ms": round(p.step_time * 1e3, 2),
                "rel_error": round(err, 4), "bubble_ms": round(p.bubble * 1e3, 2),
                "span_ms": round(p.slot * 1e3, 2),   # the slowest stage's slot
                "host_ms": round(p.host * 1e3, 2),   # the issuing thread's seconds per step
                "work_ms": round(p.work * 1e3, 2),
                "cores": round(capacity, 3), "simulate_s": round(sim_s, 3)}
    r = sim.simulate(graph, case.batch, plan, outputs=outputs,
                     default=data_parallel_config(procs, case.batch))
    sim_s = time.perf_counter() - t
    err = (r.step_time - measured) / measured
    return {"strategy": case.name, "model": case.model, "plan": case.describe,
            "real_ms": round(measured * 1e3, 2), "predicted_ms": round(r.step_time * 1e3, 2),
            "rel_error": round(err, 4), "launches": r.launches,
            "host_ms": round(r.host * 1e3, 2), "span_ms": round(r.span * 1e3, 2),
            "work_ms": round(r.work * 1e3, 2), "cores": round(capacity, 3),
            "simulate_s": round(sim_s, 3)}


def training_steps(model: Any, x: Any, y: Any, group: int) -> Callable[[], None]:
    """A call that trains `model` on (x, y): train_on_batch (one step, its loss read), or
    `group` steps on the batch issued together and read back once (as fit with
    steps_per_execution=group)."""
    if group == 1:
        return lambda: model.train_on_batch(x, y)
    # staged and sliced as fit stages and slices its batches
    xs, ys = model._stage(model._prepare_x(x), None), model._stage(model._prepare_y(y), None)
    batch = len(xs[0])
    one = model._batches(xs, ys, 0, 0, batch, batch)
    opt = model.optimizer

    def run() -> None:
        model._executor.train_steps(one * group, model._objective, opt.rule(),
                                    [opt.learning_rate] * group, opt.iterations + 1)
        opt.iterations += group

    return run


# ------------------------------------------------------------------------------------------------
# Strategies
# ------------------------------------------------------------------------------------------------

def _cfg(degrees: dict[str, int], start: int = 0) -> Any:
    from unity_legion.types import OpConfig

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


def two_stages(first: Callable[[str], bool]) -> Callable[[Any, int], dict]:
    """A plan for two pipeline stages: operators `first` names serial on processor 0, the
    rest serial on the last one."""
    def plan(graph: Any, procs: int) -> dict:
        return {n.id: _cfg({}, start=0 if first(n.name) else procs - 1) for n in graph.nodes}
    return plan


def stages_of(first: Callable[[str], bool], micro_batches: int, schedule: str
              ) -> Callable[[Any, int], Any]:
    """The pipeline of `two_stages(first)`: stage "front" on processor 0, "back" on the last."""
    def spec(graph: Any, procs: int) -> Any:
        from unity_legion.pcg.pipeline import PipelineSpec, Stage

        names = [n.name for n in graph.nodes]
        return PipelineSpec((Stage("front", tuple(n for n in names if first(n)), (0,)),
                             Stage("back", tuple(n for n in names if not first(n)),
                                   (procs - 1,))), micro_batches, schedule)
    return spec


@dataclass(frozen=True)
class Sizes:
    """The three models' builder arguments and batches."""

    mlp: dict
    bert: dict
    resnext: dict
    mlp_batch: int
    bert_batch: int
    resnext_batch: int


_RESNEXT = dict(blocks=(1, 1, 1, 1), groups=4, width_per_group=4, base_width=16, classes=10)
SIZES: dict[str, Sizes] = {
    # the sizes issue 12 measured: a step of tens of ms, a few hundred us per task
    "small": Sizes(dict(input_dim=512, width=512, layers=3),
                   dict(vocab_size=512, max_positions=64, seq_len=32, layers=2, hidden=256,
                        heads=4, ffn=1024, classes=4, dropout=0.0),
                   dict(image_size=32, **_RESNEXT), 256, 16, 16),
    # 4-8x the work per task: kernels of milliseconds, as in training at scale
    "large": Sizes(dict(input_dim=1024, width=1024, layers=3),
                   dict(vocab_size=512, max_positions=64, seq_len=64, layers=2, hidden=512,
                        heads=8, ffn=2048, classes=4, dropout=0.0),
                   dict(image_size=64, **_RESNEXT), 256, 16, 32),
}


def build_cases(size: str = "small") -> list[Case]:
    """The strategies compared (no Legate imported: the driver lists them too)."""
    sz = SIZES[size]
    mlp, bert, rx = sz.mlp, sz.bert, sz.resnext
    mb, bb, rb = sz.mlp_batch, sz.bert_batch, sz.resnext_batch

    def mk(name: str, kw: dict) -> Callable[[], Any]:
        def build() -> Any:
            from unity_legion.models import ZOO

            return ZOO[name].build(**kw)
        return build

    def mlp_front(name: str) -> bool:    # each branch's first two layers
        return "_dense_0" in name or "_dense_1" in name

    def bert_front(name: str) -> bool:   # the embeddings and the first layer
        return "embeddings" in name or "_layer_0_" in name

    c: list[Case] = [
        Case("mlp/data", "mlp_unify", "all sample-split", mk("mlp_unify", mlp), data_parallel, mb),
        Case("mlp/serial0", "mlp_unify", "all serial on processor 0", mk("mlp_unify", mlp),
             serial_on(0), mb),
        Case("mlp/megatron", "mlp_unify", "Linear out/in alternating", mk("mlp_unify", mlp),
             megatron(), mb),
        Case("mlp/out", "mlp_unify", "every Linear split by output features",
             mk("mlp_unify", mlp), all_linear("out"), mb),
        Case("mlp/branches", "mlp_unify", "branch a on processor 0, b on the last",
             mk("mlp_unify", mlp), branches_apart, mb),
        Case("mlp/mixed", "mlp_unify", "first layers sample, rest out, softmax serial",
             mk("mlp_unify", mlp), mixed_mlp, mb),
        Case("mlp/search", "mlp_unify", "Unity's search", mk("mlp_unify", mlp), None, mb),
        Case("mlp/pipe-gpipe", "mlp_unify", "2 stages (layers 0-1 | 2, add, softmax), 4 x 64 "
             "GPipe", mk("mlp_unify", mlp), two_stages(mlp_front), mb,
             stages_of(mlp_front, 4, "gpipe")),
        Case("mlp/pipe-1f1b", "mlp_unify", "2 stages (layers 0-1 | 2, add, softmax), 4 x 64 "
             "1F1B", mk("mlp_unify", mlp), two_stages(mlp_front), mb,
             stages_of(mlp_front, 4, "1f1b")),
        Case("bert/data", "bert_large", "all sample-split", mk("bert_large", bert),
             data_parallel, bb),
        Case("bert/serial1", "bert_large", "all serial on the last processor",
             mk("bert_large", bert), serial_on(1), bb),
        Case("bert/megatron", "bert_large", "FFN Linear out/in, rest sample",
             mk("bert_large", bert), megatron(lambda n: "_intermediate" in n.name
                                                 or n.name.endswith("_output")), bb),
        Case("bert/head1", "bert_large", "sample, classifier serial on the last",
             mk("bert_large", bert), head_serial, bb),
        Case("bert/search", "bert_large", "Unity's search", mk("bert_large", bert), None, bb),
        Case("bert/pipe-1f1b", "bert_large", "2 stages (embeddings, layer 0 | layer 1, head), "
             "2 x 8 1F1B", mk("bert_large", bert), two_stages(bert_front), bb,
             stages_of(bert_front, 2, "1f1b")),
        Case("resnext/data", "resnext50", "all sample-split", mk("resnext50", rx),
             data_parallel, rb),
        Case("resnext/serial0", "resnext50", "all serial on processor 0", mk("resnext50", rx),
             serial_on(0), rb),
        Case("resnext/head1", "resnext50", "sample, classifier serial on the last",
             mk("resnext50", rx), head_serial, rb),
        Case("resnext/search", "resnext50", "Unity's search", mk("resnext50", rx), None, rb),
    ]
    return c


if __name__ == "__main__":
    main()
