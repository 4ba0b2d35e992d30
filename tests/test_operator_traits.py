"""Operator traits are stated once, on the operator classes, and every table elsewhere is read
from them: the registry, the substitutions' constructors and TASO names, the builtin strategies'
elementwise test, the cost families and the torch twin. Pure Python (torch for the twin)."""

from __future__ import annotations

import pytest

from unity_legion.cost import op_cost
from unity_legion.cost.machine import PRESETS
from unity_legion.operators import activation
from unity_legion.operators.activation import Activation
from unity_legion.operators.base import Operator
from unity_legion.operators.dropout import Dropout
from unity_legion.operators.elementwise import Add
from unity_legion.operators.linear import Linear
from unity_legion.operators.permute import Identity, Permute
from unity_legion.operators.registry import OPERATORS, by_op_type, by_taso_type, cost_families
from unity_legion.operators.reshape import Flatten, Reshape
from unity_legion.operators.softmax import Softmax
from unity_legion.substitutions.exprs import OPERATOR_TYPES
from unity_legion.substitutions.taso_json import OP_TYPE_OF


def test_the_registry_names_each_class_once_and_each_has_examples_that_infer():
    assert len(set(OPERATORS)) == len(OPERATORS)
    assert len(by_op_type()) == len(OPERATORS), "two operator classes share an op_type"
    for cls in OPERATORS:
        assert cls.examples(), f"{cls.__name__} has no examples()"
        for op, shapes in cls.examples():
            assert type(op) is cls
            op.infer_outputs(list(shapes))


def test_substitutions_construct_every_registered_operator():
    assert dict(OPERATOR_TYPES) == dict(by_op_type())


def test_taso_names_are_unique_and_read_as_their_operator():
    names = [n.type for cls in OPERATORS for n in cls.taso_names]
    assert len(names) == len(set(names))
    assert OP_TYPE_OF == {t: cls.op_type for t, (cls, _) in by_taso_type().items()}
    assert OP_TYPE_OF["OP_RELU"] == "activation" and OP_TYPE_OF["OP_EW_SUB"] == "subtract"
    # a pinned attribute is one the operator has
    for cls, name in by_taso_type().values():
        for attr, value in name.pins:
            assert getattr(cls(**{attr: value}), attr) == value


def test_activation_functions_are_classified_once():
    fns = Activation.ELEMENTWISE_FNS + Activation.ROW_WISE_FNS + ("linear",)
    assert sorted(fns) == sorted(activation.NAMES)
    assert [Activation(f).is_elementwise() for f in ("relu", "linear", "softmax")] == [True, True, False]


@pytest.mark.parametrize("op,elementwise", [
    (Dropout(0.5), True), (Identity(), True), (Add(), True), (Activation("gelu"), True),
    (Activation("softmax"), False), (Linear(4), False), (Softmax(), False), (Permute((2, 1)), False),
])
def test_elementwise_trait(op: Operator, elementwise: bool):
    assert op.is_elementwise() is elementwise


def test_reshape_only_operators():
    assert {cls for cls in OPERATORS if cls.reshape_only} == {Flatten, Reshape}


def test_cost_tables_name_only_families_the_operators_declare():
    families = cost_families()
    assert Linear.cost_family == "linear"           # an operator is its own family by default
    assert set(op_cost.EFFICIENCY) <= families
    for machine in PRESETS.values():
        d = machine.device
        for table in (d.efficiency, d.memory_efficiency, d.backward_ratio):
            assert {k for k, _ in table} <= families, machine.name


def test_the_torch_twin_runs_every_registered_operator():
    from unity_legion.testing.torch_twin import supports

    missing = [cls.__name__ for cls in OPERATORS if not all(supports(op) for op, _ in cls.examples())]
    assert not missing, f"no torch version in unity_legion/testing/torch_twin.py: {missing}"
