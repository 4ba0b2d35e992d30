"""Generate and verify Unity's substitutions from the operator specs (pure Python, z3).

    python scripts/generate_substitutions.py                 # k = 3, writes the shipped files
    python scripts/generate_substitutions.py --k 2 --out /tmp/rules   # elsewhere

Enumerates every graph of up to k operators over the specs
(unity_legion/substitutions/generator/specs.py), pairs graphs of equal fingerprint, drops trivial
and redundant pairs, proves each with z3 from the axioms, cross-checks each proven rule in float32
through the real kernels (each at its most general input shapes: a concat's inputs of their own
widths; a rule with a Conv2D on 4-D images and kernels, see generator/lift.py), and writes the
rule file in our format and in TASO/FlexFlow JSON. The last line printed is one JSON object:
candidates, verified, rejected, unproven, generation_s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unity_legion.substitutions.generator import OURS_FILE, TASO_FILE, generate, write


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=3, help="most operators per side (3; 4 is slow)")
    p.add_argument("--time-limit", type=float, default=600.0,
                   help="seconds; past it the run warns and stops with what it has")
    p.add_argument("--timeout-ms", type=int, default=10_000,
                   help="z3 wall-clock safety limit per candidate")
    p.add_argument("--rlimit", type=int, default=500_000,
                   help="z3 deterministic work limit per candidate (a proof takes about 1e4)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the two rule files (default: the shipped data/ folder)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    g = generate(a.k, time_limit=a.time_limit, timeout_ms=a.timeout_ms, rlimit=a.rlimit,
                 progress=not a.no_progress and sys.stderr.isatty())
    ours, taso = OURS_FILE, TASO_FILE
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        ours, taso = a.out / OURS_FILE.name, a.out / TASO_FILE.name
    write(g, ours, taso)
    s = g.stats
    print(f"k={g.k}: {s['terms']} graphs, {s['classes']} fingerprint classes, {s['candidates']} "
          f"candidate pairs, {s['after_pruning']} after pruning")
    print(f"verified {len(g.rules)} ({s['by_kind']}), unproven {len(g.unproven)} "
          f"({s['unproven_by_kind']}), rejected {len(g.rejected)}")
    print(f"{s['generalised_shapes']} proved at more general input shapes than enumerated (inputs "
          f"of one group given sizes of their own), {s['row_wise']} hold for softmax too")
    if "conv" in s:
        c = s["conv"]
        print(f"conv pass (Conv2D over images and kernels): {c['terms']} graphs, "
              f"{c['candidates']} candidate pairs with a convolution, {c['after_pruning']} after "
              f"pruning, {c['verified']} verified")
    for t, why in g.unproven[:20]:
        print(f"  unproven: {t}  [{why}]")
    for t, why in g.rejected:
        print(f"  rejected: {t}  [{why}]")
    print(f"wrote {ours} and {taso}")
    print(json.dumps(g.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
