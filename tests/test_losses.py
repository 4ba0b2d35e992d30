"""Loss kernels: per-sample loss and the gradient of the batch-mean loss against PyTorch.

For from_logits=False the reference reproduces Keras 3 in torch: p / sum(p), clamp to
[1e-7, 1 - 1e-7], -log at the label (the gradient through clamp is zero outside the range).
Each kernel is checked twice: called directly on numpy arrays, and end to end through the
executor (one Linear layer, a train_step whose update rule records the weight gradients instead
of applying them) on batches that 2 processors split unevenly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grad_capture import CaptureGrads, captured_grads
from unity_legion.executor.executor import GraphExecutor, Objective
from unity_legion.operators import losses as L
from unity_legion.operators.linear import Linear
from unity_legion.pcg import ComputationGraph
from unity_legion.types import TensorShape

EPS = 1e-7
RTOL = 1e-4


# ---------------------------------------------------------------------------------------------
# torch references (float64): per-sample loss and d(mean loss)/d(pred) * weight
# ---------------------------------------------------------------------------------------------

def _keras_prob_ce(p: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    q = p / p.sum(dim=-1, keepdim=True)
    c = torch.clamp(q, EPS, 1.0 - EPS)
    return -(onehot * torch.log(c)).sum(dim=-1)


def _per_token(loss_name: str, from_logits: bool, pred: torch.Tensor, target: np.ndarray
               ) -> torch.Tensor:
    classes = pred.shape[-1]
    if loss_name == "sparse":
        lab = torch.tensor(target.reshape(pred.shape[:-1]), dtype=torch.int64)
        if from_logits:
            return torch.nn.functional.cross_entropy(pred.reshape(-1, classes), lab.reshape(-1),
                                                     reduction="none").reshape(lab.shape)
        onehot = torch.nn.functional.one_hot(lab, classes).to(pred.dtype)
        return _keras_prob_ce(pred, onehot)
    if loss_name == "categorical":
        t = torch.tensor(target, dtype=pred.dtype)
        if from_logits:
            return -(t * torch.log_softmax(pred, dim=-1)).sum(dim=-1)
        return _keras_prob_ce(pred, t)
    t = torch.tensor(target, dtype=pred.dtype).reshape(pred.shape)
    return ((pred - t) ** 2).mean(dim=-1)


def torch_loss_and_grad(loss_name: str, from_logits: bool, pred: np.ndarray, target: np.ndarray,
                        weight: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    p = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    per_token = _per_token(loss_name, from_logits, p, target)
    per_sample = per_token.reshape(pred.shape[0], -1).mean(dim=-1)
    (weight * per_token.mean()).backward()
    return per_sample.detach().numpy(), p.grad.numpy()


def run_kernel(loss_name: str, from_logits: bool, pred: np.ndarray, target: np.ndarray,
               scale: float, with_grad: bool = True) -> tuple[np.ndarray, np.ndarray]:
    loss = np.full(pred.shape[0], -123.0)
    dpred = np.full(pred.shape, -123.0, dtype=pred.dtype)
    if loss_name == "sparse":
        L.sparse_ce(pred=pred, labels=target, loss=loss, dpred=dpred, from_logits=from_logits,
                    scale=scale, with_grad=with_grad)
    elif loss_name == "categorical":
        L.categorical_ce(pred=pred, target=target, loss=loss, dpred=dpred,
                         from_logits=from_logits, scale=scale, with_grad=with_grad)
    else:
        L.mean_squared_error(pred=pred, target=target, loss=loss, dpred=dpred, scale=scale,
                             with_grad=with_grad)
    return loss, dpred


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def probabilities(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Positive, not normalised (sums from 0.5 to 3), with entries that hit both clip bounds."""
    p = rng.uniform(0.05, 1.0, size=shape)
    p *= rng.uniform(0.5, 3.0, size=shape[:-1] + (1,)) / p.sum(axis=-1, keepdims=True)
    flat = p.reshape(-1, shape[-1])
    flat[0, 0] = flat[0].sum() * 1e-9          # q ~ 1e-9 < eps: clipped from below
    flat[1, 1:] = 1e-10 * flat[1, 0]           # q[0] ~ 1 - 1e-9 > 1 - eps: clipped from above
    return p.astype(np.float32)


