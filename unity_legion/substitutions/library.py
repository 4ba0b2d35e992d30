"""The built-in algebraic rules, as one declarative list (tinygrad's pattern-list style).

Only rewrites that are exact for our operators are here: each is checked numerically in
tests/test_substitutions.py on a random graph. Activations that commute with data movement are
the elementwise ones (`Activation.ELEMENTWISE_FNS`); softmax reads whole rows (row-wise), so it
never moves past a concat, split, permute or reshape, and a Linear fused with softmax is never
merged or split.
"""

from __future__ import annotations

from functools import lru_cache

from unity_legion.operators.activation import Activation

from .rule import (AttrEq, AttrIn, AttrOf, Computed, Copy, In, New, OpPattern, OpTemplate, Out,
                   Pred, Rule, WeightFrom)

# Activations that commute with data movement (concat, split, permute, reshape).
ELEMENTWISE = Activation.ELEMENTWISE_FNS
# Activations a Linear or Conv2D may fuse (the Activation table less the identity "linear").
FUSABLE = ELEMENTWISE + Activation.ROW_WISE_FNS
# A Linear whose columns are independent of each other: merging or splitting them is exact.
COLUMNWISE = ELEMENTWISE + ("linear",)


def P(label, op_type, *inputs, where=(), num_outputs=None) -> OpPattern:
    return OpPattern(label, op_type, tuple(inputs), tuple(where), num_outputs)


def T(label, build, *inputs, weights=(), name_from=None) -> OpTemplate:
    return OpTemplate(label, build, tuple(inputs), tuple(weights), name_from)


def R(name, family, pattern, replacement, outputs, where=(), symmetric=()) -> Rule:
    return Rule(name, family, "algebraic", tuple(pattern), tuple(replacement), tuple(outputs),
                tuple(where), tuple(symmetric))


def _act(fn) -> New:
    return New("activation", (("fn", fn),))


ELEM = AttrIn("fn", ELEMENTWISE)


def _fuse_unfuse(op_type: str, fusable: tuple[str, ...]) -> list[Rule]:
    """op(x) -> activation  <=>  op(x, activation=fn), for Linear and Conv2D."""
    rules = [R(f"fuse_{op_type}_{fn}", f"fuse_{op_type}_activation",
               [P("op", op_type, In(0), where=[AttrEq("activation", "linear")]),
                P("act", "activation", Out("op"), where=[AttrEq("fn", fn)])],
               [T("op", Copy("op", (("activation", fn),)), In(0), name_from="op")],
               [(Out("act"), Out("op"))])
             for fn in fusable]
    # the un-fused form lets a row-parallel op reduce its partial sums before the activation
    rules.append(R(f"unfuse_{op_type}_activation", f"unfuse_{op_type}_activation",
                   [P("op", op_type, In(0), where=[AttrIn("activation", fusable)])],
                   [T("op", Copy("op", (("activation", "linear"),)), In(0), name_from="op"),
                    T("act", _act(AttrOf("op", "activation")), Out("op"))],
                   [(Out("op"), Out("act"))]))
    return rules


