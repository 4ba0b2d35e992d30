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

def _graph_of(term, shapes, rng, fn="relu"):
    """A ComputationGraph computing `term` (a matmul by an input tensor is a Linear whose kernel
    is that tensor; the opaque activation is `fn`), its feeds and its weights; the term's dim 0
    is the batch."""
    from unity_legion.operators.activation import Activation
    from unity_legion.operators.concat import Concat
    from unity_legion.operators.elementwise import Add, Multiply
    from unity_legion.operators.linear import Linear
    from unity_legion.pcg.graph import ComputationGraph
    from unity_legion.substitutions.generator.terms import size

    from unity_legion.operators.conv2d import Conv2D
    from unity_legion.substitutions.generator.lift import HW, KERNEL, KHW, roles, uses_conv
    from unity_legion.types import DataType, TensorShape

    g = ComputationGraph()
    # a conv rule's images are (batch, H, W, channels), its kernels (kh, kw, in, out)
    role = roles(term) if uses_conv(term) else {}
    vals = {v: rng.standard_normal(
        (size(s.d0), size(s.d1)) if v not in role else
        (*KHW, size(s.d0), size(s.d1)) if role[v] == KERNEL else
        (size(s.d0), *HW, size(s.d1))) for v, s in shapes.items()}
    feeds, weights, env = {}, {}, {}

    def build(t):
        if isinstance(t, str):
            if t not in env:
                env[t] = g.add_input(TensorShape((None,) + vals[t].shape[1:], DataType.FLOAT64), t)
                feeds[env[t]] = vals[t]
            return env[t]
        if t in env:
            return env[t]
        if t[0] in ("conv", "convact"):
            assert isinstance(t[2], str)
            op = Conv2D(size(shapes[t[2]].d1), KHW, padding="same", use_bias=False,
                        activation=fn if t[0] == "convact" else "linear")
            ins = [build(t[1])]
            weights[(f"n{len(g.nodes)}", "kernel")] = vals[t[2]]
        elif t[0] in ("matmul", "linact"):
            assert isinstance(t[2], str)
            op = Linear(size(shapes[t[2]].d1), use_bias=False,
                        activation=fn if t[0] == "linact" else "linear")
            ins = [build(t[1])]
            weights[(f"n{len(g.nodes)}", "kernel")] = vals[t[2]]
        else:
            op = {"add": Add(), "mul": Multiply(), "act": Activation(fn),
                  "concat1": Concat(-1)}[t[0]]
            ins = [build(a) for a in t[1:]]
        name = f"n{len(g.nodes)}"
        env[t] = g.add_node(op, ins, name)[0]
        return env[t]

    root = build(term)
    return g, feeds, weights, root


def _run(g, feeds, weights, batch):
    import torch

    from unity_legion.testing.torch_twin import run_node
    shapes = g.bind_batch(batch)
    env = {t: torch.tensor(v) for t, v in feeds.items()}
    for n in g.nodes:
        xs = [env[t] for t in n.inputs]
        w = {ws.name: torch.tensor(weights[(n.name, ws.name)]) for ws in n.weights}
        env.update(zip(n.outputs, run_node(n.op, xs, w, False, [shapes[t] for t in n.inputs])))
    return {t: v.detach().numpy() for t, v in env.items()}


def test_every_generated_search_rule_rewrites_its_left_side_exactly():
    import numpy as np

    from unity_legion.substitutions import apply, find_matches

    ours = {r.name: r for r in load_generated(OURS_FILE)}
    rules = generated_rules()
    assert len(rules) >= 50
    rng = np.random.default_rng(0)
    for rule in rules:
        name, fn = _base_name(rule.name)
        rev = name.endswith("_rev")
        gen = ours[name[:-4] if rev else name]
        g, feeds, weights, root = _graph_of(gen.rhs if rev else gen.lhs, dict(gen.shapes), rng, fn)
        matches = find_matches(g, rule)
        assert matches, f"{rule.name} ({gen.text()}) does not match its own left side"
        rw = apply(g, rule, matches[0])
        batch = 2
        w_new = {k: src.materialize(lambda n, w: weights[(n, w)]) for k, src in rw.weight_map.items()}
        old = _run(g, feeds, weights, batch)
        new = _run(rw.graph, {rw.tensor_map[t]: v for t, v in feeds.items()}, w_new, batch)
        np.testing.assert_allclose(new[rw.tensor_map[root]], old[root], rtol=1e-9, atol=1e-9,
                                   err_msg=f"{rule.name}: {gen.text()}")


