"""The same model in PyTorch: a unity_legion keras.Model's graph run by torch operators.

Used as the reference of the model benchmarks and of the tests: `TorchTwin(model)` holds torch
copies of the model's current weights and runs the graph node by node; `run_node` runs one
operator by the torch function of the same meaning, in the same layouts (channels_last images
are permuted to torch's NCHW around convolutions and poolings). The table is keyed by operator
class, and an operator that only reshapes (`Operator.reshape_only`) needs no entry. PyTorch is a
test and benchmark dependency only; nothing in unity_legion imports this module.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from unity_legion.operators.activation import Activation
from unity_legion.operators.attention import MultiHeadAttention
from unity_legion.operators.base import Operator
from unity_legion.operators.batch_norm import BatchNorm
from unity_legion.operators.concat import Concat
from unity_legion.operators.conv2d import Conv2D
from unity_legion.operators.dropout import Dropout
from unity_legion.operators.elementwise import Add, Multiply, Subtract
from unity_legion.operators.embedding import Embedding
from unity_legion.operators.layer_norm import LayerNorm
from unity_legion.operators.linear import Linear
from unity_legion.operators.matmul import BatchMatmul
from unity_legion.operators.padding import ZeroPad2D
from unity_legion.operators.permute import Identity, Permute
from unity_legion.operators.pooling import GlobalAvgPool2D, Pool2D
from unity_legion.operators.softmax import Softmax
from unity_legion.operators.split import Split
from unity_legion.types import TensorShape

Tensor = torch.Tensor
OpFn = Callable[[Any, list[Tensor], Mapping[str, Tensor], bool, Any], list[Tensor]]

_ACT: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": lambda t: t, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "gelu": F.gelu, "softmax": lambda t: torch.softmax(t, -1)}


def _nchw(t: Tensor, op: Any) -> Tensor:
    return t if op.data_format == "channels_first" else t.permute(0, 3, 1, 2)


def _back(t: Tensor, op: Any) -> Tensor:
    return t if op.data_format == "channels_first" else t.permute(0, 2, 3, 1).contiguous()


def _pads(op: Any, s: Any) -> tuple[int, int, int, int]:
    return tuple(op._geometry(s)[-1])  # (top, bottom, left, right)


def _linear(op, xs, w, training, s):
    z = xs[0] @ w["kernel"]
    if "bias" in w:
        z = z + w["bias"]
    return [_ACT[op.activation](z)]


def _conv2d(op, xs, w, training, s):
    pt, pb, pl, pr = _pads(op, s[0])
    x = F.pad(_nchw(xs[0], op), (pl, pr, pt, pb))
    k = w["kernel"].permute(3, 2, 0, 1)  # (kh, kw, cin/g, out) -> (out, cin/g, kh, kw)
    z = F.conv2d(x, k, w.get("bias"), stride=op.strides, dilation=op.dilation_rate,
                 groups=op.groups)
    return [_back(_ACT[op.activation](z), op)]


def _pool2d(op, xs, w, training, s):
    pt, pb, pl, pr = _pads(op, s[0])
    x = _nchw(xs[0], op)
    if op.mode == "max":
        x = F.pad(x, (pl, pr, pt, pb), value=-math.inf)
        return [_back(F.max_pool2d(x, op.pool_size, op.strides), op)]
    # Keras' average over the valid (unpadded) elements of each window
    ones = torch.ones_like(x[:1, :1])
    total = F.avg_pool2d(F.pad(x, (pl, pr, pt, pb)), op.pool_size, op.strides, divisor_override=1)
    count = F.avg_pool2d(F.pad(ones, (pl, pr, pt, pb)), op.pool_size, op.strides,
                         divisor_override=1)
    return [_back(total / count, op)]


def _global_avg_pool(op, xs, w, training, s):
    axes = (2, 3) if op.data_format == "channels_first" else (1, 2)
    return [xs[0].mean(dim=axes, keepdim=bool(op.keepdims))]


def _embedding(op, xs, w, training, s):
    ids = xs[0].long()
    table = w["embeddings"]
    if op.combiner is None:
        return [F.embedding(ids, table)]
    flat = ids.reshape(-1, ids.shape[-1])
    bag = F.embedding_bag(flat, table, mode=op.combiner)
    return [bag.reshape(ids.shape[:-1] + (table.shape[1],))]


def _layer_norm(op, xs, w, training, s):
    x = xs[0]
    axes = tuple(a % x.dim() for a in op.axes)
    mean = x.mean(dim=axes, keepdim=True)
    var = x.var(dim=axes, keepdim=True, unbiased=False)
    y = (x - mean) / torch.sqrt(var + op.epsilon)
    shape = [x.shape[a] if a in axes else 1 for a in range(x.dim())]
    if "gamma" in w:
        y = y * w["gamma"].reshape(shape)
    if "beta" in w:
        y = y + w["beta"].reshape(shape)
    return [y]


def _split(op, xs, w, training, s):
    x = xs[0]
    axis = op.resolved_axis(x.dim())
    sizes = [int(t.dims[axis]) for t in op.infer_outputs(s)]
    return list(torch.split(x, sizes, dim=axis))


def _zero_pad(op, xs, w, training, s):
    pt, pb, pl, pr = op.pads
    return [_back(F.pad(_nchw(xs[0], op), (pl, pr, pt, pb)), op)]


def _batch_norm(op, xs, w, training, s):
    x = xs[0]
    axis = op.resolved_axis(s[0])
    xt = x.movedim(axis, 1)
    # Keras' moving statistics use the biased variance; these copies only serve the forward
    y = F.batch_norm(xt, w["moving_mean"].detach().clone(), w["moving_variance"].detach().clone(),
                     w.get("gamma"), w.get("beta"), training=training,
                     momentum=1.0 - op.momentum, eps=op.epsilon)
    return [y.movedim(1, axis)]


def _attention(op, xs, w, training, s):
    q, v = xs[0], xs[1]
    k = xs[op.key_index] if op.has_key else v
    batch, out_dims = q.shape[0], tuple(op.infer_outputs(s)[0].dims[1:])
    qf, kf, vf = (t.reshape(batch, -1, t.shape[-1]) for t in (q, k, v))

    def project(src: Tensor, name: str) -> Tensor:  # (b, n, dim) -> (b, heads, n, d)
        z = torch.einsum("bnd,dhk->bhnk", src, w[f"{name}_kernel"])
        return z + w[f"{name}_bias"][None, :, None, :] if f"{name}_bias" in w else z

    qh, kh, vh = project(qf, "query"), project(kf, "key"), project(vf, "value")
    logits = torch.einsum("bhtk,bhsk->bhts", qh, kh) / math.sqrt(op.key_dim)
    if op.has_mask:
        if q.dim() != 3:
            raise NotImplementedError("TorchTwin: attention masks for queries of rank > 3")
        mask = xs[op.mask_index][:, None].bool()  # (batch, 1, T or 1, S or 1): nonzero = attend
        logits = logits.masked_fill(~mask, -1e9)
    probs = F.dropout(torch.softmax(logits, -1), op.dropout, training)
    ctx = torch.einsum("bhts,bhsv->bhtv", probs, vh)
    out = torch.einsum("bhtv,hvo->bto", ctx, w["output_kernel"].reshape(
        op.num_heads, op.value_dim, -1))
    if "output_bias" in w:
        out = out + w["output_bias"].reshape(-1)
    return [out.reshape((batch,) + out_dims)]


def _batch_matmul(op, xs, w, training, s):
    a, b = xs
    if op.normalize:
        axis_a, axis_b = (-1, -1) if a.dim() == 2 else (-2 if op.transpose_a else -1,
                                                        -1 if op.transpose_b else -2)
        a = a / a.norm(dim=axis_a, keepdim=True).clamp_min(1e-7)
        b = b / b.norm(dim=axis_b, keepdim=True).clamp_min(1e-7)
    if a.dim() == 2:
        return [(a * b).sum(-1, keepdim=True)]
    a = a.transpose(-1, -2) if op.transpose_a else a
    b = b.transpose(-1, -2) if op.transpose_b else b
    return [a @ b]


def _softmax(op, xs, w, training, s):
    x = xs[0]
    axes = op.resolved(s[0])
    z = x - x.amax(dim=axes, keepdim=True)
    e = torch.exp(z)
    return [e / e.sum(dim=axes, keepdim=True)]


def _dropout(op, xs, w, training, s):
    return [F.dropout(xs[0], op.rate, training)]


# The torch function of each operator class (reshape-only operators need none: see run_node).
REGISTRY: dict[type[Operator], OpFn] = {
    Linear: _linear,
    Activation: lambda op, xs, w, t, s: [_ACT[op.fn](xs[0])],
    Dropout: _dropout,
    Add: lambda op, xs, w, t, s: [sum(xs[1:], xs[0])],
    Subtract: lambda op, xs, w, t, s: [xs[0] - xs[1]],
    Multiply: lambda op, xs, w, t, s: [math.prod(xs[1:], start=xs[0])],
    Concat: lambda op, xs, w, t, s: [torch.cat(xs, dim=op.resolved_axis(xs[0].dim()))],
    Embedding: _embedding,
    Conv2D: _conv2d,
    Pool2D: _pool2d,
    GlobalAvgPool2D: _global_avg_pool,
    LayerNorm: _layer_norm,
    Split: _split,
    ZeroPad2D: _zero_pad,
    BatchNorm: _batch_norm,
    MultiHeadAttention: _attention,
    BatchMatmul: _batch_matmul,
    Softmax: _softmax,
    Permute: lambda op, xs, w, t, s: [xs[0].permute(op.perm)],
    Identity: lambda op, xs, w, t, s: [xs[0]],
}


def supports(op: Operator) -> bool:
    """Whether the twin can run `op`."""
    return op.reshape_only or type(op) in REGISTRY


def run_node(op: Operator, xs: Sequence[Tensor], weights: Mapping[str, Tensor], training: bool,
             inputs: Sequence[TensorShape]) -> list[Tensor]:
    """`op`'s outputs for input tensors `xs` of concrete shapes `inputs`, with its weights by
    name. A reshape-only operator's output is its input, row-major, in the shape it infers
    (Keras' channels_first Flatten flattens in channels_last order, so it moves the channels
    last first)."""
    if op.reshape_only:
        x = xs[0]
        if getattr(op, "channels_first", False) and x.dim() > 2:
            x = x.movedim(1, -1)
        return [x.reshape(op.infer_outputs(list(inputs))[0].dims)]
    try:
        fn = REGISTRY[type(op)]
    except KeyError:
        raise NotImplementedError(f"TorchTwin: no torch version of {op.op_type}") from None
    return fn(op, list(xs), weights, training, list(inputs))


class TorchTwin(torch.nn.Module):
    """A unity_legion keras.Model run by PyTorch with a copy of the model's current weights."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        graph = model.graph
        self.graph = graph
        self.input_ids = list(model._input_ids)
        self.output_ids = list(model._output_ids)
        self.nodes = graph.subgraph_nodes(self.output_ids)
        missing = sorted({n.op.op_type for n in self.nodes if not supports(n.op)})
        if missing:
            raise NotImplementedError(f"TorchTwin: no torch version of {missing}")
        self.weights = torch.nn.ParameterDict()
        for n in self.nodes:
            for ws in n.weights:
                value = model._get_weight((n.id, ws.name))
                self.weights[_key(n.id, ws.name)] = torch.nn.Parameter(
                    torch.tensor(np.asarray(value)), requires_grad=ws.trainable)

    def forward(self, *inputs: Tensor) -> list[Tensor]:
        batch = inputs[0].shape[0]
        shapes = self.graph.bind_batch(batch)
        env: dict[int, Tensor] = dict(zip(self.input_ids, inputs))
        for n in self.nodes:
            w = {ws.name: self.weights[_key(n.id, ws.name)] for ws in n.weights}
            outs = run_node(n.op, [env[t] for t in n.inputs], w, self.training,
                            [shapes[t] for t in n.inputs])
            env.update(zip(n.outputs, outs))
        return [env[t] for t in self.output_ids]