def sparse_labels(rng: np.random.Generator, shape: tuple[int, ...], classes: int) -> np.ndarray:
    lab = rng.integers(0, classes, size=shape)
    flat = lab.reshape(-1)
    flat[0] = 0   # label at the entry clipped from below
    flat[1] = 0   # label at the entry clipped from above (its gradient must vanish)
    if flat.size > 2:
        flat[2] = 1   # row 0 again, label off the tiny entry
    return lab


# ---------------------------------------------------------------------------------------------
# direct kernel calls
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("label_shape", ["flat", "column"])
def test_sparse_ce_kernel(from_logits: bool, label_shape: str) -> None:
    rng = np.random.default_rng(1)
    b, c = 7, 5
    pred = (rng.normal(size=(b, c)) * 3).astype(np.float32) if from_logits else probabilities(rng, (b, c))
    lab = sparse_labels(rng, (b,), c)
    if label_shape == "column":
        lab = lab.reshape(b, 1)
    loss, dpred = run_kernel("sparse", from_logits, pred, lab, scale=1.0 / b)
    ref_loss, ref_grad = torch_loss_and_grad("sparse", from_logits, pred, lab)
    np.testing.assert_allclose(loss, ref_loss, rtol=RTOL)
    np.testing.assert_allclose(dpred, ref_grad, rtol=RTOL, atol=1e-9)
    assert dpred.dtype == np.float32
    if not from_logits:
        # the clipped entries: the loss saturates and the gradient through clip is zero
        assert loss[0] == pytest.approx(-np.log(EPS), rel=1e-6)
        assert loss[1] == pytest.approx(-np.log(1 - EPS), rel=1e-3)
        assert np.all(dpred[0:2] == 0.0)


@pytest.mark.parametrize("from_logits", [True, False])
def test_sparse_ce_kernel_sequence(from_logits: bool) -> None:
    """Predictions (batch, steps, classes): per-sample loss is the mean over steps (Keras), and
    the gradient is that of the mean over all batch * steps tokens."""
    rng = np.random.default_rng(2)
    b, t, c = 4, 3, 6
    pred = rng.normal(size=(b, t, c)).astype(np.float32) if from_logits else probabilities(rng, (b, t, c))
    lab = sparse_labels(rng, (b, t), c)
    loss, dpred = run_kernel("sparse", from_logits, pred, lab, scale=1.0 / b)
    ref_loss, ref_grad = torch_loss_and_grad("sparse", from_logits, pred, lab)
    np.testing.assert_allclose(loss, ref_loss, rtol=RTOL)
    np.testing.assert_allclose(dpred, ref_grad, rtol=RTOL, atol=1e-9)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("soft", [False, True])
def test_categorical_ce_kernel(from_logits: bool, soft: bool) -> None:
    rng = np.random.default_rng(3)
    b, c = 8, 4
    pred = (rng.normal(size=(b, c)) * 2).astype(np.float32) if from_logits else probabilities(rng, (b, c))
    if soft:  # soft targets whose rows do not sum to 1 (softmax * sum(t) - t in the gradient)
        target = rng.uniform(0.0, 1.0, size=(b, c)).astype(np.float32)
    else:
        target = np.eye(c, dtype=np.float32)[sparse_labels(rng, (b,), c)]
    loss, dpred = run_kernel("categorical", from_logits, pred, target, scale=1.0 / b)
    ref_loss, ref_grad = torch_loss_and_grad("categorical", from_logits, pred, target)
    np.testing.assert_allclose(loss, ref_loss, rtol=RTOL)
    np.testing.assert_allclose(dpred, ref_grad, rtol=RTOL, atol=1e-9)