def _linear_algebra() -> list[Rule]:
    split0 = Computed("out_dim", ("split", 0, -1))
    return [
        # lin_a(x), lin_b(x) -> split(lin(x; [K_a | K_b]))
        R("merge_linears_shared_input", "merge_linears_shared_input",
          [P("a", "linear", In(0), where=[AttrIn("activation", COLUMNWISE)]),
           P("b", "linear", In(0), where=[AttrIn("activation", COLUMNWISE)])],
          [T("lin", New("linear", (("out_features", Computed("sum_attr", ("out_features", "a", "b"))),
                                   ("use_bias", AttrOf("a", "use_bias")),
                                   ("activation", AttrOf("a", "activation")))), In(0),
             weights=[WeightFrom("kernel", (("a", "kernel"), ("b", "kernel")), axis=1),
                      WeightFrom("bias", (("a", "bias"), ("b", "bias")), axis=0)]),
           T("split", New("split", (("splits", Computed("attrs", ("out_features", "a", "b"))),
                                    ("axis", -1))), Out("lin"))],
          [(Out("a"), Out("split", 0)), (Out("b"), Out("split", 1))],
          where=[Pred("same_attrs", ("a", "b", "activation", "use_bias"))],
          symmetric=[("a", "b")]),
        # split(lin(x)) along features -> lin_a(x), lin_b(x) (the reverse)
        R("split_linear_output", "split_linear_output",
          [P("lin", "linear", In(0), where=[AttrIn("activation", COLUMNWISE)]),
           P("split", "split", Out("lin"), num_outputs=2)],
          [T("a", Copy("lin", (("out_features", split0),)), In(0), name_from="lin",
             weights=[WeightFrom("kernel", (("lin", "kernel"),), "slice", 1, 0, split0),
                      WeightFrom("bias", (("lin", "bias"),), "slice", 0, 0, split0)]),
           T("b", Copy("lin", (("out_features", Computed("out_dim", ("split", 1, -1))),)), In(0),
             weights=[WeightFrom("kernel", (("lin", "kernel"),), "slice", 1, split0,
                                 Computed("out_dim", ("lin", 0, -1))),
                      WeightFrom("bias", (("lin", "bias"),), "slice", 0, split0,
                                 Computed("out_dim", ("lin", 0, -1)))])],
          [(Out("split", 0), Out("a")), (Out("split", 1), Out("b"))],
          where=[Pred("is_last_axis", ("split",))]),
        # lin_a(x) + lin_b(y) -> lin(concat(x, y); [K_a ; K_b], b_a + b_b)
        R("merge_linears_into_add", "merge_linears_into_add",
          [P("a", "linear", In(0), where=[AttrEq("activation", "linear")]),
           P("b", "linear", In(1), where=[AttrEq("activation", "linear")]),
           P("add", "add", Out("a"), Out("b"))],
          [T("cat", New("concatenate", (("axis", -1),)), In(0), In(1)),
           T("lin", New("linear", (("out_features", AttrOf("a", "out_features")),
                                   ("use_bias", Computed("any_attr", ("use_bias", "a", "b"))))),
             Out("cat"),
             weights=[WeightFrom("kernel", (("a", "kernel"), ("b", "kernel")), axis=0),
                      WeightFrom("bias", (("a", "bias"), ("b", "bias")), "sum")])],
          [(Out("add"), Out("lin"))],
          symmetric=[("a", "b")]),
        # lin(concat(x, y)) -> lin_a(x) + lin_b(y) (the reverse; the bias stays on lin_a)
        R("split_linear_input", "split_linear_input",
          [P("cat", "concatenate", In(0), In(1)),
           P("lin", "linear", Out("cat"), where=[AttrEq("activation", "linear")])],
          [T("a", Copy("lin"), In(0), name_from="lin",
             weights=[WeightFrom("kernel", (("lin", "kernel"),), "slice", 0, 0,
                                 Computed("input_dim", (0, -1)))]),
           T("b", Copy("lin", (("use_bias", False),)), In(1),
             weights=[WeightFrom("kernel", (("lin", "kernel"),), "slice", 0,
                                 Computed("input_dim", (0, -1)),
                                 Computed("input_dims_sum", (-1, 0, 1)))]),
           T("add", New("add"), Out("a"), Out("b"))],
          [(Out("lin"), Out("add"))],
          where=[Pred("is_last_axis", ("cat",))]),
    ]


