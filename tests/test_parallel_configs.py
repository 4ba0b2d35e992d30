"""Every operator under every legal parallel configuration up to 4 points (batch, features,
heads, ...) computes what its serial run computes: outputs, input and weight gradients (1e-5).

CASES holds at least one case per operator family, with odd sizes (so pieces are uneven) and the
variants that change which axes an operator declares; AXES says, per operator type, which forms
of parallelism it offers (its launch axes and their kinds) in its usual configuration.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import numpy as np
import pytest

import unity_legion.operators as operators_pkg
from op_check import randn
from parallel_check import check_configs, legal_configs, planned
from unity_legion.executor.executor import Objective
from unity_legion.operators.activation import Activation
from unity_legion.operators.attention import MultiHeadAttention
from unity_legion.operators.base import DimKind, Operator
from unity_legion.operators.batch_norm import BatchNorm
from unity_legion.operators.broadcast import Binary, Where
from unity_legion.operators.concat import Concat
from unity_legion.operators.convert import Cast, OneHot
from unity_legion.operators.conv2d import Conv2D
from unity_legion.operators.conv2d_transpose import Conv2DTranspose
from unity_legion.operators.dropout import Dropout
from unity_legion.operators.elementwise import Add, Multiply, Subtract
from unity_legion.operators.embedding import Embedding
from unity_legion.operators.global_max_pool import GlobalMaxPool2D
from unity_legion.operators.layer_norm import LayerNorm
from unity_legion.operators.linear import Linear
from unity_legion.operators.losses import MeanSquaredError
from unity_legion.operators.matmul import BatchMatmul
from unity_legion.operators.one_d import Conv1D, GlobalAvgPool1D, GlobalMaxPool1D, Pool1D
from unity_legion.operators.optimizers import SGDRule
from unity_legion.operators.padding import ZeroPad2D
from unity_legion.operators.permute import Identity, Permute
from unity_legion.operators.pooling import GlobalAvgPool2D, Pool2D
from unity_legion.operators.rectifier import ReLU
from unity_legion.operators.rescale import Rescale
from unity_legion.operators.reduce import Reduce
from unity_legion.operators.reshape import Flatten, Reshape
from unity_legion.operators.slice import Slice
from unity_legion.operators.softmax import Softmax
from unity_legion.operators.source import Parameter, Range
from unity_legion.operators.split import Split
from unity_legion.operators.unary import Unary
from unity_legion.operators.upsampling import UpSampling2D
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.types import DataType, TensorShape

RNG = np.random.default_rng(0)
B = 5  # an odd batch: 2, 3 and 4 pieces of it are uneven


def _r(*shape: int, dtype: Any = np.float32) -> np.ndarray:
    return randn(RNG, *shape, dtype=dtype)


def _idx(high: int, *shape: int, dtype: Any = np.int64) -> np.ndarray:
    return RNG.integers(0, high, size=shape).astype(dtype)


def _bn_weights(c: int) -> dict[str, np.ndarray]:
    """Moving statistics an inference-mode batch norm can use (a positive variance)."""
    return {"moving_mean": _r(c), "moving_variance": RNG.uniform(0.5, 2.0, c).astype(np.float32)}


# name -> (operator, inputs, keyword arguments of run_op: weights, training)
CASES: dict[str, tuple[Operator, list[np.ndarray], dict[str, Any]]] = {
    # linear: sample, out, in
    "linear_bias": (Linear(6), [_r(7, 5)], {}),
    "linear_no_bias_rank3": (Linear(5, use_bias=False), [_r(3, 4, 6)], {}),
    "linear_relu": (Linear(7, activation="relu"), [_r(B, 3)], {}),
    "linear_softmax": (Linear(4, activation="softmax"), [_r(6, 3)], {}),
    # embedding: sample, columns, rows (a partial sum of the looked-up rows)
    "embedding": (Embedding(6, 7), [_idx(6, B, 3)], {}),
    "embedding_rank1_int32": (Embedding(5, 3), [_idx(5, B, dtype=np.int32)], {}),
    "embedding_bag_sum": (Embedding(7, 3, combiner="sum"), [_idx(7, B, 2, 4)], {}),
    "embedding_bag_mean": (Embedding(6, 5, combiner="mean"), [_idx(6, B, 3)], {}),
    # attention: sample, heads (dropout masks a function of global (sample, head, t, s))
    "mha_self_dropout": (MultiHeadAttention(3, 2, dropout=0.3), [_r(B, 3, 7), _r(B, 4, 6)], {}),
    "mha_key_mask": (MultiHeadAttention(4, 3, value_dim=2, has_key=True, has_mask=True,
                                        dropout=0.2),
                     [_r(B, 3, 7), _r(B, 4, 6), _r(B, 4, 5), RNG.random((B, 3, 4)) > 0.3],
                     # the key bias's gradient is zero but for rounding (softmax ignores a
                     # constant per query): ~1e-6 of float32 noise, summed in MKL's order
                     {"atol": 1e-5}),
    "mha_no_bias_output_shape": (MultiHeadAttention(2, 3, use_bias=False, output_shape=(2, 3)),
                                 [_r(B, 3, 7), _r(B, 3, 7)], {}),
    "mha_inference": (MultiHeadAttention(3, 2, dropout=0.5), [_r(B, 2, 5), _r(B, 3, 5)],
                      {"training": False}),
    # conv2d: sample, out, in (groups == 1, no activation); grouped: out over whole groups.
    # float64 here: d_kernel sums 80 products per sample split, and float32 rounding of an
    # entry that nearly cancels can exceed the 1e-6 floor (any split of the batch, not a bug)
    "conv2d": (Conv2D(5, 3), [_r(B, 6, 6, 3, dtype=np.float64)], {}),
    "conv2d_channels_first_same_strided": (
        Conv2D(5, (2, 3), strides=2, padding="same", data_format="channels_first"),
        [_r(3, 3, 7, 6)], {}),
    "conv2d_relu_no_bias": (Conv2D(4, 3, activation="relu", use_bias=False), [_r(3, 5, 5, 3)], {}),
    "conv2d_groups": (Conv2D(6, 3, groups=2, padding="same"), [_r(3, 5, 5, 4)], {}),
    "conv2d_depthwise": (Conv2D(3, 3, groups=3, data_format="channels_first"),
                         [_r(B, 3, 5, 5)], {}),
    # conv2d height / width (spatial tiles, each point reading its window): 7 rows over 2-4 points
    # (uneven), "same" padding reaching into both borders, dilation, strides, channels_first
    "conv2d_spatial_same_dilated": (Conv2D(3, 3, padding="same", dilation_rate=(2, 1)),
                                    [_r(3, 7, 5, 2, dtype=np.float64)], {}),
    "conv2d_spatial_valid_strided_cf": (
        Conv2D(2, (3, 2), strides=(2, 1), data_format="channels_first", use_bias=False),
        [_r(2, 2, 9, 6, dtype=np.float64)], {}),
    "conv2d_spatial_relu_same_strided": (Conv2D(2, 3, strides=2, padding="same",
                                                activation="relu"),
                                         [_r(2, 7, 7, 2, dtype=np.float64)], {}),
    # elementwise merges: sample, features
    "add3": (Add(), [_r(B, 7), _r(B, 7), _r(B, 7)], {}),
    "subtract_rank3": (Subtract(), [_r(B, 3, 7), _r(B, 3, 7)], {}),
    "multiply3": (Multiply(), [_r(B, 7), _r(B, 7), _r(B, 7)], {}),
    "add_rank1": (Add(), [_r(B), _r(B)], {}),
    # activations: features; softmax splits the dim before its last
    "relu": (Activation("relu"), [_r(B, 7)], {}),
    "gelu_rank3": (Activation("gelu"), [_r(B, 3, 7)], {}),
    "activation_softmax_rank3": (Activation("softmax"), [_r(B, 3, 7)], {}),
    "activation_softmax_rank2": (Activation("softmax"), [_r(B, 7)], {}),
    # dropout: features; the mask hashes global indices
    "dropout": (Dropout(0.4), [_r(B, 7)], {}),
    "dropout_noise_shape": (Dropout(0.5, noise_shape=(None, 1, 7), salt=3), [_r(B, 3, 7)], {}),
    # layout: Identity, Permute (the input's last dim, wherever it goes), Reshape, Flatten
    "identity": (Identity(), [_r(B, 3, 7)], {}),
    "permute": (Permute((2, 1)), [_r(B, 3, 7)], {}),
    "permute_rank4": (Permute((3, 1, 2)), [_r(B, 2, 3, 7)], {}),
    "reshape_keeps_dim1": (Reshape((3, 2, 4)), [_r(B, 3, 8)], {}),
    "reshape_changes_dim1": (Reshape((4, 6)), [_r(B, 3, 8)], {}),
    "flatten": (Flatten(), [_r(B, 3, 4)], {}),
    "flatten_channels_first_1x1": (Flatten(channels_first=True), [_r(B, 3, 1, 1)], {}),
    # concatenate / split along one axis, split along another
    "concat_last": (Concat(-1), [_r(B, 3, 4), _r(B, 3, 2)], {}),
    "concat_dim1": (Concat(1), [_r(B, 2, 7), _r(B, 3, 7), _r(B, 1, 7)], {}),
    "concat_rank2": (Concat(-1), [_r(B, 3), _r(B, 4)], {}),
    "split_last": (Split(2, axis=-1), [_r(B, 3, 4)], {}),
    "split_dim1": (Split((1, -1), axis=1), [_r(B, 3, 7)], {}),
    # softmax / layer norm: the last dim not normalised
    "softmax_last": (Softmax(), [_r(B, 3, 7)], {}),
    "softmax_dim1": (Softmax((1,)), [_r(B, 3, 7)], {}),
    "softmax_all": (Softmax((1, 2)), [_r(B, 3, 7)], {}),
    "layer_norm": (LayerNorm(), [_r(B, 3, 7)], {}),
    "layer_norm_dim1_no_center": (LayerNorm((1,), center=False), [_r(B, 3, 7)], {}),
    "layer_norm_rank4_no_scale": (LayerNorm((-2, -1), scale=False), [_r(B, 3, 2, 5)], {}),
    # batch norm: channels (whole-batch statistics summed over sample pieces)
    "batch_norm": (BatchNorm(), [_r(B, 7)], {}),
    "batch_norm_channels_first": (BatchNorm(1, scale=False), [_r(B, 3, 2, 2)], {}),
    "batch_norm_inference": (BatchNorm(center=False), [_r(B, 3, 7)],
                             {"training": False, "weights": _bn_weights(7)}),
    # batch matmul: m, n (attribute), k (reduction, not with normalize)
    "matmul": (BatchMatmul(), [_r(B, 3, 4), _r(B, 4, 2)], {}),
    "matmul_transposed_rank4": (BatchMatmul(transpose_a=True, transpose_b=True),
                                [_r(B, 2, 3, 5), _r(B, 2, 4, 3)], {}),
    "matmul_normalize": (BatchMatmul(normalize=True), [_r(B, 3, 4), _r(B, 4, 3)], {}),
    "matmul_dot_rank2": (BatchMatmul(), [_r(B, 7), _r(B, 7)], {}),
    # pooling / padding: channels
    "max_pool": (Pool2D("max", 2), [_r(B, 5, 5, 3)], {}),
    "avg_pool_same_channels_first": (Pool2D("avg", 3, 2, "same", "channels_first"),
                                     [_r(3, 3, 5, 4)], {}),
    # pooling height / width: overlapping windows (stride < pool), 7 rows over 2, 3, 4 points
    "max_pool_same_overlapping": (Pool2D("max", 3, 1, "same"), [_r(3, 7, 5, 2)], {}),
    "avg_pool_same_overlapping": (Pool2D("avg", 3, 2, "same"), [_r(2, 7, 6, 3)], {}),
    "max_pool_valid_strided_cf": (Pool2D("max", (3, 2), (2, 1), "valid", "channels_first"),
                                  [_r(2, 2, 9, 6)], {}),
    "global_avg_pool": (GlobalAvgPool2D(), [_r(B, 3, 4, 3)], {}),
    "global_avg_pool_keepdims_cf": (GlobalAvgPool2D("channels_first", keepdims=True),
                                    [_r(B, 3, 4, 3)], {}),
    "zero_pad": (ZeroPad2D((1, 0, 2, 1)), [_r(B, 3, 4, 3)], {}),
    "zero_pad_channels_first": (ZeroPad2D(1, "channels_first"), [_r(B, 3, 4, 2)], {}),
    "global_max_pool": (GlobalMaxPool2D(), [_r(B, 3, 4, 3)], {}),
    "global_max_pool_keepdims_cf": (GlobalMaxPool2D("channels_first", keepdims=True),
                                    [_r(B, 3, 4, 3)], {}),
    # 1-D: the 2-D operators on one-row images (length: the width's halo reads)
    "conv1d": (Conv1D(4, 3, padding="causal", dilation_rate=2), [_r(B, 7, 3, dtype=np.float64)],
               {}),
    "conv1d_same_strided_cf_groups": (Conv1D(4, 3, 2, "same", "channels_first", groups=2),
                                      [_r(3, 4, 9, dtype=np.float64)], {}),
    "max_pool1d": (Pool1D("max", 3, 2, "same"), [_r(3, 7, 3)], {}),
    "avg_pool1d_cf": (Pool1D("avg", 2, 1, "valid", "channels_first"), [_r(3, 2, 7)], {}),
    "global_avg_pool1d": (GlobalAvgPool1D(), [_r(B, 4, 3)], {}),
    "global_max_pool1d_keepdims_cf": (GlobalMaxPool1D("channels_first", keepdims=True),
                                      [_r(B, 3, 4)], {}),
    # Keras ReLU / LeakyReLU, Rescaling: features; UpSampling2D: channels
    "relu_keras": (ReLU(1.5, 0.2, 0.3), [_r(B, 3, 7)], {}),
    "leaky_relu_rank2": (ReLU(negative_slope=0.3), [_r(B, 7)], {}),
    "rescale": (Rescale(0.5, -1.0), [_r(B, 3, 7)], {}),
    "upsampling2d": (UpSampling2D((2, 3)), [_r(B, 2, 3, 3)], {}),
    "upsampling2d_cf": (UpSampling2D(2, "channels_first"), [_r(B, 3, 2, 3)], {}),
    # transposed convolution: sample, out, in (no fused activation); float64 as conv2d's
    "conv2d_transpose": (Conv2DTranspose(3, 3, 2, "same"), [_r(B, 3, 2, 3, dtype=np.float64)],
                         {}),
    "conv2d_transpose_relu_cf": (Conv2DTranspose(2, (2, 3), (2, 1), "valid", (1, 0),
                                                 "channels_first", "relu"),
                                 [_r(3, 2, 3, 3, dtype=np.float64)], {}),
    # keras.ops in subclassed layers' call(): broadcasting binary (features only where no
    # input broadcasts along them), where, unary, reduce, slice, cast, one_hot; the sources
    # (a layer's own weight, arange) copied over the batch
    "binary_divide_broadcast": (Binary("divide"), [_r(B, 3, 7), np.abs(_r(B, 7)) + 1.0], {}),
    "binary_add_last_broadcast": (Binary("add"), [_r(B, 3, 7), _r(B, 3, 1)], {}),
    "where": (Where(), [RNG.random((B, 3, 7)) > 0.5, _r(B, 3, 7), _r(B, 7)], {}),
    "unary_exp": (Unary("exp"), [_r(B, 3, 7)], {}),
    "reduce_mean": (Reduce("mean", (1,)), [_r(B, 3, 7)], {}),
    "slice": (Slice(((None, None, None), (1, 5, None))), [_r(B, 3, 7)], {}),
    "cast": (Cast(DataType.FLOAT64), [_r(B, 3, 7)], {}),
    "one_hot": (OneHot(5), [_idx(5, B, 3, dtype=np.int32)], {}),
    "parameter": (Parameter((3, 7), "glorot_uniform"), [_r(B, 4)], {}),
    "range": (Range(0, 1, 6, DataType.FLOAT32), [_r(B, 4)], {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_legal_configuration_equals_serial(name: str) -> None:
    op, inputs, kwargs = CASES[name]
    configs = check_configs(op, inputs, **kwargs)
    assert len(configs) >= 3


S, A, P, R = DimKind.SAMPLE, DimKind.ATTRIBUTE, DimKind.PARAMETER, DimKind.REDUCTION

# Per operator type, its axes (and kinds) in the usual configuration, and the CASES entry that
# shows it. Variants differ where the module says: e.g. Linear and Conv2D with a fused activation
# lose "in", grouped Conv2D's "out" keeps whole groups, softmax splits the dim before its last.
AXES: dict[str, tuple[str, dict[str, DimKind]]] = {
    "linear": ("linear_bias", {"sample": S, "out": P, "in": R}),
    "embedding": ("embedding", {"sample": S, "columns": P, "rows": R}),
    "multi_head_attention": ("mha_self_dropout", {"sample": S, "heads": P}),
    "conv2d": ("conv2d", {"sample": S, "out": P, "in": R, "height": A, "width": A}),
    "add": ("add3", {"sample": S, "features": A}),
    "subtract": ("subtract_rank3", {"sample": S, "features": A}),
    "multiply": ("multiply3", {"sample": S, "features": A}),
    "activation": ("gelu_rank3", {"sample": S, "features": A}),
    "dropout": ("dropout", {"sample": S, "features": A}),
    "identity": ("identity", {"sample": S, "features": A}),
    "permute": ("permute", {"sample": S, "features": A}),
    "reshape": ("reshape_keeps_dim1", {"sample": S, "dim1": A}),
    "flatten": ("flatten", {"sample": S}),
    "concatenate": ("concat_last", {"sample": S, "dim1": A}),
    "split": ("split_dim1", {"sample": S, "features": A}),
    "softmax": ("softmax_last", {"sample": S, "dim1": A}),
    "layer_norm": ("layer_norm", {"sample": S, "dim1": A}),
    "batch_norm": ("batch_norm", {"sample": S, "channels": A}),
    "batch_matmul": ("matmul", {"sample": S, "m": A, "n": A, "k": R}),
    "pool2d": ("max_pool", {"sample": S, "channels": A, "height": A, "width": A}),
    "global_avg_pool2d": ("global_avg_pool", {"sample": S, "channels": A}),
    "zero_pad2d": ("zero_pad", {"sample": S, "channels": A}),
    "global_max_pool2d": ("global_max_pool", {"sample": S, "channels": A}),
    "conv1d": ("conv1d", {"sample": S, "out": P, "in": R, "length": A}),
    "pool1d": ("max_pool1d", {"sample": S, "channels": A, "length": A}),
    "global_avg_pool1d": ("global_avg_pool1d", {"sample": S, "channels": A}),
    "global_max_pool1d": ("global_max_pool1d_keepdims_cf", {"sample": S, "channels": A}),
    "relu": ("relu_keras", {"sample": S, "features": A}),
    "rescale": ("rescale", {"sample": S, "features": A}),
    "upsampling2d": ("upsampling2d", {"sample": S, "channels": A}),
    "conv2d_transpose": ("conv2d_transpose", {"sample": S, "out": P, "in": R}),
    "binary": ("binary_divide_broadcast", {"sample": S, "features": A}),
    "where": ("where", {"sample": S}),
    "unary": ("unary_exp", {"sample": S, "features": A}),
    "reduce": ("reduce_mean", {"sample": S}),
    "slice": ("slice", {"sample": S}),
    "cast": ("cast", {"sample": S, "features": A}),
    "one_hot": ("one_hot", {"sample": S}),
    "parameter": ("parameter", {"sample": S}),
    "range": ("range", {"sample": S}),
}


def _declared(name: str) -> dict[str, DimKind]:
    op, inputs, _ = CASES[name]
    shapes = [TensorShape(a.shape, DataType.of(a.dtype)) for a in inputs]
    return {pd.axis: pd.kind for pd in op.parallel_dims(shapes)}


@pytest.mark.parametrize("op_type", sorted(AXES))
def test_axes_each_operator_declares(op_type: str) -> None:
    name, want = AXES[op_type]
    assert CASES[name][0].op_type == op_type
    assert _declared(name) == want


def test_variants_declare_fewer_axes() -> None:
    assert _declared("linear_relu") == {"sample": S, "out": P}
    assert _declared("linear_softmax") == {"sample": S}
    assert _declared("embedding_bag_mean") == {"sample": S, "columns": P, "rows": R}
    hw = {"height": A, "width": A}
    assert _declared("conv2d_relu_no_bias") == {"sample": S, "out": P} | hw
    assert _declared("conv2d_groups") == {"sample": S, "out": P} | hw
    assert _declared("conv2d_depthwise") == {"sample": S, "out": P} | hw
    assert _declared("add_rank1") == {"sample": S}
    assert _declared("activation_softmax_rank3") == {"sample": S, "dim1": A}
    assert _declared("activation_softmax_rank2") == {"sample": S}
    assert _declared("reshape_changes_dim1") == {"sample": S}
    assert _declared("flatten_channels_first_1x1") == {"sample": S, "dim1": A}
    assert _declared("concat_dim1") == {"sample": S, "features": A}
    assert _declared("concat_rank2") == {"sample": S}
    assert _declared("softmax_dim1") == {"sample": S, "features": A}
    assert _declared("softmax_all") == {"sample": S}
    assert _declared("layer_norm_rank4_no_scale") == {"sample": S, "dim1": A}
    assert _declared("matmul_normalize") == {"sample": S, "m": A, "n": A}
    assert _declared("matmul_dot_rank2") == {"sample": S, "k": R}


def test_spatial_axes_of_conv2d_and_pool2d() -> None:
    """height / width extents are the output's rows / columns; a 1-pixel output dim offers no
    axis; a fused softmax over a channels_first output (its last dim is the width) keeps the
    width whole."""
    def axes(op: Operator, shape: tuple[int, ...]) -> dict[str, int | None]:
        return {pd.axis: pd.size for pd in op.parallel_dims([TensorShape(shape)])
                if pd.kind is A}

    assert axes(Conv2D(2, 3, padding="same", strides=2), (1, 7, 5, 3)) == {"height": 4,
                                                                           "width": 3}
    assert axes(Conv2D(2, (3, 5)), (1, 7, 5, 3)) == {"height": 5}
    assert axes(Conv2D(2, 1, activation="softmax", data_format="channels_first"),
                (1, 3, 4, 5)) == {"height": 4}
    assert axes(Conv2D(2, 1, activation="softmax"), (1, 4, 5, 3)) == {"height": 4, "width": 5}
    assert axes(Pool2D("max", 2), (1, 7, 5, 3)) == {"channels": 3, "height": 3, "width": 2}
    assert axes(Pool2D("avg", (1, 5)), (1, 7, 5, 3)) == {"channels": 3, "height": 7}


def test_spatial_configurations_are_exercised() -> None:
    """Uneven spatial splits (7 rows over 2 and 4 points) and mixed ones are among the checked
    configurations."""
    for name in ("conv2d_spatial_same_dilated", "max_pool_same_overlapping"):
        op, inputs, _ = CASES[name]
        configs = legal_configs(op, inputs)
        for want in ({"height": 2}, {"height": 4}, {"height": 3}, {"width": 2},
                     {"height": 2, "width": 2}, {"sample": 2, "height": 2}):
            assert want in configs, (name, want)


def test_spatial_split_replicates_the_input_in_the_pcg() -> None:
    """Under a height split the PCG describes the conv's input as read whole by every point (a
    Replicate), though the executor hands each point only its window (test_spatial_halo)."""
    from unity_legion.pcg.pcg import node_shapes
    from unity_legion.types import OpConfig

    s = TensorShape((2, 7, 5, 3))
    ns = node_shapes(Conv2D(4, 3, padding="same"), [s], OpConfig.of({"height": 2}))
    assert ns.inputs[0].copy_degree == 2 and ns.inputs[0].degrees == (1, 1, 1, 1)
    assert ns.outputs[0].degrees == (1, 2, 1, 1) and ns.outputs[0].sum_degree == 1
    assert ns.weights["kernel"].copy_degree == 2


def test_grouped_conv_offers_only_degrees_keeping_whole_groups() -> None:
    def extent(op: Conv2D, c: int) -> int | None:
        dims = {pd.axis: pd.size for pd in op.parallel_dims([TensorShape((2, 5, 5, c))])}
        return dims.get("out")

    assert extent(Conv2D(6, 3, groups=2), 4) == 2        # 2 groups
    assert extent(Conv2D(12, 3, groups=4), 8) == 2       # 3 pieces of 8 channels split a group
    assert extent(Conv2D(7, 3, groups=7), 7) == 7        # depthwise: any degree
    assert extent(Conv2D(6, 3, groups=3), 3) is None     # 2 filters per channel: 3 vs 6 tiles


def test_every_operator_type_has_cases_and_axes() -> None:
    """A new operator (or family) must say here what it can split."""
    for mod in pkgutil.iter_modules(operators_pkg.__path__):
        importlib.import_module(f"{operators_pkg.__name__}.{mod.name}")
    found, todo = set(), list(Operator.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if "op_type" in cls.__dict__ and cls.__module__.startswith(operators_pkg.__name__):
            found.add(cls.op_type)
    assert found == set(AXES)
    assert {op.op_type for op, _, _ in CASES.values()} == set(AXES)


@pytest.mark.parametrize("config", [{"channels": 2}, {"channels": 3, "sample": 1},
                                    {"sample": 2, "channels": 2}])
def test_batch_norm_moving_statistics_under_a_channel_split(config: dict[str, int]) -> None:
    """BatchNorm's state update (not part of gradients()) also runs split by channels."""
    rng = np.random.default_rng(3)
    g = ComputationGraph()
    xin = g.add_input(TensorShape((None, 2, 5)), "x")
    (out,) = g.add_node(BatchNorm(momentum=0.7), [xin], "bn")  # node 0: the planned one
    ex = planned(config)(g, [out])
    c = 5
    for key, spec in ex.weight_specs():  # moving mean 0, the rest 1
        ex.set_weight(key, np.full(spec.shape.dims, key[1] != "moving_mean", np.float32))
    batches = [(1 + 2 * rng.standard_normal((n, 2, c))).astype(np.float32) for n in (B, 3)]
    mean, var = np.zeros(c), np.ones(c)
    for step, b in enumerate(batches, 1):
        res = ex.train_step({xin: b}, [randn(rng, *b.shape)], Objective((MeanSquaredError(),),
                                                                      ((),)), SGDRule(), 0.1, step)
        assert res.applied
        b64 = b.astype(np.float64).reshape(-1, c)
        mean, var = mean * 0.7 + b64.mean(0) * 0.3, var * 0.7 + b64.var(0) * 0.3
    np.testing.assert_allclose(ex.get_weight((0, "moving_mean")), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ex.get_weight((0, "moving_variance")), var, rtol=1e-5, atol=1e-6)


