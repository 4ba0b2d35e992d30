"""The whole pipeline: check the specs, enumerate, fingerprint, prune, prove with z3, cross-check
in float32, and write the rule files (ours and TASO/FlexFlow JSON)."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .enumerate import (INPUTS, _generalisations, canonical_pair, candidates,
                        enumerate_terms, erased)
from .evaluate import check_specs, evaluate, random_value
from .prover import Prover
from .specs import SPECS, OpSpec, by_name, with_activation
from .terms import (FRESH, Shape, Term, flat, fmt, ops, parse, parse_shape, shape_key, shape_text,
                    subterms, variables)

FORMAT = "unity_legion.generated_substitutions"
DATA = Path(__file__).resolve().parent.parent / "data"
OURS_FILE = DATA / "generated_rules.json"
TASO_FILE = DATA / "generated_rules_taso.json"
REVERSED = "_rev"   # TASO rule name suffix: the rule read right to left
# a rule over only these may also hold for a row-wise `act` (softmax over dim 1): no data movement
# carries the activation across rows or columns (see `row_wise`)
ROW_WISE_OPS = frozenset({"matmul", "linact", "act", "add", "mul"})


class GeneratedFormatError(ValueError):
    """A generated rule file is malformed."""


@dataclass(frozen=True)
class GeneratedRule:
    name: str
    kind: str                         # "algebraic", "parallel" or "mixed"
    lhs: Term
    rhs: Term
    shapes: tuple[tuple[str, Shape], ...]
    row_wise: bool = False            # also holds with softmax for `act` (checked in float32)

    def text(self) -> str:
        return f"{fmt(self.lhs)} = {fmt(self.rhs)}"


@dataclass
class Generation:
    k: int
    rules: list[GeneratedRule]
    unproven: list[tuple[str, str]]            # (rule text, why)
    rejected: list[tuple[str, str]]
    stats: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"candidates": self.stats["candidates"], "verified": len(self.rules),
                "rejected": len(self.rejected), "unproven": len(self.unproven),
                "generation_s": self.stats["generation_s"]}


def kind_of(lhs: Term, rhs: Term, specs: Mapping[str, OpSpec]) -> str:
    kinds = {specs[s[0]].kind for t in (lhs, rhs) for s in subterms(t) if not isinstance(s, str)}
    return "mixed" if len(kinds) > 1 else kinds.pop()


def cross_check(lhs: Term, rhs: Term, shapes: Mapping[str, Shape], specs: Mapping[str, OpSpec],
                seeds: int = 2) -> str | None:
    """None if both sides agree in float32 through the real kernels, else why not (a rule with
    a convolution: on 4-D images and kernels, see lift.py)."""
    from .lift import cross_check_4d, uses_conv
    if uses_conv(lhs, rhs):
        return cross_check_4d(lhs, rhs, shapes, specs, seeds)
    for seed in range(seeds):
        rng = np.random.default_rng(100 + seed)
        env = {v: (random_value(s, rng, "f32"), s) for v, s in sorted(shapes.items())}
        a, b = evaluate(lhs, env, specs, "f32"), evaluate(rhs, env, specs, "f32")
        if a is None or b is None:
            return "a side does not type-check"
        if a[0].dtype != np.float32 or b[0].dtype != np.float32:
            return f"not float32 ({a[0].dtype}, {b[0].dtype})"
        if a[0].shape != b[0].shape:
            return f"shapes {a[0].shape} and {b[0].shape} differ"
        scale = max(1.0, float(np.abs(a[0]).max(initial=0.0)))
        if not np.allclose(a[0], b[0], rtol=1e-4, atol=1e-4 * scale):
            return f"values differ by {float(np.abs(a[0] - b[0]).max()):.3g}"
    return None


def generate(k: int = 3, specs: tuple[OpSpec, ...] = SPECS, time_limit: float = 600.0,
             timeout_ms: int = 10_000, rlimit: int = 500_000, progress: bool = False,
             inputs: Mapping[str, Shape] = INPUTS) -> Generation:
    """Generate and verify the rules of up to `k` operators. Past `time_limit` seconds it warns
    and stops cleanly with what it has (the statistics say where it stopped). Each proof is
    bounded by z3's deterministic `rlimit` (so the output does not depend on the machine's load)
    and, as a safety net, by `timeout_ms`."""
    t0 = time.perf_counter()
    deadline = t0 + time_limit
    table = by_name(specs)
    n_axioms = check_specs(specs)
    bar = _Bar(progress)
    with bar:
        task = bar.add("enumerating", None)
        e = enumerate_terms(k, specs, inputs, deadline=deadline,
                            progress=lambda n, i, tot: bar.update(task, f"enumerating size {n}", i, tot))
        stats: dict[str, Any] = {"k": k, "operators": [s.name for s in specs if s.enumerate],
                                 "axioms": n_axioms, "terms": e.terms, "classes": len(e.classes),
                                 "enumeration_s": round(e.seconds, 2)}
        if not e.complete:
            warnings.warn(f"k={k}: enumeration passed the {time_limit:.0f} s limit at size "
                          f"{e.stopped_at}; stopping with the sizes done")
            stats["stopped"] = f"enumeration at size {e.stopped_at}"
        cands, pruned = candidates(e, inputs)
        stats.update(pruned)
        stats["candidates"] = pruned["pairs"]
        stats["after_pruning"] = len(cands)
        prover = Prover(specs, timeout_ms, rlimit)
        rules: list[GeneratedRule] = []
        generalised = 0
        unproven: list[tuple[str, str]] = []
        rejected: list[tuple[str, str]] = []
        task = bar.add("proving", len(cands))
        for i, c in enumerate(cands):
            if time.perf_counter() > deadline:
                warnings.warn(f"k={k}: passed the {time_limit:.0f} s limit after {i} of "
                              f"{len(cands)} proofs; the rest are reported as unproven")
                stats["stopped"] = f"proving after {i} of {len(cands)}"
                unproven += [(f"{fmt(d.lhs)} = {fmt(d.rhs)}", "not attempted: time limit")
                             for d in cands[i:]]
                break
            bar.update(task, f"proving ({len(rules)} verified)", i, len(cands))
            generalised += _prove_into(prover, c.lhs, c.rhs, c.shapes, table, None, rules,
                                       unproven, rejected)
        bar.update(task, f"proving ({len(rules)} verified)", len(cands), len(cands))
        # Unity's parallelisation form, one op wrapped in parallel ops: from op(pa(x), pb(y)) =
        # part_d(op(x, y)), cancel the partition: op(x, y) = comb_d(op(pa(x), pb(y))). Such a rule
        # is implied by two smaller ones, so the enumeration leaves it out; it is derived here
        # (and proved and cross-checked like the rest) because the search reads this form.
        derived = _parallelisations(rules, table) + _reductions(e, table, inputs)
        kept = _new_candidates(derived, {erased(r.lhs, r.rhs) for r in rules}, inputs, table)
        stats["derived_candidates"] = len(kept)
        stats["candidates"] += len(kept)
        for lhs, rhs, shapes in kept:
            if time.perf_counter() > deadline:
                unproven.append((f"{fmt(lhs)} = {fmt(rhs)}", "not attempted: time limit"))
                continue
            generalised += _prove_into(prover, lhs, rhs, shapes, table, "parallelise", rules,
                                       unproven, rejected)
        conv = _conv_pass(k, table, prover, deadline, bar, rules, unproven, rejected)
        if conv:
            stats["conv"] = conv
            stats["candidates"] += conv["candidates"]
            generalised += conv.pop("generalised")
    stats["generalised_shapes"] = generalised
    stats["row_wise"] = sum(r.row_wise for r in rules)
    stats["by_kind"] = {kd: sum(r.kind == kd for r in rules) for kd in ("algebraic", "parallel", "mixed")}
    stats["unproven_by_kind"] = _by_kind(unproven, table)
    stats["verified"] = len(rules)
    stats["generation_s"] = round(time.perf_counter() - t0, 2)
    return Generation(k, rules, unproven, rejected, stats)


def _conv_pass(k: int, table: Mapping[str, OpSpec], prover: Prover, deadline: float, bar: "_Bar",
               rules: list[GeneratedRule], unproven: list, rejected: list) -> dict[str, Any]:
    """Enumerate the convolutions (specs.CONV_PASS over images and kernels, every term giving
    each tensor one role, see lift.py), prove the candidates that involve a convolution, derive
    their parallelisations like the main pass's, and append what is proven to `rules`.
    Returns the pass's statistics ({} without a conv spec)."""
    if "conv" not in table:
        return {}
    from dataclasses import replace

    from .enumerate import CONV_INPUTS
    from .lift import role_consistent, uses_conv
    from .specs import CONV_PASS
    ops = tuple(replace(table[n], enumerate=True) for n in CONV_PASS if n in table)
    task = bar.add("conv pass", None)
    e = enumerate_terms(k, ops, CONV_INPUTS, deadline=deadline, admit=role_consistent,
                        progress=lambda n, i, tot: bar.update(task, f"conv pass size {n}", i, tot))
    pairs = sum(uses_conv(t, members[0][0]) for members in e.classes.values()
                for t, _ in members[1:])
    cands, _ = candidates(e, CONV_INPUTS)
    forms = {erased(r.lhs, r.rhs) for r in rules}
    cands = [c for c in cands if uses_conv(c.lhs, c.rhs) and erased(c.lhs, c.rhs) not in forms]
    out = {"terms": e.terms, "classes": len(e.classes), "candidates": pairs,
           "after_pruning": len(cands), "verified": 0, "generalised": 0}
    if not e.complete:
        warnings.warn(f"k={k}: the conv pass passed the time limit at size {e.stopped_at}")
        out["stopped"] = f"enumeration at size {e.stopped_at}"
    first = len(rules)

    def attempt(lhs: Term, rhs: Term, shapes, name: str | None) -> None:
        if time.perf_counter() > deadline:
            unproven.append((f"{fmt(lhs)} = {fmt(rhs)}", "not attempted: time limit"))
            return
        n = len(rules)
        out["generalised"] += _prove_into(prover, lhs, rhs, shapes, table, name, rules,
                                          unproven, rejected)
        if len(rules) > n:
            forms.add(erased(lhs, rhs))

    for i, c in enumerate(cands):
        bar.update(task, "conv pass: proving", i, len(cands))
        attempt(c.lhs, c.rhs, c.shapes, None)
    derived = _parallelisations(rules[first:], table) + [
        d for d in _reductions(e, table, CONV_INPUTS) if uses_conv(d[0], d[1])]
    kept = _new_candidates(derived, set(forms), CONV_INPUTS, table)
    out["candidates"] += len(kept)
    out["derived_candidates"] = len(kept)
    for lhs, rhs, shapes in kept:
        attempt(lhs, rhs, shapes, "parallelise")
    out["verified"] = len(rules) - first
    return out


