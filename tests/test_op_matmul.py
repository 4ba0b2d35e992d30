"""BatchMatmul and the Keras Dot layer vs PyTorch: ranks 2-4, every transpose, normalize (with
zero and tiny vectors hitting the norm floor), odd batches and forced splits; Dot's axes in Keras'
forms; a Dot model; bad input."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pytest
import torch

from op_check import FixedSplitExecutor, assert_close, check_op, randn
from unity_legion import keras
from unity_legion.keras.layers import Dot, Input
from unity_legion.operators.base import OperatorError
from unity_legion.operators.matmul import NORM_EPSILON, BatchMatmul
from unity_legion.types import DataType, TensorShape


def t_normalize(v: torch.Tensor, dim: int) -> torch.Tensor:
    """Keras' l2 normalisation: v * min(1/||v||, 1/eps) (clamping the squared norm keeps the
    gradient finite at 0)."""
    return v * torch.rsqrt(torch.clamp((v * v).sum(dim, keepdim=True), min=NORM_EPSILON ** 2))


def torch_bmm(ta: bool, tb: bool, normalize: bool):
    def ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        vectors = a.dim() == 2
        if vectors:
            a, b = a[:, None, :], b[:, :, None]
        else:
            a = a.transpose(-1, -2) if ta else a
            b = b.transpose(-1, -2) if tb else b
        if normalize:
            a, b = t_normalize(a, -1), t_normalize(b, -2)
        out = a @ b
        return out[:, :, 0] if vectors else out
    return ref


def _split(degree: int) -> Any:
    return partial(FixedSplitExecutor, degree=degree)


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("batch,degree,normalize", [(1, 1, False), (7, 3, False), (13, 5, True)])
def test_batch_matmul_rank3(ta: bool, tb: bool, batch: int, degree: int, normalize: bool) -> None:
    rng = np.random.default_rng(batch + 2 * ta + tb)
    m, k, n = 3, 5, 7
    a = randn(rng, batch, *((k, m) if ta else (m, k)))
    b = randn(rng, batch, *((n, k) if tb else (k, n)))
    if normalize:  # a zero and a tiny vector (norm 1e-9 < epsilon): the norm floor holds
        (a[0, :, 0] if ta else a[0, 0, :])[...] = 0.0
        (a[-1, :, 1] if ta else a[-1, 1, :])[...] *= 1e-9
    run = check_op(BatchMatmul(ta, tb, normalize), [a, b], torch_bmm(ta, tb, normalize),
                   executor=_split(degree))
    assert run.outputs[0].shape == (batch, m, n)


def test_batch_matmul_rank4_and_self_product() -> None:
    rng = np.random.default_rng(3)
    a, b = randn(rng, 9, 2, 3, 4), randn(rng, 9, 2, 4, 5)
    run = check_op(BatchMatmul(), [a, b], torch_bmm(False, False, False), executor=_split(5))
    assert run.outputs[0].shape == (9, 2, 3, 5)
    # x @ x^T with one tensor: its gradient sums both operands' contributions
    x = randn(rng, 7, 3, 4)
    check_op(BatchMatmul(transpose_b=True), [x], lambda t: t @ t.transpose(-1, -2),
             input_ids=[0, 0], executor=_split(3))


@pytest.mark.parametrize("batch,normalize", [(13, False), (3, True)])
def test_batch_matmul_rank2_vectors(batch: int, normalize: bool) -> None:
    rng = np.random.default_rng(4 + batch)
    a, b = randn(rng, batch, 6), randn(rng, batch, 6)
    run = check_op(BatchMatmul(normalize=normalize), [a, b], torch_bmm(False, False, normalize),
                   executor=_split(3))
    assert run.outputs[0].shape == (batch, 1)


def test_batch_matmul_shapes_and_errors() -> None:
    op = BatchMatmul(transpose_a=True)
    assert op.infer_outputs([TensorShape((None, 4, 3)), TensorShape((None, 4, 5))]) == (
        TensorShape((None, 3, 5)),)
    assert op.flops([TensorShape((2, 4, 3)), TensorShape((2, 4, 5))]) == 2 * 2 * 3 * 5 * 4
    with pytest.raises(OperatorError, match=r"contracted dims differ: 3 in \(None, 2, 3\) "
                                            r"\(transpose_a=False\) and 4"):
        BatchMatmul().infer_outputs([TensorShape((None, 2, 3)), TensorShape((None, 4, 5))])
    with pytest.raises(OperatorError, match="must agree in every dim before the last two"):
        BatchMatmul().infer_outputs([TensorShape((None, 2, 2, 3)), TensorShape((None, 3, 3, 5))])
    with pytest.raises(OperatorError, match="must agree in every dim before the last two"):
        BatchMatmul().infer_outputs([TensorShape((4, 2, 3)), TensorShape((5, 3, 5))])
    with pytest.raises(OperatorError, match="same rank >= 2"):
        BatchMatmul().infer_outputs([TensorShape((None, 2, 3)), TensorShape((None, 3))])
    with pytest.raises(OperatorError, match="transpose_a/transpose_b need rank >= 3"):
        BatchMatmul(transpose_b=True).infer_outputs([TensorShape((None, 3))] * 2)
    with pytest.raises(OperatorError, match="expects floating-point inputs"):
        BatchMatmul().infer_outputs([TensorShape((None, 2, 3), DataType.INT64)] * 2)
    with pytest.raises(OperatorError, match="takes 2 input"):
        BatchMatmul().infer_outputs([TensorShape((None, 2, 3))])


# ---------------------------------------------------------------------------------------------
# Dot
# ---------------------------------------------------------------------------------------------

def keras_batch_dot(x: torch.Tensor, y: torch.Tensor, axes: tuple[int, int],
                    normalize: bool) -> torch.Tensor:
    """Keras' Dot for equal ranks 2 or 3, written out in torch."""
    if normalize:
        x, y = t_normalize(x, axes[0]), t_normalize(y, axes[1])
    if x.dim() == 2:
        return (x * y).sum(1, keepdim=True)
    xs = x if axes[0] == 2 else x.transpose(1, 2)     # (b, other, k)
    ys = y if axes[1] == 1 else y.transpose(1, 2)     # (b, k, other)
    return xs @ ys


