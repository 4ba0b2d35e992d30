"""Time per training step of an MLP on unity_legion vs PyTorch CPU, measured in the same run.

    legate --cpus 2 scripts/bench_step.py            # MLP 784-4096-4096-10, batch 256, SGD

PyTorch gets as many threads as Legate has CPU processors; the two take turns, round by round
(a load that comes and goes touches both). Prints a table and, on its last line,
one JSON object with unity_step_s, torch_step_s and ratio_vs_torch (unity / torch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import numpy as np
import torch  # imported before Legate starts (see LEGATE_NOTES)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", default="784,4096,4096,10", help="input, hidden..., classes")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="timed steps per system and round")
    p.add_argument("--rounds", type=int, default=4, help="rounds, the systems taking turns")
    p.add_argument("--cpus", type=int, default=None, help="Legate CPU processors (if not given to legate)")
    return p.parse_args()


def time_steps(step, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def time_alternating(systems: dict[str, Callable[[], None]], warmup: int, steps: int,
                     rounds: int) -> dict[str, list[float]]:
    """Step times of each system: warmed up, then `rounds` rounds of `steps` steps each, the
    systems taking turns round by round, so that a change of the machine's speed during the
    run (other jobs on its cores) touches them alike."""
    for step in systems.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(rounds):
        for name, step in systems.items():
            times[name] += time_steps(step, 0, steps)
    return times


def main() -> None:
    args = parse_args()
    widths = [int(v) for v in args.widths.split(",")]
    from unity_legion import runtime

    if args.cpus is not None:
        runtime.configure(cpus=args.cpus)
    machine = runtime.machine_info()
    from unity_legion import keras

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, widths[0])).astype(np.float32)
    y = rng.integers(0, widths[-1], args.batch_size)

    inputs = keras.Input(shape=(widths[0],))
    h = inputs
    for wd in widths[1:-1]:
        h = keras.layers.Dense(wd, activation="relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(widths[-1])(h))
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  search={"batch_size": args.batch_size})   # the default: Unity's search

    threads = machine.cpus_per_rank if machine.cpus else 1
    torch.set_num_threads(threads)
    layers: list[torch.nn.Module] = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(widths[-2], widths[-1]))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def torch_step() -> None:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(tx), ty)
        loss.backward()
        opt.step()
        loss.item()

    times = time_alternating({"unity": lambda: model.train_on_batch(x, y), "torch": torch_step},
                             args.warmup, args.steps, args.rounds)
    unity, ref = times["unity"], times["torch"]
    u, t = statistics.median(unity), statistics.median(ref)
    flops = 6 * args.batch_size * sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    if machine.rank == 0:
        print(f"MLP {args.widths}, batch {args.batch_size}, SGD; {machine}; torch threads {threads}")
        print(f"{'system':<14}{'median step (ms)':>18}{'min (ms)':>12}{'GFLOP/s':>10}")
        for name, ts in (("unity_legion", unity), ("pytorch", ref)):
            med = statistics.median(ts)
            print(f"{name:<14}{med * 1e3:>18.1f}{min(ts) * 1e3:>12.1f}{flops / med / 1e9:>10.1f}")
        print(f"ratio unity/torch: {u / t:.3f}")
        print(json.dumps({"model": f"mlp-{args.widths}", "batch_size": args.batch_size,
                          "processors": machine.processors, "ranks": machine.ranks,
                          "torch_threads": threads, "unity_step_s": round(u, 5),
                          "torch_step_s": round(t, 5), "ratio_vs_torch": round(u / t, 4)}))


if __name__ == "__main__":
    main()