def _base_name(name):
    """(the generated rule's TASO name, the activation its opaque act stands for)."""
    for fn in ("tanh", "sigmoid", "gelu", "softmax"):
        if name.endswith("_" + fn):
            return name[:-len(fn) - 1], fn
    return name, "relu"


def _rewrite_and_compare(g, feeds, weights, root, rule, batch=3):
    import numpy as np

    from unity_legion.substitutions import apply, find_matches
    matches = find_matches(g, rule)
    assert matches, rule.name
    rw = apply(g, rule, matches[0])
    w_new = {k: src.materialize(lambda n, w: weights[(n, w)]) for k, src in rw.weight_map.items()}
    old = _run(g, feeds, weights, batch)
    new = _run(rw.graph, {rw.tensor_map[t]: v for t, v in feeds.items()}, w_new, batch)
    np.testing.assert_allclose(new[rw.tensor_map[root]], old[root], rtol=1e-9, atol=1e-9,
                               err_msg=rule.name)
    return rw


def test_generalised_shapes_let_a_rule_match_a_concat_of_different_widths():
    """The enumeration gives v and w one shape; the rule is proved (and shipped) with a width of
    its own for each, so it carries no equal-shape guard and matches Inception's concats of
    branches of different channel counts."""
    import numpy as np

    from unity_legion.operators.activation import Activation
    from unity_legion.operators.concat import Concat
    from unity_legion.pcg.graph import ComputationGraph
    from unity_legion.substitutions import find_matches
    from unity_legion.substitutions.generator.generate import generalise
    from unity_legion.types import DataType, TensorShape

    lhs, rhs = parse("concat1(act(v), act(w))")[0], parse("act(concat1(v, w))")[0]
    general = dict(generalise(lhs, rhs, (("v", MP), ("w", MP)), by_name()))
    assert general["v"].d1 != general["w"].d1 and general["v"].d0 == general["w"].d0
    shipped = {r.text(): dict(r.shapes) for r in load_generated(OURS_FILE)}
    assert shipped["concat1(act(v), act(w)) = act(concat1(v, w))"] == general

    rng = np.random.default_rng(3)
    hoisted = set()
    for fn in ("relu", "gelu"):
        g = ComputationGraph()
        a = g.add_input(TensorShape((None, 3), DataType.FLOAT64), "a")
        b = g.add_input(TensorShape((None, 5), DataType.FLOAT64), "b")
        ra = g.add_node(Activation(fn), [a], "ra")[0]
        rb = g.add_node(Activation(fn), [b], "rb")[0]
        root = g.add_node(Concat(-1), [ra, rb], "cat")[0]
        feeds = {a: rng.standard_normal((3, 3)), b: rng.standard_normal((3, 5))}
        for rule in generated_rules():
            if rule.pattern[-1].op_type == "concatenate" and find_matches(g, rule):
                rw = _rewrite_and_compare(g, feeds, {}, root, rule)
                assert len(rw.graph.nodes) < len(g.nodes)   # one activation after the concat
                hoisted.add(fn)
    assert hoisted == {"relu", "gelu"}


@pytest.mark.parametrize("fn", ["sigmoid", "gelu", "softmax"])
def test_generated_unfuse_matches_a_linear_with_any_fused_activation(fn):
    """The opaque activation stands for every elementwise one and, in a Linear's fusion, for
    softmax (row-wise: only rules checked through the real softmax get it), e.g. a classifier
    Dense(classes, softmax) unfused so its Linear can be split along the reduction."""
    import numpy as np

    from unity_legion.operators.linear import Linear
    from unity_legion.pcg.graph import ComputationGraph
    from unity_legion.substitutions import find_matches
    from unity_legion.types import DataType, TensorShape

    rng = np.random.default_rng(4)
    g = ComputationGraph()
    x = g.add_input(TensorShape((None, 6), DataType.FLOAT64), "x")
    root = g.add_node(Linear(4, use_bias=True, activation=fn), [x], "fc")[0]
    feeds = {x: rng.standard_normal((3, 6))}
    weights = {("fc", "kernel"): rng.standard_normal((6, 4)), ("fc", "bias"): rng.standard_normal(4)}
    unfused = []
    for rule in generated_rules():
        if len(rule.pattern) == 1 and find_matches(g, rule):
            rw = _rewrite_and_compare(g, feeds, weights, root, rule)
            ops = {n.op.op_type: n.op for n in rw.graph.nodes}
            if ops.get("activation") is not None:
                assert ops["activation"].fn == fn and ops["linear"].activation == "linear"
                unfused.append(rule.name)
    assert unfused, f"no generated rule unfuses a Linear with {fn}"


