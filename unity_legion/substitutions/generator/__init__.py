"""Substitutions generated from operator specifications and proved with z3 (Unity/TASO style).

specs.py      one declarative OpSpec per operator family: typing (with parallel layouts),
              reference semantics mod a prime, float32 through the real kernels, z3 axioms
evaluate.py   term evaluation and the spec self-check (an axiom that contradicts the reference
              evaluation names its operator)
enumerate.py  graphs of up to k operators, fingerprints, candidates, pruning
prover.py     z3 proofs from the axioms
generate.py   the pipeline and the rule files (ours: data/generated_rules.json; TASO/FlexFlow:
              data/generated_rules_taso.json)
Pure Python: never imports legate.
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache

from .evaluate import SpecError, check_specs
from .generate import (OURS_FILE, REVERSED, TASO_FILE, Generation, GeneratedFormatError, GeneratedRule,
                       cross_check, generate, load_generated, to_taso, write)
from .prover import Prover
from .specs import SPECS, OpSpec
from .terms import ops, variables


@lru_cache(maxsize=1)
def _taso_load():
    from ..taso_json import load_rules
    return load_rules(TASO_FILE)


def generated_rules() -> list:
    """The shipped generated rules that map onto our operators, as `Rule` objects for
    `SearchOptions(rules=...)` (through the TASO loader; the rest stay in the generator's own
    format, see `load_generated`)."""
    # a split in our rules cuts at the seam of the concat that built the dim; the TASO format
    # cannot say so (its split may cut anywhere), so rules with a split are not handed over
    ours = {r.name: r for r in load_generated(OURS_FILE)}
    taso = {r["name"]: r for r in json.loads(TASO_FILE.read_text())["rule"]}
    out = []
    for rule in _taso_load().rules:
        if rule.name.endswith(REVERSED):
            g = ours[rule.name[:-len(REVERSED)]]
            g = dataclasses.replace(g, name=rule.name, lhs=g.rhs, rhs=g.lhs)
        else:
            g = ours[rule.name]
        if any(op.startswith("split") for t in (g.lhs, g.rhs) for op in ops(t)):
            continue
        out.append(_with_shape_guard(rule, g, taso[rule.name]))
    return out


def _with_shape_guard(rule, g: GeneratedRule, taso_rule: dict):
    """The proof assumed the inputs of one shape group (x, y, z; v, w) have equal shapes: the
    rule applies only where they do (`same_input_shapes` over the pattern inputs)."""
    from ..rule import Pred
    names = variables(("pair", g.lhs, g.rhs))      # TASO input -1, -2, ... in this order
    shapes = dict(g.shapes)
    order: list[str] = []                          # the loader's In(i): data inputs of srcOp
    for op in taso_rule["srcOp"]:
        ins = op["input"][:1] if op["type"] == "OP_LINEAR" else op["input"]
        for t in ins:
            if t["opId"] < 0 and names[-t["opId"] - 1] not in order:
                order.append(names[-t["opId"] - 1])
    pairs = tuple((i, j) for i in range(len(order)) for j in range(i + 1, len(order))
                  if shapes[order[i]] == shapes[order[j]])
    rule = dataclasses.replace(rule, family=f"generated_{g.kind}")
    if not pairs:
        return rule
    return dataclasses.replace(rule, where=rule.where + (Pred("same_input_shapes", pairs),))


def generated_parallel_rules() -> list:
    """The shipped generated rules of Unity's form "one op wrapped in parallel ops", as
    `ParallelRule`s (which launch axis of which operator a search may split), deduplicated."""
    return list(dict.fromkeys(_taso_load().parallel_rules))


__all__ = ["GeneratedFormatError", "GeneratedRule", "Generation", "OURS_FILE", "OpSpec", "Prover",
           "SPECS", "SpecError", "TASO_FILE", "check_specs", "cross_check", "generate",
           "generated_parallel_rules", "generated_rules", "load_generated", "to_taso", "write"]