def test_linear_axes() -> None:
    assert {"sample", "out", "in"} == {a for c in legal_configs(Linear(6), [randn(RNG, 7, 5)])
                                       for a in c}
    # a fused activation cannot run on partial sums: no split of the input features
    assert all("in" not in c for c in legal_configs(Linear(6, activation="relu"),
                                                    [randn(RNG, 7, 5)]))


_TWO_RANK_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
from legate.core import get_legate_runtime
from parallel_check import check_configs
from test_parallel_configs import CASES
from unity_legion.executor.executor import GraphExecutor, Objective
from unity_legion.operators.linear import Linear
from unity_legion.operators.losses import MeanSquaredError
from unity_legion.operators.optimizers import AdamRule, SGDRule
from unity_legion.pcg import ComputationGraph
from unity_legion.types import MachineView, OpConfig, TensorShape

rt = get_legate_runtime()
assert rt.node_count == 2, rt.node_count
for name in {cases!r}:
    op, inputs, kwargs = CASES[name]
    n = len(check_configs(op, inputs, **kwargs))
    print("CASE-OK", rt.node_id, name, n, flush=True)

def train(plan, rule):
    g = ComputationGraph()
    x = g.add_input(TensorShape((None, 5)), "x")
    (h,) = g.add_node(Linear(6), [x], "first")
    (o,) = g.add_node(Linear(3), [h], "second")
    ex = GraphExecutor(g, [o])
    ex.set_plan(plan)
    rng = np.random.default_rng(0)
    for key, spec in ex.weight_specs():
        ex.set_weight(key, rng.standard_normal(spec.shape.dims).astype(np.float32))
    xs = rng.standard_normal((6, 5)).astype(np.float32)
    ys = rng.standard_normal((6, 3)).astype(np.float32)
    obj = Objective((MeanSquaredError(),), ((),))
    losses = [ex.train_step({{x: xs}}, [ys], obj, rule, 0.05, s).mean_loss for s in range(1, 5)]
    return losses, {{k: ex.get_weight(k) for k, _ in ex.weight_specs()}}