def _prove_into(prover: Prover, lhs: Term, rhs: Term, shapes: tuple[tuple[str, Shape], ...],
                table: Mapping[str, OpSpec], name: str | None, rules: list[GeneratedRule],
                unproven: list, rejected: list) -> bool:
    """Prove lhs = rhs (`_verify`) and record the outcome: a proven rule appended to `rules`
    (named by its kind, or `name` for a derived parallelisation, which is "mixed"), else the
    candidate in `unproven` (z3 gave up) or `rejected`. Whether the proof generalised the
    shapes."""
    status, general, why = _verify(prover, lhs, rhs, shapes, table)
    if status != "proven":
        (unproven if status == "unknown" else rejected).append((f"{fmt(lhs)} = {fmt(rhs)}", why))
        return False
    kind = kind_of(lhs, rhs, table) if name is None else "mixed"
    rules.append(GeneratedRule(f"gen_{name or kind}_{len(rules):04d}", kind, lhs, rhs, general,
                               row_wise(lhs, rhs, general, table)))
    return general != shapes


def _new_candidates(derived: list, forms: set, inputs: Mapping[str, Shape],
                    table: Mapping[str, OpSpec]) -> list[tuple[Term, Term, tuple]]:
    """The derived pairs worth proving, most general first: canonical, not already a form in
    `forms` (nor a generalisation of one), and with equal fingerprints. Adds their forms to
    `forms`."""
    pairs = [(*canonical_pair(lhs, rhs, inputs),) for lhs, rhs, _ in derived]
    pairs.sort(key=lambda p: (-len(variables(("pair",) + p)), repr(p)))
    kept = []
    for lhs, rhs in pairs:
        shapes = tuple((v, inputs[v]) for v in variables(("pair", lhs, rhs)))
        if erased(lhs, rhs) not in forms \
                and not any(g in forms for g in _generalisations(lhs, rhs)) \
                and _same_fingerprint(lhs, rhs, shapes, table):
            forms.add(erased(lhs, rhs))
            kept.append((lhs, rhs, shapes))
    return kept