def test_softmax_stands_for_act_only_where_the_rule_holds_row_wise():
    from unity_legion.substitutions.generator.generate import row_wise
    from unity_legion.substitutions.generator.specs import with_activation

    table = by_name()
    fuse = (parse("act(matmul(u, x))")[0], parse("linact(u, x)")[0], (("u", logical("p", "n")), ("x", NM)))
    assert row_wise(*fuse, table)
    # softmax over a concat of columns is not the concat of the softmaxes: the check catches it
    lhs, rhs = parse("concat1(act(v), act(w))")[0], parse("act(concat1(v, w))")[0]
    shapes = {"v": MP, "w": logical("m", "q")}
    assert cross_check(lhs, rhs, shapes, table) is None
    assert cross_check(lhs, rhs, shapes, with_activation(table, "softmax")) is not None
    assert not row_wise(lhs, rhs, tuple(shapes.items()), table)
    rules = load_generated(OURS_FILE)
    assert any(r.row_wise for r in rules)
    assert not any(r.row_wise and {"concat1", "transpose", "split1l", "rsum1"} & set(
        op for t in (r.lhs, r.rhs) for op in _ops(t)) for r in rules)


def _ops(t):
    from unity_legion.substitutions.generator.terms import ops
    return ops(t)


# --- Conv2D: specs, proofs, 4-D cross-check, and the search's merge of convolutions ----------

IMG, KER = logical("n", "m"), logical("m", "p")


def test_conv_spec_axioms_self_check_and_a_wrong_conv_is_named():
    table = by_name()
    assert {"conv", "convact"} <= set(table) and len(table["conv"].axioms) >= 10
    check_specs()   # every conv axiom holds in the fingerprint's model
    conv = table["conv"]
    # associativity with matmul (a conv of a conv is no conv with the product kernel) is no law
    bad = dataclasses.replace(conv, axioms=conv.axioms + (
        "conv(conv(a:n.m, b:m.p), c:p.q) = conv(a, matmul(b, c))",))
    with pytest.raises(SpecError, match="operator 'conv'"):
        check_specs(tuple(bad if s.name == "conv" else s for s in SPECS))
    affine = dataclasses.replace(conv, ref=lambda v, s: (v[0] @ v[1] + 1) % 1_000_003)
    with pytest.raises(SpecError, match="operator 'conv'"):
        check_specs(tuple(affine if s.name == "conv" else s for s in SPECS))


MERGE = "concat1(conv(x, v), conv(x, w)) = conv(x, concat1(v, w))"
IN_CHANNELS = "add(conv(x, v), conv(y, w)) = conv(concat1(x, y), concat0(v, w))"


def test_generated_conv_rules_are_found_proven_and_cross_checked_on_4d_tensors(prover):
    from unity_legion.substitutions.generator.lift import cross_check_4d
    shipped = {r.text(): r for r in load_generated(OURS_FILE)}
    for text in (MERGE, IN_CHANNELS, "conv(x, v) = comb0(conv(part0(x), repl(v)))",
                 "conv(x, v) = comb1(conv(repl(x), part1(v)))",
                 "conv(x, v) = red(conv(part1(x), part0(v)))", "act(conv(x, v)) = convact(x, v)"):
        assert text in shipped, text
        r = shipped[text]
        assert _prove(prover, text, dict(r.shapes)) == "proven"
        assert cross_check(r.lhs, r.rhs, dict(r.shapes), by_name()) is None
    # the merged kernels are of their own widths (Inception's branches differ)
    assert dict(shipped[MERGE].shapes)["v"].d1 != dict(shipped[MERGE].shapes)["w"].d1
    table = by_name()
    false = [("conv(x, concat1(v, w)) = concat1(conv(x, w), conv(x, v))",
              {"x": IMG, "v": KER, "w": KER}),                 # kernels swapped
             ("conv(x, v) = matmul(x, v)", {"x": IMG, "v": KER}),   # a conv is no matmul
             ("act(conv(add(x, y), v)) = add(convact(x, v), convact(y, v))",
              {"x": IMG, "y": IMG, "v": KER})]
    for text, shapes in false:
        assert _prove(prover, text, shapes) != "proven", text
    lhs, rhs = parse(false[0][0].split(" = ")[0])[0], parse(false[0][0].split(" = ")[1])[0]
    assert "differ" in cross_check_4d(lhs, rhs, false[0][1], table)