def _removals() -> list[Rule]:
    """Ops that compute the identity: their output is replaced by their input."""
    return [
        R("remove_identity", "identity_removal", [P("op", "identity", In(0))], [],
          [(Out("op"), In(0))]),
        R("remove_linear_activation", "linear_activation_removal",
          [P("op", "activation", In(0), where=[AttrEq("fn", "linear")])], [], [(Out("op"), In(0))]),
        R("remove_zero_dropout", "dropout_zero_removal",
          [P("op", "dropout", In(0), where=[AttrEq("rate", 0.0)])], [], [(Out("op"), In(0))]),
        R("remove_noop_reshape", "reshape_noop_removal",
          [P("op", "reshape", In(0))], [], [(Out("op"), In(0))],
          where=[Pred("reshape_is_noop", ("op",))]),
        R("relu_relu", "relu_idempotent",
          [P("r1", "activation", In(0), where=[AttrEq("fn", "relu")]),
           P("r2", "activation", Out("r1"), where=[AttrEq("fn", "relu")])],
          [T("r", Copy("r1"), In(0), name_from="r1")], [(Out("r2"), Out("r"))]),
        R("linear_relu_relu", "relu_idempotent",
          [P("lin", "linear", In(0), where=[AttrEq("activation", "relu")]),
           P("r", "activation", Out("lin"), where=[AttrEq("fn", "relu")])],
          [T("lin", Copy("lin"), In(0), name_from="lin")], [(Out("r"), Out("lin"))]),
    ]


