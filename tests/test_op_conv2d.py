"""Conv2D through the executor vs PyTorch: strides, same/valid padding, dilation, groups
(depthwise included), bias on/off, fused activations, channels_first, odd sizes and forced batch
splits; the Keras layer in a small model; bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from op_check import FixedSplitExecutor, check_op, randn
from unity_legion import keras
from unity_legion.operators.base import OperatorError
from unity_legion.operators.conv2d import Conv2D as Conv2DOp
from unity_legion.operators.spatial import out_size_and_pads
from unity_legion.types import TensorShape

TORCH_ACT = {"linear": lambda t: t, "relu": torch.relu, "tanh": torch.tanh,
             "sigmoid": torch.sigmoid, "softmax": lambda t: torch.softmax(t, -1)}


def torch_conv(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None, *, strides,
               padding: str, dilation, groups: int, channels_first: bool,
               act: str = "linear") -> torch.Tensor:
    """Keras' Conv2D in torch: TF "same" pads (odd pixel after) made explicit with F.pad."""
    xt = x if channels_first else x.permute(0, 3, 1, 2)
    kh, kw = kernel.shape[:2]
    h, w = xt.shape[2:]
    _, pt, pb = out_size_and_pads(h, kh, strides[0], dilation[0], padding, "t", "k")
    _, pl, pr = out_size_and_pads(w, kw, strides[1], dilation[1], padding, "t", "k")
    xt = F.pad(xt, (pl, pr, pt, pb))
    out = F.conv2d(xt, kernel.permute(3, 2, 0, 1), bias, stride=tuple(strides),
                   dilation=tuple(dilation), groups=groups)
    out = out if channels_first else out.permute(0, 2, 3, 1)
    return TORCH_ACT[act](out)


