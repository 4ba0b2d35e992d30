"""Substitutions generated from operator specifications and proved with z3 (Unity/TASO style).

specs.py      one declarative OpSpec per operator family: typing (with parallel layouts),
              reference semantics mod a prime, float32 through the real kernels, z3 axioms
evaluate.py   term evaluation and the spec self-check (an axiom that contradicts the reference
              evaluation names its operator)
enumerate.py  graphs of up to k operators, fingerprints, candidates, pruning
lift.py       Conv2D: its channel-structured 2-D model (why the proofs hold for real
              convolutions), the image/kernel roles, the float32 cross-check on 4-D tensors
prover.py     z3 proofs from the axioms
generate.py   the pipeline (each rule proved at its most general input shapes) and the rule
              files (ours: data/generated_rules.json; TASO/FlexFlow: data/generated_rules_taso.json)
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

# the activation the TASO file writes for the opaque `act` (OP_RELU, a Linear's PM_ACTI 2)
OPAQUE_AS = "relu"


@lru_cache(maxsize=1)
def _taso_load():
    from ..taso_json import load_rules
    return load_rules(TASO_FILE)


def generated_rules() -> list:
    """The shipped generated rules that map onto our operators, as `Rule` objects for
    `SearchOptions(rules=...)` (through the TASO loader; the rest stay in the generator's own
    format, see `load_generated`). A rule with the opaque activation comes once per elementwise
    activation (named `<rule>_<fn>`, relu keeping the plain name) and, where it also holds for
    a row-wise one (`GeneratedRule.row_wise`), for softmax."""
    from unity_legion.operators.activation import Activation

    # a split in our rules cuts at the seam of the concat that built the dim; the TASO format
    # cannot say so (its split may cut anywhere), so rules with a split are not handed over
    ours = {r.name: r for r in load_generated(OURS_FILE)}
    taso = {r["name"]: r for r in json.loads(TASO_FILE.read_text())["rule"]}
    out = []
    for rule in _taso_load().rules:
        # the rule as written (a "_rev" rule reads it right to left): its TASO input ids
        g = ours[rule.name[:-len(REVERSED)] if rule.name.endswith(REVERSED) else rule.name]
        if any(op.startswith("split") for t in (g.lhs, g.rhs) for op in ops(t)):
            continue
        rule = _with_shape_guard(rule, g, taso[rule.name])
        if not {"act", "linact"} & set(ops(g.lhs) + ops(g.rhs)):
            out.append(rule)
            continue
        # the proof holds for any function in place of `act`; the file names one (relu)
        fns = Activation.ELEMENTWISE_FNS + (Activation.ROW_WISE_FNS if g.row_wise else ())
        out += [rule if fn == OPAQUE_AS else _with_activation(rule, fn) for fn in fns]
    return out


def _with_activation(rule, fn: str):
    """`rule` with every activation the TASO file wrote for the opaque `act` made `fn`: in the
    pattern (an Activation's fn, a Linear's fused activation) and in the replacement."""
    from ..rule import AttrEq

    def attrs(items: tuple) -> tuple:
        return tuple((k, fn if k in ("fn", "activation") and v == OPAQUE_AS else v)
                     for k, v in items)
    pattern = tuple(dataclasses.replace(p, where=tuple(
        AttrEq(c.attr, fn) if isinstance(c, AttrEq) and c.attr in ("fn", "activation")
        and c.value == OPAQUE_AS else c for c in p.where)) for p in rule.pattern)
    replacement = tuple(dataclasses.replace(t, build=dataclasses.replace(t.build, set=attrs(t.build.set)))
                        for t in rule.replacement)
    return dataclasses.replace(rule, name=f"{rule.name}_{fn}", pattern=pattern,
                               replacement=replacement)


def _with_shape_guard(rule, g: GeneratedRule, taso_rule: dict):
    """Inputs the rule states with one shape (ones the generalisation could not give shapes of
    their own, see `generate.generalise`) were proved equal-shaped: the rule applies only where
    they are (`same_input_shapes` over the pattern inputs)."""
    from ..rule import Pred
    # TASO input -1, -2, ... in this order (`to_taso` numbers them on the rule as written, for
    # its "_rev" reading too)
    names = variables(("pair", g.lhs, g.rhs))
    shapes = dict(g.shapes)
    order: list[str] = []                          # the loader's In(i): data inputs of srcOp
    for op in taso_rule["srcOp"]:
        ins = op["input"][:1] if op["type"] in ("OP_LINEAR", "OP_CONV2D") else op["input"]
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