def _movement() -> list[Rule]:
    """Elementwise activations commute with concat, split, permute and reshape; data movement
    ops compose or cancel."""
    fn = AttrOf("act", "fn")
    fn0 = AttrOf("a0", "fn")
    rules = [
        R("activation_before_concat", "activation_concat_sink",
          [P("cat", "concatenate", In(0), In(1)), P("act", "activation", Out("cat"), where=[ELEM])],
          [T("a0", _act(fn), In(0), name_from="act"), T("a1", _act(fn), In(1)),
           T("cat", Copy("cat"), Out("a0"), Out("a1"), name_from="cat")],
          [(Out("act"), Out("cat"))]),
        R("activation_after_concat", "activation_concat_hoist",
          [P("a0", "activation", In(0), where=[ELEM]), P("a1", "activation", In(1), where=[ELEM]),
           P("cat", "concatenate", Out("a0"), Out("a1"))],
          [T("cat", Copy("cat"), In(0), In(1), name_from="cat"),
           T("act", _act(fn0), Out("cat"), name_from="a0")],
          [(Out("cat"), Out("act"))], where=[Pred("same_attrs", ("a0", "a1", "fn"))]),
        R("activation_after_split", "activation_split_sink",
          [P("act", "activation", In(0), where=[ELEM]), P("split", "split", Out("act"), num_outputs=2)],
          [T("split", Copy("split"), In(0), name_from="split"),
           T("a0", _act(fn), Out("split", 0), name_from="act"), T("a1", _act(fn), Out("split", 1))],
          [(Out("split", 0), Out("a0")), (Out("split", 1), Out("a1"))]),
        R("activation_before_split", "activation_split_hoist",
          [P("split", "split", In(0), num_outputs=2),
           P("a0", "activation", Out("split", 0), where=[ELEM]),
           P("a1", "activation", Out("split", 1), where=[ELEM])],
          [T("act", _act(fn0), In(0), name_from="a0"),
           T("split", Copy("split"), Out("act"), name_from="split")],
          [(Out("a0"), Out("split", 0)), (Out("a1"), Out("split", 1))],
          where=[Pred("same_attrs", ("a0", "a1", "fn"))]),
        R("split_then_concat", "split_concat_cancel",
          [P("split", "split", In(0), num_outputs=2),
           P("cat", "concatenate", Out("split", 0), Out("split", 1))], [],
          [(Out("cat"), In(0))], where=[Pred("split_feeds_concat_in_order", ("split", "cat"))]),
        R("concat_then_split", "concat_split_cancel",
          [P("cat", "concatenate", In(0), In(1)), P("split", "split", Out("cat"), num_outputs=2)], [],
          [(Out("split", 0), In(0)), (Out("split", 1), In(1))],
          where=[Pred("split_undoes_concat", ("cat", "split"))]),
        R("concat_of_concat_left", "concat_flatten",
          [P("inner", "concatenate", In(0), In(1)), P("outer", "concatenate", Out("inner"), In(2))],
          [T("cat", Copy("outer"), In(0), In(1), In(2), name_from="outer")],
          [(Out("outer"), Out("cat"))], where=[Pred("same_axis", ("inner", "outer"))]),
        R("concat_of_concat_right", "concat_flatten",
          [P("inner", "concatenate", In(1), In(2)), P("outer", "concatenate", In(0), Out("inner"))],
          [T("cat", Copy("outer"), In(0), In(1), In(2), name_from="outer")],
          [(Out("outer"), Out("cat"))], where=[Pred("same_axis", ("inner", "outer"))]),
        R("permute_permute", "permute_compose",
          [P("p1", "permute", In(0)), P("p2", "permute", Out("p1"))],
          [T("p", New("permute", (("dims", Computed("compose_perm", ("p1", "p2"))),)), In(0),
             name_from="p1")],
          [(Out("p2"), Out("p"))], where=[Pred("perm_not_identity", ("p1", "p2"))]),
        R("permute_inverse", "permute_cancel",
          [P("p1", "permute", In(0)), P("p2", "permute", Out("p1"))], [],
          [(Out("p2"), In(0))], where=[Pred("perm_is_identity", ("p1", "p2"))]),
    ]
    # reshape-like pairs collapse into one reshape to the final per-sample shape
    for first, second in (("reshape", "reshape"), ("flatten", "reshape"), ("reshape", "flatten"),
                          ("flatten", "flatten")):
        where = [Pred("flatten_is_row_major", (lb,)) for lb, t in (("r1", first), ("r2", second))
                 if t == "flatten"]
        rules.append(R(f"{first}_{second}", "reshape_compose",
                       [P("r1", first, In(0)), P("r2", second, Out("r1"))],
                       [T("r", New("reshape", (("target_shape", Computed("out_target", ("r2",))),)),
                          In(0), name_from="r1")],
                       [(Out("r2"), Out("r"))], where=where))
    for mover in ("permute", "reshape", "flatten"):
        family = "activation_permute_commute" if mover == "permute" else "activation_reshape_commute"
        where = [Pred("flatten_is_row_major", ("m",))] if mover == "flatten" else []
        rules += [
            R(f"activation_before_{mover}", family,
              [P("m", mover, In(0)), P("act", "activation", Out("m"), where=[ELEM])],
              [T("act", Copy("act"), In(0), name_from="act"), T("m", Copy("m"), Out("act"), name_from="m")],
              [(Out("act"), Out("m"))], where=where),
            R(f"activation_after_{mover}", family,
              [P("act", "activation", In(0), where=[ELEM]), P("m", mover, Out("act"))],
              [T("m", Copy("m"), In(0), name_from="m"), T("act", Copy("act"), Out("m"), name_from="act")],
              [(Out("m"), Out("act"))], where=where),
        ]
    for ew in ("add", "subtract", "multiply"):
        rules.append(R(f"{ew}_of_concats", "elementwise_concat_distribute",
                       [P("c0", "concatenate", In(0), In(1)), P("c1", "concatenate", In(2), In(3)),
                        P("ew", ew, Out("c0"), Out("c1"))],
                       [T("e0", New(ew), In(0), In(2)), T("e1", New(ew), In(1), In(3)),
                        T("cat", Copy("c0"), Out("e0"), Out("e1"))],
                       [(Out("ew"), Out("cat"))],
                       where=[Pred("same_axis", ("c0", "c1")),
                              Pred("same_input_shapes", ((0, 2), (1, 3)))]))
    return rules


@lru_cache(maxsize=1)
def _builtin() -> tuple[Rule, ...]:
    # a channels_first Conv2D's softmax would run over its width, not its channels: only the
    # elementwise activations move in and out of a convolution
    rules = (_fuse_unfuse("linear", FUSABLE) + _fuse_unfuse("conv2d", ELEMENTWISE) + _linear_algebra() + _removals()
             + _movement())
    names = [r.name for r in rules]
    assert len(names) == len(set(names)), "duplicate rule names"
    return tuple(rules)


def builtin_rules() -> list[Rule]:
    """Every built-in algebraic rule (a fresh list; the rules themselves are immutable)."""
    return list(_builtin())


def families(rules: list[Rule] | None = None) -> dict[str, list[Rule]]:
    out: dict[str, list[Rule]] = {}
    for r in builtin_rules() if rules is None else rules:
        out.setdefault(r.family, []).append(r)
    return out
