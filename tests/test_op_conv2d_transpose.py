"""Conv2DTranspose through the executor vs PyTorch's conv_transpose2d cut to Keras' output
window: strides, "valid" / "same", odd and even kernels, kernels smaller than the stride (zero
rows appended), output_padding, both data formats, a fused activation, no bias, forced batch
splits; shapes and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from op_check import FixedSplitExecutor, check_op, randn
from unity_legion.operators.base import OperatorError
from unity_legion.operators.conv2d_transpose import Conv2DTranspose
from unity_legion.types import TensorShape


def keras_window(n: int, k: int, s: int, padding: str, op: int | None) -> tuple[int, int]:
    """(output size, first kept row of the full result) along one dim: Keras' padding rule
    written as left / right pads of the dilated-input convolution (as Keras' JAX path)."""
    if padding == "valid":
        extra = max(k, s) - k if op is None else op
        left, right = k - 1, k - 1 + extra
    else:
        total = s + k - 2 if op is None else k + k % 2 - 2 + op
        left = min(total // 2 + total % 2, k - 1)
        right = total - left
    size = (n - 1) * s + 1 + left + right - (k - 1)
    return size, (k - 1) - left


def torch_conv_transpose(x, kernel, bias=None, *, strides, padding, output_padding=None,
                         cf=False, act=None):
    xt = x if cf else x.permute(0, 3, 1, 2)
    full = F.conv_transpose2d(xt, kernel.permute(3, 2, 0, 1), stride=strides)
    ops = output_padding or (None, None)
    (ho, r0), (wo, c0) = (keras_window(xt.shape[2 + i], kernel.shape[i], strides[i], padding,
                                       ops[i]) for i in range(2))
    full = F.pad(full, (0, max(0, c0 + wo - full.shape[3]), 0, max(0, r0 + ho - full.shape[2])))
    z = full[:, :, r0:r0 + ho, c0:c0 + wo]
    if bias is not None:
        z = z + bias[None, :, None, None]
    if act == "relu":
        z = torch.relu(z)
    return z if cf else z.permute(0, 2, 3, 1)


# (batch, H, W, C, filters, kernel, strides, padding, output_padding, cf, activation, bias)
CASES = [
    (3, 4, 5, 3, 2, (3, 3), (1, 1), "valid", None, False, None, True),
    (3, 4, 5, 3, 4, (3, 3), (2, 2), "same", None, False, None, True),
    (2, 3, 4, 2, 3, (2, 3), (2, 1), "same", None, True, "relu", True),
    (4, 3, 3, 2, 2, (1, 2), (3, 3), "valid", None, False, None, False),
    (2, 5, 3, 3, 2, (4, 3), (2, 3), "same", None, False, None, True),
    (3, 3, 4, 2, 3, (3, 2), (2, 2), "valid", (1, 0), False, None, True),
    (2, 4, 3, 2, 2, (3, 3), (3, 2), "same", (2, 1), True, None, True),
    (5, 2, 2, 1, 3, (3, 3), (2, 2), "same", None, False, "relu", False),
]


@pytest.mark.parametrize("case", CASES, ids=[f"t{i}" for i in range(len(CASES))])
def test_conv2d_transpose_matches_torch(case: tuple) -> None:
    b, h, w, c, f, k, s, pad, op, cf, act, use_bias = case
    rng = np.random.default_rng(b * 13 + h)
    x = randn(rng, b, c, h, w) if cf else randn(rng, b, h, w, c)
    conv = Conv2DTranspose(f, k, s, pad, op, "channels_first" if cf else "channels_last", act,
                           use_bias)
    kw = dict(strides=s, padding=pad, output_padding=op, cf=cf, act=act)
    if use_bias:
        fn = lambda x, kernel, bias: torch_conv_transpose(x, kernel, bias, **kw)  # noqa: E731
    else:
        fn = lambda x, kernel: torch_conv_transpose(x, kernel, **kw)  # noqa: E731
    run = check_op(conv, [x], fn, executor=lambda *a, **kw_: FixedSplitExecutor(*a, degree=2,
                                                                                 **kw_))
    assert run.weights["kernel"].shape == k + (f, c)


def test_shapes() -> None:
    s = TensorShape((None, 4, 5, 3))
    assert Conv2DTranspose(2, 3).infer_outputs([s])[0].dims == (None, 6, 7, 2)
    assert Conv2DTranspose(2, 3, 2, "same").infer_outputs([s])[0].dims == (None, 8, 10, 2)
    assert Conv2DTranspose(2, 1, 3).infer_outputs([s])[0].dims == (None, 12, 15, 2)
    assert Conv2DTranspose(2, 3, 2, "valid", 1).infer_outputs([s])[0].dims == (None, 10, 12, 2)
    assert [w.shape.dims for w in Conv2DTranspose(2, (3, 2)).weights([s])] == [(3, 2, 2, 3), (2,)]
    axes = {pd.axis: pd.kind.value for pd in Conv2DTranspose(2, 3).parallel_dims([s])}
    assert axes == {"sample": "sample", "out": "parameter", "in": "reduction"}
    assert "in" not in {pd.axis for pd in Conv2DTranspose(2, 3, activation="relu")
                        .parallel_dims([s])}


def test_bad_arguments() -> None:
    with pytest.raises(OperatorError, match=r"output_padding \(2, 2\) must be less than strides"):
        Conv2DTranspose(2, 3, 2, output_padding=2)
    with pytest.raises(OperatorError, match="conv2d_transpose: padding must be 'valid' or 'same'"):
        Conv2DTranspose(2, 3, padding="causal")
    with pytest.raises(OperatorError, match="conv2d_transpose: filters must be a positive"):
        Conv2DTranspose(0, 3)
    with pytest.raises(OperatorError, match="conv2d_transpose: expects a rank-4 input"):
        Conv2DTranspose(2, 3).infer_outputs([TensorShape((None, 4, 4))])


@pytest.mark.parametrize("op, shape", [
    (Conv2DTranspose(3, 3, 2, "same", activation="relu"), (2, 4, 5, 2)),
    (Conv2DTranspose(2, (1, 2), 3, "valid", data_format="channels_first", use_bias=False),
     (2, 3, 2, 3)),
    (Conv2DTranspose(2, 3, 2, "same", (1, 0)), (2, 3, 3, 2)),
])
def test_torch_twin_agrees(op, shape: tuple) -> None:
    from op_check import run_op
    from unity_legion.testing.torch_twin import run_node

    rng = np.random.default_rng(len(shape))
    x = randn(rng, *shape)
    run = run_op(op, [x])
    want = run_node(op, [torch.tensor(x)], {k: torch.tensor(v) for k, v in run.weights.items()},
                    True, [TensorShape(shape)])[0]
    np.testing.assert_allclose(run.outputs[0], want.numpy(), rtol=1e-4, atol=1e-5)
