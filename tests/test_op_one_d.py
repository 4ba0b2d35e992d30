"""Conv1D, MaxPooling1D / AveragePooling1D, GlobalAverage/MaxPooling1D and GlobalMaxPooling2D
through the executor vs PyTorch's 1-D operators: kernel sizes, strides, dilation, groups,
"valid" / "same" (TF's rule) / "causal" padding, both data formats, fused activations, odd sizes,
forced batch splits and length splits (halo reads); shapes, weights and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from op_check import FixedSplitExecutor, check_op, randn
from parallel_check import check_configs, legal_configs
from unity_legion.operators.base import OperatorError
from unity_legion.operators.global_max_pool import GlobalMaxPool2D
from unity_legion.operators.one_d import Conv1D, GlobalAvgPool1D, GlobalMaxPool1D, Pool1D
from unity_legion.types import TensorShape


def pads_1d(size: int, k: int, stride: int, dilation: int, padding: str) -> tuple[int, int]:
    """Keras' padding along the length, written out independently of the operators."""
    span = (k - 1) * dilation + 1
    if padding == "causal":
        return span - 1, 0
    if padding == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + span - size, 0)
        return total // 2, total - total // 2
    return 0, 0


def torch_conv1d(x, kernel, bias=None, *, strides=1, padding="valid", dilation=1, groups=1,
                 cf=False, act=None):
    xt = x if cf else x.permute(0, 2, 1)
    pl, pr = pads_1d(xt.shape[2], kernel.shape[0], strides, dilation, padding)
    z = F.conv1d(F.pad(xt, (pl, pr)), kernel.permute(2, 1, 0), bias, stride=strides,
                 dilation=dilation, groups=groups)
    if act == "relu":
        z = torch.relu(z)
    return z if cf else z.permute(0, 2, 1)


def torch_pool1d(x, mode, pool, strides, padding, cf):
    xt = x if cf else x.permute(0, 2, 1)
    pl, pr = pads_1d(xt.shape[2], pool, strides, 1, padding)
    if mode == "max":
        out = F.max_pool1d(F.pad(xt, (pl, pr), value=-np.inf), pool, strides)
    else:  # Keras divides by the real (unpadded) positions of each window
        total = F.avg_pool1d(F.pad(xt, (pl, pr)), pool, strides) * pool
        count = F.avg_pool1d(F.pad(torch.ones_like(xt[:1, :1]), (pl, pr)), pool, strides) * pool
        out = total / count
    return out if cf else out.permute(0, 2, 1)


# (batch, length, channels, filters, kernel, strides, padding, dilation, groups, cf, activation)
CONV_CASES = [
    (3, 9, 3, 4, 3, 1, "valid", 1, 1, False, None),
    (5, 10, 2, 3, 4, 2, "same", 1, 1, False, None),
    (4, 11, 4, 6, 3, 1, "causal", 2, 2, False, "relu"),
    (3, 7, 3, 5, 2, 3, "same", 1, 1, True, None),
    (2, 8, 4, 4, 5, 1, "causal", 1, 4, True, None),
    (7, 6, 3, 2, 1, 1, "valid", 1, 1, False, None),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"c{i}" for i in range(len(CONV_CASES))])
def test_conv1d_matches_torch(case: tuple) -> None:
    b, n, c, f, k, s, pad, d, g, cf, act = case
    rng = np.random.default_rng(b * 7 + n)
    x = randn(rng, b, c, n) if cf else randn(rng, b, n, c)
    op = Conv1D(f, k, s, pad, "channels_first" if cf else "channels_last", d, g, act)
    run = check_op(op, [x], lambda x, kernel, bias: torch_conv1d(
        x, kernel, bias, strides=s, padding=pad, dilation=d, groups=g, cf=cf, act=act))
    assert run.weights["kernel"].shape == (k, c // g, f)


def test_conv1d_without_bias_and_forced_batch_split() -> None:
    rng = np.random.default_rng(1)
    x = randn(rng, 7, 9, 3)
    check_op(Conv1D(4, 3, padding="same", use_bias=False), [x],
             lambda x, kernel: torch_conv1d(x, kernel, padding="same"),
             executor=lambda *a, **kw: FixedSplitExecutor(*a, degree=3, **kw))


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", [(3, 9, 2, 2, None, "valid", False),
                                  (5, 10, 3, 3, 2, "same", False),
                                  (4, 7, 2, 3, 1, "same", True), (2, 11, 3, 4, 3, "valid", True)])