DOT_CASES = [  # (axes as given, resolved, x shape, y shape)
    (1, (1, 1), (6,), (6,)),
    (-1, (1, 1), (6,), (6,)),
    ((1, 1), (1, 1), (4, 3), (4, 5)),
    ((1, 2), (1, 2), (4, 3), (5, 4)),
    ((2, 1), (2, 1), (3, 4), (4, 5)),
    (2, (2, 2), (3, 4), (5, 4)),
    ((-1, -2), (2, 1), (3, 4), (4, 2)),
]


@pytest.mark.parametrize("axes,resolved,xs,ys", DOT_CASES)
@pytest.mark.parametrize("normalize", [False, True])
def test_dot_layer_matches_keras_semantics(axes: Any, resolved: tuple[int, int],
                                           xs: tuple[int, ...], ys: tuple[int, ...],
                                           normalize: bool) -> None:
    rng = np.random.default_rng(len(xs) * 10 + resolved[0] + resolved[1])
    layer = Dot(axes, normalize=normalize)
    out = layer([Input(xs), Input(ys)])
    assert layer.resolved_axes(layer.input_shapes) == resolved
    x, yv = randn(rng, 7, *xs), randn(rng, 7, *ys)
    run = check_op(layer.op, [x, yv],
                   lambda a, b: keras_batch_dot(a, b, resolved, normalize), executor=_split(3))
    assert run.outputs[0].shape[1:] == out.shape[1:]


def test_dot_in_a_model() -> None:
    rng = np.random.default_rng(5)
    a_in, b_in = Input((4, 3)), Input((5, 3))
    da, db = keras.layers.Dense(6), keras.layers.Dense(6)
    dot = Dot(axes=2, normalize=True)
    out = dot([da(a_in), db(b_in)])
    assert out.shape == (None, 4, 5)
    model = keras.Model([a_in, b_in], keras.layers.Flatten()(out))
    a, b = randn(rng, 11, 4, 3), randn(rng, 11, 5, 3)
    (ka, ba), (kb, bb) = da.get_weights(), db.get_weights()
    want = keras_batch_dot(torch.tensor(a @ ka + ba), torch.tensor(b @ kb + bb), (2, 2), True)
    assert_close(model.predict([a, b], batch_size=4, verbose=0), want.numpy().reshape(11, -1),
                 "predict vs torch")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit([a, b], randn(rng, 11, 20) * 0.1, batch_size=4, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert dot.get_config()["axes"] == 2 and dot.get_config()["normalize"] is True


def test_dot_bad_input() -> None:
    with pytest.raises(TypeError, match="axes must be an integer or a pair of integers"):
        Dot("1")
    with pytest.raises(ValueError, match="axes must be an integer or a pair"):
        Dot((1, 2, 3))
    with pytest.raises(ValueError, match="axes must be an integer or a pair"):
        Dot((1, 1.0))
    with pytest.raises(ValueError, match="axis 0 of input 0 .* is the batch axis"):
        Dot(0)([Input((3,)), Input((3,))])
    with pytest.raises(ValueError, match="axis -3 of input 1 .* is the batch axis"):
        Dot((1, -3))([Input((3, 2)), Input((3, 2))])
    with pytest.raises(ValueError, match="axis 3 is out of range for input 0"):
        Dot((3, 1))([Input((3, 2)), Input((3, 2))])
    with pytest.raises(ValueError, match=r"incompatible input shapes: axis values 3 \(at axis 1\) "
                                         r"!= 4 \(at axis 1\)"):
        Dot(1)([Input((3,)), Input((4,))])
    with pytest.raises(ValueError, match="two inputs of rank 2 or two of rank 3"):
        Dot(1)([Input((3,)), Input((3, 2))])
    with pytest.raises(ValueError, match="two inputs of rank 2 or two of rank 3"):
        Dot(1)([Input((3, 2, 2)), Input((3, 2, 2))])
    with pytest.raises(ValueError, match="Dot takes a list of 2 inputs, got 3"):
        Dot(1)([Input((3,)), Input((3,)), Input((3,))])
    with pytest.raises(ValueError, match="takes a list of inputs"):
        Dot(1)(Input((3,)))
    with pytest.raises(ValueError, match="different dtypes"):
        Dot(1)([Input((3,)), Input((3,), dtype="float64")])
