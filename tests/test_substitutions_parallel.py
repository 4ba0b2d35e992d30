"""Parallelisation rules (from the operators' parallel dims) and the algebra of parallel-op
chains, checked against a numpy reference of the pieces each device holds. Pure Python."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys

import numpy as np
import pytest

import unity_legion.operators as ops_pkg
from unity_legion.operators.base import DimKind, Operator
from unity_legion.operators.linear import Linear
from unity_legion.operators.split import Split
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.pcg.parallel_ops import Combine, FusedParallelOp, Partition, Reduce, Replicate
from unity_legion.pcg.pcg import lift
from unity_legion.substitutions import (CHAIN_RULES, allowed_axes, data_parallel_rules,
                                        parallel_rules, rules_of_kinds, simplify)
from unity_legion.substitutions.algebra import rewrite_once
from unity_legion.substitutions.parallel import catalogue
from unity_legion.substitutions.parallel_ref import (distribute, reduce_copies, run, run_chain,
                                                     value)
from unity_legion.types import OpConfig, ParallelShapeError, TensorShape


def _operator_classes() -> set[type]:
    found = set()
    for info in pkgutil.iter_modules(ops_pkg.__path__):
        mod = importlib.import_module(f"unity_legion.operators.{info.name}")
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, Operator) and cls.__module__ == mod.__name__ \
                    and not cls.__name__.startswith("_") and cls.op_type != "operator":
                found.add(cls)
    return found


def test_catalogue_covers_every_operator_class():
    covered = {type(op) for op, _ in catalogue()}
    missing = _operator_classes() - covered
    assert not missing, (f"list these operators in operators/registry.py OPERATORS, each with "
                         f"its examples(): {missing}")


def test_parallel_rules_mirror_parallel_dims():
    rules = parallel_rules()
    assert len(rules) == len(set(rules))
    for op, shapes in catalogue():
        for d in op.parallel_dims(shapes):
            assert any(r.op_type == op.op_type and r.axis == d.axis and r.dim_kind is d.kind
                       for r in rules), (op, d)
    by = {(r.op_type, r.axis): r for r in rules}
    assert by[("linear", "in")].wrapping == ("replicate", "reduce")
    assert by[("linear", "out")].dim_kind is DimKind.PARAMETER
    assert by[("linear", "out")].wrapping == ("partition", "combine")
    assert by[("multi_head_attention", "heads")].dim_kind is DimKind.PARAMETER


def test_every_catalogue_rule_lifts():
    """Each rule's axis is one pcg.lift accepts at degree 2 (the DP can use it)."""
    for op, shapes in catalogue():
        g = ComputationGraph()
        ins = [g.add_input(s, f"x{i}") for i, s in enumerate(shapes)]
        g.add_node(op, ins, "op")
        for d in op.parallel_dims(shapes):
            if d.size is not None and d.size < 2:
                continue
            pcg = lift(g, shapes[0].dims[0], {0: OpConfig.of({d.axis: 2})})
            assert pcg.computations()[0].config.degree(d.axis) == 2


def test_allowed_axes():
    g = ComputationGraph()
    x = g.add_input(TensorShape((None, 6)), "x")
    g.add_node(Linear(4), [x], "plain")
    g.add_node(Linear(4, activation="relu"), [x], "fused")
    plain, fused = g.nodes
    assert allowed_axes(plain, data_parallel_rules()) == {"sample"}
    assert allowed_axes(plain, parallel_rules()) == {"sample", "out", "in"}
    # a fused activation needs whole sums: the reduction axis is not there
    shapes = g.input_shapes(fused)
    assert allowed_axes(fused, parallel_rules(), shapes) == {"sample", "out"}
    only_params = rules_of_kinds([DimKind.PARAMETER])
    assert allowed_axes(plain, only_params) == {"out"}
    assert all(r.dim_kind is DimKind.SAMPLE for r in data_parallel_rules())


def test_rules_of_a_graph_add_rank_dependent_axes():
    g = ComputationGraph()
    x = g.add_input(TensorShape((None, 2, 3, 8)), "x")
    g.add_node(Split(2, -1), [x], "split")
    names = {(r.op_type, r.axis) for r in parallel_rules(g)}
    assert ("split", "dim2") in names and ("split", "dim2") not in {
        (r.op_type, r.axis) for r in parallel_rules()}


# --- the chain algebra against the numpy reference ------------------------------------------

SIZES = (4, 12)