def test_pool1d_matches_torch(mode: str, case: tuple) -> None:
    b, n, c, pool, strides, pad, cf = case
    rng = np.random.default_rng(b + n)
    x = randn(rng, b, c, n) if cf else randn(rng, b, n, c)
    op = Pool1D(mode, pool, strides, pad, "channels_first" if cf else "channels_last")
    check_op(op, [x], lambda x: torch_pool1d(x, mode, pool, strides or pool, pad, cf))


@pytest.mark.parametrize("cf", [False, True])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pools_1d_match_torch(cf: bool, keepdims: bool) -> None:
    rng = np.random.default_rng(int(cf) * 2 + int(keepdims))
    x = randn(rng, 5, 3, 7) if cf else randn(rng, 5, 7, 3)
    axis = 2 if cf else 1
    fmt = "channels_first" if cf else "channels_last"
    split = lambda *a, **kw: FixedSplitExecutor(*a, degree=3, **kw)  # noqa: E731
    run = check_op(GlobalAvgPool1D(fmt, keepdims), [x],
                   lambda x: x.mean(dim=axis, keepdim=keepdims), executor=split)
    assert run.outputs[0].shape == (((5, 3, 1) if cf else (5, 1, 3)) if keepdims else (5, 3))
    check_op(GlobalMaxPool1D(fmt, keepdims), [x], lambda x: x.amax(dim=axis, keepdim=keepdims),
             executor=split)


@pytest.mark.parametrize("cf", [False, True])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_max_pool2d_matches_torch(cf: bool, keepdims: bool) -> None:
    rng = np.random.default_rng(5 + int(cf))
    x = randn(rng, 5, 3, 4, 5) if cf else randn(rng, 5, 4, 5, 3)
    axes = (2, 3) if cf else (1, 2)
    op = GlobalMaxPool2D("channels_first" if cf else "channels_last", keepdims)
    check_op(op, [x], lambda x: x.amax(dim=axes, keepdim=keepdims),
             executor=lambda *a, **kw: FixedSplitExecutor(*a, degree=2, **kw))