def _verify(prover: Prover, lhs: Term, rhs: Term, shapes: tuple[tuple[str, Shape], ...],
            table) -> tuple[str, tuple[tuple[str, Shape], ...], str]:
    """(status, shapes, why): "proven" at the most general input shapes where that holds (see
    `generalise`; the fingerprint, z3 and the float32 cross-check all at those shapes), else at
    the enumeration's; or "unknown" (z3 gave up), "refuted" (z3 found a counter-model) or
    "rejected" (proven, but the float32 cross-check disagrees)."""
    general = generalise(lhs, rhs, shapes, table)
    if general != shapes and _same_fingerprint(lhs, rhs, general, table) \
            and prover.prove(lhs, rhs, dict(general)).status == "proven":
        shapes = general
    else:
        proof = prover.prove(lhs, rhs, dict(shapes))
        if proof.status != "proven":
            return proof.status, shapes, (f"z3: {proof.reason}" if proof.status == "unknown"
                                          else proof.reason)
    why = cross_check(lhs, rhs, dict(shapes), table)
    if why is not None:
        return "rejected", shapes, f"numerical cross-check: {why}"
    return "proven", shapes, ""


def generalise(lhs: Term, rhs: Term, shapes: tuple[tuple[str, Shape], ...],
               table) -> tuple[tuple[str, Shape], ...]:
    """The input shapes with each dim shared by two inputs given a symbol of its own wherever
    both sides still type-check to one shape. The enumeration gives all inputs of one group one
    shape (x, y, z: n.m), so a rule found over two of them, say act(concat1(v, w)) =
    concat1(act(v), act(w)), would otherwise hold (and be matched) only where they agree; stated
    with v: m.p, w: m.q it holds for a concat of inputs of any widths."""
    cur = dict(shapes)
    used = {d for s in cur.values() for i in (0, 1) for d in flat(s.dim(i))}
    fresh = [d for d in FRESH if d not in used]
    for v, _ in shapes:
        for i in (0, 1):
            count = sum(s.dim(j) == cur[v].dim(i) for s in cur.values() for j in (0, 1))
            if not fresh or count < 2 or cur[v].dim(i) == "1":
                continue
            trial = cur | {v: cur[v].with_dim(i, fresh[0])}
            if _type_checks(lhs, rhs, trial, table):
                cur = trial
                fresh.pop(0)
    return tuple((v, cur[v]) for v, _ in shapes)


