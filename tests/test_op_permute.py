"""Permute, Softmax over any non-batch axis (or axes) and Identity vs PyTorch, odd batches and
forced splits; the three layers in one model; bad input."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pytest
import torch

from op_check import FixedSplitExecutor, assert_close, check_op, randn, run_op
from unity_legion import keras
from unity_legion.keras.layers import Identity, Input, Permute, Softmax
from unity_legion.operators.base import OperatorError
from unity_legion.operators.permute import Identity as IdentityOp
from unity_legion.operators.permute import Permute as PermuteOp
from unity_legion.operators.softmax import Softmax as SoftmaxOp
from unity_legion.types import DataType, TensorShape


def _split(degree: int) -> Any:
    return partial(FixedSplitExecutor, degree=degree)


@pytest.mark.parametrize("dims,shape,batch,degree", [
    ((2, 1), (3, 5), 13, 5),
    ((3, 1, 2), (2, 3, 4), 7, 3),
    ((1, 3, 2), (2, 3, 4), 1, 1),
    ((1,), (6,), 3, 2),
])
def test_permute_matches_torch(dims: tuple[int, ...], shape: tuple[int, ...], batch: int,
                               degree: int) -> None:
    rng = np.random.default_rng(batch)
    run = check_op(PermuteOp(dims), [randn(rng, batch, *shape)],
                   lambda t: t.permute((0,) + dims), executor=_split(degree))
    assert run.outputs[0].shape == (batch,) + tuple(shape[d - 1] for d in dims)


def torch_softmax(axes: tuple[int, ...]):
    def ref(t: torch.Tensor) -> torch.Tensor:
        dims = tuple(a % t.dim() for a in axes)
        return torch.exp(t - torch.logsumexp(t, dim=dims, keepdim=True))
    return ref


@pytest.mark.parametrize("axes,shape,batch,degree", [
    ((-1,), (7,), 13, 5),
    ((1,), (4, 5), 3, 3),
    ((-2,), (2, 3, 4), 7, 3),
    ((1, 2), (4, 5), 9, 5),
    ((3, 1), (2, 3, 4), 5, 2),
])
def test_softmax_axis_matches_torch(axes: tuple[int, ...], shape: tuple[int, ...], batch: int,
                                    degree: int) -> None:
    rng = np.random.default_rng(batch + len(axes))
    x = (3.0 * randn(rng, batch, *shape)).astype(np.float32)
    run = check_op(SoftmaxOp(axes), [x], torch_softmax(axes), executor=_split(degree))
    ax = tuple(a % x.ndim for a in axes)
    np.testing.assert_allclose(run.outputs[0].sum(axis=ax), 1.0, rtol=1e-5)


def test_softmax_single_axis_equals_torch_softmax() -> None:
    rng = np.random.default_rng(1)
    check_op(SoftmaxOp(1), [randn(rng, 11, 6, 4)], lambda t: torch.softmax(t, dim=1))


@pytest.mark.parametrize("batch,degree", [(1, 1), (13, 5)])
def test_identity_matches_torch(batch: int, degree: int) -> None:
    rng = np.random.default_rng(batch)
    run = check_op(IdentityOp(), [randn(rng, batch, 3, 4)], lambda t: t * 1.0,
                   executor=_split(degree))
    np.testing.assert_array_equal(run.outputs[0], run.inputs[0])
    np.testing.assert_array_equal(run.input_grads[0], run.output_grads[0])


def test_identity_passes_integers() -> None:
    ids = np.arange(21, dtype=np.int64).reshape(7, 3)
    run = run_op(IdentityOp(), [ids], executor=_split(3))
    np.testing.assert_array_equal(run.outputs[0], ids)


def test_layers_in_a_model() -> None:
    rng = np.random.default_rng(2)
    inp = Input((3, 5))
    perm, soft, ident = Permute((2, 1)), Softmax(axis=1), Identity()
    h = ident(soft(perm(inp)))
    assert h.shape == (None, 5, 3)
    dense = keras.layers.Dense(2)
    model = keras.Model(inp, dense(keras.layers.Flatten()(h)))
    x = randn(rng, 11, 3, 5)
    kernel, bias = dense.get_weights()
    probs = torch.softmax(torch.tensor(x).permute(0, 2, 1), dim=1).numpy()
    assert_close(model.predict(x, batch_size=4, verbose=0), probs.reshape(11, -1) @ kernel + bias,
                 "predict vs torch")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit(x, randn(rng, 11, 2), batch_size=4, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and all(np.isfinite(history.history["loss"]))
    assert perm.get_config()["dims"] == (2, 1) and soft.get_config()["axis"] == 1
    assert Softmax(axis=(1, 2)).get_config()["axis"] == [1, 2]


def test_permute_bad_input() -> None:
    with pytest.raises(ValueError, match=r"dims \(1, 3\) is not a permutation of 1..2"):
        Permute((1, 3))
    with pytest.raises(ValueError, match=r"dims \(0, 1\) is not a permutation of 1..2 "
                                         r"\(indices start at 1"):
        Permute((0, 1))
    with pytest.raises(ValueError, match=r"dims \(1, 1\) is not a permutation"):
        Permute((1, 1))
    with pytest.raises(ValueError, match=r"dims \(\) is not a permutation"):
        Permute(())
    with pytest.raises(ValueError, match="dims must be a tuple of integers"):
        Permute(2)
    with pytest.raises(ValueError, match="dims must be a tuple of integers"):
        Permute((1.0, 2.0))
    with pytest.raises(ValueError, match=r"dims \(2, 1\) permute 2 dims, but the input "
                                         r"\(None, 3, 4, 5\) has 3 non-batch dims"):
        Permute((2, 1))(Input((3, 4, 5)))
    with pytest.raises(TypeError, match="Permute: unknown argument"):
        Permute((1,), bogus=1)


def test_softmax_bad_input() -> None:
    with pytest.raises(ValueError, match="axis 0 is the batch axis"):
        Softmax(axis=0)(Input((3,)))
    with pytest.raises(ValueError, match="axis -3 is the batch axis"):
        Softmax(axis=-3)(Input((3, 4)))
    with pytest.raises(ValueError, match="axis 3 is out of range for an input of rank 3"):
        Softmax(axis=3)(Input((3, 4)))
    with pytest.raises(ValueError, match=r"axis \(1, -2\) repeats an axis"):
        Softmax(axis=(1, -2))(Input((3, 4)))
    with pytest.raises(ValueError, match="axis must be an integer or a non-empty list"):
        Softmax(axis="last")
    with pytest.raises(ValueError, match="axis must be an integer or a non-empty list"):
        Softmax(axis=[])
    with pytest.raises(ValueError, match="expects a floating-point input, got int32"):
        Softmax()(Input((3,), dtype="int32"))
    with pytest.raises(ValueError, match="the mask argument is not supported"):
        Softmax()(Input((3,)), mask=Input((3,), dtype="bool"))
    with pytest.raises(OperatorError, match="takes 1 input"):
        SoftmaxOp().infer_outputs([TensorShape((2, 3))] * 2)


def test_identity_bad_input() -> None:
    with pytest.raises(OperatorError, match="needs a batch dimension"):
        IdentityOp().infer_outputs([TensorShape(())])
    with pytest.raises(ValueError, match="takes one input, got 2"):
        Identity()([Input((3,)), Input((3,))])
    assert Identity()(Input((3,), dtype="bool")).tensor_shape.dtype is DataType.BOOL
