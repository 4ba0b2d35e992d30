"""What reading the loss back after every training step costs: fit's step time with the host
waiting for each step (compile's steps_per_execution=1, Keras' default) against fit issuing
`--group` steps before one read (steps_per_execution=N, train.py's default 8), in one run; and
what the tasks posting a step's loss and metrics to the host saves (the default,
executor/posted.py; over several ranks each rank's own, shared between the ranks) against
reading them back from their stores (UNITY_LEGION_POSTED=0: a model compiled so, trained in the
same rounds).

    legate --cpus 2 --sysmem 4000 scripts/bench_fit.py
    legate --launcher mpirun --nodes 1 --ranks-per-node 2 --cpus 1 --sysmem 2000 scripts/bench_fit.py

The model is the zoo's MLP (`--widths`, SGD) planned by the search for the running machine; each
round fits one epoch of `--steps` batches per setting, the settings taking turns round by round
(a load that comes and goes touches both). Prints a table and, on its last line, one JSON
object with step_s_each_read, step_s_grouped and speedup (each-read / grouped),
step_s_each_read_stores and posted_speedup (read from stores / posted, a read per step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", default="512,512,512,10", help="input, hidden..., classes")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=16, help="batches per fitted epoch")
    p.add_argument("--group", type=int, default=8, help="steps_per_execution of the grouped fit")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--strategy", default="search", help="compile's strategy (default: search)")
    p.add_argument("--metrics", default="accuracy",
                   help="compile's metrics, comma-separated ('' for none)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    from unity_legion import keras, runtime
    from unity_legion.models import mlp

    machine = runtime.machine_info()
    widths = [int(v) for v in args.widths.split(",")]
    rng = np.random.default_rng(0)
    n = args.batch_size * args.steps
    x = rng.standard_normal((n, widths[0])).astype(np.float32)
    y = rng.integers(0, widths[-1], n)
    metrics = [m for m in args.metrics.split(",") if m]

    def compiled(posts: bool) -> object:
        # (the executor takes UNITY_LEGION_POSTED when compile makes it)
        before = os.environ.get("UNITY_LEGION_POSTED")
        os.environ["UNITY_LEGION_POSTED"] = "1" if posts else "0"
        try:
            model = mlp(widths[0], widths[1:-1], widths[-1])
            model.compile(optimizer=keras.optimizers.SGD(0.01),
                          loss="sparse_categorical_crossentropy", metrics=metrics,
                          strategy=args.strategy, search={"batch_size": args.batch_size})
        finally:
            if before is None:
                os.environ.pop("UNITY_LEGION_POSTED")
            else:
                os.environ["UNITY_LEGION_POSTED"] = before
        return model

    model = compiled(True)
    read_name = "each read, stores"
    settings = {"each read": (model, 1), f"{args.group} per read": (model, args.group),
                read_name: (compiled(False), 1)}

    def epoch(m: object, group: int) -> float:
        m.steps_per_execution = group
        t = time.perf_counter()
        m.fit(x, y, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)
        return (time.perf_counter() - t) / args.steps

    for m, group in settings.values():   # warm-up: recordings, caches
        epoch(m, group)
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, (m, group) in settings.items():
            times[name].append(epoch(m, group))
    each, grouped = (statistics.median(times[name]) for name in list(settings)[:2])
    stores = statistics.median(times[read_name])
    if machine.rank == 0:
        print(f"MLP {args.widths}, batch {args.batch_size}, SGD, strategy "
              f"{model.strategy.source}; {machine}; {args.steps} steps an epoch")
        print(f"{'fit':<16}{'median step (ms)':>18}{'min (ms)':>12}")
        for name, ts in times.items():
            print(f"{name:<16}{statistics.median(ts) * 1e3:>18.1f}{min(ts) * 1e3:>12.1f}")
        print(f"speedup of {args.group} steps per read: {each / grouped:.2f}x")
        figures = {"model": f"mlp-{args.widths}", "batch_size": args.batch_size,
                   "metrics": metrics, "ranks": machine.ranks, "processors": machine.processors,
                   "strategy": model.strategy.source, "group": args.group,
                   "step_s_each_read": round(each, 5), "step_s_grouped": round(grouped, 5),
                   "speedup": round(each / grouped, 3)}
        print(f"speedup of posting the loss and metrics over reading their stores: "
              f"{stores / each:.2f}x")
        figures |= {"step_s_each_read_stores": round(stores, 5),
                    "posted_speedup": round(stores / each, 3)}
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
