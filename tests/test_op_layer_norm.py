"""LayerNorm (Keras LayerNormalization) vs PyTorch: trailing and non-trailing axes, several
axes, without scale and/or center, odd batches and forced splits; the layer in a model; bad
input."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from op_check import FixedSplitExecutor, assert_close, check_op, randn
from unity_legion import keras
from unity_legion.keras.layers import Input, LayerNormalization
from unity_legion.operators.base import OperatorError
from unity_legion.operators.layer_norm import LayerNorm
from unity_legion.types import DataType, TensorShape


def torch_layer_norm(axes: tuple[int, ...], epsilon: float, rank: int):
    """The Keras formula written out: moments over `axes` (sorted), gamma/beta broadcast."""
    ax = tuple(sorted(a % rank for a in axes))

    def ref(x: torch.Tensor, gamma: torch.Tensor | None = None,
            beta: torch.Tensor | None = None) -> torch.Tensor:
        mean = x.mean(dim=ax, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=ax, keepdim=True)
        out = (x - mean) / torch.sqrt(var + epsilon)
        shape = [x.shape[d] if d in ax else 1 for d in range(rank)]
        if gamma is not None:
            out = out * gamma.reshape(shape)
        if beta is not None:
            out = out + beta.reshape(shape)
        return out
    return ref


CASES = [  # (input shape after the batch, axes, batch, split degree)
    ((7,), (-1,), 13, 5),
    ((3, 5), (-1,), 3, 3),
    ((4, 5), (1, 2), 7, 3),
    ((4, 5), (1,), 9, 5),
    ((3, 2, 5), (-1, 1), 5, 2),
    ((3, 2, 5), (2,), 1, 1),
]


@pytest.mark.parametrize("shape,axes,batch,degree", CASES)
@pytest.mark.parametrize("scale,center", [(True, True), (True, False), (False, True),
                                          (False, False)])
def test_layer_norm_matches_torch(shape: tuple[int, ...], axes: tuple[int, ...], batch: int,
                                  degree: int, scale: bool, center: bool) -> None:
    rng = np.random.default_rng(batch * 31 + len(shape))
    x = (2.0 * randn(rng, batch, *shape) + 0.7).astype(np.float32)
    op = LayerNorm(axes, 1e-3, center=center, scale=scale)
    run = check_op(op, [x], torch_layer_norm(axes, 1e-3, x.ndim),
                   executor=partial(FixedSplitExecutor, degree=degree))
    names = {"gamma"} if scale else set()
    names |= {"beta"} if center else set()
    assert set(run.weight_grads) == names


def test_matches_torch_layer_norm_and_small_epsilon() -> None:
    """The trailing-axes case against torch's own F.layer_norm, BERT's epsilon 1e-12."""
    rng = np.random.default_rng(1)
    x = randn(rng, 11, 3, 4, 6)
    check_op(LayerNorm((-2, -1), 1e-12), [x],
             lambda t, gamma, beta: F.layer_norm(t, (4, 6), gamma, beta, 1e-12))


def test_saved_statistics_and_costs() -> None:
    op = LayerNorm((1, 3))
    s = TensorShape((None, 2, 3, 4))
    assert op.infer_outputs([s]) == (s,)
    assert [w.shape.dims for w in op.weights([s])] == [(2, 4), (2, 4)]
    assert [sv.shape.dims for sv in op.saved([s])] == [(None, 1, 3, 1)] * 2
    assert op.flops([TensorShape((5, 2, 3, 4))]) == 8 * 120


def test_layer_in_a_model() -> None:
    rng = np.random.default_rng(2)
    inp = Input((4, 6))
    layer = LayerNormalization(epsilon=1e-5, name="ln")
    dense = keras.layers.Dense(2)
    model = keras.Model(inp, dense(keras.layers.Flatten()(layer(inp))))
    assert [w.shape for w in layer.get_weights()] == [(6,), (6,)]
    np.testing.assert_array_equal(layer.get_weights()[0], np.ones(6, np.float32))
    np.testing.assert_array_equal(layer.get_weights()[1], np.zeros(6, np.float32))
    gamma, beta = randn(rng, 6), randn(rng, 6)
    layer.set_weights([gamma, beta])
    x = randn(rng, 13, 4, 6)
    normed = F.layer_norm(torch.tensor(x), (6,), torch.tensor(gamma), torch.tensor(beta), 1e-5)
    kernel, bias = dense.get_weights()
    want = normed.numpy().reshape(13, -1) @ kernel + bias
    assert_close(model.predict(x, batch_size=5, verbose=0), want, "predict vs torch")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit(x, randn(rng, 13, 2), batch_size=4, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and all(np.isfinite(history.history["loss"]))
    assert not np.array_equal(layer.get_weights()[0], gamma)


def test_layer_options_and_config() -> None:
    layer = LayerNormalization(axis=[1, 2], center=False, gamma_initializer="zeros")
    assert layer(Input((3, 4))).shape == (None, 3, 4)
    assert [ws.name for ws in layer.op.weights(layer.input_shapes)] == ["gamma"]
    assert layer.op.weights(layer.input_shapes)[0].shape.dims == (3, 4)
    cfg = layer.get_config()
    assert cfg["axis"] == [1, 2] and cfg["center"] is False and cfg["epsilon"] == 1e-3
    assert cfg["gamma_initializer"] == "zeros"


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="axis 3 is out of range for an input of rank 3"):
        LayerNormalization(axis=3)(Input((3, 4)))
    with pytest.raises(ValueError, match="axis 0 is the batch axis"):
        LayerNormalization(axis=0)(Input((3, 4)))
    with pytest.raises(ValueError, match="axis -3 is the batch axis"):
        LayerNormalization(axis=[-1, -3])(Input((3, 4)))
    with pytest.raises(ValueError, match=r"axis \(2, -1\) repeats an axis"):
        LayerNormalization(axis=[2, -1])(Input((3, 4)))
    with pytest.raises(ValueError, match="axis must be an integer or a list of integers"):
        LayerNormalization(axis="last")
    with pytest.raises(ValueError, match="non-empty list"):
        LayerNormalization(axis=[])
    with pytest.raises(ValueError, match="epsilon must be a positive number, got 0"):
        LayerNormalization(epsilon=0)
    with pytest.raises(ValueError, match="expects a floating-point input, got int64"):
        LayerNormalization()(Input((4,), dtype="int64"))
    with pytest.raises(ValueError, match="rank >= 2"):
        LayerNormalization()(Input(()))
    with pytest.raises(ValueError, match="rms_scaling=True is not supported"):
        LayerNormalization(rms_scaling=True)
    with pytest.raises(ValueError, match="unknown initializer 'nope'"):
        LayerNormalization(beta_initializer="nope")
    with pytest.raises(TypeError, match="LayerNormalization: unknown argument"):
        LayerNormalization(bogus=1)
    with pytest.raises(OperatorError, match="takes 1 input"):
        LayerNorm().infer_outputs([TensorShape((2, 3)), TensorShape((2, 3))])
    with pytest.raises(OperatorError, match="floating-point"):
        LayerNorm().infer_outputs([TensorShape((2, 3), DataType.BOOL)])
