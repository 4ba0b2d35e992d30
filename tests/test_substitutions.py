"""Graph substitutions: every built-in algebraic rule is applied to a small random graph that it
matches, and both graphs are run (PyTorch, float64) on the same random inputs, the new graph's
weights made through the rewrite's weight_map from the old graph's. Plus the matcher, the
rejects, replay and the TASO loader. Pure Python: no Legate."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unity_legion.operators.activation import Activation
from unity_legion.operators.concat import Concat
from unity_legion.operators.conv2d import Conv2D
from unity_legion.operators.dropout import Dropout
from unity_legion.operators.elementwise import Add, Multiply, Subtract
from unity_legion.operators.linear import Linear
from unity_legion.operators.permute import Identity, Permute
from unity_legion.operators.reshape import Flatten, Reshape
from unity_legion.operators.split import Split
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.substitutions import (AppliedRule, Copy, In, New, OpPattern, OpTemplate, Out,
                                        Rule, SubstitutionError, TasoFormatError, WeightSource,
                                        all_matches, apply, builtin_rules, families, find_matches, load_rules,
                                        replay)
from unity_legion.testing.torch_twin import run_node
from unity_legion.types import DataType, TensorShape

EXAMPLE = Path(__file__).resolve().parent.parent / "unity_legion/substitutions/data/example_rules.json"
RULES = {r.name: r for r in builtin_rules()}
F64 = DataType.FLOAT64
BATCH = 3


# --- a float64 PyTorch run of a ComputationGraph ------------------------------------------------

def run_graph(g: ComputationGraph, feeds: dict[int, np.ndarray],
              weights: dict[tuple[str, str], np.ndarray]) -> dict[int, np.ndarray]:
    shapes = g.bind_batch(BATCH)
    env = {t: torch.tensor(v) for t, v in feeds.items()}
    for n in g.nodes:
        w = {ws.name: torch.tensor(weights[(n.name, ws.name)]) for ws in n.weights}
        outs = run_node(n.op, [env[t] for t in n.inputs], w, False, [shapes[t] for t in n.inputs])
        env.update(zip(n.outputs, outs))
    return {t: v.detach().numpy() for t, v in env.items()}


def random_weights(g: ComputationGraph, rng) -> dict[tuple[str, str], np.ndarray]:
    return {(n.name, w.name): rng.normal(size=w.shape.dims) for n in g.nodes for w in n.weights}


def check_equivalent(g: ComputationGraph, rw, seed: int = 0) -> None:
    """Both graphs agree on every tensor that survives the rewrite."""
    rng = np.random.default_rng(seed)
    feeds = {t: rng.normal(size=g.tensors[t].shape.with_batch(BATCH).dims) for t in g.inputs}
    w_old = random_weights(g, rng)
    w_new = {k: src.materialize(lambda n, w: w_old[(n, w)]) for k, src in rw.weight_map.items()}
    for n in rw.graph.nodes:  # every weight of the new graph has a source of the right shape
        for ws in n.weights:
            assert w_new[(n.name, ws.name)].shape == ws.shape.dims, (n.name, ws.name)
    old = run_graph(g, feeds, w_old)
    new = run_graph(rw.graph, {rw.tensor_map[t]: v for t, v in feeds.items()}, w_new)
    sinks = {t for n in g.nodes for t in n.outputs} - {t for n in g.nodes for t in n.inputs}
    assert sinks <= set(rw.tensor_map), "a model output did not survive"
    for t, nt in rw.tensor_map.items():
        np.testing.assert_allclose(new[nt], old[t], rtol=1e-5, atol=1e-8,
                                   err_msg=f"tensor {g.tensors[t].name}")


# --- small graphs, one (or more) per rule -------------------------------------------------------

class G:
    """A terse graph builder (float64, batch unknown)."""

    def __init__(self) -> None:
        self.g = ComputationGraph()

    def x(self, *dims: int, name: str | None = None) -> int:
        return self.g.add_input(TensorShape((None,) + dims, F64), name or f"in{len(self.g.inputs)}")

    def __call__(self, op, *inputs: int, name: str | None = None):
        outs = self.g.add_node(op, list(inputs), name or f"n{len(self.g.nodes)}")
        return outs[0] if len(outs) == 1 else outs


def _fuse(op_type: str, fn: str) -> ComputationGraph:
    b = G()
    if op_type == "linear":
        y = b(Linear(5), b.x(4), name="dense")
    else:
        y = b(Conv2D(3, 3), b.x(6, 6, 2), name="conv")
    b(Activation(fn), y, name="act")
    return b.g


def _unfuse(op_type: str) -> ComputationGraph:
    b = G()
    if op_type == "linear":
        b(Activation("relu"), b(Linear(5, activation="tanh"), b.x(4), name="dense"))
    else:
        b(Conv2D(3, 3, activation="gelu"), b.x(6, 6, 2), name="conv")
    return b.g


def _g_merge_shared() -> ComputationGraph:
    b = G()
    x = b.x(4)
    a = b(Linear(3, activation="relu"), x, name="a")
    b(Linear(5, activation="relu"), x, name="b")
    b(Activation("tanh"), a, name="after_a")
    return b.g


def _g_split_output() -> ComputationGraph:
    b = G()
    s0, s1 = b(Split((3, 4), -1), b(Linear(7, activation="sigmoid"), b.x(2, 4), name="lin"))
    b(Activation("relu"), s1)
    return b.g


def _g_merge_add(bias_b: bool = True) -> ComputationGraph:
    b = G()
    b(Add(), b(Linear(5), b.x(4), name="a"), b(Linear(5, use_bias=bias_b), b.x(6), name="b"))
    return b.g


def _g_split_input() -> ComputationGraph:
    b = G()
    b(Linear(5), b(Concat(-1), b.x(4), b.x(6)), name="lin")
    return b.g


def _g_chain(*ops, dims=(2, 6)) -> ComputationGraph:
    b = G()
    t = b.x(*dims)
    for op in ops:
        t = b(op, t)
    return b.g


def _g_concat_act(fn: str) -> ComputationGraph:
    b = G()
    b(Activation(fn), b(Concat(-1), b.x(2, 3), b.x(2, 5)))
    return b.g


def _g_act_concat() -> ComputationGraph:
    b = G()
    b(Concat(1), b(Activation("sigmoid"), b.x(2, 3)), b(Activation("sigmoid"), b.x(4, 3)))
    return b.g


def _g_split_acts() -> ComputationGraph:
    b = G()
    s0, s1 = b(Split(2, -1), b.x(6))
    b(Activation("tanh"), s0)
    b(Activation("tanh"), s1)
    return b.g


def _g_split_concat() -> ComputationGraph:
    b = G()
    s0, s1 = b(Split((2, 4), -1), b.x(3, 6))
    b(Activation("relu"), b(Concat(-1), s0, s1))
    return b.g


def _g_concat_split() -> ComputationGraph:
    b = G()
    s0, s1 = b(Split((2, 4), 1), b(Concat(1), b.x(2, 3), b.x(4, 3)))
    b(Activation("relu"), s0)
    b(Activation("gelu"), s1)
    return b.g


def _g_concat_concat(left: bool) -> ComputationGraph:
    b = G()
    x, y, z = b.x(2), b.x(3), b.x(4)
    if left:
        b(Concat(-1), b(Concat(1), x, y), z)
    else:
        b(Concat(1), x, b(Concat(-1), y, z))
    return b.g


def _g_ew_concats(op) -> ComputationGraph:
    b = G()
    b(op, b(Concat(-1), b.x(2, 3), b.x(2, 4)), b(Concat(-1), b.x(2, 3), b.x(2, 4)))
    return b.g


CASES = {
    **{f"fuse_{t}_{fn}": (lambda t=t, fn=fn: _fuse(t, fn))
       for t in ("linear", "conv2d") for fn in ("relu", "tanh", "sigmoid", "gelu", "softmax")
       if (t, fn) != ("conv2d", "softmax")},
    "unfuse_linear_activation": lambda: _unfuse("linear"),
    "unfuse_conv2d_activation": lambda: _unfuse("conv2d"),
    "merge_linears_shared_input": _g_merge_shared,
    "split_linear_output": _g_split_output,
    "merge_linears_into_add": _g_merge_add,
    "split_linear_input": _g_split_input,
    "remove_identity": lambda: _g_chain(Linear(3), Identity(), Activation("relu")),
    "remove_linear_activation": lambda: _g_chain(Activation("linear"), Activation("tanh")),
    "remove_zero_dropout": lambda: _g_chain(Dropout(0.0), Activation("tanh")),
    "remove_noop_reshape": lambda: _g_chain(Reshape((2, 6)), Activation("relu")),
    "relu_relu": lambda: _g_chain(Activation("relu"), Activation("relu")),
    "linear_relu_relu": lambda: _g_chain(Linear(4, activation="relu"), Activation("relu")),
    "activation_before_concat": lambda: _g_concat_act("gelu"),
    "activation_after_concat": _g_act_concat,
    "activation_after_split": lambda: _g_chain(Activation("sigmoid"), Split(2, -1), dims=(6,)),
    "activation_before_split": _g_split_acts,
    "split_then_concat": _g_split_concat,
    "concat_then_split": _g_concat_split,
    "concat_of_concat_left": lambda: _g_concat_concat(True),
    "concat_of_concat_right": lambda: _g_concat_concat(False),
    "permute_permute": lambda: _g_chain(Permute((2, 3, 1)), Permute((2, 3, 1)), dims=(2, 3, 4)),
    "permute_inverse": lambda: _g_chain(Permute((2, 3, 1)), Permute((3, 1, 2)), Activation("relu"),
                                        dims=(2, 3, 4)),
    "reshape_reshape": lambda: _g_chain(Reshape((3, 4)), Reshape((12,)), dims=(2, 6)),
    "flatten_reshape": lambda: _g_chain(Flatten(), Reshape((4, 3)), dims=(2, 6)),
    "reshape_flatten": lambda: _g_chain(Reshape((3, 4)), Flatten(), dims=(12,)),
    "flatten_flatten": lambda: _g_chain(Flatten(), Flatten(), dims=(2, 6)),
    "activation_before_permute": lambda: _g_chain(Permute((2, 1)), Activation("tanh"), dims=(2, 3)),
    "activation_after_permute": lambda: _g_chain(Activation("tanh"), Permute((2, 1)), dims=(2, 3)),
    "activation_before_reshape": lambda: _g_chain(Reshape((3, 4)), Activation("gelu")),
    "activation_after_reshape": lambda: _g_chain(Activation("gelu"), Reshape((3, 4))),
    "activation_before_flatten": lambda: _g_chain(Flatten(), Activation("sigmoid")),
    "activation_after_flatten": lambda: _g_chain(Activation("sigmoid"), Flatten()),
    "add_of_concats": lambda: _g_ew_concats(Add()),
    "subtract_of_concats": lambda: _g_ew_concats(Subtract()),
    "multiply_of_concats": lambda: _g_ew_concats(Multiply()),
}


def test_library_size_and_every_rule_has_a_case():
    fams = families()
    assert len(fams) >= 20, sorted(fams)
    assert set(CASES) == set(RULES), set(RULES) ^ set(CASES)
    assert all(r.kind == "algebraic" for r in RULES.values())


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_is_exact(name):
    rule, g = RULES[name], CASES[name]()
    before = copy.deepcopy((g.nodes, g.tensors, g.inputs))
    matches = find_matches(g, rule)
    assert len(matches) == 1, matches
    rw = apply(g, rule, matches[0])
    assert (g.nodes, g.tensors, g.inputs) == before, "apply changed the old graph"
    assert rw.applied == AppliedRule(name, tuple(g.nodes[i].name for i in matches[0].node_ids()))
    # untouched nodes keep their names
    touched = set(matches[0].node_ids())
    new_names = {n.name for n in rw.graph.nodes}
    assert {n.name for n in g.nodes if n.id not in touched} <= new_names
    check_equivalent(g, rw)


def test_rewrite_is_deterministic():
    g = _g_merge_shared()
    rule = RULES["merge_linears_shared_input"]
    a = apply(g, rule, find_matches(g, rule)[0])
    b = apply(g, rule, find_matches(g, rule)[0])
    assert [(n.name, n.op) for n in a.graph.nodes] == [(n.name, n.op) for n in b.graph.nodes]
    assert a.tensor_map == b.tensor_map and a.weight_map == b.weight_map
    assert [n.name for n in a.graph.nodes] == ["a+b.lin", "a+b.split", "after_a"]


@pytest.mark.parametrize("bias_b", [False, True])
def test_merge_linears_into_add_bias(bias_b):
    g = _g_merge_add(bias_b)
    rule = RULES["merge_linears_into_add"]
    rw = apply(g, rule, find_matches(g, rule)[0])
    assert rw.graph.nodes[-1].op.use_bias
    check_equivalent(g, rw)


def test_fuse_unfuse_round_trip_keeps_the_linear_name():
    g = _fuse("linear", "relu")
    rw = apply(g, RULES["fuse_linear_relu"], find_matches(g, RULES["fuse_linear_relu"])[0])
    assert [n.name for n in rw.graph.nodes] == ["dense"]
    assert rw.weight_map[("dense", "kernel")] == WeightSource.identity("dense", "kernel")
    back = apply(rw.graph, RULES["unfuse_linear_activation"],
                 find_matches(rw.graph, RULES["unfuse_linear_activation"])[0])
    assert [n.op.op_type for n in back.graph.nodes] == ["linear", "activation"]
    assert back.graph.nodes[0].name == "dense"


# --- the matcher -------------------------------------------------------------------------------

def test_no_match_when_an_internal_tensor_escapes():
    b = G()
    y = b(Linear(5), b.x(4), name="dense")
    b(Activation("relu"), y, name="act")
    b(Activation("tanh"), y, name="other")  # the Linear's output is also read outside
    assert find_matches(b.g, RULES["fuse_linear_relu"]) == []
    # a model output inside the pattern escapes too
    b2 = G()
    y2 = b2(Linear(5), b2.x(4))
    b2(Activation("relu"), y2)
    assert find_matches(b2.g, RULES["fuse_linear_relu"], outputs=[y2]) == []
    assert len(find_matches(b2.g, RULES["fuse_linear_relu"])) == 1


def test_escape_allowed_for_a_mapped_output():
    g = _g_merge_shared()  # the output of "a" is read by after_a: mapped to split:0, fine
    assert len(find_matches(g, RULES["merge_linears_shared_input"])) == 1


def test_every_match_is_found_in_order():
    b = G()
    x = b.x(4)
    for i in range(3):
        b(Linear(2 + i), x, name=f"d{i}")
    ms = find_matches(b.g, RULES["merge_linears_shared_input"])
    assert [m.node_ids() for m in ms] == [(0, 1), (0, 2), (1, 2)]  # symmetric pairs once
    g = _g_chain(*[Activation("relu")] * 4)
    assert [m.node_ids() for m in find_matches(g, RULES["relu_relu"])] == [(0, 1), (1, 2), (2, 3)]


def test_attribute_constraints_and_predicates_filter():
    assert find_matches(_g_chain(Linear(3, activation="tanh"), Activation("relu")),
                        RULES["fuse_linear_relu"]) == []  # already fused
    assert find_matches(_g_chain(Activation("softmax"), Reshape((3, 4))),
                        RULES["activation_after_reshape"]) == []  # softmax is not elementwise
    b = G()
    s0, s1 = b(Split((2, 4), -1), b.x(3, 6))
    b(Concat(-1), s1, s0)  # wrong order: not the identity
    assert find_matches(b.g, RULES["split_then_concat"]) == []
    b = G()
    s0, s1 = b(Split((2, 4), 1), b(Concat(1), b.x(3, 3), b.x(3, 3)))
    b(Add(), s0, s0)
    assert find_matches(b.g, RULES["concat_then_split"]) == []  # cut not at the seam


# --- rejects -----------------------------------------------------------------------------------

def _rule(name, pattern, replacement, outputs):
    return Rule(name, "test", "algebraic", tuple(pattern), tuple(replacement), tuple(outputs))


def test_shape_error_rejects_the_rewrite():
    bad = _rule("relu_to_flatten", [OpPattern("r", "activation", (In(0),))],
                [OpTemplate("f", New("flatten"), (In(0),))], [(Out("r"), Out("f"))])
    g = _g_chain(Activation("relu"), Activation("tanh"), dims=(2, 6))
    with pytest.raises(SubstitutionError, match="shape"):
        apply(g, bad, find_matches(g, bad)[0])
    batch_concat = _rule("add_to_batch_concat", [OpPattern("a", "add", (In(0), In(1)))],
                         [OpTemplate("c", New("concatenate", (("axis", 0),)), (In(0), In(1)))],
                         [(Out("a"), Out("c"))])
    b = G()
    b(Add(), b.x(3), b.x(3))
    with pytest.raises(SubstitutionError, match="batch axis"):
        apply(b.g, batch_concat, find_matches(b.g, batch_concat)[0])


def test_cycle_rejects_the_rewrite():
    merge = _rule("merge_two_relus", [OpPattern("a", "activation", (In(0),)),
                                      OpPattern("b", "activation", (In(1),))],
                  [OpTemplate("ab", New("add"), (In(0), In(1)))],
                  [(Out("a"), Out("ab")), (Out("b"), Out("ab"))])
    b = G()
    ra = b(Activation("relu"), b.x(3), name="ra")
    mid = b(Activation("tanh"), ra, name="mid")      # b's input depends on a's output
    b(Activation("relu"), mid, name="rb")
    m = [m for m in find_matches(b.g, merge) if m.node_ids() == (0, 2)]
    with pytest.raises(SubstitutionError, match="cycle"):
        apply(b.g, merge, m[0])


def test_malformed_rules_are_rejected():
    with pytest.raises(SubstitutionError, match="not an earlier op"):
        _rule("bad", [OpPattern("a", "activation", (Out("b"),))], [], [])
    with pytest.raises(SubstitutionError, match="copies"):
        _rule("bad", [OpPattern("a", "activation", (In(0),))],
              [OpTemplate("c", Copy("zz"), (In(0),))], [(Out("a"), Out("c"))])
    with pytest.raises(SubstitutionError, match="numbered"):
        _rule("bad", [OpPattern("a", "activation", (In(1),))], [], [(Out("a"), In(1))])


def test_stale_match_is_rejected():
    g = _fuse("linear", "relu")
    m = find_matches(g, RULES["fuse_linear_relu"])[0]
    with pytest.raises(SubstitutionError):
        apply(g, RULES["relu_relu"], m)
    other = _g_chain(Activation("relu"), Activation("relu"))
    with pytest.raises(SubstitutionError, match="not a linear"):
        apply(other, RULES["fuse_linear_relu"], m)


# --- replay ------------------------------------------------------------------------------------

def _model() -> ComputationGraph:
    b = G()
    x = b.x(4)
    h1 = b(Linear(3, activation="relu"), x, name="h1")
    h2 = b(Linear(5, activation="relu"), x, name="h2")
    c = b(Concat(-1), h1, h2, name="cat")
    b(Linear(2), c, name="head")
    return b.g


def _step(g, name, pick=0):
    return apply(g, RULES[name], find_matches(g, RULES[name])[pick])


def test_replay_composes_maps_and_matches_stepwise():
    g = _model()
    s1 = _step(g, "unfuse_linear_activation")             # h1 -> h1 + relu
    s2 = _step(s1.graph, "split_linear_input")            # head(concat) -> head_a + head_b
    history = list(s1.history + s2.history)
    rp = replay(g, history)
    assert [(n.name, n.op) for n in rp.graph.nodes] == [(n.name, n.op) for n in s2.graph.nodes]
    assert rp.history == tuple(history)
    check_equivalent(g, rp)
    # a recorded list survives JSON
    again = replay(g, [AppliedRule.from_dict(json.loads(json.dumps(a.as_dict()))) for a in history])
    assert again.weight_map == rp.weight_map


def test_replay_of_merge_then_split_back():
    g = _g_merge_shared()
    s1 = _step(g, "merge_linears_shared_input")
    s2 = _step(s1.graph, "split_linear_output")
    rp = replay(g, list(s1.history + s2.history))
    check_equivalent(g, rp)
    src = rp.weight_map[("a+b.lin", "kernel")]
    assert src.mode == "slice" and src.leaves() == [("a", "kernel"), ("b", "kernel")]


def test_replay_error_names_the_step():
    g = _model()
    with pytest.raises(SubstitutionError, match="step 0.*no longer matches"):
        replay(g, [AppliedRule("fuse_linear_relu", ("h1", "cat"))])
    with pytest.raises(SubstitutionError, match="unknown rule"):
        replay(g, [AppliedRule("nope", ("h1",))])
    with pytest.raises(SubstitutionError, match="step 1.*no node named"):
        replay(g, [AppliedRule("unfuse_linear_activation", ("h1",)),
                   AppliedRule("unfuse_linear_activation", ("zz",))])


# --- the TASO / FlexFlow JSON format ------------------------------------------------------------

def test_taso_example_file_loads():
    res = load_rules(EXAMPLE)
    assert [r.name for r in res.rules] == ["fuse_linear_relu", "relu_through_concat", "add_commute",
                                           "unfuse_linear_tanh"]
    assert {(p.op_type, p.axis) for p in res.parallel_rules} == {
        ("linear", "sample"), ("linear", "in"), ("linear", "out"), ("activation", "features")}
    skipped = dict(res.skipped)
    assert set(skipped) == {"merge_linears_needs_split_sizes", "partition_combine_commute",
                            "conv_relu_fuse"}
    assert "OP_CONV2D" in skipped["conv_relu_fuse"]


def test_taso_rules_are_exact():
    res = {r.name: r for r in load_rules(EXAMPLE).rules}
    graphs = {"fuse_linear_relu": _fuse("linear", "relu"), "relu_through_concat": _g_concat_act("relu"),
              "add_commute": _g_merge_add(), "unfuse_linear_tanh": _unfuse("linear")}
    graphs["relu_through_concat"] = G()
    b = graphs["relu_through_concat"]
    b(Activation("relu"), b(Concat(1), b.x(2, 3), b.x(4, 3)))
    graphs["relu_through_concat"] = b.g
    for name, g in graphs.items():
        ms = find_matches(g, res[name])
        assert len(ms) == 1, name
        check_equivalent(g, apply(g, res[name], ms[0]))
    # axis 1 in the file: a concat along -1 of rank-3 inputs does not match
    assert find_matches(_g_concat_act("relu"), res["relu_through_concat"]) == []


def _collection(**rule_fields):
    r = {"_t": "Rule", "name": "r0", "srcOp": [{"type": "OP_RELU", "input": [{"opId": -1, "tsId": 0}],
                                                 "para": []}],
         "dstOp": [{"type": "OP_RELU", "input": [{"opId": -1, "tsId": 0}], "para": []}],
         "mappedOutput": [{"srcOpId": 0, "dstOpId": 0, "srcTsId": 0, "dstTsId": 0}]}
    r.update(rule_fields)
    return {"_t": "RuleCollection", "rules": [{k: v for k, v in r.items() if v is not None}]}


def test_taso_malformed_input_names_rule_and_field(tmp_path):
    assert [r.name for r in load_rules(_collection()).rules] == ["r0"]
    with pytest.raises(TasoFormatError, match="rule 'r0'.*'srcOp'"):
        load_rules(_collection(srcOp=None))
    with pytest.raises(TasoFormatError, match=r"rule 'r0': dstOp\[0\].input\[0\].*opId 3"):
        load_rules(_collection(dstOp=[{"type": "OP_RELU", "input": [{"opId": 3, "tsId": 0}]}]))
    with pytest.raises(TasoFormatError, match=r"mappedOutput\[0\].dstOpId"):
        load_rules(_collection(mappedOutput=[{"srcOpId": 0, "dstOpId": 4, "srcTsId": 0, "dstTsId": 0}]))
    with pytest.raises(TasoFormatError, match=r"para\[0\].value: expected an integer"):
        load_rules(_collection(srcOp=[{"type": "OP_RELU", "input": [{"opId": -1, "tsId": 0}],
                                       "para": [{"key": "PM_ACTI", "value": "x"}]}]))
    with pytest.raises(TasoFormatError, match="missing field 'rule'"):
        load_rules({"_t": "RuleCollection"})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TasoFormatError, match="not JSON"):
        load_rules(bad)


def test_taso_flexflow_style_computed_weight_is_skipped():
    """As in FlexFlow's graph_subst_3_v2.json: a Linear whose weight input is made by other
    operators (TASO treats weights as tensors) has no counterpart here."""
    t = lambda op: {"opId": op, "tsId": 0}
    src = [{"type": "OP_RELU", "input": [t(-4)], "para": []},
           {"type": "OP_CONCAT", "input": [t(-4), t(-5)],
            "para": [{"key": "PM_NUM_INPUTS", "value": 2}, {"key": "PM_AXIS", "value": 1}]},
           {"type": "OP_LINEAR", "input": [t(1), t(0)], "para": [{"key": "PM_ACTI", "value": 0}]}]
    res = load_rules({"_t": "RuleCollection", "rule": [{
        "_t": "Rule", "name": "taso_like", "srcOp": src, "dstOp": src,
        "mappedOutput": [{"srcOpId": 2, "dstOpId": 2, "srcTsId": 0, "dstTsId": 0}]}]})
    assert res.rules == [] and res.skipped == [("taso_like", "a Linear weight computed by other operators")]


def test_all_matches_lists_neighbours():
    g = _model()
    pairs = all_matches(g, builtin_rules())
    names = {r.name for r, _ in pairs}
    assert {"unfuse_linear_activation", "split_linear_input"} <= names
    for r, m in pairs:  # every neighbour is a valid graph
        apply(g, r, m)


def test_taso_unsupported_and_shared_weights_are_skipped():
    lin = lambda d, w, a=0: {"type": "OP_LINEAR", "input": [{"opId": d, "tsId": 0}, {"opId": w, "tsId": 0}],
                             "para": [{"key": "PM_ACTI", "value": a}]}
    shared = _collection(srcOp=[lin(-1, -3), lin(-2, -3), {"type": "OP_EW_ADD", "input": [
        {"opId": 0, "tsId": 0}, {"opId": 1, "tsId": 0}]}],
        dstOp=[{"type": "OP_EW_ADD", "input": [{"opId": -1, "tsId": 0}, {"opId": -2, "tsId": 0}]},
               lin(0, -3)], mappedOutput=[{"srcOpId": 2, "dstOpId": 1, "srcTsId": 0, "dstTsId": 0}])
    res = load_rules(shared)
    assert res.rules == [] and "shared" in res.skipped[0][1]