# (batch, H, W, C, filters, kernel, strides, padding, dilation, groups, bias, act, channels_first)
CASES = [
    (3, 7, 5, 3, 5, (3, 3), (1, 1), "valid", (1, 1), 1, True, "linear", False),
    (7, 9, 7, 2, 3, (3, 2), (2, 2), "same", (1, 1), 1, False, "relu", False),
    (5, 8, 9, 3, 4, (2, 3), (2, 3), "valid", (1, 1), 1, True, "tanh", True),
    (3, 11, 9, 3, 3, (3, 3), (1, 1), "same", (2, 3), 1, True, "sigmoid", False),
    (1, 9, 10, 4, 6, (3, 3), (1, 2), "same", (1, 1), 2, True, "linear", True),
    (13, 6, 7, 3, 3, (3, 3), (1, 1), "same", (1, 1), 3, False, "linear", False),   # depthwise
    (3, 7, 7, 3, 6, (3, 1), (2, 1), "valid", (2, 1), 3, True, "relu", False),      # depthwise x2
    (9, 5, 5, 6, 9, (1, 1), (1, 1), "valid", (1, 1), 3, True, "softmax", True),
    (3, 6, 5, 5, 7, (5, 5), (3, 3), "same", (1, 1), 1, True, "linear", False),
    (2, 4, 4, 3, 2, (4, 4), (1, 1), "valid", (1, 1), 1, True, "linear", False),    # kernel = input
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_conv2d_matches_torch(case: tuple) -> None:
    b, h, w, c, f, k, s, pad, d, g, bias, act, cf = case
    rng = np.random.default_rng(sum(case[:5]))
    x = randn(rng, b, c, h, w) if cf else randn(rng, b, h, w, c)
    op = Conv2DOp(f, k, s, pad, "channels_first" if cf else "channels_last", d, g, act, bias)

    def ref(x, kernel, bias=None):
        return torch_conv(x, kernel, bias, strides=s, padding=pad, dilation=d, groups=g,
                          channels_first=cf, act=act)

    run = check_op(op, [x], ref)
    assert run.weights["kernel"].shape == (k[0], k[1], c // g, f)
    assert set(run.weight_grads) == ({"kernel", "bias"} if bias else {"kernel"})


@pytest.mark.parametrize("degree", [2, 3, 4])
def test_conv2d_forced_splits(degree: int) -> None:
    """Results do not depend on how the batch is split (more pieces than processors too)."""
    rng = np.random.default_rng(degree)
    x = randn(rng, 7, 6, 5, 4)
    op = Conv2DOp(6, 3, 2, "same", groups=2, activation="relu")

    def ref(x, kernel, bias):
        return torch_conv(x, kernel, bias, strides=(2, 2), padding="same", dilation=(1, 1),
                          groups=2, channels_first=False, act="relu")

    check_op(op, [x], ref, executor=lambda *a, **kw: FixedSplitExecutor(*a, degree=degree, **kw))


def test_conv2d_large_batch_uses_several_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels process samples in chunks of bounded scratch: force one sample per chunk."""
    import unity_legion.operators.conv2d as conv_mod
    monkeypatch.setattr(conv_mod, "_CHUNK_ELEMENTS", 1)
    rng = np.random.default_rng(3)
    x = randn(rng, 5, 5, 6, 4)
    op = Conv2DOp(3, (2, 3), 1, "same", groups=1)

    def ref(x, kernel, bias):
        return torch_conv(x, kernel, bias, strides=(1, 1), padding="same", dilation=(1, 1),
                          groups=1, channels_first=False)

    # kernels run in this process's task threads: the patched bound is seen by them too
    check_op(op, [x], ref)


def test_conv2d_shapes_and_flops() -> None:
    op = Conv2DOp(8, 3, 2, "same")
    s = TensorShape((None, 9, 7, 3))
    (out,) = op.infer_outputs([s])
    assert out.dims == (None, 5, 4, 8)
    bound = TensorShape((2, 9, 7, 3))
    assert op.flops([bound]) == 2 * 2 * 5 * 4 * 8 * 3 * 9
    cf = Conv2DOp(8, 3, 1, "valid", "channels_first", groups=1)
    assert cf.infer_outputs([TensorShape((None, 3, 9, 7))])[0].dims == (None, 8, 7, 5)


def test_conv2d_bad_arguments() -> None:
    with pytest.raises(OperatorError, match=r"kernel height 5 is larger than the input \(4\)"):
        Conv2DOp(2, 5).infer_outputs([TensorShape((None, 4, 6, 3))])
    with pytest.raises(OperatorError, match=r"kernel width 3 \(dilated to 7\) is larger"):
        Conv2DOp(2, 3, dilation_rate=3).infer_outputs([TensorShape((None, 8, 6, 3))])
    with pytest.raises(OperatorError, match=r"groups \(2\) must divide the input channels \(3\)"):
        Conv2DOp(4, 3, groups=2).infer_outputs([TensorShape((None, 8, 8, 3))])
    with pytest.raises(OperatorError, match=r"groups \(3\) must divide filters \(4\)"):
        Conv2DOp(4, 3, groups=3)
    with pytest.raises(OperatorError, match="expects a rank-4 input"):
        Conv2DOp(4, 3).infer_outputs([TensorShape((None, 8, 8))])
    with pytest.raises(OperatorError, match="padding must be 'valid' or 'same'"):
        Conv2DOp(4, 3, padding="full")
    with pytest.raises(OperatorError, match="strides must be positive"):
        Conv2DOp(4, 3, strides=(0, 1))
    with pytest.raises(OperatorError, match="kernel_size must be an integer or a tuple of 2"):
        Conv2DOp(4, (3, 3, 3))
    with pytest.raises(OperatorError, match="filters must be a positive integer"):
        Conv2DOp(0, 3)
    with pytest.raises(OperatorError, match="data_format must be"):
        Conv2DOp(4, 3, data_format="NHWC")


# ---------------------------------------------------------------------------------------------
# Keras layer
# ---------------------------------------------------------------------------------------------

def test_conv2d_layer_predict_and_fit() -> None:
    rng = np.random.default_rng(0)
    inp = keras.Input((9, 8, 3))
    conv = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu",
                               name="conv")
    h = conv(inp)
    out = keras.layers.Dense(2)(keras.layers.Flatten()(h))
    model = keras.Model(inp, out)
    assert h.shape == (None, 5, 4, 4)
    kernel, bias = conv.get_weights()
    assert kernel.shape == (3, 3, 3, 4) and bias.shape == (4,)
    bias = rng.normal(size=4).astype(np.float32)
    conv.set_weights([kernel, bias])
    x = randn(rng, 7, 9, 8, 3)
    dense_kernel, dense_bias = model.layers[-1].get_weights()
    hidden = torch_conv(torch.tensor(x), torch.tensor(kernel), torch.tensor(bias), strides=(2, 2),
                        padding="same", dilation=(1, 1), groups=1, channels_first=False, act="relu")
    want = hidden.reshape(7, -1).numpy() @ dense_kernel + dense_bias
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-4, atol=1e-5)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    history = model.fit(x, randn(rng, 7, 2), batch_size=3, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.array_equal(conv.get_weights()[0], kernel)


def test_conv2d_layer_channels_first_groups_config() -> None:
    inp = keras.Input((4, 7, 6))
    conv = keras.layers.Conv2D(6, (3, 2), data_format="channels_first", dilation_rate=(2, 1),
                               groups=2, use_bias=False, kernel_initializer="he_normal")
    out = conv(inp)
    model = keras.Model(inp, out)  # noqa: F841 (layers hold their model weakly)
    assert out.shape == (None, 6, 3, 5)
    (kernel,) = conv.get_weights()
    assert kernel.shape == (3, 2, 2, 6)
    cfg = conv.get_config()
    assert cfg["filters"] == 6 and cfg["kernel_size"] == (3, 2) and cfg["strides"] == (1, 1)
    assert cfg["data_format"] == "channels_first" and cfg["groups"] == 2
    assert cfg["dilation_rate"] == (2, 1) and cfg["use_bias"] is False
    assert cfg["activation"] == "linear" and cfg["kernel_initializer"] == "he_normal"


def test_conv2d_layer_bad_arguments() -> None:
    with pytest.raises(ValueError, match="filters must be a positive integer"):
        keras.layers.Conv2D(0, 3)
    with pytest.raises(ValueError, match="padding must be 'valid' or 'same'"):
        keras.layers.Conv2D(2, 3, padding="causal")
    with pytest.raises(ValueError, match="unknown activation"):
        keras.layers.Conv2D(2, 3, activation="swish")
    with pytest.raises(ValueError, match="unknown initializer"):
        keras.layers.Conv2D(2, 3, kernel_initializer="bogus")
    with pytest.raises(ValueError, match=r"groups \(2\) must divide filters \(3\)"):
        keras.layers.Conv2D(3, 3, groups=2)
    with pytest.raises(TypeError, match="Conv2D: unknown argument"):
        keras.layers.Conv2D(2, 3, bogus=1)
    inp = keras.Input((4, 4, 3))
    with pytest.raises(ValueError, match=r"kernel height 5 is larger than the input \(4\)"):
        keras.layers.Conv2D(2, 5)(inp)
    with pytest.raises(ValueError, match=r"groups \(2\) must divide the input channels \(3\)"):
        keras.layers.Conv2D(4, 3, groups=2)(inp)
