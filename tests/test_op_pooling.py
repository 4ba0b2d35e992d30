"""Max / average / global average pooling through the executor vs PyTorch: pool sizes, strides,
valid and TF "same" padding (max ignores padding, average divides by the real pixels), both
data formats, ties, odd sizes and forced batch splits; the Keras layers; bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from op_check import FixedSplitExecutor, check_op, randn
from unity_legion import keras
from unity_legion.operators.base import OperatorError
from unity_legion.operators.pooling import GlobalAvgPool2D, Pool2D
from unity_legion.operators.spatial import out_size_and_pads
from unity_legion.types import TensorShape


def torch_pool(x: torch.Tensor, mode: str, pool, strides, padding: str,
               channels_first: bool) -> torch.Tensor:
    """Keras pooling in torch: explicit TF "same" pads; -inf for max, excluded from averages."""
    xt = x if channels_first else x.permute(0, 3, 1, 2)
    h, w = xt.shape[2:]
    _, pt, pb = out_size_and_pads(h, pool[0], strides[0], 1, padding, "t", "p")
    _, pl, pr = out_size_and_pads(w, pool[1], strides[1], 1, padding, "t", "p")
    pads = (pl, pr, pt, pb)
    if mode == "max":
        out = F.max_pool2d(F.pad(xt, pads, value=-np.inf), pool, strides)
    else:
        total = F.avg_pool2d(F.pad(xt, pads), pool, strides, divisor_override=1)
        count = F.avg_pool2d(F.pad(torch.ones_like(xt[:1, :1]), pads), pool, strides,
                             divisor_override=1)
        out = total / count
    return out if channels_first else out.permute(0, 2, 3, 1)


# (mode, batch, H, W, C, pool, strides, padding, channels_first)
CASES = [
    ("max", 3, 7, 5, 3, (2, 2), None, "valid", False),
    ("max", 7, 7, 9, 2, (3, 3), (2, 2), "same", False),
    ("max", 5, 8, 7, 3, (3, 2), (1, 3), "same", True),
    ("max", 1, 5, 5, 1, (5, 5), (1, 1), "valid", False),
    ("max", 9, 6, 5, 4, (2, 3), (3, 1), "valid", True),
    ("avg", 3, 7, 5, 3, (2, 2), None, "valid", False),
    ("avg", 7, 7, 9, 2, (3, 3), (2, 2), "same", False),
    ("avg", 5, 8, 7, 3, (3, 2), (1, 3), "same", True),
    ("avg", 13, 5, 6, 2, (3, 3), (1, 1), "same", False),
    ("avg", 3, 9, 6, 5, (4, 2), (3, 2), "valid", True),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}{i}" for i, c in enumerate(CASES)])
def test_pool2d_matches_torch(case: tuple) -> None:
    mode, b, h, w, c, pool, strides, pad, cf = case
    rng = np.random.default_rng(b * 31 + h)
    x = randn(rng, b, c, h, w) if cf else randn(rng, b, h, w, c)
    op = Pool2D(mode, pool, strides, pad, "channels_first" if cf else "channels_last")
    check_op(op, [x], lambda x: torch_pool(x, mode, pool, strides or pool, pad, cf))


def test_maxpool_ties_route_gradient_to_first_maximum() -> None:
    """Small integers make ties common: the gradient goes to the first maximum (as torch)."""
    rng = np.random.default_rng(2)
    x = rng.integers(0, 3, size=(5, 6, 7, 2)).astype(np.float32)
    run = check_op(Pool2D("max", (3, 3), (2, 2), "same"), [x],
                   lambda x: torch_pool(x, "max", (3, 3), (2, 2), "same", False))
    # every output's gradient lands on exactly one input pixel: the totals agree
    np.testing.assert_allclose(run.input_grads[0].sum(), run.output_grads[0].sum(), rtol=1e-4)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("degree", [2, 3])
def test_pool2d_forced_splits(mode: str, degree: int) -> None:
    rng = np.random.default_rng(degree)
    x = randn(rng, 7, 7, 6, 3)
    check_op(Pool2D(mode, 3, 2, "same"), [x],
             lambda x: torch_pool(x, mode, (3, 3), (2, 2), "same", False),
             executor=lambda *a, **kw: FixedSplitExecutor(*a, degree=degree, **kw))


@pytest.mark.parametrize("cf", [False, True])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_avg_pool_matches_torch(cf: bool, keepdims: bool) -> None:
    rng = np.random.default_rng(int(cf) * 2 + int(keepdims))
    x = randn(rng, 5, 3, 7, 5) if cf else randn(rng, 5, 7, 5, 3)
    axes = (2, 3) if cf else (1, 2)
    op = GlobalAvgPool2D("channels_first" if cf else "channels_last", keepdims)
    run = check_op(op, [x], lambda x: x.mean(dim=axes, keepdim=keepdims),
                   executor=lambda *a, **kw: FixedSplitExecutor(*a, degree=3, **kw))
    want = ((5, 3, 1, 1) if cf else (5, 1, 1, 3)) if keepdims else (5, 3)
    assert run.outputs[0].shape == want


def test_pool_shapes() -> None:
    assert Pool2D("max").infer_outputs([TensorShape((None, 7, 5, 3))])[0].dims == (None, 3, 2, 3)
    same = Pool2D("avg", 3, 2, "same", "channels_first")
    assert same.infer_outputs([TensorShape((None, 4, 7, 5))])[0].dims == (None, 4, 4, 3)
    assert Pool2D("max", 2, 1).strides == (1, 1)
    assert Pool2D("max", (3, 2)).strides == (3, 2)


def test_pool_bad_arguments() -> None:
    with pytest.raises(OperatorError, match=r"pool height 3 is larger than the input \(2\)"):
        Pool2D("max", 3).infer_outputs([TensorShape((None, 2, 5, 1))])
    with pytest.raises(OperatorError, match="strides must be positive"):
        Pool2D("avg", 2, 0)
    with pytest.raises(OperatorError, match="pool_size must be an integer or a tuple of 2"):
        Pool2D("avg", "2")
    with pytest.raises(OperatorError, match="padding must be 'valid' or 'same'"):
        Pool2D("max", 2, padding="full")
    with pytest.raises(OperatorError, match="mode must be 'max' or 'avg'"):
        Pool2D("min")
    with pytest.raises(OperatorError, match="expects a rank-4 input"):
        Pool2D("max").infer_outputs([TensorShape((None, 4, 4))])
    with pytest.raises(OperatorError, match="expects a rank-4 input"):
        GlobalAvgPool2D().infer_outputs([TensorShape((None, 4, 4, 2, 2))])
    with pytest.raises(OperatorError, match="keepdims must be a bool"):
        GlobalAvgPool2D(keepdims="yes")


# ---------------------------------------------------------------------------------------------
# Keras layers
# ---------------------------------------------------------------------------------------------

def test_pooling_layers_in_a_model() -> None:
    rng = np.random.default_rng(4)
    inp = keras.Input((9, 8, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same", name="c")
    h = keras.layers.MaxPooling2D(padding="same")(conv(inp))
    h = keras.layers.AveragePooling2D(3, strides=1, padding="same")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    dense = keras.layers.Dense(2)
    model = keras.Model(inp, dense(h))
    assert h.shape == (None, 4)
    x = randn(rng, 7, 9, 8, 3)
    kernel, bias = conv.get_weights()
    dk, db = dense.get_weights()
    xt = torch.tensor(x)
    t = F.conv2d(F.pad(xt.permute(0, 3, 1, 2), (1, 1, 1, 1)),
                 torch.tensor(kernel).permute(3, 2, 0, 1), torch.tensor(bias)).permute(0, 2, 3, 1)
    t = torch_pool(t, "max", (2, 2), (2, 2), "same", False)
    t = torch_pool(t, "avg", (3, 3), (1, 1), "same", False).mean(dim=(1, 2))
    want = t.numpy() @ dk + db
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-4, atol=1e-5)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    history = model.fit(x, randn(rng, 7, 2), batch_size=3, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_pooling_layers_config_and_channels_first() -> None:
    inp = keras.Input((3, 7, 6))
    mp = keras.layers.MaxPooling2D((3, 2), strides=(2, 1), data_format="channels_first")
    gap = keras.layers.GlobalAveragePooling2D(data_format="channels_first", keepdims=True)
    h = mp(inp)
    out = gap(h)
    assert h.shape == (None, 3, 3, 5) and out.shape == (None, 3, 1, 1)
    assert mp.get_config() | {"name": None} == {
        "name": None, "trainable": True, "pool_size": (3, 2), "strides": (2, 1),
        "padding": "valid", "data_format": "channels_first"}
    assert gap.get_config()["keepdims"] is True
    assert keras.layers.AveragePooling2D(3).get_config()["strides"] == (3, 3)
    assert keras.layers.MaxPooling2D(2).get_weights() == []


def test_pooling_layer_bad_arguments() -> None:
    with pytest.raises(ValueError, match="MaxPooling2D: .*padding must be 'valid' or 'same'"):
        keras.layers.MaxPooling2D(padding="causal")
    with pytest.raises(ValueError, match="AveragePooling2D: .*pool_size must be positive"):
        keras.layers.AveragePooling2D(0)
    with pytest.raises(ValueError, match="GlobalAveragePooling2D: .*data_format must be"):
        keras.layers.GlobalAveragePooling2D(data_format="NCHW")
    with pytest.raises(TypeError, match="MaxPooling2D: unknown argument"):
        keras.layers.MaxPooling2D(bogus=1)
    with pytest.raises(ValueError, match=r"pool height 3 is larger than the input \(2\)"):
        keras.layers.MaxPooling2D(3)(keras.Input((2, 4, 1)))