def _key(node_id: int, name: str) -> str:
    return f"n{node_id}_{name}"


def torch_loss(name: str, outputs: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """The zoo's losses on probabilities (sparse CE) or values (MSE), summed over outputs."""
    total = outputs[0].new_zeros(())
    for out, tgt in zip(outputs, targets):
        if name == "sparse_categorical_crossentropy":
            probs = out.clamp_min(1e-7)
            total = total + F.nll_loss(torch.log(probs).reshape(-1, out.shape[-1]),
                                       tgt.reshape(-1).long())
        elif name == "mse":
            total = total + F.mse_loss(out, tgt)
        else:
            raise ValueError(f"torch_loss: unknown loss {name!r}")
    return total


# --- the operators of traced keras.ops / Python operators (operators/broadcast.py, unary.py,
# reduce.py, slice.py, convert.py, source.py) -----------------------------------------------

from unity_legion.operators.broadcast import Binary, Where  # noqa: E402
from unity_legion.operators.convert import Cast, OneHot  # noqa: E402
from unity_legion.operators.reduce import Reduce  # noqa: E402
from unity_legion.operators.slice import Slice  # noqa: E402
from unity_legion.operators.source import Parameter, Range  # noqa: E402
from unity_legion.operators.unary import Unary  # noqa: E402

_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "add": torch.add, "subtract": torch.sub, "multiply": torch.mul, "divide": torch.div,
    "maximum": torch.maximum, "minimum": torch.minimum, "greater": torch.gt,
    "greater_equal": torch.ge, "less": torch.lt, "less_equal": torch.le, "equal": torch.eq,
    "not_equal": torch.ne}