def _type_checks(lhs: Term, rhs: Term, shapes: Mapping[str, Shape], table) -> bool:
    from .evaluate import infer
    a, b = infer(lhs, shapes, table), infer(rhs, shapes, table)
    return a is not None and b is not None and shape_key(a) == shape_key(b)


def row_wise(lhs: Term, rhs: Term, shapes: tuple[tuple[str, Shape], ...], table) -> bool:
    """Whether the rule also holds with softmax (row-wise over dim 1, not elementwise) for the
    opaque `act`: only rules of a Linear, its activation and elementwise sums/products qualify,
    whose proofs use of act's axioms only its fusion into a Linear (the others move it across
    data movement, absent here), which holds for softmax too; the float32 cross-check through
    the real softmax confirms it."""
    used = set(ops(lhs)) | set(ops(rhs))
    if not used & {"act", "linact"} or not used <= ROW_WISE_OPS:
        return False
    return cross_check(lhs, rhs, dict(shapes), with_activation(table, "softmax")) is None


def _parallelisations(rules: list[GeneratedRule], table) -> list[tuple[Term, Term, tuple]]:
    out = []
    for r in rules:
        for a, b in ((r.lhs, r.rhs), (r.rhs, r.lhs)):
            if (isinstance(b, str) or not b[0].startswith("part") or isinstance(b[1], str)
                    or table[b[1][0]].kind != "algebraic" or isinstance(a, str)
                    or table[a[0]].kind != "algebraic"):
                continue
            inner, wrapped = b[1], ("comb" + b[0][4:], a)
            if sum(1 for t in subterms(wrapped) if not isinstance(t, str)) > 4:
                continue
            out.append((inner, wrapped, r.shapes))
    return out


def _same_fingerprint(lhs: Term, rhs: Term, shapes, table) -> bool:
    rng = np.random.default_rng(7)
    env = {v: (random_value(s, rng), s) for v, s in shapes}
    a, b = evaluate(lhs, env, table), evaluate(rhs, env, table)
    return (a is not None and b is not None and shape_key(a[1]) == shape_key(b[1])
            and np.array_equal(a[0], b[0]))


