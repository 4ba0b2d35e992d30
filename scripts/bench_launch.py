"""What one launch costs, by part, the way the executor issued launches before and issues them now.

    legate --cpus 2 --sysmem 4000 scripts/bench_launch.py

A chain of N launches of an empty kernel (one in-place store of 64 floats, split over P points)
through `GraphExecutor._launch`, timed per launch:

- issue (ours): the executor's Python per launch (binding stores, tiles, the fused group);
- issue (Legate): creating the manual task, adding its arguments and submitting it;
- end to end: from the first issue to the last result read back, per launch;
- with a weight attached writable (how weights lived before): the same chain when the store is
  attached to a numpy buffer as Legate's writable external allocation (every submit then waits
  for its task), against a store of Legate's own (how they live now).

"before" runs each launch as a task of its own (fusion off); "after" fuses the chain into
groups of at most `fusion.MAX_STEPS` kernels; "replayed" issues the fused chain again from a
recording of it, as training steps after the second are issued (executor/replay.py: no walk of
the launches, only Legate's task creation and submission). "loaded" times a chain of launches
whose kernels compute for 1 ms each (each its own task, so each waits for the one before) and
gives what a launch adds to that 1 ms: the cost of a launch while the processors are busy and
the runtime's own threads (Legion's analysis, Realm's copies) must take cores from them. Prints
a table and, on its last line, one JSON object with the figures in microseconds per launch.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

BUSY_S = 1e-3   # the kernel time of a "loaded" chain's launches


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--launches", type=int, default=400)
    p.add_argument("--points", default="1,2", help="comma-separated launch points")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    from unity_legion import runtime

    rt = runtime.runtime()
    import unity_legion.executor.launcher as launcher_mod
    from legate.core import types as ty
    from unity_legion.executor.executor import GraphExecutor, read
    from unity_legion.operators.base import SAMPLE, Arg, InOut, Launch, Ref, RefKind, kernel
    from unity_legion.pcg.graph import ComputationGraph

    @kernel
    def empty(a: InOut) -> None:
        pass

    square = np.ones((128, 128), np.float32)

    @kernel
    def busy(a: InOut) -> None:
        # BUSY_S of products (BLAS lets go of the GIL: the points of a launch compute at once)
        t = time.perf_counter()
        while time.perf_counter() - t < BUSY_S:
            np.dot(square, square)

    ref = Ref(RefKind.INPUT, 0)
    launch = Launch(empty, {"a": Arg(ref, (SAMPLE,))})
    n = args.launches
    ex = GraphExecutor(ComputationGraph(), [])
    machine = runtime.machine_info()

    # time spent inside Legate's submit (issue side), summed over a chain
    legate_issue = [0.0]

    def timed(real):  # type: ignore[no-untyped-def]
        def wrapper(*a, **k):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            real(*a, **k)
            legate_issue[0] += time.perf_counter() - t
        return wrapper

    import unity_legion.executor.fusion as fusion_mod
    import unity_legion.executor.replay as replay_mod
    launcher_mod.submit_program = fusion_mod.submit_program = timed(launcher_mod.submit_program)
    replay_mod.issue_task = timed(replay_mod.issue_task)

    def per_launch(issue_chain, store) -> dict[str, float]:
        """`issue_chain()` (n launches, all submitted) timed: its issue, split into Legate's
        part and ours, and end to end until `store` is read back."""
        legate_issue[0] = 0.0
        t0 = time.perf_counter()
        issue_chain()
        t1 = time.perf_counter()
        read(store)
        t2 = time.perf_counter()
        issue = (t1 - t0) / n
        return {"issue_ours_us": (issue - legate_issue[0] / n) * 1e6,
                "issue_legate_us": legate_issue[0] / n * 1e6,
                "end_to_end_us": (t2 - t0) / n * 1e6}

    def launches(store, points: int, which: Launch = launch, count: int = n) -> None:
        for _ in range(count):
            ex.launch(which, {ref: store}, {SAMPLE: points})
        ex.flush()

    def chain(store, points: int, fused: bool) -> dict[str, float]:
        ex.fusion = fused
        ex.launch(launch, {ref: store}, {SAMPLE: points})
        ex.flush()
        read(store)
        return per_launch(lambda: launches(store, points), store)

    def replayed(store, points: int) -> dict[str, float]:
        ex.fusion = True
        trace = ex.record(lambda: launches(store, points))
        assert trace is not None
        ex.reissue(trace)
        read(store)
        return per_launch(lambda: ex.reissue(trace), store)

    def loaded(store, points: int) -> float:
        """Per launch of a chain whose kernels compute BUSY_S each (every launch its own task,
        so each waits for the one before): the time beyond BUSY_S, i.e. what a launch costs
        while the processors are busy and the runtime's threads must take cores from them."""
        ex.fusion = False
        busy_launch = Launch(busy, {"a": Arg(ref, (SAMPLE,))})
        k = max(n // 4, 10)
        launches(store, points, busy_launch, 3)
        read(store)
        t0 = time.perf_counter()
        launches(store, points, busy_launch, k)
        read(store)
        return ((time.perf_counter() - t0) / k - BUSY_S) * 1e6

    rows: dict[str, dict[str, float]] = {}
    for points in [int(p) for p in args.points.split(",") if p]:
        points = min(points, machine.processors)
        store = rt.create_store(ty.float32, (64,))
        store.fill(0.0)
        rows[f"before p={points}"] = chain(store, points, fused=False)
        rows[f"after p={points}"] = chain(store, points, fused=True)
        buf = np.zeros(64, np.float32)
        attached = rt.create_store_from_buffer(ty.float32, (64,), buf, False)
        rows[f"before p={points}"] |= {
            "attached_writable_us": chain(attached, points, fused=False)["end_to_end_us"]}
        rows[f"after p={points}"] |= {
            "attached_writable_us": chain(store, points, fused=True)["end_to_end_us"]}
        rows[f"replayed p={points}"] = replayed(store, points)
        rows[f"replayed p={points}"] |= {
            "attached_writable_us": replayed(store, points)["end_to_end_us"]}
        rows[f"before p={points}"] |= {"loaded_us": loaded(store, points)}
        del attached

    cols = ["issue_ours_us", "issue_legate_us", "end_to_end_us", "attached_writable_us",
            "loaded_us"]
    print(f"one launch of an empty kernel in a chain of {n}; {machine}")
    print(f"{'':<16}" + "".join(f"{c[:-3]:>22}" for c in cols) + "   (us per launch)")
    for name, r in rows.items():
        print(f"{name:<16}" + "".join(f"{r[c]:>22.1f}" if c in r else f"{'-':>22}"
                                      for c in cols))
    print(json.dumps({"launches": n, "processors": machine.processors,
                      "rows": {k: {c: round(v, 2) for c, v in r.items()} for k, r in rows.items()}}))


if __name__ == "__main__":
    main()
