"""Benchmark Unity's search on the zoo's paper-size models, on simulated clusters (no GPU needed).

    python scripts/bench_search.py                         # 8 x 8 H100 and the 4-V100 p3.8xlarge
    python scripts/bench_search.py --models bert_large,dlrm --machines dgx-h100:8

Per model and machine: the search's wall time, the simulated step time of data parallelism, of
the expert strategy (Megatron-style inside a node for attention models, table-parallel
embeddings for DLRM/XDL, data parallel otherwise) and of the strategy found, the speedups, the
peak memory per device, and the substitutions applied. All three are priced by the same
simulator (unity_legion.cost.Simulator, analytic roofline with the Hopper/V100 figures of the
presets). The last line is one JSON object: per machine and model `search_s`, `dp_step_s`,
`expert_step_s`, `found_step_s`, and per machine `geomean_speedup_vs_dp`. A second column of
found step times comes from a search with another rule set (default: the rules generated and
proved by scripts/generate_substitutions.py), as `<set>_rules_found_step_s` (without pipelines).

On the Hopper presets (H100, H200) each model is also planned as keras.mixed_precision's
"mixed_bfloat16" trains it (bf16 activations priced at the bf16 tensor rate and 2 bytes an
element, float32 master weights, gradients and slots): the "bf16 ms" column, JSON
`bf16_found_step_s`, `bf16_dp_step_s`, `bf16_peak_memory_bytes`, `bf16_fits` (--no-bf16: off).

The search also places pipeline stages (SearchOptions.pipeline; --no-pipeline turns it off):
`found_pipeline_stages` is the chosen plan's stage count (1: not pipelined) and
`pipeline_step_s` the best pipelined plan's step (cost/pipeline.py), chosen or not. A step time
marked "!" (JSON: `dp_fits`, `expert_fits` false) is a plan that does not fit the memory. Beside the
zoo, DEEP holds deep transformers where pipelining is expected to matter (the default list
includes them).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from unity_legion.cost import machine_from
from unity_legion.models import ZOO
from unity_legion.search.unity import SearchOptions, search

# A deep transformer beside the zoo (built from its BERT): 48 layers of width 4096 (9.7 B
# parameters, GPT-3 6.7B's width), as deep as the decoder-only models pipelines are made for
# (attention without a causal mask costs the same). Its weights with Adam's slots (155 GB) fit
# no 80 GB device unless split, and its activations at 8 samples per device fit none unless the
# samples pass in micro-batches: only a pipelined plan fits 8 x 8 H100s.
DEEP = {
    "bert_48x4k": lambda: ZOO["bert_large"].build(layers=48, hidden=4096, heads=32, ffn=16384,
                                                  name="bert_48x4k"),
}


def build(name: str, policy: str = "float32"):
    """The model at paper size, its layers made under dtype policy `policy`."""
    from unity_legion.keras import mixed_precision
    mixed_precision.set_global_policy(policy)
    try:
        return DEEP[name]() if name in DEEP else ZOO[name].build()
    finally:
        mixed_precision.set_global_policy("float32")


def hopper(machine) -> bool:
    """Whether the machine's devices are Hopper GPUs (the bf16 column's presets)."""
    return any(k in machine.device.name.upper() for k in ("H100", "H200"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(list(ZOO) + list(DEEP)),
                   help=f"comma-separated zoo names (or {', '.join(DEEP)})")
    p.add_argument("--machines", default="dgx-h100:8,p3.8xlarge:1",
                   help="comma-separated PRESET:NODES")
    p.add_argument("--per-device-batch", type=int, default=8,
                   help="samples per device per step (global batch = this x devices)")
    p.add_argument("--budget", type=int, default=SearchOptions().budget)
    p.add_argument("--alpha", type=float, default=SearchOptions().alpha)
    p.add_argument("--time-limit", type=float, default=SearchOptions().time_limit)
    p.add_argument("--rule-set", choices=("builtin", "generated", "both"), default="builtin",
                   help="algebraic rules: hand-written, generated (scripts/generate_substitutions.py) "
                        "or both")
    p.add_argument("--compare-with", choices=("none", "builtin", "generated", "both"),
                   default="generated",
                   help="a second search per model with this rule set, shown in its own column "
                        "(default: the generated rules)")
    p.add_argument("--no-bf16", action="store_true",
                   help="no mixed_bfloat16 plan on the Hopper presets")
    p.add_argument("--no-pipeline", action="store_true",
                   help="do not place pipeline stages (unpipelined plans only)")
    return p.parse_args(argv)


def rule_set(name: str):
    """The rules for SearchOptions(rules=...): None is the built-in library."""
    if name == "builtin":
        return None
    from unity_legion.substitutions import builtin_rules
    from unity_legion.substitutions.generator import generated_rules
    gen = generated_rules()
    return tuple(gen) if name == "generated" else tuple(builtin_rules()) + tuple(gen)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    opts = SearchOptions(budget=args.budget, alpha=args.alpha, time_limit=args.time_limit,
                         rules=rule_set(args.rule_set), pipeline=not args.no_pipeline)
    other = (None if args.compare_with == "none" else
             SearchOptions(budget=args.budget, alpha=args.alpha, time_limit=args.time_limit,
                           rules=rule_set(args.compare_with)))
    other_col = f"{args.compare_with[:5]} ms" if other else ""
    figures: dict[str, dict] = {}
    header = (f"{'machine':14s} {'model':13s} {'search s':>8s} {'DP ms':>10s} {'expert ms':>10s} "
              f"{'found ms':>10s} {other_col:>10s} {'bf16 ms':>10s} {'vs DP':>7s} {'vs exp':>7s} {'peak GiB':>8s} "
              f"{'graphs':>6s} {'stages':>6s} {'pipe ms':>10s}  substitutions")
    print(header)
    print("-" * len(header))
    for spec in args.machines.split(","):
        name, _, nodes = spec.partition(":")
        machine = machine_from(name, int(nodes or 1))
        batch = args.per_device_batch * machine.num_devices
        per_model: dict[str, dict] = {}
        for model_name in args.models.split(","):
            model = build(model_name)
            t0 = time.perf_counter()
            r = search(model, batch, machine, options=opts)
            secs = time.perf_counter() - t0
            dp, ex = r.baselines["data_parallel"], r.baselines["expert"]
            subs = sorted({a.rule_name for a in r.strategy.substitutions})
            per_model[model_name] = {"search_s": round(secs, 2), "dp_step_s": dp,
                                     "expert_step_s": ex, "found_step_s": r.step_time,
                                     "chosen": r.chosen, "peak_memory_bytes": r.peak_memory,
                                     "fits": r.fits, "graphs_priced": r.evaluated,
                                     "found_pipeline_stages": r.pipeline_stages,
                                     "dp_fits": r.baseline_fits.get("data_parallel"),
                                     "expert_fits": r.baseline_fits.get("expert"),
                                     "pipeline_step_s": r.baselines.get("pipeline"),
                                     "substitutions": subs}
            second = ""
            if other is not None:
                r2 = search(model, batch, machine, options=other)  # other: no pipelines
                per_model[model_name][f"{args.compare_with}_rules_found_step_s"] = r2.step_time
                second = f"{r2.step_time * 1e3:10.3f}"
            bf16 = ""
            if hopper(machine) and not args.no_bf16:
                r3 = search(build(model_name, "mixed_bfloat16"), batch, machine, options=opts)
                per_model[model_name] |= {"bf16_found_step_s": r3.step_time,
                                          "bf16_dp_step_s": r3.baselines["data_parallel"],
                                          "bf16_peak_memory_bytes": r3.peak_memory,
                                          "bf16_fits": r3.fits}
                bf16 = f"{r3.step_time * 1e3:10.3f}" + ("" if r3.fits else "!")
            pipe = (f"{r.baselines['pipeline'] * 1e3:10.3f}" if "pipeline" in r.baselines
                    else "-")
            # "!": the plan does not fit the devices' memory (its speed is moot)
            dp_ms = f"{dp * 1e3:.3f}" + ("" if r.baseline_fits.get("data_parallel") else "!")
            ex_ms = f"{ex * 1e3:.3f}" + ("" if r.baseline_fits.get("expert") else "!")
            print(f"{name + ':' + str(machine.nodes):14s} {model_name:13s} {secs:8.1f} "
                  f"{dp_ms:>10s} {ex_ms:>10s} {r.step_time * 1e3:10.3f} {second:>10s} {bf16:>10s} "
                  f"{dp / r.step_time:6.2f}x {ex / r.step_time:6.2f}x "
                  f"{r.peak_memory / 2**30:8.2f} {r.evaluated:6d} {r.pipeline_stages:6d} "
                  f"{pipe:>10s}  "
                  f"{', '.join(subs) or '-'}{'' if r.fits else '  (does not fit)'}", flush=True)
        speedups = [m["dp_step_s"] / m["found_step_s"] for m in per_model.values()]
        geomean = math.exp(sum(math.log(s) for s in speedups) / len(speedups))
        worst = max(m["search_s"] for m in per_model.values())
        print(f"{name}:{machine.nodes} ({machine.num_devices} devices, batch {batch}): geomean "
              f"speedup vs data parallel {geomean:.2f}x, slowest search {worst:.1f} s")
        figures[f"{name}:{machine.nodes}"] = {"devices": machine.num_devices, "batch": batch,
                                              "geomean_speedup_vs_dp": geomean,
                                              "models": per_model}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