def _reductions(e, table, inputs) -> list[tuple[Term, Term, tuple]]:
    """op(x, y) = red(op(pa(x), pb(y))) for every enumerated op on parallel inputs that leaves
    partial sums (a reduction parallelisation: Replicate/Partition -> op -> Reduce)."""
    def strip(t: Term) -> Term | None:
        if isinstance(t, str):
            return t
        return strip(t[1]) if table[t[0]].kind == "parallel" and t[0] != "red" else None

    out = []
    for members in e.classes.values():
        t = members[0][0]
        if isinstance(t, str) or table[t[0]].kind != "algebraic" or e.shapes[t].sum_degree != 2:
            continue
        args = [strip(a) for a in t[1:]]
        if None in args or all(isinstance(a, str) for a in t[1:]):
            continue
        inner = (t[0],) + tuple(args)
        vs = variables(("pair", inner, t))
        out.append((inner, ("red", t), tuple((v, inputs[v]) for v in vs)))
    out.sort(key=repr)
    return out


def _by_kind(items, table) -> dict[str, int]:
    out = {"algebraic": 0, "parallel": 0, "mixed": 0}
    for text, _ in items:
        left, _, right = text.partition(" = ")
        out[kind_of(parse(left)[0], parse(right)[0], table)] += 1
    return out


class _Bar:
    """A rich progress bar (or nothing)."""

    def __init__(self, on: bool) -> None:
        self.p = None
        if on:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn)
            self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), transient=False)

    def __enter__(self):
        if self.p:
            self.p.__enter__()
        return self

    def __exit__(self, *a):
        if self.p:
            self.p.__exit__(*a)

    def add(self, what: str, total):
        return self.p.add_task(what, total=total) if self.p else None

    def update(self, task, what: str, done: int, total: int) -> None:
        if self.p:
            self.p.update(task, description=what, completed=done, total=total)


# --- files ---------------------------------------------------------------------------------

def to_json(g: Generation) -> dict[str, Any]:
    return {"format": FORMAT, "version": 1, "k": g.k, "stats": g.stats | {"summary": g.summary()},
            "degree": "k (proved for every degree; enumerated with 2)",
            "rules": [{"name": r.name, "kind": r.kind, "lhs": fmt(r.lhs), "rhs": fmt(r.rhs),
                       "inputs": {v: shape_text(s) for v, s in r.shapes}}
                      | ({"row_wise": True} if r.row_wise else {}) for r in g.rules],
            "unproven": [{"rule": t, "why": w} for t, w in g.unproven],
            "rejected": [{"rule": t, "why": w} for t, w in g.rejected]}


