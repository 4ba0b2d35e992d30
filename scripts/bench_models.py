"""Step time of every zoo model (scaled down) on unity_legion vs the same model in PyTorch CPU.

    legate --cpus 2 --sysmem 4000 scripts/bench_models.py
    legate --cpus 2 --sysmem 4000 scripts/bench_models.py --models bert_large,dlrm --batch-size 32

Each model is built at its benchmark size (unity_legion.models.ZOO[name].bench: widths of
hundreds to a thousand), trained with SGD on
one synthetic batch; PyTorch runs the same graph with the same weights (unity_legion.testing.torch_twin)
with as many threads as Legate has CPU processors per rank, the two taking turns round by round.
Prints a table and, on its last line,
one JSON object with, per model, unity_step_s, torch_step_s and ratio_vs_torch (unity / torch).
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch  # imported before Legate starts (see LEGATE_NOTES)
from bench_step import time_alternating
from unity_legion.testing.torch_twin import TorchTwin, torch_loss

MODELS = "mlp_unify,bert_large,dlrm,xdl,candle_uno,resnext50,inception_v3"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=MODELS, help="comma-separated zoo names")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per system and round")
    p.add_argument("--rounds", type=int, default=4, help="rounds, unity and torch taking turns")
    p.add_argument("--cpus", type=int, default=None, help="Legate CPU processors (if not given to legate)")
    return p.parse_args()


def bench_one(name: str, batch: int, warmup: int, steps: int, rounds: int) -> dict[str, float]:
    from unity_legion import keras
    from unity_legion.models import ZOO

    entry = ZOO[name]
    keras.utils.set_random_seed(0)
    model = entry.build_bench()
    xs, ys = entry.synthetic(model, batch, np.random.default_rng(0))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=entry.loss,
                  search={"batch_size": batch})   # the default strategy: Unity's search
    x = xs if len(xs) > 1 else xs[0]
    y = ys if len(ys) > 1 else ys[0]
    twin = TorchTwin(model)  # the weights before unity_legion trains them

    opt = torch.optim.SGD([p for p in twin.parameters() if p.requires_grad], lr=0.01)
    tx = [torch.from_numpy(a) for a in xs]
    ty = [torch.from_numpy(a) for a in ys]
    twin.train()

    def torch_step() -> None:
        opt.zero_grad()
        loss = torch_loss(entry.loss, twin(*tx), ty)
        loss.backward()
        opt.step()
        loss.item()

    times = time_alternating({"unity": lambda: model.train_on_batch(x, y), "torch": torch_step},
                             warmup, steps, rounds)
    unity, ref = times["unity"], times["torch"]
    u, t = statistics.median(unity), statistics.median(ref)
    return {"params": model.count_params(), "unity_step_s": round(u, 5),
            "torch_step_s": round(t, 5), "ratio_vs_torch": round(u / t, 4)}


def main() -> None:
    args = parse_args()
    from unity_legion import runtime

    if args.cpus is not None:
        runtime.configure(cpus=args.cpus)
    machine = runtime.machine_info()
    threads = machine.cpus_per_rank if machine.cpus else 1
    torch.set_num_threads(threads)
    results = {name: bench_one(name, args.batch_size, args.warmup, args.steps, args.rounds)
               for name in args.models.split(",") if name}
    if machine.rank != 0:
        return
    print(f"zoo models at their benchmark sizes, batch {args.batch_size}, SGD; {machine}; "
          f"torch threads {threads}")
    print(f"{'model':<14}{'params':>10}{'unity (ms)':>13}{'torch (ms)':>13}{'unity/torch':>13}")
    for name, r in results.items():
        print(f"{name:<14}{r['params']:>10}{r['unity_step_s'] * 1e3:>13.1f}"
              f"{r['torch_step_s'] * 1e3:>13.1f}{r['ratio_vs_torch']:>13.2f}")
    ratios = [r["ratio_vs_torch"] for r in results.values()]
    geomean = float(np.exp(np.mean(np.log(ratios)))) if ratios else float("nan")
    print(f"geometric mean unity/torch: {geomean:.2f}")
    print(json.dumps({"batch_size": args.batch_size, "processors": machine.processors,
                      "ranks": machine.ranks, "torch_threads": threads, "models": results,
                      "geomean_ratio_vs_torch": round(geomean, 4)}))


if __name__ == "__main__":
    main()
