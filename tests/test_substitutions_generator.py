"""The substitution generator: specs, z3 proofs, determinism, the shipped rule file, the script.
Pure Python (z3 + numpy): no Legate."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from unity_legion.substitutions import Rule, load_rules
from unity_legion.substitutions.generator import (OURS_FILE, SPECS, TASO_FILE, GeneratedFormatError,
                                                  Prover, SpecError, check_specs, cross_check,
                                                  generate, generated_rules, load_generated, to_taso)
from unity_legion.substitutions.generator.specs import by_name
from unity_legion.substitutions.generator.terms import logical, parse

ROOT = Path(__file__).resolve().parent.parent
NM, MP, NN = logical("n", "m"), logical("m", "p"), logical("n", "n")


@pytest.fixture(scope="module")
def prover():
    return Prover(timeout_ms=1000)


def _prove(prover, text, shapes):
    left, _, right = text.partition(" = ")
    return prover.prove(parse(left)[0], parse(right)[0], shapes).status


@pytest.mark.parametrize("text,shapes", [
    ("matmul(x, add(w, v)) = add(matmul(x, w), matmul(x, v))", {"x": NM, "w": MP, "v": MP}),
    ("transpose(matmul(x, w)) = matmul(transpose(w), transpose(x))", {"x": NM, "w": MP}),
    ("comb0(matmul(part0(x), repl(w))) = matmul(x, w)", {"x": NM, "w": MP}),
    ("red(matmul(part1(x), part0(w))) = matmul(x, w)", {"x": NM, "w": MP}),
    ("act(concat1(x, y)) = concat1(act(x), act(y))", {"x": NM, "y": NM}),
])
def test_prover_proves_true_rules(prover, text, shapes):
    assert _prove(prover, text, shapes) == "proven"


@pytest.mark.parametrize("text,shapes", [
    ("matmul(x, y) = matmul(y, x)", {"x": NN, "y": NN}),          # swapped matmul operands
    ("act(add(x, y)) = add(act(x), act(y))", {"x": NM, "y": NM}),  # an activation is not linear
    ("comb0(part1(x)) = x", {"x": NM}),                           # inverse on the wrong dim
])
def test_prover_refuses_false_rules(prover, text, shapes):
    assert _prove(prover, text, shapes) != "proven"


def test_specs_are_consistent_and_a_contradiction_names_the_operator():
    assert check_specs() > 100
    bad = by_name()["mul"]
    broken = dataclasses.replace(bad, axioms=bad.axioms + ("mul(a:n.m, b:n.m) = add(a, b)",))
    specs = tuple(broken if s.name == "mul" else s for s in SPECS)
    with pytest.raises(SpecError, match="operator 'mul'"):
        check_specs(specs)
    wrong_ref = dataclasses.replace(by_name()["transpose"], ref=lambda v, s: v[0].T[::-1].copy())
    specs = tuple(wrong_ref if s.name == "transpose" else s for s in SPECS)
    with pytest.raises(SpecError, match="operator 'transpose'"):
        check_specs(specs)


def test_generation_k2_is_deterministic_and_all_kept_rules_check():
    a, b = generate(2, timeout_ms=500), generate(2, timeout_ms=500)
    assert [r.text() for r in a.rules] == [r.text() for r in b.rules]
    assert a.unproven == b.unproven and a.rejected == b.rejected
    assert len(a.rules) > 40 and not a.rejected
    kinds = {r.kind for r in a.rules}
    assert {"algebraic", "parallel", "mixed"} <= kinds
    assert json.dumps(a.summary())


def test_k_too_large_for_the_time_limit_warns_and_stops():
    with pytest.warns(UserWarning, match="limit"):
        g = generate(5, time_limit=1.0)
    assert "stopped" in g.stats


def test_shipped_file_loads_and_every_rule_cross_checks():
    rules = load_generated(OURS_FILE)
    assert len(rules) >= 200
    data = json.loads(OURS_FILE.read_text())
    assert data["stats"]["summary"]["verified"] == len(rules)
    table = by_name()
    for r in rules:
        assert cross_check(r.lhs, r.rhs, dict(r.shapes), table) is None, r.text()
    # the TASO/FlexFlow file is loadable by the search's loader, and matches our file
    assert json.loads(TASO_FILE.read_text()) == to_taso(rules)
    res = load_rules(TASO_FILE)
    assert len(res.rules) + len(res.parallel_rules) + len(res.skipped) == len(to_taso(rules)["rule"])
    assert any(r.name.endswith("_rev") for r in res.rules)   # rules go both ways where they can
    assert all(isinstance(r, Rule) for r in generated_rules())


def test_malformed_rule_file_is_a_clear_error(tmp_path):
    with pytest.raises(GeneratedFormatError, match="format"):
        load_generated({"rules": []})
    good = json.loads(OURS_FILE.read_text())
    bad = dict(good, rules=[dict(good["rules"][0], lhs="frobnicate(x)")])
    with pytest.raises(GeneratedFormatError, match="unknown operator 'frobnicate'"):
        load_generated(bad)
    bad = dict(good, rules=[{k: v for k, v in good["rules"][0].items() if k != "rhs"}])
    with pytest.raises(GeneratedFormatError, match="missing field 'rhs'"):
        load_generated(bad)
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(GeneratedFormatError, match="JSON"):
        load_generated(p)


def test_script_regenerates_the_shipped_files_and_prints_the_statistics_line(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts/generate_substitutions.py"), "--k", "3",
                        "--out", str(tmp_path), "--no-progress"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(last) == {"candidates", "verified", "rejected", "unproven", "generation_s"}
    assert last["verified"] >= 200 and last["rejected"] == 0
    new, shipped = (json.loads(p.read_text()) for p in (tmp_path / OURS_FILE.name, OURS_FILE))
    assert new["rules"] == shipped["rules"] and new["unproven"] == shipped["unproven"]
    assert (tmp_path / TASO_FILE.name).read_text() == TASO_FILE.read_text()


# --- the search's view: every generated Rule rewrites a real graph of its left side exactly ---

def _graph_of(term, shapes, rng):
    """A ComputationGraph computing `term` (a matmul by an input tensor is a Linear whose kernel
    is that tensor), its feeds and its weights; the term's dim 0 is the batch."""
    from unity_legion.operators.activation import Activation
    from unity_legion.operators.concat import Concat
    from unity_legion.operators.elementwise import Add, Multiply
    from unity_legion.operators.linear import Linear
    from unity_legion.pcg.graph import ComputationGraph
    from unity_legion.pcg.tensor import DataType, TensorShape
    from unity_legion.substitutions.generator.terms import size

    g = ComputationGraph()
    vals = {v: rng.standard_normal((size(s[0]), size(s[1]))) for v, s in shapes.items()}
    feeds, weights, env = {}, {}, {}

    def build(t):
        if isinstance(t, str):
            if t not in env:
                env[t] = g.add_input(TensorShape((None, size(shapes[t][1])), DataType.FLOAT64), t)
                feeds[env[t]] = vals[t]
            return env[t]
        if t in env:
            return env[t]
        if t[0] in ("matmul", "linact"):
            assert isinstance(t[2], str)
            op = Linear(size(shapes[t[2]][1]), use_bias=False,
                        activation="relu" if t[0] == "linact" else "linear")
            ins = [build(t[1])]
            weights[(f"n{len(g.nodes)}", "kernel")] = vals[t[2]]
        else:
            op = {"add": Add(), "mul": Multiply(), "act": Activation("relu"),
                  "concat1": Concat(-1)}[t[0]]
            ins = [build(a) for a in t[1:]]
        name = f"n{len(g.nodes)}"
        env[t] = g.add_node(op, ins, name)[0]
        return env[t]

    root = build(term)
    return g, feeds, weights, root