_UNARY: dict[str, Callable[[Tensor, float], Tensor]] = {
    "exp": lambda t, c: torch.exp(t), "log": lambda t, c: torch.log(t),
    "sqrt": lambda t, c: torch.sqrt(t), "square": lambda t, c: t * t,
    "abs": lambda t, c: torch.abs(t), "negative": lambda t, c: -t, "scale": lambda t, c: t * c,
    "shift": lambda t, c: t + c, "rsub": lambda t, c: c - t, "rdiv": lambda t, c: c / t,
    "power": lambda t, c: torch.pow(t, c), "greater": lambda t, c: t > c,
    "greater_equal": lambda t, c: t >= c, "less": lambda t, c: t < c,
    "less_equal": lambda t, c: t <= c, "equal": lambda t, c: t == c,
    "not_equal": lambda t, c: t != c}
_TORCH_DTYPE = {"float32": torch.float32, "float64": torch.float64, "int32": torch.int32,
                "int64": torch.int64, "bool": torch.bool}


def _aligned(t: Tensor, rank: int) -> Tensor:
    """Batch first, size-1 dims inserted after it: non-batch dims align from the right."""
    return t.reshape(tuple(t.shape[:1]) + (1,) * (rank - t.dim()) + tuple(t.shape[1:]))


def _binary(op, xs, w, training, s):
    r = max(t.dim() for t in xs)
    return [_BINARY[op.fn](_aligned(xs[0], r), _aligned(xs[1], r))]