def _same(a, b) -> None:
    assert a.shape == b.shape
    assert a.pieces.keys() == b.pieces.keys()
    for k in a.pieces:
        np.testing.assert_allclose(a.pieces[k], b.pieces[k], rtol=1e-12, atol=1e-12)


RULE_CASES = {
    "partition_combine_cancel": ([Partition(1, 3), Combine(1, 3)], (1, 2), 1, 1),
    "combine_partition_cancel": ([Combine(1, 2), Partition(1, 2)], (1, 2), 1, 1),
    "partition_partition_fuse": ([Partition(1, 2), Partition(1, 3)], (1, 1), 1, 1),
    "combine_combine_fuse": ([Combine(1, 2), Combine(1, 3)], (2, 6), 1, 1),
    "replicate_replicate_fuse": ([Replicate(2), Replicate(3)], (2, 1), 1, 1),
    "reduce_reduce_fuse": ([Reduce(2), Reduce(2)], (1, 2), 4, 1),
    "partition_combine_partial": ([Partition(1, 6), Combine(1, 2)], (1, 1), 1, 1),
    "partition_combine_overshoot": ([Partition(1, 2), Combine(1, 6)], (1, 3), 1, 1),
    "combine_partition_partial": ([Combine(0, 4), Partition(0, 2)], (4, 1), 1, 1),
    "combine_partition_overshoot": ([Combine(0, 2), Partition(0, 4)], (2, 1), 1, 1),
    "replicate_reduce_commute": ([Replicate(2), Reduce(2)], (1, 1), 2, 1),
}


def test_every_chain_rule_has_a_case():
    assert set(RULE_CASES) == {r.name for r in CHAIN_RULES}


@pytest.mark.parametrize("name", sorted(RULE_CASES))
def test_chain_rule_keeps_every_piece(name):
    chain, degrees, sums, copies = RULE_CASES[name]
    rng = np.random.default_rng(1)
    x = rng.normal(size=SIZES)
    t = distribute(x, degrees, sums, copies, rng)
    step = rewrite_once(chain)
    assert step is not None and step[1] == name
    before, after = run_chain(chain, t), run_chain(step[0], t)
    _same(before, after)
    np.testing.assert_allclose(value(after), x, rtol=1e-12, atol=1e-12)


def test_replicate_then_reduce_is_not_an_identity():
    assert simplify([Replicate(2), Reduce(2)]) == (Reduce(2), Replicate(2))
    rng = np.random.default_rng(2)
    x = rng.normal(size=SIZES)
    whole = distribute(x, (1, 1), 1, 1, rng)
    with pytest.raises(ParallelShapeError):  # nothing partial to reduce in our algebra
        run_chain([Replicate(3), Reduce(3)], whole)
    # FlexFlow's reading (a Reduction sums the copies) scales by the degree
    np.testing.assert_allclose(value(reduce_copies(run(Replicate(3), whole), 3)), 3 * x)


def _random_chain(rng, t, length):
    """A chain of parallel ops each valid on the shape before it."""
    chain = []
    for _ in range(length):
        opts = []
        for d in range(2):
            have = t.shape.degrees[d]
            opts += [Partition(d, k) for k in (2, 3) if (SIZES[d] // have) % k == 0]
            opts += [Combine(d, k) for k in (2, 3, 6) if have % k == 0]
        opts += [Replicate(2)] if t.shape.copy_degree < 4 else []
        opts += [Reduce(k) for k in (2, 4) if t.shape.sum_degree % k == 0]
        op = opts[rng.integers(len(opts))]
        chain.append(op)
        t = run(op, t)
    return chain


def test_simplify_random_chains():
    rng = np.random.default_rng(3)
    x = rng.normal(size=SIZES)
    shortened = 0
    for trial in range(150):
        t = distribute(x, (1, 2), 4, 1, rng)
        chain = _random_chain(rng, t, int(rng.integers(2, 7)))
        simple = simplify(chain)
        assert len(simple) <= len(chain)
        shortened += len(simple) < len(chain)
        _same(run_chain(chain, t), run_chain(simple, t))
        assert simplify(simple) == simple  # a fixpoint
        # fused ops are flattened first
        assert simplify([FusedParallelOp(tuple(chain))]) == simple
    assert shortened > 30


def test_no_legate_import():
    # in a fresh interpreter: other tests of the same process start Legate
    import subprocess

    code = ("import sys, unity_legion.substitutions, unity_legion.search; "
            "sys.exit('legate' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=300).returncode == 0
