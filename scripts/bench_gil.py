"""Whether two processors' task bodies run at the same time, or take turns at Python's lock.

    legate --cpus 2 --sysmem 4000 scripts/bench_gil.py

Our tasks are Python: while a body runs Python (Legate wrapping each store it binds, our dispatch
between kernels, numpy on small arrays) it holds the interpreter's lock (the GIL), which the
issuing thread and every other processor's body also need; numpy and torch let it go while they
work on large arrays. Each row times launches of one task whose every point does the same work,
over 1 point and over 2 (each on a processor of its own):

- small: many numpy operations on 64-element arrays (nearly all of it under the lock);
- large: a few operations on 200,000-element arrays (nearly none of it).

The ratio 2 points / 1 point is ~2 where the bodies take turns and ~1 where they run at once
(above 1 also where the two cores share memory bandwidth). Prints a table and, on its last line,
one JSON object: per row the milliseconds per launch on 1 and 2 points and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from legate.core import VariantCode, get_legate_runtime
from legate.core import types as ty
from legate.core.task import InputStore, task

ROWS = {"small": (3000, 64), "large": (300, 200_000)}   # (operations, elements)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--launches", type=int, default=5, help="timed launches per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds, alternating 1 and 2 points")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies each row's operations")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    rt = get_legate_runtime()

    @task(variants=(VariantCode.CPU,))
    def work(piece: InputStore, operations: int, elements: int) -> None:
        x = np.ones(elements, np.float32)
        for _ in range(operations):
            x = x * 1.0001 + 0.5

    store = rt.create_store(ty.float32, (2,))
    store.fill(0.0)

    def launch(points: int, operations: int, elements: int) -> None:
        mt = rt.create_manual_task(work.library, work.task_id, (points,))
        mt.add_input(store.partition_by_tiling((1,)))
        mt.add_scalar_arg(operations, ty.int64)
        mt.add_scalar_arg(elements, ty.int64)
        rt.submit(mt)

    def timed(points: int, operations: int, elements: int, n: int) -> float:
        rt.issue_execution_fence(block=True)
        t = time.perf_counter()
        for _ in range(n):
            launch(points, operations, elements)
        rt.issue_execution_fence(block=True)
        return (time.perf_counter() - t) / n

    figures = {}
    print(f"{'row':6s} {'ops':>6s} {'elements':>9s} {'1 point ms':>11s} {'2 points ms':>12s} "
          f"{'ratio':>6s}")
    for name, (operations, elements) in ROWS.items():
        operations = max(int(operations * args.scale), 1)
        timed(2, operations, elements, 1)   # first launches: registration, instances
        one, two = [], []
        for _ in range(args.rounds):
            one.append(timed(1, operations, elements, args.launches))
            two.append(timed(2, operations, elements, args.launches))
        a, b = statistics.median(one), statistics.median(two)
        figures[name] = {"operations": operations, "elements": elements,
                         "one_point_ms": round(a * 1e3, 3), "two_points_ms": round(b * 1e3, 3),
                         "ratio": round(b / a, 3)}
        print(f"{name:6s} {operations:6d} {elements:9d} {a * 1e3:11.2f} {b * 1e3:12.2f} "
              f"{b / a:6.2f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
