"""Plan a strategy without training: Unity's search for a (simulated) cluster. No GPU needed.

    python scripts/search.py --model bert_large --full-size --machine dgx-h100 --search-num-nodes 8
    python scripts/search.py --model dlrm --full-size --machine p3.8xlarge --out dlrm.json --explain
    python scripts/search.py --model mlp --machine my_cluster.json --batch-size 1024

Writes the strategy file (--out) that `scripts/train.py --strategy PATH` and
`model.compile(strategy=PATH)` take, and prints the search's report: the simulated step time of
data parallelism, of the expert strategy and of the strategy found, which substitutions were
applied and what each saved; --explain adds the per-operator table. The last line is one JSON
object with the figures. Runs in plain Python (no `legate` launcher): the planner is pure Python.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import MODELS, _model_arg  # noqa: E402

from unity_legion.search.plan import (add_search_flags, machine_from_args,  # noqa: E402
                                      options_from_args, search)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp", choices=MODELS)
    p.add_argument("--full-size", action="store_true", help="the model at paper size")
    p.add_argument("--model-arg", type=_model_arg, action="append", default=[],
                   metavar="KEY=VALUE", help="an argument of the model builder (repeatable)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global batch per step (default: 8 per device)")
    p.add_argument("--out", default=None, metavar="PATH", help="write the strategy JSON here")
    p.add_argument("--explain", action="store_true", help="print the per-operator table")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"),
                   help="bf16: plan the model as keras.mixed_precision 'mixed_bfloat16' trains "
                        "it (bf16 activations at the device's bf16 rate, float32 weights)")
    add_search_flags(p, planning=True)
    args = p.parse_args(argv)
    if args.batch_size is not None and args.batch_size <= 0:
        p.error("--batch-size must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from unity_legion.cost import MachineError
    from unity_legion.models import ZOO
    from unity_legion.search.unity import SearchError
    from unity_legion.substitutions import TasoFormatError

    try:
        machine = machine_from_args(args)
        opts = options_from_args(args)
    except (MachineError, SearchError, TasoFormatError, OSError) as exc:
        raise SystemExit(f"search.py: {exc}") from None
    entry = ZOO[args.model]
    kwargs = dict(args.model_arg)
    from unity_legion.keras import mixed_precision
    # the layers take the policy when they are made: the same graph a mixed model trains
    mixed_precision.set_global_policy("mixed_bfloat16" if args.dtype == "bf16" else "float32")
    try:
        model = entry.build(**kwargs) if args.full_size else entry.build_small(**kwargs)
    except TypeError as exc:
        raise SystemExit(f"search.py: --model-arg does not fit {args.model}: {exc}") from None
    finally:
        mixed_precision.set_global_policy("float32")
    batch = args.batch_size or 8 * machine.num_devices
    print(f"planning {args.model}{' (paper size)' if args.full_size else ''}, "
          f"{model.count_params():,} parameters, batch {batch}, on {machine.name}: "
          f"{machine.nodes} node(s) x {machine.devices_per_node} {machine.device.name}")
    t0 = time.perf_counter()
    result = search(model, batch, machine, options=opts)
    seconds = time.perf_counter() - t0
    print(result.report())
    if args.explain:
        # simulated on the machine planned for: each row's compute, communication and links
        print(result.strategy.explain(model, batch, machine=machine))
    if args.out:
        result.strategy.save(args.out)
        print(f"strategy written to {args.out}")
    print(json.dumps({"model": args.model, "dtype": args.dtype, "machine": machine.name, "devices":
                      machine.num_devices, "batch": batch, "search_s": round(seconds, 3),
                      "chosen": result.chosen,
                      "dp_step_s": result.baselines["data_parallel"],
                      "expert_step_s": result.baselines["expert"],
                      "found_step_s": result.step_time,
                      "speedup_vs_dp": result.speedup_vs_dp,
                      "peak_memory_bytes": result.peak_memory, "fits": result.fits,
                      "substitutions": [a.as_dict() for a in result.strategy.substitutions],
                      "graphs_priced": result.evaluated}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