def _where(op, xs, w, training, s):
    r = max(t.dim() for t in xs)
    c, a, b = (_aligned(t, r) for t in xs)
    return [torch.where(c.bool(), a, b)]


def _reduce(op, xs, w, training, s):
    axes = op.resolved(s[0])
    fn = {"sum": torch.sum, "mean": torch.mean, "max": torch.amax}[op.fn]
    return [fn(xs[0], dim=axes, keepdim=op.keepdims)]


def _slice(op, xs, w, training, s):
    index = (slice(None),) + tuple(
        (a if i + 1 in op.drop else slice(a, b, c))
        for i, (a, b, c) in enumerate(op.resolved(s[0])))
    return [xs[0][index]]


def _one_hot(op, xs, w, training, s):
    idx = xs[0].long()
    valid = (idx >= 0) & (idx < op.depth)
    hot = F.one_hot(torch.where(valid, idx, 0), op.depth) * valid[..., None]
    return [hot.to(_TORCH_DTYPE[op.dtype.value])]


def _range(op, xs, w, training, s):
    values = op.start + op.step * torch.arange(op.length, dtype=torch.float64)
    return [values.to(_TORCH_DTYPE[op.dtype.value]).expand(xs[0].shape[0], op.length)]


REGISTRY.update({
    Binary: _binary,
    Where: _where,
    Unary: lambda op, xs, w, t, s: [_UNARY[op.fn](xs[0], op.c)],
    Reduce: _reduce,
    Slice: _slice,
    Cast: lambda op, xs, w, t, s: [xs[0].to(_TORCH_DTYPE[op.dtype.value])],
    OneHot: _one_hot,
    Parameter: lambda op, xs, w, t, s: [w["value"].expand((xs[0].shape[0],) + op.shape)],
    Range: _range,
})


# --- 1-D convolution and pooling, global max pooling (operators/one_d.py, global_max_pool.py) --

from unity_legion.operators.global_max_pool import GlobalMaxPool2D  # noqa: E402
from unity_legion.operators.one_d import (Conv1D, GlobalAvgPool1D, GlobalMaxPool1D,  # noqa: E402
                                          Pool1D)