@pytest.mark.parametrize("shapes", [((6, 3), (6, 3)), ((6, 1), (6,)), ((5, 2, 3), (5, 2, 3))])
def test_mse_kernel(shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    rng = np.random.default_rng(4)
    pshape, tshape = shapes
    pred = rng.normal(size=pshape).astype(np.float32)
    target = rng.normal(size=tshape).astype(np.float32)
    b = pshape[0]
    loss, dpred = run_kernel("mse", False, pred, target, scale=1.0 / b)
    ref_loss, ref_grad = torch_loss_and_grad("mse", False, pred, target)
    np.testing.assert_allclose(loss, ref_loss, rtol=RTOL)
    np.testing.assert_allclose(dpred, ref_grad, rtol=RTOL, atol=1e-9)


@pytest.mark.parametrize("loss_name,from_logits", [("sparse", True), ("sparse", False),
                                                   ("categorical", True), ("mse", False)])
def test_kernel_scale_and_without_grad(loss_name: str, from_logits: bool) -> None:
    """`scale` multiplies the gradient only (a loss weight / a global batch larger than the
    piece); with_grad=False leaves dpred untouched and still gives the loss."""
    rng = np.random.default_rng(5)
    b, c = 5, 3
    pred = rng.normal(size=(b, c)).astype(np.float32) if from_logits else probabilities(rng, (b, c))
    if loss_name == "sparse":
        target = sparse_labels(rng, (b,), c)
    elif loss_name == "categorical":
        target = np.eye(c, dtype=np.float32)[rng.integers(0, c, b)]
    else:
        target = rng.normal(size=(b, c)).astype(np.float32)
    loss, dpred = run_kernel(loss_name, from_logits, pred, target, scale=0.3 / 11)
    ref_loss, ref_grad = torch_loss_and_grad(loss_name, from_logits, pred, target, weight=0.3)
    np.testing.assert_allclose(loss, ref_loss, rtol=RTOL)
    np.testing.assert_allclose(dpred, ref_grad * b / 11, rtol=RTOL, atol=1e-9)
    loss2, dpred2 = run_kernel(loss_name, from_logits, pred, target, scale=1.0 / b, with_grad=False)
    np.testing.assert_allclose(loss2, ref_loss, rtol=RTOL)
    assert np.all(dpred2 == -123.0)


# ---------------------------------------------------------------------------------------------
# end to end through the executor
# ---------------------------------------------------------------------------------------------

CASES = [
    ("sparse", True, "flat", 9),
    ("sparse", True, "column", 13),
    ("sparse", False, "flat", 13),
    ("sparse", False, "column", 9),
    ("categorical", True, None, 9),
    ("categorical", False, None, 13),
    ("mse", False, None, 9),
    ("mse", False, "column", 13),   # one output unit, targets of shape (batch,)
]


def _loss_object(loss_name: str, from_logits: bool) -> L.LossFunction:
    if loss_name == "sparse":
        return L.SparseCategoricalCrossentropy(from_logits=from_logits)
    if loss_name == "categorical":
        return L.CategoricalCrossentropy(from_logits=from_logits)
    return L.MeanSquaredError()


@pytest.mark.parametrize("loss_name,from_logits,target_form,batch", CASES)
def test_loss_through_executor(loss_name: str, from_logits: bool, target_form: str | None,
                               batch: int) -> None:
    rng = np.random.default_rng(batch * 10 + len(loss_name))
    d = 4
    c = 1 if (loss_name == "mse" and target_form == "column") else 5
    # probabilities come from a fused softmax; large weights saturate some rows into the clip
    activation = "linear" if (from_logits or loss_name == "mse") else "softmax"
    g = ComputationGraph()
    xin = g.add_input(TensorShape((None, d)), "x")
    (out,) = g.add_node(Linear(c, activation=activation), [xin], "dense")
    ex = GraphExecutor(g, [out])
    kernel = (rng.normal(size=(d, c)) * (6.0 if activation == "softmax" else 1.0)).astype(np.float32)
    bias = rng.normal(size=(c,)).astype(np.float32)
    (kkey, _), (bkey, _) = ex.weight_specs()
    ex.set_weight(kkey, kernel)
    ex.set_weight(bkey, bias)

    xs = rng.normal(size=(batch, d)).astype(np.float32)
    if loss_name == "sparse":
        target = rng.integers(0, c, size=(batch,) if target_form == "flat" else (batch, 1))
    elif loss_name == "categorical":
        target = np.eye(c, dtype=np.float32)[rng.integers(0, c, batch)]
    elif target_form == "column":
        target = rng.normal(size=(batch,)).astype(np.float32)
    else:
        target = rng.normal(size=(batch, c)).astype(np.float32)

    obj = Objective((_loss_object(loss_name, from_logits),), ((),))
    res = ex.train_step({xin: xs}, [target], obj, CaptureGrads(), 0.0, 1)
    grads = captured_grads(ex)

    tk = torch.tensor(kernel, dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    z = torch.tensor(xs, dtype=torch.float64) @ tk + tb
    pred = torch.softmax(z, dim=-1) if activation == "softmax" else z
    per = _per_token(loss_name, from_logits, pred, target)
    per.mean().backward()

    if activation == "softmax":
        q = pred.detach().numpy()
        assert np.any(q.max(axis=-1) > 1 - EPS) or np.any(q.min(axis=-1) < EPS), \
            "the data should reach the clip range"
    assert res.applied
    assert res.loss.shape == (batch,)
    np.testing.assert_allclose(res.loss, per.detach().numpy(), rtol=RTOL)
    np.testing.assert_allclose(grads[kkey], tk.grad.numpy(), rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(grads[bkey], tb.grad.numpy(), rtol=RTOL, atol=1e-6)
    # the capturing rule leaves the weights alone
    np.testing.assert_array_equal(ex.get_weight(kkey), kernel)
    np.testing.assert_array_equal(ex.get_weight(bkey), bias)


def test_loss_weights_through_executor() -> None:
    """Objective.loss_weights scales both the reported loss and the gradient."""
    rng = np.random.default_rng(7)
    b, d, c = 9, 3, 4
    g = ComputationGraph()
    xin = g.add_input(TensorShape((None, d)), "x")
    (out,) = g.add_node(Linear(c), [xin], "dense")
    ex = GraphExecutor(g, [out])
    kernel = rng.normal(size=(d, c)).astype(np.float32)
    bias = np.zeros(c, np.float32)
    (kkey, _), (bkey, _) = ex.weight_specs()
    ex.set_weight(kkey, kernel)
    ex.set_weight(bkey, bias)
    xs = rng.normal(size=(b, d)).astype(np.float32)
    lab = rng.integers(0, c, b)
    obj = Objective((L.SparseCategoricalCrossentropy(from_logits=True),), ((),), loss_weights=(2.5,))
    res = ex.train_step({xin: xs}, [lab], obj, CaptureGrads(), 0.0, 1)
    tk = torch.tensor(kernel, dtype=torch.float64, requires_grad=True)
    per = torch.nn.functional.cross_entropy(torch.tensor(xs, dtype=torch.float64) @ tk,
                                            torch.tensor(lab), reduction="none")
    (2.5 * per.mean()).backward()
    np.testing.assert_allclose(res.loss, 2.5 * per.detach().numpy(), rtol=RTOL)
    np.testing.assert_allclose(captured_grads(ex)[kkey], tk.grad.numpy(), rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("from_logits", [True, False])
def test_sparse_ce_kernel_many_classes(from_logits: bool) -> None:
    """The row-wise kernel (no one-hot matrix) at a size where rows and classes are many."""
    rng = np.random.default_rng(5)
    b, c = 96, 300
    pred = (rng.normal(size=(b, c)) * 4).astype(np.float32) if from_logits else probabilities(rng, (b, c))
    lab = sparse_labels(rng, (b,), c)
    loss, dpred = run_kernel("sparse", from_logits, pred, lab, scale=1.0 / b)
    ref_loss, ref_grad = torch_loss_and_grad("sparse", from_logits, pred, lab)
    np.testing.assert_allclose(loss, ref_loss, rtol=RTOL)
    np.testing.assert_allclose(dpred, ref_grad, rtol=RTOL, atol=1e-9)
