"""ReLU with Keras' arguments (max_value, negative_slope, threshold; LeakyReLU), Rescaling and
UpSampling2D through the executor vs PyTorch: odd sizes, both data formats, forced batch splits;
the torch twin; bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from op_check import FixedSplitExecutor, check_op, randn, run_op
from unity_legion.operators.base import OperatorError
from unity_legion.operators.rectifier import ReLU
from unity_legion.operators.rescale import Rescale
from unity_legion.operators.upsampling import UpSampling2D
from unity_legion.types import DataType, TensorShape


def torch_relu(x, max_value=None, negative_slope=0.0, threshold=0.0):
    """Keras' ReLU written with torch's own operators (leaky_relu, relu6, clamp)."""
    if negative_slope and max_value is None and threshold == 0:
        return F.leaky_relu(x, negative_slope)
    if threshold:
        y = torch.where(x > threshold, x, torch.zeros_like(x))
    else:
        y = torch.relu(x)
    if max_value is not None:
        y = torch.clamp(y, 0.0, max_value)
    if negative_slope:
        y = y - negative_slope * torch.relu(threshold - x)
    return y


@pytest.mark.parametrize("args", [(None, 0.0, 0.0), (None, 0.3, 0.0), (1.5, 0.0, 0.0),
                                  (None, 0.0, 0.4), (2.0, 0.2, 0.5), (0.0, 0.1, 0.0)])
def test_relu_matches_torch(args: tuple) -> None:
    rng = np.random.default_rng(7)
    x = (2 * randn(rng, 5, 3, 7)).astype(np.float32)
    split = lambda *a, **kw: FixedSplitExecutor(*a, degree=3, **kw)  # noqa: E731
    check_op(ReLU(*args), [x], lambda x: torch_relu(x, *args), executor=split)


def test_rescale_matches_torch() -> None:
    rng = np.random.default_rng(1)
    x = randn(rng, 5, 4, 3, 2)
    check_op(Rescale(1 / 255), [x], lambda x: x * (1 / 255),
             executor=lambda *a, **kw: FixedSplitExecutor(*a, degree=2, **kw))
    x = randn(rng, 3, 7, dtype=np.float64)
    check_op(Rescale(2.5, -1.0), [x], lambda x: x * 2.5 - 1.0)


@pytest.mark.parametrize("size, cf", [((2, 2), False), ((3, 1), False), ((2, 3), True), (1, False)])
def test_upsampling2d_matches_torch(size, cf: bool) -> None:
    rng = np.random.default_rng(2)
    x = randn(rng, 5, 3, 4, 5) if cf else randn(rng, 5, 4, 5, 3)
    sh, sw = (size, size) if isinstance(size, int) else size

    def ref(x):
        xt = x if cf else x.permute(0, 3, 1, 2)
        out = F.interpolate(xt, scale_factor=(sh, sw), mode="nearest")
        return out if cf else out.permute(0, 2, 3, 1)

    run = check_op(UpSampling2D(size, "channels_first" if cf else "channels_last"), [x], ref,
                   executor=lambda *a, **kw: FixedSplitExecutor(*a, degree=3, **kw))
    assert run.outputs[0].shape == ((5, 3, 4 * sh, 5 * sw) if cf else (5, 4 * sh, 5 * sw, 3))


@pytest.mark.parametrize("op, shape", [(ReLU(2.0, 0.2, 0.5), (3, 4, 5)), (ReLU(), (3, 5)),
                                       (Rescale(0.5, 1.0), (3, 4)),
                                       (UpSampling2D((2, 3)), (2, 3, 2, 4)),
                                       (UpSampling2D(2, "channels_first"), (2, 3, 2, 4))])
def test_torch_twin_agrees(op, shape: tuple) -> None:
    from unity_legion.testing.torch_twin import run_node

    rng = np.random.default_rng(len(shape))
    x = randn(rng, *shape)
    run = run_op(op, [x])
    want = run_node(op, [torch.tensor(x)], {}, True, [TensorShape(shape)])[0]
    np.testing.assert_allclose(run.outputs[0], want.numpy(), rtol=1e-6, atol=1e-7)


def test_bad_arguments() -> None:
    with pytest.raises(OperatorError, match="relu: max_value must not be negative"):
        ReLU(-1.0)
    with pytest.raises(OperatorError, match="relu: negative_slope must be a number"):
        ReLU(negative_slope=None)
    with pytest.raises(OperatorError, match="relu: threshold must not be negative"):
        ReLU(threshold=-0.5)
    with pytest.raises(OperatorError, match="relu: expects a floating-point input"):
        ReLU().infer_outputs([TensorShape((None, 3), DataType.INT32)])
    with pytest.raises(OperatorError, match="rescale: scale must be a number"):
        Rescale(np.ones(3))
    with pytest.raises(OperatorError, match="upsampling2d: interpolation 'bilinear' is not "
                                            "supported"):
        UpSampling2D(interpolation="bilinear")
    with pytest.raises(OperatorError, match="upsampling2d: size must be positive"):
        UpSampling2D((0, 2))
    with pytest.raises(OperatorError, match="upsampling2d: expects a rank-4 input"):
        UpSampling2D().infer_outputs([TensorShape((None, 4, 4))])
    assert UpSampling2D((2, 3)).infer_outputs([TensorShape((None, 4, 5, 3))])[0].dims == \
        (None, 8, 15, 3)