def test_global_max_pool_ties_share_the_gradient() -> None:
    """Small integers make ties common: the gradient is shared among them, as amax's."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(4, 3, 5, 2)).astype(np.float32)
    run = check_op(GlobalMaxPool2D(), [x], lambda x: x.amax(dim=(1, 2)))
    np.testing.assert_allclose(run.input_grads[0].sum(), run.output_grads[0].sum(), rtol=1e-5)
    x1 = rng.integers(0, 2, size=(3, 6, 2)).astype(np.float32)
    check_op(GlobalMaxPool1D(), [x1], lambda x: x.amax(dim=1))


@pytest.mark.parametrize("name, op, shape", [
    ("conv1d_same_dilated", Conv1D(3, 3, padding="same", dilation_rate=2), (3, 9, 2)),
    ("conv1d_causal_strided_cf", Conv1D(2, 3, 2, "causal", "channels_first"), (2, 2, 9)),
    ("max_pool1d_same_overlapping", Pool1D("max", 3, 1, "same"), (3, 7, 2)),
    ("avg_pool1d_same_strided", Pool1D("avg", 3, 2, "same"), (2, 9, 3)),
])
def test_length_splits_equal_serial(name: str, op, shape: tuple) -> None:
    """Every legal configuration, among them length splits into uneven tiles (each point reading
    its window plus the halo), equals the serial run."""
    rng = np.random.default_rng(len(name))
    x = randn(rng, *shape, dtype=np.float64)
    configs = legal_configs(op, [x])
    assert {"length": 2} in configs and {"length": 3} in configs
    check_configs(op, [x])


def test_shapes_weights_and_axes() -> None:
    s = TensorShape((None, 10, 3))
    assert Conv1D(4, 3).infer_outputs([s])[0].dims == (None, 8, 4)
    assert Conv1D(4, 3, 2, "same").infer_outputs([s])[0].dims == (None, 5, 4)
    causal = Conv1D(4, 3, padding="causal", dilation_rate=2)
    assert causal.infer_outputs([s])[0].dims == (None, 10, 4)
    assert Conv1D(4, 3, data_format="channels_first").infer_outputs(
        [TensorShape((None, 3, 10))])[0].dims == (None, 4, 8)
    assert [w.shape.dims for w in Conv1D(6, (5,), groups=3).weights([s])] == [(5, 1, 6), (6,)]
    assert Pool1D("max").infer_outputs([s])[0].dims == (None, 5, 3)
    assert Pool1D("avg", 3, 1, "same").infer_outputs([s])[0].dims == (None, 10, 3)
    assert GlobalMaxPool1D(keepdims=True).infer_outputs([s])[0].dims == (None, 1, 3)
    axes = {pd.axis for pd in Conv1D(4, 3).parallel_dims([TensorShape((2, 10, 3))])}
    assert axes == {"sample", "out", "in", "length"}
    axes = {pd.axis for pd in Pool1D("max").parallel_dims([TensorShape((2, 10, 3))])}
    assert axes == {"sample", "channels", "length"}
    assert Conv1D(4, 3).cost_family == "conv2d"
    assert Conv1D(4, 3).flops([TensorShape((2, 10, 3))]) == 2 * 2 * 8 * 4 * 3 * 3


def test_bad_arguments() -> None:
    with pytest.raises(OperatorError, match="conv1d: kernel_size must be a positive integer"):
        Conv1D(4, (3, 3))
    with pytest.raises(OperatorError, match=r"conv1d: kernel size 5 is larger than the input"):
        Conv1D(4, 5).infer_outputs([TensorShape((None, 3, 2))])
    with pytest.raises(OperatorError, match="conv1d: expects a rank-3 input"):
        Conv1D(4, 3).infer_outputs([TensorShape((None, 3, 3, 2))])
    with pytest.raises(OperatorError, match=r"conv1d: groups \(2\) must divide the input "
                                            r"channels \(3\) of \(None, 8, 3\)"):
        Conv1D(4, 3, groups=2).infer_outputs([TensorShape((None, 8, 3))])
    with pytest.raises(OperatorError, match="conv1d: padding must be 'valid' or 'same'"):
        Conv1D(4, 3, padding="full")
    with pytest.raises(OperatorError, match="pool1d: padding must be 'valid' or 'same', got"):
        Pool1D("max", padding="causal")
    with pytest.raises(OperatorError, match="pool1d: strides must be a positive integer"):
        Pool1D("avg", 2, 0)
    with pytest.raises(OperatorError, match="keepdims must be a bool"):
        GlobalMaxPool1D(keepdims="yes")
    with pytest.raises(OperatorError, match="global_max_pool2d: expects a rank-4 input"):
        GlobalMaxPool2D().infer_outputs([TensorShape((None, 4, 4))])


@pytest.mark.parametrize("op, shape", [
    (Conv1D(4, 3, 2, "causal", dilation_rate=1, activation="relu"), (3, 9, 2)),
    (Conv1D(4, 2, 1, "same", "channels_first", groups=2), (3, 2, 7)),
    (Pool1D("max", 3, 2, "same"), (2, 9, 3)),
    (Pool1D("avg", 3, 2, "same", "channels_first"), (2, 3, 8)),
    (GlobalAvgPool1D(keepdims=True), (2, 5, 3)),
    (GlobalMaxPool1D("channels_first"), (2, 3, 5)),
    (GlobalMaxPool2D(keepdims=True), (2, 4, 5, 3)),
])
def test_torch_twin_agrees(op, shape: tuple) -> None:
    """unity_legion.testing.torch_twin's version of each operator (the model benchmarks' and
    the Keras tests' reference) computes what the operator computes."""
    from op_check import run_op
    from unity_legion.testing.torch_twin import run_node

    rng = np.random.default_rng(len(shape))
    x = randn(rng, *shape)
    run = run_op(op, [x])
    want = run_node(op, [torch.tensor(x)], {k: torch.tensor(v) for k, v in run.weights.items()},
                    True, [TensorShape(shape)])[0]
    np.testing.assert_allclose(run.outputs[0], want.numpy(), rtol=1e-4, atol=1e-5)
