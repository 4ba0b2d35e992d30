"""Per-sample metric kernels against numpy / torch, directly and through the executor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unity_legion.executor.executor import GraphExecutor, Objective
from unity_legion.operators import metrics as M
from unity_legion.operators.base import OperatorError
from unity_legion.operators.linear import Linear
from unity_legion.operators.losses import MeanSquaredError, SparseCategoricalCrossentropy
from unity_legion.pcg import ComputationGraph
from unity_legion.types import TensorShape


def run(kernel, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    value = np.full(pred.shape[0], -1.0)
    names = [n for n, _ in kernel.stores]
    kernel(**{names[0]: pred, names[1]: target, "value": value})
    return value


@pytest.mark.parametrize("label_shape", ["flat", "column"])
def test_sparse_accuracy(label_shape: str) -> None:
    rng = np.random.default_rng(0)
    b, c = 11, 4
    pred = rng.normal(size=(b, c)).astype(np.float32)
    lab = rng.integers(0, c, b)
    lab[:3] = pred[:3].argmax(axis=-1)          # some hits for sure
    lab[3] = (pred[3].argmax() + 1) % c         # and a miss
    ref = (torch.tensor(pred).argmax(dim=-1) == torch.tensor(lab)).double().numpy()
    value = run(M.sparse_accuracy, pred, lab if label_shape == "flat" else lab.reshape(b, 1))
    np.testing.assert_array_equal(value, ref)
    assert value[:3].tolist() == [1.0, 1.0, 1.0] and value[3] == 0.0


def test_sparse_accuracy_sequence() -> None:
    """(batch, steps, classes): the per-sample value is the fraction of steps right."""
    rng = np.random.default_rng(1)
    pred = rng.normal(size=(5, 4, 3)).astype(np.float32)
    lab = rng.integers(0, 3, (5, 4))
    ref = (pred.argmax(axis=-1) == lab).mean(axis=-1)
    np.testing.assert_allclose(run(M.sparse_accuracy, pred, lab), ref)


def test_categorical_accuracy() -> None:
    rng = np.random.default_rng(2)
    b, c = 10, 5
    pred = rng.normal(size=(b, c)).astype(np.float32)
    target = np.eye(c, dtype=np.float32)[rng.integers(0, c, b)]
    target[0] = np.eye(c)[pred[0].argmax()]
    ref = (torch.tensor(pred).argmax(-1) == torch.tensor(target).argmax(-1)).double().numpy()
    np.testing.assert_array_equal(run(M.categorical_accuracy, pred, target), ref)
    assert ref[0] == 1.0 and 0 < ref.sum() < b


def test_binary_accuracy() -> None:
    rng = np.random.default_rng(3)
    # (batch, 1) predictions with (batch,) targets, and a multi-label (batch, 3)
    pred = rng.uniform(size=(9, 1)).astype(np.float32)
    target = rng.integers(0, 2, 9).astype(np.float32)
    ref = ((pred[:, 0] > 0.5) == (target > 0.5)).astype(np.float64)
    np.testing.assert_array_equal(run(M.binary_accuracy, pred, target), ref)
    assert 0 < ref.sum() < 9
    pred3 = rng.uniform(size=(6, 3)).astype(np.float32)
    target3 = rng.integers(0, 2, (6, 3)).astype(np.float32)
    ref3 = ((pred3 > 0.5) == (target3 > 0.5)).mean(axis=-1)
    np.testing.assert_allclose(run(M.binary_accuracy, pred3, target3), ref3)


@pytest.mark.parametrize("shapes", [((7, 3), (7, 3)), ((7, 1), (7,)), ((4, 2, 3), (4, 2, 3))])
def test_squared_and_absolute_error(shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    rng = np.random.default_rng(4)
    pshape, tshape = shapes
    pred = rng.normal(size=pshape).astype(np.float32)
    target = rng.normal(size=tshape).astype(np.float32)
    p = torch.tensor(pred, dtype=torch.float64)
    t = torch.tensor(target, dtype=torch.float64).reshape(p.shape)
    b = pshape[0]
    se = torch.nn.functional.mse_loss(p, t, reduction="none").reshape(b, -1).mean(-1).numpy()
    ae = torch.nn.functional.l1_loss(p, t, reduction="none").reshape(b, -1).mean(-1).numpy()
    np.testing.assert_allclose(run(M.squared_error, pred, target), se, rtol=1e-6)
    np.testing.assert_allclose(run(M.absolute_error, pred, target), ae, rtol=1e-6)


def test_unknown_metric_kind() -> None:
    with pytest.raises(OperatorError):
        M.Metric("x", kind="top_k")


def test_metrics_through_executor() -> None:
    """Per-sample metrics of a batch split unevenly over 2 processors come back in order, and
    several metrics on two outputs are reported by name."""
    rng = np.random.default_rng(5)
    b, d = 13, 4
    g = ComputationGraph()
    xin = g.add_input(TensorShape((None, d)), "x")
    (cls,) = g.add_node(Linear(3), [xin], "cls")
    (reg,) = g.add_node(Linear(2), [xin], "reg")
    ex = GraphExecutor(g, [cls, reg])
    weights = {}
    for key, spec in ex.weight_specs():
        weights[key] = rng.normal(size=spec.shape.dims).astype(np.float32)
        ex.set_weight(key, weights[key])
    xs = rng.normal(size=(b, d)).astype(np.float32)
    lab = rng.integers(0, 3, b)
    yreg = rng.normal(size=(b, 2)).astype(np.float32)
    obj = Objective((SparseCategoricalCrossentropy(from_logits=True), MeanSquaredError()),
                    ((M.Metric("acc", kind="sparse_accuracy"),),
                     (M.Metric("mae", kind="absolute_error"), M.Metric("mse", kind="squared_error"))))
    res = ex.evaluate_step({xin: xs}, [lab, yreg], obj)
    keys = [k for k, _ in ex.weight_specs()]
    logits = xs @ weights[keys[0]] + weights[keys[1]]
    out = xs @ weights[keys[2]] + weights[keys[3]]
    assert set(res.metrics) == {"acc", "mae", "mse"}
    np.testing.assert_array_equal(res.metrics["acc"], (logits.argmax(-1) == lab).astype(float))
    np.testing.assert_allclose(res.metrics["mae"], np.abs(out - yreg).mean(-1), rtol=1e-5)
    np.testing.assert_allclose(res.metrics["mse"], ((out - yreg) ** 2).mean(-1), rtol=1e-5)
    assert 0 < res.metrics["acc"].sum() < b
