"""Multi-head attention (Keras MultiHeadAttention) as one operator, attending over all axes
between the batch and the features (Keras' default attention_axes).

Inputs, in order: query (B, *Tq, Dq), value (B, *Sv, Dv), then key (B, *Sv, Dk) if given (else
the value is the key) and an attention mask (B, *Tq, *Sv) if given (bool or integer, nonzero =
attend; a non-batch dim of 1 broadcasts). With T = prod(Tq), S = prod(Sv), H heads:

    Q = (query @ Wq + bq) / sqrt(key_dim)      (B, T, H, key_dim)   Wq: (Dq, H, key_dim)
    K = key @ Wk + bk                          (B, S, H, key_dim)   Wk: (Dk, H, key_dim)
    V = value @ Wv + bv                        (B, S, H, value_dim) Wv: (Dv, H, value_dim)
    P = softmax_S(Q . K)  with masked logits replaced by -1e9      (B, H, T, S)
    C = dropout(P) @ V                         (B, T, H, value_dim)
    y = C @ Wo + bo                            (B, *Tq, *out)       Wo: (H, value_dim, *out)

Weights keep Keras 3's layouts; the head is always a dimension of its own (dim 1 of the input
projections, dim 0 of their biases and of the output kernel). A fully masked row attends
uniformly to every position (as Keras does in float32, where -1e9 swamps the logits) and passes
no gradient to its logits.

Forward saves Q, K, V, P, C and the dropout seed of each sample; backward runs one launch for the
attention core (writing the projections' gradients dQ, dK, dV into scratch stores declared as
saved tensors "grad_*") and then per projection a weight-gradient launch and, where needed, an
input-gradient launch. Attention dropout is a counter-based hash of (seed, global index of
(sample, head, t, s)) as in operators/dropout.py, so any split of samples or heads draws the
same mask and backward regenerates it from the saved seed (-1: no dropout in that forward). The
attention core (logits, softmax, its gradient and the batched products over (sample, head)) runs
in ATen on views of the pieces, by chunks of samples so its scratch stays bounded; the
projections are numpy matrix products.

Parallel forms (launch axes): "sample" (the batch) and "heads" (PARAMETER: the projections'
kernels and biases on their head dim, the output kernel on its head dim, and every per-head
saved tensor; the inputs are read whole). y = sum over heads of C_h @ Wo_h, so each point makes a
partial sum of y (added by Legate), with the output bias added by the points holding head 0; the
input gradients are partial sums over heads likewise. The head and sample offsets of a point
come from the origin of its probabilities piece (the first store of the attention kernels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from unity_legion.types import DataType

from .base import (SAMPLE, Arg, DimKind, In, Launch, Operator, OperatorError, Origin, Out,
                   ParallelDim, Ref, SavedSpec, Sum, TensorShape, WeightSpec, dw, dx, dy, kernel,
                   same_float, sample_dim, saved, w, x, y)
from ._aten import aten, mm, mm_add, view, xp
from .dropout import check_rate, uniform

MASKED_LOGIT = -1e9
_CHUNK_ELEMENTS = 1 << 22   # attention probabilities per chunk of samples in a kernel
_PROJECTIONS = ("query", "key", "value")
HEADS = "heads"  # launch axis: the attention heads


# ---------------------------------------------------------------------------------------------
# helpers shared by the kernels
# ---------------------------------------------------------------------------------------------

def _flat(a: np.ndarray, cols: int) -> np.ndarray:
    """A contiguous piece as (rows, cols) (a view: kernels write through it)."""
    return a.reshape(-1, cols)


def _add_product(acc: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """acc += a @ b, for an accumulator shaped otherwise than the product (a kernel's
    (D, H, d)): through a 2-D view of it where there is one, else by the product's copy."""
    flat = acc.reshape(a.shape[0], b.shape[1])
    if xp(acc).may_share_memory(flat, acc):
        mm_add(a, b, flat)
    else:
        acc += (a @ b).reshape(acc.shape)