both = MachineView("cpu", 0, (2,), (1,))
for rule in (AdamRule(), SGDRule(momentum=0.9)):
    want, wv = train({{0: OpConfig(), 1: OpConfig()}}, rule)
    got, gv = train({{0: OpConfig.of({{"out": 2}}, both), 1: OpConfig.of({{"in": 2}}, both)}}, rule)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for k in wv:
        np.testing.assert_allclose(gv[k], wv[k], rtol=1e-5, atol=1e-6)
print("RANK-OK", rt.node_id, flush=True)
"""


@pytest.mark.slow
def test_spatial_configs_and_partitioned_optimizer_state_on_two_ranks(tmp_path) -> None:
    """Over 2 ranks (one processor each): conv2d / pool2d spatial and conv1d / pool1d length
    configurations equal the serial run, and Adam / momentum training with tensor-parallel
    Linears (slots split like their kernels) equals the serial run."""
    import sys
    from pathlib import Path

    from launch import REPO, VENV_BIN

    cases = ["conv2d_spatial_same_dilated", "conv2d_spatial_relu_same_strided",
             "max_pool_same_overlapping", "avg_pool_same_overlapping", "conv1d", "max_pool1d"]
    script = tmp_path / "two_ranks.py"
    script.write_text(_TWO_RANK_SCRIPT.format(tests=str(Path(__file__).parent), cases=cases))
    from launch import run_with_env
    proc = run_with_env([str(VENV_BIN / "mpirun"), "-np", "2", "--oversubscribe", "--bind-to",
                         "none", sys.executable, str(script)], REPO, "--cpus 1 --sysmem 1000",
                        600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert sorted(ln.split()[1] for ln in proc.stdout.splitlines()
                  if ln.startswith("RANK-OK")) == ["0", "1"], out[-4000:]
    ok = [ln for ln in proc.stdout.splitlines() if ln.startswith("CASE-OK")]
    assert len(ok) == 2 * len(cases)