def _ncl(t: Tensor, op: Any) -> Tensor:
    return t if op.data_format == "channels_first" else t.permute(0, 2, 1)


def _nlc(t: Tensor, op: Any) -> Tensor:
    return t if op.data_format == "channels_first" else t.permute(0, 2, 1).contiguous()


def _pads_1d(op: Any, s: Any) -> tuple[int, int]:
    _, _, left, right = op.plane()._geometry(op._up(s))[-1]
    return left, right


def _conv1d(op, xs, w, training, s):
    x = F.pad(_ncl(xs[0], op), _pads_1d(op, s[0]))
    k = w["kernel"].permute(2, 1, 0)  # (k, cin/g, out) -> (out, cin/g, k)
    z = F.conv1d(x, k, w.get("bias"), stride=op.strides, dilation=op.dilation_rate,
                 groups=op.groups)
    return [_nlc(_ACT[op.activation](z), op)]


def _pool1d(op, xs, w, training, s):
    pads = _pads_1d(op, s[0])
    x = _ncl(xs[0], op)
    if op.mode == "max":
        return [_nlc(F.max_pool1d(F.pad(x, pads, value=-math.inf), op.pool_size, op.strides), op)]
    # Keras' average over the real (unpadded) positions of each window
    total = F.avg_pool1d(F.pad(x, pads), op.pool_size, op.strides)
    count = F.avg_pool1d(F.pad(torch.ones_like(x[:1, :1]), pads), op.pool_size, op.strides)
    return [_nlc(total / count, op)]


def _global_pool(reduce: Callable[..., Tensor], rank: int) -> OpFn:
    def run(op, xs, w, training, s):
        first = op.data_format == "channels_first"
        axes = tuple(range(2, rank)) if first else tuple(range(1, rank - 1))
        return [reduce(xs[0], dim=axes, keepdim=bool(op.keepdims))]
    return run


REGISTRY.update({
    Conv1D: _conv1d,
    Pool1D: _pool1d,
    GlobalAvgPool1D: _global_pool(torch.mean, 3),
    GlobalMaxPool1D: _global_pool(torch.amax, 3),
    GlobalMaxPool2D: _global_pool(torch.amax, 4),
})


# --- ReLU with Keras' arguments, Rescaling, UpSampling2D (operators/rectifier.py, rescale.py,
# upsampling.py) ---------------------------------------------------------------------------

from unity_legion.operators.rectifier import ReLU  # noqa: E402
from unity_legion.operators.rescale import Rescale  # noqa: E402
from unity_legion.operators.upsampling import UpSampling2D  # noqa: E402


def _relu(op, xs, w, training, s):
    x = xs[0]
    top = x if op.max_value is None else torch.clamp(x, max=op.max_value)
    y = torch.where(x > op.threshold, top, torch.zeros((), dtype=x.dtype))
    return [y - op.negative_slope * torch.relu(op.threshold - x)]


def _upsampling2d(op, xs, w, training, s):
    x = _nchw(xs[0], op)
    x = x.repeat_interleave(op.size[0], dim=2).repeat_interleave(op.size[1], dim=3)
    return [_back(x, op)]


REGISTRY.update({
    ReLU: _relu,
    Rescale: lambda op, xs, w, t, s: [xs[0] * op.scale + op.offset],
    UpSampling2D: _upsampling2d,
})


# --- Conv2DTranspose (operators/conv2d_transpose.py) -------------------------------------------

from unity_legion.operators.conv2d_transpose import Conv2DTranspose  # noqa: E402


def _conv2d_transpose(op, xs, w, training, s):
    _, ho, wo, (ct, _, cl, _) = op._geometry(s[0])
    k = w["kernel"].permute(3, 2, 0, 1)  # (kh, kw, out, in) -> (in, out, kh, kw)
    full = F.conv_transpose2d(_nchw(xs[0], op), k, stride=op.strides)
    # Keras' window of the full result: crop before, then crop or zero-extend after
    full = F.pad(full, (0, max(0, cl + wo - full.shape[3]), 0, max(0, ct + ho - full.shape[2])))
    z = full[:, :, ct:ct + ho, cl:cl + wo]
    if "bias" in w:
        z = z + w["bias"][None, :, None, None]
    return [_back(_ACT[op.activation](z), op)]


REGISTRY[Conv2DTranspose] = _conv2d_transpose