def _chunks(probs_shape: tuple[int, ...]) -> Iterator[slice]:
    """Slices of samples whose (H, T, S) attention scratch stays under _CHUNK_ELEMENTS (the
    logits, dropout hash and their gradients are several times the probabilities)."""
    b, per_sample = probs_shape[0], max(1, math.prod(probs_shape[1:]))
    step = max(1, _CHUNK_ELEMENTS // per_sample)
    for b0 in range(0, b, step):
        yield slice(b0, min(b, b0 + step))


def _parse_dims(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    tq, sv = text.split("|")
    return tuple(int(v) for v in tq.split(",")), tuple(int(v) for v in sv.split(","))


def _attend(mask: np.ndarray, dims: str) -> np.ndarray:
    """The mask piece (B, *Tq, *Sv, dims of 1 broadcasting) as booleans (B, 1, T, S)."""
    tq, sv = _parse_dims(dims)
    full = np.broadcast_to(mask != 0, (mask.shape[0],) + tq + sv)
    return full.reshape(mask.shape[0], 1, math.prod(tq), math.prod(sv))


def keep_scale(shape: tuple[int, ...], batch_origin: int, seed: int, salt: int,
               rate: float, head_origin: int = 0, heads: int | None = None,
               mod: Any = np) -> np.ndarray:
    """Dropout multipliers (0 or 1/(1-rate)) for probabilities of local shape (b, h, T, S) whose
    element 0 is global (sample `batch_origin`, head `head_origin`) of `heads` heads (default:
    h, all of them): a pure function of the global index ((sample * H + head) * T + t) * S + s.
    An array of `mod` (numpy, or cupy for GPU pieces)."""
    b, h, t, s = shape
    heads = h if heads is None else heads
    sample = mod.arange(b, dtype=np.uint64) + np.uint64(batch_origin)
    head = mod.arange(h, dtype=np.uint64) + np.uint64(head_origin)
    row = (sample[:, None] * np.uint64(heads) + head[None, :]) * np.uint64(t * s)   # (b, h)
    index = row[:, :, None] + mod.arange(t * s, dtype=np.uint64)[None, None, :]
    keep = uniform(seed, salt, index.reshape(shape)) >= rate
    return np.where(keep, 1.0 / (1.0 - rate), 0.0)


def _project(src: np.ndarray, kern: np.ndarray, bias: np.ndarray, out: np.ndarray,
             use_bias: bool) -> None:
    """out (B, L, H, d) = src (B, *L, D) @ kern (D, H, d) + bias (H, d)."""
    cols = kern.shape[1] * kern.shape[2]
    o2 = _flat(out, cols)
    mm(_flat(src, kern.shape[0]), kern.reshape(kern.shape[0], cols), o2)
    if use_bias:
        o2 += bias.reshape(cols)


def _keep(probs: np.ndarray, rows: slice, origin: Any, seed: int, salt: int, rate: float,
          heads: int) -> Any:
    """The dropout multipliers of a chunk as a tensor in the probabilities' dtype."""
    ks = keep_scale(probs[rows].shape, origin[0] + rows.start, seed, salt, rate, origin[1],
                    heads, xp(probs))
    return view(ks).to(view(probs).dtype)


def _masked(mask: np.ndarray, dims: str) -> Any:
    """Where a chunk's logits are masked out, as a bool tensor (B, 1, T, S)."""
    return view(np.logical_not(_attend(mask, dims)))


def _logits_dtype(torch: Any, dtype: Any) -> Any:
    """Half logits are taken in float32 (MASKED_LOGIT overflows float16)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, probs: np.ndarray,
               context: np.ndarray, origin: Any, seed: int, salt: int, rate: float,
               has_mask: bool, dims: str, heads: int) -> None:
    """probs = softmax(Q . K) and context = dropout(probs) @ V, by chunks of samples, in ATen
    (batched products over (sample, head) on views, softmax written into the probabilities)."""
    with aten() as torch:
        for rows in _chunks(probs.shape):
            qh, vh = view(q[rows]).transpose(1, 2), view(v[rows]).transpose(1, 2)
            logits = torch.matmul(qh, view(k[rows]).permute(0, 2, 3, 1))          # (b, H, T, S)
            logits = logits.to(_logits_dtype(torch, logits.dtype))
            if has_mask:
                logits.masked_fill_(_masked(mask[rows], dims), MASKED_LOGIT)
            p = view(probs[rows])
            if p.dtype == logits.dtype and p.is_contiguous():  # (softmax's out= writes a
                torch.ops.aten._softmax.out(logits, -1, False, out=p)  # strided one as dense)
            else:
                p.copy_(torch.softmax(logits, -1))
            if rate > 0.0:
                p = p * _keep(probs, rows, origin, seed, salt, rate, heads)
            view(context[rows]).copy_(torch.matmul(p.to(vh.dtype), vh).transpose(1, 2))


def _attention_backward(probs: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                        mask: np.ndarray, d_context: np.ndarray, grad_q: np.ndarray,
                        grad_k: np.ndarray, grad_v: np.ndarray, origin: Any, seed: int,
                        salt: int, rate: float, scale: float, has_mask: bool, dims: str,
                        heads: int) -> None:
    """The projections' gradients from the context's, by chunks of samples, in ATen (seed -1:
    the forward dropped nothing)."""
    with aten() as torch:
        for rows in _chunks(probs.shape):
            p = view(probs[rows])
            ks = _keep(probs, rows, origin, seed, salt, rate, heads) if seed >= 0 else None
            d_ctx = view(d_context[rows]).transpose(1, 2)                       # (b, H, T, dv)
            p_drop = p if ks is None else p * ks
            view(grad_v[rows]).copy_(torch.matmul(p_drop.transpose(-1, -2).to(d_ctx.dtype),
                                                  d_ctx).transpose(1, 2))
            d_p = torch.matmul(d_ctx, view(v[rows]).permute(0, 2, 3, 1))       # (b, H, T, S)
            if ks is not None:
                d_p.mul_(ks)
            work = _logits_dtype(torch, p.dtype)
            d_logits = torch.ops.aten._softmax_backward_data(d_p.to(work), p.to(work), -1, work)
            if has_mask:  # replaced logits do not reach the output
                d_logits.masked_fill_(_masked(mask[rows], dims), 0.0)
            d_logits = d_logits.to(view(q).dtype)
            gq = torch.matmul(d_logits, view(k[rows]).transpose(1, 2)).mul_(scale)
            view(grad_q[rows]).copy_(gq.transpose(1, 2))
            gk = torch.matmul(d_logits.transpose(-1, -2), view(q[rows]).transpose(1, 2))
            view(grad_k[rows]).copy_(gk.transpose(1, 2))


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------

@kernel
def mha_forward(probs: Out, query: In, value: In, key: In, mask: In, query_kernel: In,
                query_bias: In, key_kernel: In, key_bias: In, value_kernel: In, value_bias: In,
                output_kernel: In, output_bias: In, y: Out, q: Out, k: Out, v: Out,
                context: Out, seed_of: Out, origin: Origin, seed: int, salt: int, rate: float,
                scale: float, use_bias: bool, has_mask: bool, dims: str, heads: int) -> None:
    # origin: (sample, head, 0, 0) of this point's probabilities piece
    _project(query, query_kernel, query_bias, q, use_bias)
    q *= q.dtype.type(scale)
    _project(key, key_kernel, key_bias, k, use_bias)
    _project(value, value_kernel, value_bias, v, use_bias)
    _attention(q, k, v, mask, probs, context, origin, seed, salt, rate, has_mask, dims, heads)
    # split by heads, seed_of and y are sums over the head pieces: head 0's point alone writes
    # the seed and adds the output bias (the others' pieces of a sum start at zero)
    first = origin[1] == 0
    seed_of[...] = (seed if rate > 0.0 else -1) if first else 0
    h, dv = context.shape[2], context.shape[3]
    out_cols = output_kernel.size // (h * dv)
    y2 = _flat(y, out_cols)
    mm(_flat(context, h * dv), output_kernel.reshape(h * dv, out_cols), y2)
    if use_bias and first:
        y2 += output_bias.reshape(out_cols)


@kernel
def mha_backward_core(probs: In, q: In, k: In, v: In, context: In, seed_of: In, mask: In,
                      output_kernel: In, dy: In, grad_q: Out, grad_k: Out, grad_v: Out,
                      doutput_kernel: Sum, origin: Origin, salt: int, rate: float, scale: float,
                      has_mask: bool, dims: str, heads: int) -> None:
    """Gradients of the output kernel and of the three projections (into grad_q/k/v)."""
    h, dv = context.shape[2], context.shape[3]
    out_cols = output_kernel.size // (h * dv)
    d2 = _flat(dy, out_cols)
    _add_product(doutput_kernel, _flat(context, h * dv).T, d2)
    d_context = xp(context).empty(context.shape, context.dtype)
    mm(d2, output_kernel.reshape(h * dv, out_cols).T, _flat(d_context, h * dv))
    seed = int(seed_of[0]) if seed_of.size else -1
    _attention_backward(probs, q, k, v, mask, d_context, grad_q, grad_k, grad_v, origin,
                        seed if rate > 0.0 else -1, salt, rate, scale, has_mask, dims, heads)


@kernel
def mha_backward_weight(src: In, grad: In, dkernel: Sum) -> None:
    cols = grad.shape[2] * grad.shape[3]
    _add_product(dkernel, _flat(src, dkernel.shape[0]).T, _flat(grad, cols))


@kernel
def mha_backward_weight_bias(src: In, grad: In, dkernel: Sum, dbias: Sum) -> None:
    cols = grad.shape[2] * grad.shape[3]
    g2 = _flat(grad, cols)
    _add_product(dkernel, _flat(src, dkernel.shape[0]).T, g2)
    dbias += g2.sum(axis=0).reshape(dbias.shape)


@kernel
def mha_backward_input(grad: In, kernel: In, dsrc: Out) -> None:
    cols = kernel.shape[1] * kernel.shape[2]
    mm(_flat(grad, cols), kernel.reshape(kernel.shape[0], cols).T, _flat(dsrc, kernel.shape[0]))


@kernel
def mha_backward_input_pair(grad: In, kernel: In, grad2: In, kernel2: In, dsrc: Out) -> None:
    """d_src of an input feeding two projections (the value as key too): one Out launch, so a
    split by heads can make it a partial sum (an in-place update could not be)."""
    d2 = _flat(dsrc, kernel.shape[0])
    cols = kernel.shape[1] * kernel.shape[2]
    mm(_flat(grad, cols), kernel.reshape(kernel.shape[0], cols).T, d2)
    cols2 = kernel2.shape[1] * kernel2.shape[2]
    mm_add(_flat(grad2, cols2), kernel2.reshape(kernel2.shape[0], cols2).T, d2)


@kernel
def mha_backward_output_bias(dy: In, dbias: Sum) -> None:
    dbias += _flat(dy, dbias.size).sum(axis=0).reshape(dbias.shape)


# ---------------------------------------------------------------------------------------------
# the operator
# ---------------------------------------------------------------------------------------------

def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise OperatorError(f"multi_head_attention: {what} must be a positive integer, got "
                            f"{value!r}")
    return int(value)


def check_output_shape(value: Any) -> tuple[int, ...] | None:
    """Keras' output_shape: None (the query's last dim), an int or a tuple of positive ints."""
    if value is None:
        return None
    dims = (value,) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) \
        else value
    try:
        dims = tuple(dims)
    except TypeError:
        raise OperatorError(f"multi_head_attention: output_shape must be an integer or a tuple "
                            f"of integers, got {value!r}") from None
    if not dims:
        raise OperatorError("multi_head_attention: output_shape must not be empty")
    return tuple(_positive_int(d, "every output_shape entry") for d in dims)


def _dims_text(dims: Sequence[int | None]) -> str:
    return ",".join(str(d) for d in dims)


@dataclass(frozen=True)
class MultiHeadAttention(Operator):
    num_heads: int
    key_dim: int
    value_dim: int | None = None          # None: key_dim
    dropout: float = 0.0                  # on the attention probabilities, in training
    use_bias: bool = True
    output_shape: tuple[int, ...] | None = None   # None: the query's feature dim
    has_key: bool = False                 # inputs hold a key after the value
    has_mask: bool = False                # inputs end with an attention mask
    kernel_initializer: str = "glorot_uniform"
    bias_initializer: str = "zeros"
    salt: int = 0                         # mixed into the per-step dropout seed (Keras' seed)

    op_type = "multi_head_attention"
    num_inputs = None
    flops_efficiency = 0.5       # batched products per head, softmax between
    backward_ratio = 2.0         # every product again twice: d_input and d_weight

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(2, 4), (TensorShape((4, 5, 6)), TensorShape((4, 5, 6)))),
        )

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("num_heads", _positive_int(self.num_heads, "num_heads"))
        set_("key_dim", _positive_int(self.key_dim, "key_dim"))
        set_("value_dim", self.key_dim if self.value_dim is None
             else _positive_int(self.value_dim, "value_dim"))
        try:
            set_("dropout", check_rate(self.dropout))
        except OperatorError:
            raise OperatorError(f"multi_head_attention: dropout must be a number in [0, 1), got "
                                f"{self.dropout!r}") from None
        set_("output_shape", check_output_shape(self.output_shape))
        if isinstance(self.salt, bool) or not isinstance(self.salt, (int, np.integer)):
            raise OperatorError(f"multi_head_attention: seed must be an integer, got {self.salt!r}")

    # --- inputs -------------------------------------------------------------------------------
    @property
    def key_index(self) -> int:
        return 2 if self.has_key else 1

    @property
    def mask_index(self) -> int:
        return 3 if self.has_key else 2

    def _parts(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        """(query, value, key, mask or None), checked."""
        want = 2 + self.has_key + self.has_mask
        names = "query, value" + (", key" if self.has_key else "") + \
            (", attention_mask" if self.has_mask else "")
        if len(inputs) != want:
            raise OperatorError(f"multi_head_attention takes {want} inputs ({names}), got "
                                f"{len(inputs)}")
        q, v = inputs[0], inputs[1]
        k = inputs[self.key_index]
        m = inputs[self.mask_index] if self.has_mask else None
        if q.rank < 3:
            raise OperatorError(f"multi_head_attention: query must have rank >= 3 (batch, "
                                f"positions..., features), got {q}")
        if v.rank != q.rank:
            raise OperatorError(f"multi_head_attention: value {v} must have the query's rank "
                                f"{q.rank} (query {q})")
        if k.rank != v.rank or k.dims[1:-1] != v.dims[1:-1]:
            raise OperatorError(f"multi_head_attention: key {k} must match value {v} in every "
                                f"dimension except the last")
        same_float([q, v, k], "multi_head_attention: query, value and key")
        shapes = [("query", q), ("value", v), ("key", k)]
        if m is not None:
            shapes.append(("attention_mask", m))
        batches = {s.dims[0] for _, s in shapes if s.dims[0] is not None}
        if len(batches) > 1:
            raise OperatorError("multi_head_attention: batch sizes differ: " + ", ".join(
                f"{n} {s}" for n, s in shapes))
        if m is not None:
            self._check_mask(q, v, m)
        return q, v, k, m

    @staticmethod
    def _check_mask(q: TensorShape, v: TensorShape, m: TensorShape) -> None:
        if m.dtype.is_float:
            raise OperatorError(f"multi_head_attention: attention_mask must be a boolean or "
                                f"integer tensor (nonzero = attend), got {m.dtype.value}")
        target = q.dims[1:-1] + v.dims[1:-1]
        if m.rank != 1 + len(target) or any(a not in (1, b) for a, b in zip(m.dims[1:], target)):
            want = "(batch, " + ", ".join(str(d) for d in target) + ")"
            raise OperatorError(f"multi_head_attention: attention_mask {m} must have shape "
                                f"{want} = (batch, query positions, value positions); non-batch "
                                f"dims of 1 broadcast")

    def _sizes(self, inputs: Sequence[TensorShape]) -> tuple[int, int, tuple[int, ...]]:
        """(T, S, output feature dims)."""
        q, v = inputs[0], inputs[1]
        out = self.output_shape or (q.dims[-1],)
        return math.prod(q.dims[1:-1]), math.prod(v.dims[1:-1]), out

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        q = self._parts(inputs)[0]
        return (q.with_dims(q.dims[:-1] + self._sizes(inputs)[2]),)

    def check_input_values(self, index: int, values: Any) -> None:
        if self.has_mask and index == self.mask_index:
            arr = np.asarray(values)
            if arr.dtype != np.bool_ and not np.isin(arr, (0, 1)).all():
                raise OperatorError("multi_head_attention: attention_mask must hold only 0/1 "
                                    "(or booleans)")

    # --- weights and saved tensors ------------------------------------------------------------
    def weights(self, inputs: Sequence[TensorShape]) -> tuple[WeightSpec, ...]:
        q, v, k, _ = self._parts(inputs)
        h, dt = self.num_heads, q.dtype
        out = self._sizes(inputs)[2]
        ws = []
        for name, src, d in (("query", q, self.key_dim), ("key", k, self.key_dim),
                             ("value", v, self.value_dim)):
            ws.append(WeightSpec(f"{name}_kernel", TensorShape((src.dims[-1], h, d), dt),
                                 self.kernel_initializer))
            if self.use_bias:
                ws.append(WeightSpec(f"{name}_bias", TensorShape((h, d), dt),
                                     self.bias_initializer))
        ws.append(WeightSpec("output_kernel", TensorShape((h, self.value_dim) + out, dt),
                             self.kernel_initializer))
        if self.use_bias:
            ws.append(WeightSpec("output_bias", TensorShape(out, dt), self.bias_initializer))
        return tuple(ws)

    def saved(self, inputs: Sequence[TensorShape]) -> tuple[SavedSpec, ...]:
        q = inputs[0]
        b, dt, h, kd, vd = q.dims[0], q.dtype, self.num_heads, self.key_dim, self.value_dim
        t, s, _ = self._sizes(inputs)
        shape = lambda *dims: TensorShape((b,) + dims, dt)  # noqa: E731
        return (SavedSpec("q", shape(t, h, kd)), SavedSpec("k", shape(s, h, kd)),
                SavedSpec("v", shape(s, h, vd)), SavedSpec("probs", shape(h, t, s)),
                SavedSpec("context", shape(t, h, vd)),
                SavedSpec("seed", TensorShape((b,), DataType.INT64)),
                # backward scratch: the projections' gradients, (sample, position, head, dim)
                SavedSpec("grad_q", shape(t, h, kd)), SavedSpec("grad_k", shape(s, h, kd)),
                SavedSpec("grad_v", shape(s, h, vd)))

    # --- costs --------------------------------------------------------------------------------
    def flops(self, inputs: Sequence[TensorShape]) -> int:
        q, v, k, _ = self._parts(inputs)
        t, s, out = self._sizes(inputs)
        b, h, kd, vd = q.dims[0], self.num_heads, self.key_dim, self.value_dim
        proj = t * q.dims[-1] * h * kd + s * k.dims[-1] * h * kd + s * v.dims[-1] * h * vd
        attn = h * t * s * (kd + vd)
        return b * (2 * (proj + attn + t * h * vd * math.prod(out)) + 5 * h * t * s)

    def input_grads_share(self, inputs: Sequence[TensorShape],
                          needs_input_grad: Sequence[bool]) -> float:
        """The core's backward (two products per attention product, the output projection's
        input and weight gradients) and the projections' input gradients come before the
        projections' weight gradients (backward): their share of the backward's flops."""
        if not any(needs_input_grad):
            return 1.0
        q, v, k, _ = self._parts(inputs)
        t, s, out = self._sizes(inputs)
        h, kd, vd = self.num_heads, self.key_dim, self.value_dim
        proj = {"query": t * q.dims[-1] * h * kd, "key": s * k.dims[-1] * h * kd,
                "value": s * v.dims[-1] * h * vd}
        sources = {"query": 0, "key": self.key_index, "value": 1}
        core = 2 * h * t * s * (kd + vd) + 2 * t * h * vd * math.prod(out)
        first = core + sum(f for name, f in proj.items() if needs_input_grad[sources[name]])
        return first / (core + 2 * sum(proj.values()))

    def bytes_accessed(self, inputs: Sequence[TensorShape]) -> int:
        # the (B, H, T, S) probabilities dominate for long sequences: written once, read once
        return super().bytes_accessed(inputs) + 2 * sum(
            sv.shape.num_bytes() for sv in self.saved(inputs)[:6])

    # --- parallelism --------------------------------------------------------------------------
    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return (sample_dim(inputs[0]), ParallelDim(HEADS, DimKind.PARAMETER, self.num_heads))

    @staticmethod
    def _weight(ref: Ref, rank: int, head_dim: int) -> Arg:
        """A weight (or its gradient) split along its head dim."""
        return Arg(ref, tuple(HEADS if d == head_dim else None for d in range(rank)))

    def _weight_args(self, inputs: Sequence[TensorShape], grad: bool = False) -> dict[str, Arg]:
        """Every kernel and bias by name; the head is dim 1 of the projections' kernels, dim 0 of
        their biases and of the output kernel; the output bias has no head (read whole)."""
        ref = dw if grad else w
        args = {}
        for ws in self.weights(inputs):
            head_dim = 1 if ws.name in ("query_kernel", "key_kernel", "value_kernel") else 0
            args[ws.name] = (Arg(ref(ws.name)) if ws.name == "output_bias"
                             else self._weight(ref(ws.name), ws.shape.rank, head_dim))
        return args

    # --- launches -----------------------------------------------------------------------------
    def _scalars(self, inputs: Sequence[TensorShape]) -> dict[str, Any]:
        q, v = inputs[0], inputs[1]
        return {"salt": int(self.salt), "scale": 1.0 / math.sqrt(self.key_dim),
                "has_mask": self.has_mask, "heads": self.num_heads,
                "dims": _dims_text(q.dims[1:-1]) + "|" + _dims_text(v.dims[1:-1])}

    def _saved_args(self, inputs: Sequence[TensorShape], *names: str) -> dict[str, Arg]:
        """Saved tensors by samples and heads: probs (B, H, T, S), the others (B, L, H, d)."""
        return {n: Arg(saved(n), (SAMPLE, HEADS, None, None) if n == "probs"
                       else (SAMPLE, None, HEADS, None)) for n in names}

    def _mask_arg(self, inputs: Sequence[TensorShape]) -> Arg:
        """The mask, or the query's own piece standing in (never read without a mask)."""
        i = self.mask_index if self.has_mask else 0
        return Arg.by_sample(x(i), inputs[i].rank)

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        r = inputs[0].rank
        weights = self._weight_args(inputs)
        args = {"query": Arg.by_sample(x(0), r), "value": Arg.by_sample(x(1), r),
                "key": Arg.by_sample(x(self.key_index), r), "mask": self._mask_arg(inputs),
                # a sum over heads: a partial sum per piece of heads
                "y": Arg.by_sample(y(0), self.infer_outputs(inputs)[0].rank)}
        for name in _PROJECTIONS + ("output",):
            args[f"{name}_kernel"] = weights[f"{name}_kernel"]
            # without biases the kernel stands in (mapped already), never read
            args[f"{name}_bias"] = weights[f"{name}_bias" if self.use_bias else f"{name}_kernel"]
        args |= self._saved_args(inputs, "q", "k", "v", "probs", "context")
        args["seed_of"] = Arg.by_sample(saved("seed"), 1)
        scal = self._scalars(inputs) | {"seed": 0, "use_bias": self.use_bias,
                                        "rate": self.dropout if training else 0.0}
        return [Launch(mha_forward, args, scal)]

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        r = inputs[0].rank
        out_rank = self.infer_outputs(inputs)[0].rank
        weights, d_weights = self._weight_args(inputs), self._weight_args(inputs, grad=True)
        d_out = Arg.by_sample(dy(0), out_rank)
        core = self._saved_args(inputs, "probs", "q", "k", "v", "context", "grad_q", "grad_k",
                                "grad_v")
        core |= {"seed_of": Arg.by_sample(saved("seed"), 1), "mask": self._mask_arg(inputs),
                 "output_kernel": weights["output_kernel"], "dy": d_out,
                 "doutput_kernel": d_weights["output_kernel"]}
        launches = [Launch(mha_backward_core, core, self._scalars(inputs) | {"rate": self.dropout})]
        sources = {"query": 0, "key": self.key_index, "value": 1}
        grads = self._saved_args(inputs, "grad_q", "grad_k", "grad_v")
        grad_of = {"query": grads["grad_q"], "key": grads["grad_k"], "value": grads["grad_v"]}
        # input gradients first (partial sums over heads), so they can leave while the weight
        # gradients are computed (input_grads_share); without a key input the value feeds both
        # the key and the value projections, and one launch adds both terms
        for name in ("query", "value") + (("key",) if self.has_key else ()):
            i = sources[name]
            if not needs_input_grad[i]:
                continue
            args = {"grad": grad_of[name], "kernel": weights[f"{name}_kernel"],
                    "dsrc": Arg.by_sample(dx(i), r)}
            if name == "value" and not self.has_key:
                launches.append(Launch(mha_backward_input_pair, args | {
                    "grad2": grad_of["key"], "kernel2": weights["key_kernel"]}))
            else:
                launches.append(Launch(mha_backward_input, args))
        if self.use_bias:  # no head axis among its arguments: one launch over samples
            launches.append(Launch(mha_backward_output_bias,
                                   {"dy": d_out, "dbias": d_weights["output_bias"]}))
        for name in _PROJECTIONS:
            src = Arg.by_sample(x(sources[name]), r)
            args = {"src": src, "grad": grad_of[name], "dkernel": d_weights[f"{name}_kernel"]}
            if self.use_bias:
                launches.append(Launch(mha_backward_weight_bias,
                                       args | {"dbias": d_weights[f"{name}_bias"]}))
            else:
                launches.append(Launch(mha_backward_weight, args))
        return launches