def load_generated(source: str | Path | Mapping[str, Any],
                   specs: tuple[OpSpec, ...] = SPECS) -> list[GeneratedRule]:
    """The rules of a generated file (our format); a malformed file raises GeneratedFormatError
    naming the rule and the field."""
    if isinstance(source, Mapping):
        data = source
    else:
        try:
            data = json.loads(Path(source).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise GeneratedFormatError(f"{source}: cannot read a JSON rule file: {exc}") from None
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise GeneratedFormatError(f"not a generated rule file (field 'format' must be {FORMAT!r})")
    items = data.get("rules")
    if not isinstance(items, list):
        raise GeneratedFormatError("field 'rules' must be a list")
    table = by_name(specs)
    out = []
    for i, r in enumerate(items):
        where = f"rule #{i}" + (f" ({r.get('name')!r})" if isinstance(r, Mapping) else "")
        if not isinstance(r, Mapping):
            raise GeneratedFormatError(f"{where}: expected an object")
        for key in ("name", "kind", "lhs", "rhs", "inputs"):
            if key not in r:
                raise GeneratedFormatError(f"{where}: missing field {key!r}")
        if r["kind"] not in ("algebraic", "parallel", "mixed"):
            raise GeneratedFormatError(f"{where}.kind: {r['kind']!r} is not algebraic, parallel or mixed")
        try:
            lhs, rhs = parse(r["lhs"])[0], parse(r["rhs"])[0]
            shapes = tuple((v, parse_shape(s)) for v, s in r["inputs"].items())
        except (ValueError, AttributeError, TypeError) as exc:
            raise GeneratedFormatError(f"{where}: {exc}") from None
        for t in (lhs, rhs):
            for s in subterms(t):
                if not isinstance(s, str) and s[0] not in table:
                    raise GeneratedFormatError(f"{where}: unknown operator {s[0]!r}")
        for t in (lhs, rhs):
            for s in subterms(t):
                if isinstance(s, str) and s not in dict(shapes):
                    raise GeneratedFormatError(f"{where}: input {s!r} has no shape in 'inputs'")
        if not isinstance(r.get("row_wise", False), bool):
            raise GeneratedFormatError(f"{where}.row_wise: expected true or false")
        out.append(GeneratedRule(r["name"], r["kind"], lhs, rhs, shapes, r.get("row_wise", False)))
    return out


def to_taso(rules: list[GeneratedRule], specs: tuple[OpSpec, ...] = SPECS) -> dict[str, Any]:
    """The rules in the TASO/FlexFlow JSON format (rules whose side is a bare input, which the
    format cannot map, are left out)."""
    from .lift import roles, uses_conv
    table = by_name(specs)
    out = []
    for r in rules:
        if isinstance(r.lhs, str) or isinstance(r.rhs, str):
            continue
        ids = {v: -(i + 1) for i, v in enumerate(variables(("pair", r.lhs, r.rhs)))}
        # a rewrite goes one way: both ways where neither side brings in a new input
        ways = [(r.name, r.lhs, r.rhs)]
        if set(variables(r.lhs)) == set(variables(r.rhs)):
            ways.append((r.name + REVERSED, r.rhs, r.lhs))
        role = roles(r.lhs, r.rhs) if uses_conv(r.lhs, r.rhs) else None
        for name, lhs, rhs in ways:
            src, sroot = _taso_ops(lhs, ids, table, role)
            dst, droot = _taso_ops(rhs, ids, table, role)
            out.append({"_t": "Rule", "name": name, "srcOp": src, "dstOp": dst,
                        "mappedOutput": [{"_t": "MapOutput", "srcOpId": sroot[0],
                                          "srcTsId": sroot[1], "dstOpId": droot[0],
                                          "dstTsId": droot[1]}]})
    return {"_t": "RuleCollection", "rule": out}


def _taso_ops(t: Term, ids: dict[str, int], table, role=None) -> tuple[list, tuple[int, int]]:
    """`t` as TASO operators. In a conv rule (`role`: lift.roles) a concat or split of kernels
    names the axis of our Conv2D kernel (kh, kw, in, out) its 2-D dim stands for: 2 (input
    channels) or 3 (output channels); of images, as in the 2-D rules (the batch, or -1: the
    channels of channels_last images)."""
    from .lift import AXIS, KERNEL
    ops: list = []
    where: dict = {}

    def ref(s: Term) -> tuple[int, int]:
        if isinstance(s, str):
            return (ids[s], 0)
        spec = table[s[0]]
        if spec.name.startswith("split"):   # both halves of one split are one operator
            key = (spec.name[:6], s[1])
            out = 1 if spec.name.endswith("r") else 0
        else:
            key, out = s, 0
        if key not in where:
            ins = [ref(a) for a in s[1:]]
            typ, params = spec.taso
            if role is not None and role.get(s) == KERNEL and typ in ("OP_CONCAT", "OP_SPLIT"):
                axis = AXIS[KERNEL][int(spec.name[len("concat") if typ == "OP_CONCAT" else 5])]
                params = (("PM_AXIS", axis),) + params[1:]
            if typ == "OP_MATMUL_ACT" and _weight_like(s[2], table):
                typ, params = "OP_LINEAR", (("PM_ACTI", 2),)   # our opaque act is read as relu
            elif typ == "OP_MATMUL" and _weight_like(s[2], table):
                # a product with an input tensor (maybe through parallel ops): TASO's Linear,
                # whose weight is its second input
                typ, params = "OP_LINEAR", (("PM_ACTI", 0),)
            ops.append({"_t": "Operator", "type": typ,
                        "input": [{"_t": "Tensor", "opId": o, "tsId": x} for o, x in ins],
                        "para": [{"_t": "Parameter", "key": k, "value": v} for k, v in params]})
            where[key] = len(ops) - 1
        return (where[key], out)

    root = ref(t)
    return ops, root


def _weight_like(t: Term, table) -> bool:
    return isinstance(t, str) or (table[t[0]].kind == "parallel" and _weight_like(t[1], table))


def write(g: Generation, ours: Path = OURS_FILE, taso: Path = TASO_FILE) -> None:
    ours.write_text(json.dumps(to_json(g), indent=1) + "\n")
    taso.write_text(json.dumps(to_taso(g.rules), indent=1) + "\n")