def _conv_graph(geometry, filters=(4, 5), use_bias=True, shared=True):
    """Two Conv2D on one input (or on two inputs, summed) joined into a concat (an add)."""
    import numpy as np

    from unity_legion.operators.concat import Concat
    from unity_legion.operators.conv2d import Conv2D
    from unity_legion.operators.elementwise import Add
    from unity_legion.pcg.graph import ComputationGraph
    from unity_legion.types import DataType, TensorShape

    rng = np.random.default_rng(5)
    g = ComputationGraph()
    a = g.add_input(TensorShape((None, 7, 6, 3), DataType.FLOAT64), "a")
    b = a if shared else g.add_input(TensorShape((None, 7, 6, 3), DataType.FLOAT64), "b")
    feeds = {t: rng.standard_normal((2, 7, 6, 3)) for t in dict.fromkeys((a, b))}
    weights = {}
    outs = []
    for name, src, f, geo in zip(("c1", "c2"), (a, b), filters, geometry):
        op = Conv2D(f, use_bias=use_bias, **geo)
        outs.append(g.add_node(op, [src], name)[0])
        kh, kw = op.kernel_size
        weights[(name, "kernel")] = rng.standard_normal((kh, kw, 3, f))
        if use_bias:
            weights[(name, "bias")] = rng.standard_normal(f)
    root = g.add_node(Concat(-1) if shared else Add(), outs, "join")[0]
    return g, feeds, weights, root


def _rules_named(text):
    ours = {r.name: r.text() for r in load_generated(OURS_FILE)}
    return [r for r in generated_rules() if ours.get(r.name) == text]


@pytest.mark.parametrize("geo", [dict(kernel_size=3, padding="same"),
                                 dict(kernel_size=(3, 1), strides=2, padding="valid",
                                      dilation_rate=1)])
def test_generated_merge_of_convolutions_sharing_an_input_rewrites_a_keras_graph(geo):
    """Inception's branches: conv_a(x), conv_b(x) joined by a concat become one Conv2D with the
    kernels (and biases) concatenated along the output channels: the same numbers."""
    (rule,) = _rules_named(MERGE)
    g, feeds, weights, root = _conv_graph([geo, geo])
    rw = _rewrite_and_compare(g, feeds, weights, root, rule, batch=2)
    convs = [n for n in rw.graph.nodes if n.op.op_type == "conv2d"]
    assert len(convs) == 1 and convs[0].op.filters == 9 and convs[0].op.use_bias
    src = rw.weight_map[(convs[0].name, "kernel")]
    assert src.mode == "concat" and src.axis == 3
    assert src.leaves() == [("c1", "kernel"), ("c2", "kernel")]
    assert rw.weight_map[(convs[0].name, "bias")].axis == 0
    # convolutions of other window geometries are other functions: no match
    from unity_legion.substitutions import find_matches
    g2, *_ = _conv_graph([dict(kernel_size=3, padding="same"), dict(kernel_size=5, padding="same")])
    assert not find_matches(g2, rule)


def test_generated_input_channel_merge_of_convolutions_needs_no_bias():
    """conv(x, v) + conv(y, w) = conv(concat(x, y), [v; w]): the kernels join along their input
    channels (axis 2); biases would add up, so only convolutions without one match."""
    from unity_legion.substitutions import find_matches
    (rule,) = _rules_named(IN_CHANNELS)
    geo = dict(kernel_size=3, padding="same")
    g, feeds, weights, root = _conv_graph([geo, geo], (4, 4), use_bias=False, shared=False)
    rw = _rewrite_and_compare(g, feeds, weights, root, rule, batch=2)
    (conv,) = [n for n in rw.graph.nodes if n.op.op_type == "conv2d"]
    assert rw.weight_map[(conv.name, "kernel")].axis == 2
    g2, *_ = _conv_graph([geo, geo], (4, 4), use_bias=True, shared=False)
    assert not find_matches(g2, rule)
