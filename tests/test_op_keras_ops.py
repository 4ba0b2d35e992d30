"""The operators behind keras.ops and Python operators on symbolic tensors (Binary, Where,
Unary, Reduce, Slice, Cast, OneHot, Parameter, Range) vs PyTorch, under forced batch splits
and every legal parallel configuration; their shape errors."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pytest
import torch

from op_check import FixedSplitExecutor, assert_close, check_op, randn, run_op
from parallel_check import check_configs
from unity_legion.operators.base import OperatorError
from unity_legion.operators.broadcast import Binary, Where
from unity_legion.operators.convert import Cast, OneHot
from unity_legion.operators.reduce import Reduce
from unity_legion.operators.slice import Slice
from unity_legion.operators.source import Parameter, Range
from unity_legion.operators.unary import Unary
from unity_legion.types import DataType, TensorShape

RNG = np.random.default_rng(7)


def _split(degree: int) -> Any:
    return partial(FixedSplitExecutor, degree=degree)


def _aligned(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t.reshape(tuple(t.shape[:1]) + (1,) * (rank - t.dim()) + tuple(t.shape[1:]))


TORCH_BINARY = {"add": torch.add, "subtract": torch.sub, "multiply": torch.mul,
                "divide": torch.div, "maximum": torch.maximum, "minimum": torch.minimum}


@pytest.mark.parametrize("fn", sorted(TORCH_BINARY))
@pytest.mark.parametrize("a_shape,b_shape", [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)),
                                             ((1,), (2, 3))])
def test_binary_broadcasts_as_torch(fn: str, a_shape: tuple, b_shape: tuple) -> None:
    batch = 7
    a = randn(RNG, batch, *a_shape)
    b = randn(RNG, batch, *b_shape)
    if fn == "divide":
        b = np.sign(b) * (np.abs(b) + 0.5)
    r = 1 + max(len(a_shape), len(b_shape))
    check_op(Binary(fn), [a, b], lambda s, t: TORCH_BINARY[fn](_aligned(s, r), _aligned(t, r)),
             executor=_split(3))


def test_binary_maximum_ties_split_the_gradient_as_torch() -> None:
    a = randn(RNG, 5, 4)
    b = a.copy()
    b[:, ::2] += 1.0
    check_op(Binary("maximum"), [a, b], torch.maximum)


def test_comparisons_give_bool_and_where_selects() -> None:
    a, b = randn(RNG, 6, 3, 4), randn(RNG, 6, 4)
    run = run_op(Binary("greater"), [a, b], executor=_split(2))
    assert run.outputs[0].dtype == np.bool_
    np.testing.assert_array_equal(run.outputs[0], a > b[:, None, :])
    cond = a > 0
    check_op(Where(), [cond, a, b],
             lambda c, s, t: torch.where(c, s, _aligned(t, 3)), executor=_split(4))


@pytest.mark.parametrize("fn,c", [("exp", 0), ("log", 0), ("sqrt", 0), ("square", 0), ("abs", 0),
                                  ("negative", 0), ("scale", 0.25), ("shift", -2.0),
                                  ("rsub", 1.5), ("rdiv", 2.0), ("power", 3.0)])
def test_unary_as_torch(fn: str, c: float) -> None:
    a = randn(RNG, 9, 3, 5)
    if fn in ("log", "sqrt", "rdiv"):
        a = np.abs(a) + 0.5
    ref = {"exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "square": lambda t: t * t,
           "abs": torch.abs, "negative": torch.neg, "scale": lambda t: t * c,
           "shift": lambda t: t + c, "rsub": lambda t: c - t, "rdiv": lambda t: c / t,
           "power": lambda t: t ** c}[fn]
    check_op(Unary(fn, c), [a], ref, executor=_split(2))


@pytest.mark.parametrize("fn", ["sum", "mean", "max"])
@pytest.mark.parametrize("axes,keepdims", [((1,), False), ((-1,), True), ((1, 2), False)])
def test_reduce_as_torch(fn: str, axes: tuple, keepdims: bool) -> None:
    a = randn(RNG, 7, 3, 4)
    ref = {"sum": torch.sum, "mean": torch.mean, "max": torch.amax}[fn]
    check_op(Reduce(fn, axes, keepdims), [a], lambda t: ref(t, dim=axes, keepdim=keepdims),
             executor=_split(3))


def test_slice_as_torch() -> None:
    a = randn(RNG, 7, 5, 6)
    check_op(Slice(((None, None, None), (0, 4, None))), [a], lambda t: t[:, :, 0:4],
             executor=_split(2))
    check_op(Slice(((1, None, 2), (-1, None, None)), drop=(2,)), [a], lambda t: t[:, 1::2, -1],
             executor=_split(3))


def test_cast_and_one_hot() -> None:
    a = randn(RNG, 5, 3)
    run = check_op(Cast(DataType.FLOAT64), [a], lambda t: t.double())
    assert run.outputs[0].dtype == np.float64
    idx = np.array([[0, 3, 4], [2, 1, 7], [4, 4, 0], [1, 2, 3], [-1, 0, 2]], dtype=np.int32)
    run = run_op(OneHot(5), [idx], executor=_split(2))
    want = np.zeros((5, 3, 5), np.float32)
    for (i, j), v in np.ndenumerate(idx):
        if 0 <= v < 5:
            want[i, j, v] = 1
    assert_close(run.outputs[0], want, "one_hot")


def test_parameter_broadcasts_and_sums_its_gradient() -> None:
    a = randn(RNG, 7, 3)
    run = check_op(Parameter((2, 4)), [a], lambda t, value: value.expand(7, 2, 4) + 0 * t.sum(),
                   executor=_split(3))
    assert run.input_grads[0] is not None and not run.input_grads[0].any()


def test_range() -> None:
    idx = np.zeros((5, 2), dtype=np.int64)
    run = run_op(Range(3, 2, 4), [idx], executor=_split(2))
    np.testing.assert_array_equal(run.outputs[0], np.tile([3, 5, 7, 9], (5, 1)))
    assert run.outputs[0].dtype == np.int32


@pytest.mark.parametrize("op,inputs", [
    (Binary("divide"), [randn(RNG, 5, 3, 4), np.abs(randn(RNG, 5, 4)) + 1]),
    (Binary("maximum"), [randn(RNG, 5, 3, 1), randn(RNG, 5, 4)]),
    (Unary("exp"), [randn(RNG, 5, 3, 7)]),
    (Reduce("mean", (1,)), [randn(RNG, 5, 3, 4)]),
    (Slice(((None, None, None), (1, 3, None))), [randn(RNG, 5, 3, 4)]),
    (Parameter((3, 2), "glorot_uniform"), [randn(RNG, 5, 4)]),
    (Where(), [randn(RNG, 5, 4) > 0, randn(RNG, 5, 4), randn(RNG, 5, 1)]),
    (Cast(DataType.FLOAT64), [randn(RNG, 5, 3, 4)]),
])
def test_every_legal_configuration_equals_serial(op: Any, inputs: list) -> None:
    assert len(check_configs(op, inputs)) >= 3


def test_binary_splits_features_only_where_no_input_broadcasts_along_them() -> None:
    axes = lambda op, *shapes: {pd.axis for pd in op.parallel_dims([TensorShape(s) for s in shapes])}
    assert axes(Binary("add"), (5, 3, 4), (5, 4)) == {"sample", "features"}
    assert axes(Binary("add"), (5, 3, 4), (5, 3, 1)) == {"sample"}
    assert axes(Binary("add"), (5, 4), (5, 1, 4)) == {"sample", "features"}
    assert axes(Binary("add"), (5,), (5,)) == {"sample"}


def test_shape_errors_name_the_problem() -> None:
    f = TensorShape((None, 3, 4))
    with pytest.raises(OperatorError, match="do not broadcast"):
        Binary("add").infer_outputs([f, TensorShape((None, 5))])
    with pytest.raises(OperatorError, match="batch axis"):
        Reduce("sum", (0,)).infer_outputs([f])
    with pytest.raises(OperatorError, match="positive step"):
        Slice(((None, None, -1), (None, None, None))).infer_outputs([f])
    with pytest.raises(OperatorError, match="integer class indices"):
        OneHot(3).infer_outputs([f])
    with pytest.raises(OperatorError, match="different dtypes"):
        Binary("add").infer_outputs([f, TensorShape((None, 4), DataType.FLOAT64)])
    with pytest.raises(OperatorError, match="bool tensor"):
        Where().infer_outputs([f, f, f])
    with pytest.raises(OperatorError, match="unknown function"):
        Unary("cosh")
