"""ZeroPadding2D through the executor vs PyTorch (F.pad): every padding form, both data formats,
odd sizes and forced splits; the Keras layer; bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from op_check import FixedSplitExecutor, check_op, randn
from unity_legion import keras
from unity_legion.operators.base import OperatorError
from unity_legion.operators.padding import ZeroPad2D, check_pads
from unity_legion.types import TensorShape


def torch_pad(x: torch.Tensor, pads, channels_first: bool) -> torch.Tensor:
    pt, pb, pl, pr = pads
    if channels_first:
        return F.pad(x, (pl, pr, pt, pb))
    return F.pad(x, (0, 0, pl, pr, pt, pb))


@pytest.mark.parametrize("pads,cf,batch", [
    ((1, 1, 1, 1), False, 3), ((0, 2, 3, 1), False, 7), ((2, 0, 0, 1), True, 1),
    ((0, 0, 0, 0), True, 5), ((3, 1, 2, 2), True, 13)])
def test_zero_pad_matches_torch(pads: tuple[int, ...], cf: bool, batch: int) -> None:
    rng = np.random.default_rng(batch)
    x = randn(rng, batch, 3, 5, 4) if cf else randn(rng, batch, 5, 4, 3)
    op = ZeroPad2D(pads, "channels_first" if cf else "channels_last")
    run = check_op(op, [x], lambda x: torch_pad(x, pads, cf))
    pt, pb, pl, pr = pads
    hw = (5 + pt + pb, 4 + pl + pr)
    assert run.outputs[0].shape == ((batch, 3) + hw if cf else (batch,) + hw + (3,))


@pytest.mark.parametrize("degree", [2, 4])
def test_zero_pad_forced_splits(degree: int) -> None:
    rng = np.random.default_rng(degree)
    x = randn(rng, 7, 4, 3, 2)
    check_op(ZeroPad2D((1, 2, 0, 3)), [x], lambda x: torch_pad(x, (1, 2, 0, 3), False),
             executor=lambda *a, **kw: FixedSplitExecutor(*a, degree=degree, **kw))


def test_padding_forms() -> None:
    assert check_pads(2, "p") == (2, 2, 2, 2)
    assert check_pads((1, 3), "p") == (1, 1, 3, 3)
    assert check_pads(((0, 1), (2, 3)), "p") == (0, 1, 2, 3)
    assert ZeroPad2D((0, 1, 2, 3)).pads == (0, 1, 2, 3)
    s = TensorShape((None, 3, 4, 5))
    assert ZeroPad2D((0, 1, 2, 3), "channels_first").infer_outputs([s])[0].dims == (None, 3, 5, 10)
    with pytest.raises(OperatorError, match="padding must not be negative"):
        check_pads((1, -1), "p")
    with pytest.raises(OperatorError, match="padding must be an int, a tuple of 2 ints"):
        check_pads((1, 2, 3), "p")
    with pytest.raises(OperatorError, match="padding must be an int, a tuple of 2 ints"):
        check_pads(((1, 2), 3), "p")
    with pytest.raises(OperatorError, match="padding must be an int, a tuple of 2 ints"):
        check_pads(1.5, "p")
    with pytest.raises(OperatorError, match="expects a rank-4 input"):
        ZeroPad2D().infer_outputs([TensorShape((None, 3, 4))])


def test_zero_padding_layer() -> None:
    rng = np.random.default_rng(1)
    inp = keras.Input((5, 4, 2))
    pad = keras.layers.ZeroPadding2D(((1, 0), (2, 1)))
    conv = keras.layers.Conv2D(3, 3)
    out = conv(pad(inp))
    model = keras.Model(inp, out)
    assert pad.output_shape == (None, 6, 7, 2) and out.shape == (None, 4, 5, 3)
    assert pad.get_config()["padding"] == ((1, 0), (2, 1))
    assert pad.get_config()["data_format"] == "channels_last"
    assert keras.layers.ZeroPadding2D().get_config()["padding"] == ((1, 1), (1, 1))
    x = randn(rng, 7, 5, 4, 2)
    kernel, bias = conv.get_weights()
    xp = torch_pad(torch.tensor(x), (1, 0, 2, 1), False).permute(0, 3, 1, 2)
    want = F.conv2d(xp, torch.tensor(kernel).permute(3, 2, 0, 1), torch.tensor(bias))
    np.testing.assert_allclose(model.predict(x, verbose=0), want.permute(0, 2, 3, 1).numpy(),
                               rtol=1e-4, atol=1e-5)
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(x, randn(rng, 7, 4, 5, 3), batch_size=3, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_zero_padding_layer_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ZeroPadding2D: padding must not be negative"):
        keras.layers.ZeroPadding2D(-1)
    with pytest.raises(ValueError, match="ZeroPadding2D: padding must be an int"):
        keras.layers.ZeroPadding2D("same")
    with pytest.raises(ValueError, match="data_format must be"):
        keras.layers.ZeroPadding2D(1, data_format="NHWC")
    with pytest.raises(ValueError, match="expects a rank-4 input"):
        keras.layers.ZeroPadding2D(1)(keras.Input((4, 4)))