def _run(g, feeds, weights, batch):
    import torch
    sys.path.insert(0, str(ROOT / "scripts"))
    from torch_twin import REGISTRY
    shapes = g.bind_batch(batch)
    env = {t: torch.tensor(v) for t, v in feeds.items()}
    for n in g.nodes:
        xs = [env[t] for t in n.inputs]
        w = {ws.name: torch.tensor(weights[(n.name, ws.name)]) for ws in n.weights}
        env.update(zip(n.outputs, REGISTRY[n.op.op_type](n.op, xs, w, False,
                                                          [shapes[t] for t in n.inputs])))
    return {t: v.detach().numpy() for t, v in env.items()}


def test_every_generated_search_rule_rewrites_its_left_side_exactly():
    import numpy as np

    from unity_legion.substitutions import apply, find_matches

    ours = {r.name: r for r in load_generated(OURS_FILE)}
    rules = generated_rules()
    assert len(rules) >= 50
    rng = np.random.default_rng(0)
    for rule in rules:
        rev = rule.name.endswith("_rev")
        gen = ours[rule.name[:-4] if rev else rule.name]
        g, feeds, weights, root = _graph_of(gen.rhs if rev else gen.lhs, dict(gen.shapes), rng)
        matches = find_matches(g, rule)
        assert matches, f"{rule.name} ({gen.text()}) does not match its own left side"
        rw = apply(g, rule, matches[0])
        batch = 2
        w_new = {k: src.materialize(lambda n, w: weights[(n, w)]) for k, src in rw.weight_map.items()}
        old = _run(g, feeds, weights, batch)
        new = _run(rw.graph, {rw.tensor_map[t]: v for t, v in feeds.items()}, w_new, batch)
        np.testing.assert_allclose(new[rw.tensor_map[root]], old[root], rtol=1e-9, atol=1e-9,
                                   err_msg=f"{rule.name}: {gen.text()}")
