"""Operator task kernels vs PyTorch CPU on the same shapes, one thread each.

    python scripts/bench_kernels.py                 # every case
    python scripts/bench_kernels.py --only conv     # cases whose name contains "conv"
    python scripts/bench_kernels.py --reps 9

Each case builds one operator at a shape taken from the model zoo's benchmark sizes
(unity_legion.models.ZOO[name].bench, batch 32: resnext50 / inception_v3 convolutions, poolings
and batch norms, bert_large's attention, layer norm and FFN, dlrm / xdl embeddings), asks the
operator for its launches (forward in training, then backward) and calls each launch's kernel
directly on whole numpy arrays, as the executor would for an unsplit run (no Legate needed: a
kernel is a plain numpy function). PyTorch runs the equivalent CPU operators on the same values:
forward, and backward through the explicit ATen backward ops (autograd where there is none).
Image operators are timed in PyTorch both in NCHW (contiguous) and in channels_last, and each
operator's rows are compared with the layout in which PyTorch runs them fastest in all (the
table's "torch" column; the JSON names it). Both sides run single-threaded
(torch.set_num_threads(1), OPENBLAS/OMP/MKL threads 1), alternating run by run (a load that
comes and goes on the machine falls on both); each figure is the median of at least --reps runs
after warm-up (short kernels get more runs, up to 300).

Prints a table (op, shape, ours ms, torch ms, ratio) and, on its last line, one JSON object:
{"kernels": {name: {"ours_ms", "torch_ms", "ratio"}}, "max_ratio", "geomean_ratio"}.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, Callable, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from unity_legion.operators.activation import Activation  # noqa: E402
from unity_legion.operators.attention import MultiHeadAttention  # noqa: E402
from unity_legion.operators.base import (DataType, Operator, PieceOrigin, Ref,  # noqa: E402
                                         RefKind, Role, TensorShape)
from unity_legion.operators.batch_norm import BatchNorm  # noqa: E402
from unity_legion.operators.conv2d import Conv2D  # noqa: E402
from unity_legion.operators.elementwise import Add  # noqa: E402
from unity_legion.operators.embedding import Embedding  # noqa: E402
from unity_legion.operators.layer_norm import LayerNorm  # noqa: E402
from unity_legion.operators.linear import Linear  # noqa: E402
from unity_legion.operators.pooling import GlobalAvgPool2D, Pool2D  # noqa: E402
from unity_legion.operators.softmax import Softmax  # noqa: E402

aten = torch.ops.aten


# ---------------------------------------------------------------------------------------------
# timing: our kernels and PyTorch's ops alternate, run by run, so a load that comes and goes on
# the machine falls on both sides alike
# ---------------------------------------------------------------------------------------------

@dataclass
class Timed:
    """A call to time and what (untimed) must run before every call."""

    fn: Callable[[], Any]
    setup: Callable[[], Any] | None = None

    def once(self) -> float:
        if self.setup is not None:
            self.setup()
        t0 = time.perf_counter()
        self.fn()
        return time.perf_counter() - t0


@dataclass
class Cmp:
    """One row: our kernels (timed one after another, summed) against PyTorch's equivalent in
    each of its alternatives (image operators: NCHW and channels_last)."""

    name: str
    shape: str
    ours: list[Timed]
    torch: list[list[Timed]]


LAYOUTS = ("nchw", "channels_last")


@dataclass
class Row:
    name: str
    shape: str
    ours_ms: float
    torch_alts: list[float]       # PyTorch's median ms per alternative
    pick: int = 0                 # the alternative compared with (see `pick_layout`)

    @property
    def torch_ms(self) -> float:
        return self.torch_alts[self.pick]

    @property
    def ratio(self) -> float:
        return self.ours_ms / self.torch_ms

    @property
    def layout(self) -> str:
        return LAYOUTS[self.pick] if len(self.torch_alts) > 1 else ""


def pick_layout(rows: list[Row]) -> None:
    """Compare one operator's rows (forward, backward...) with PyTorch in ONE layout, the one
    in which PyTorch runs them fastest in all (a PyTorch model picks one layout; per row the
    faster one could pair e.g. NCHW's fast max-pool backward with its 14x slower forward)."""
    n = len(rows[0].torch_alts)
    best = min(range(n), key=lambda i: sum(r.torch_alts[i] for r in rows))
    for r in rows:
        r.pick = best


def measure(c: Cmp, reps: int, min_seconds: float = 0.25, max_reps: int = 300) -> Row:
    """Median over runs of our summed kernels and of each PyTorch alternative, alternating;
    at least `reps` runs and (for short kernels) about `min_seconds` in all."""
    def one_round() -> tuple[float, list[float]]:
        ours = sum(t.once() for t in c.ours)
        return ours, [sum(t.once() for t in alt) for alt in c.torch]

    for _ in range(2):  # warm-up
        one_round()
    t0 = time.perf_counter()
    rounds = [one_round()]
    per_round = time.perf_counter() - t0
    n = min(max_reps, max(reps, math.ceil(min_seconds / max(per_round, 1e-9))))
    rounds += [one_round() for _ in range(n - 1)]
    ours_ms = 1e3 * statistics.median(r[0] for r in rounds)
    alts = [1e3 * statistics.median(r[1][i] for r in rounds) for i in range(len(c.torch))]
    return Row(c.name, c.shape, ours_ms, alts)


# ---------------------------------------------------------------------------------------------
# our kernels, called as the executor calls them for an unsplit run
# ---------------------------------------------------------------------------------------------

def aligned(values: np.ndarray | None, shape: Sequence[int], dtype: Any) -> np.ndarray:
    """A 64-byte aligned array (as Legate maps a store's piece; numpy's own allocations are
    16-byte aligned, on which vector loads split cache lines) holding `values` (zeros if
    None)."""
    dtype = np.dtype(dtype)
    n = math.prod(shape) * dtype.itemsize
    raw = np.zeros(n + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    out = raw[off:off + n].view(dtype).reshape(shape)
    if values is not None:
        out[...] = values
    return out


class OurRun:
    """Arrays for every store an operator's launches name (64-byte aligned; PyTorch's side of a
    comparison reads the same arrays), and its launches as timed calls."""

    def __init__(self, op: Operator, inputs: Sequence[np.ndarray], rng: np.random.Generator
                 ) -> None:
        self.op = op
        self.shapes = [TensorShape(a.shape, DataType.of(a.dtype)) for a in inputs]
        self.arrays: dict[Ref, np.ndarray] = {}
        self.zero_saved: set[Ref] = set()
        for i, a in enumerate(inputs):
            self.arrays[Ref(RefKind.INPUT, i)] = aligned(a, a.shape, a.dtype)
            self.arrays[Ref(RefKind.GRAD_INPUT, i)] = aligned(
                None, a.shape, a.dtype if a.dtype.kind == "f" else np.float32)
        for i, s in enumerate(op.infer_outputs(self.shapes)):
            self.arrays[Ref(RefKind.OUTPUT, i)] = aligned(None, s.dims, s.dtype.numpy)
            self.arrays[Ref(RefKind.GRAD_OUTPUT, i)] = aligned(
                rng.standard_normal(s.dims), s.dims, s.dtype.numpy)
        for ws in op.weights(self.shapes):
            dt = ws.shape.dtype.numpy
            v = rng.standard_normal(ws.shape.dims)
            if len(ws.shape.dims) >= 2:
                # a kernel scaled as Keras' initialisers scale it (variance 1 / fan-in): unit
                # normal weights saturate attention's softmax, whose gradients then underflow
                # to subnormal floats that make every matrix product ~15x slower on both sides
                v /= math.sqrt(math.prod(ws.shape.dims[:-1]))
            if ws.name == "moving_variance":
                v = np.abs(v) + 0.5
            self.arrays[Ref(RefKind.WEIGHT, ws.name)] = aligned(v, ws.shape.dims, dt)
            self.arrays[Ref(RefKind.GRAD_WEIGHT, ws.name)] = aligned(None, ws.shape.dims, dt)
        for sv in op.saved(self.shapes):
            ref = Ref(RefKind.SAVED, sv.name)
            self.arrays[ref] = aligned(None, sv.shape.dims, sv.shape.dtype.numpy)
            if sv.zero:
                self.zero_saved.add(ref)
        self.forward = op.forward(self.shapes, True)
        self.backward = op.backward(self.shapes, [a.dtype.kind == "f" for a in inputs])
        self._run_all()

    def _timed(self, launch: Any) -> Timed:
        """The launch's kernel on the whole arrays; its Sum outputs zeroed before each call (a
        saved tensor the executor zeroes once per step, e.g. batch norm's statistics, keeps
        accumulating: only its scale changes, not the work)."""
        kw: dict[str, Any] = {}
        sums = []
        for name, role in launch.kernel.stores:
            ref = launch.args[name].ref
            kw[name] = self.arrays[ref]
            if role is Role.SUM and ref not in self.zero_saved:
                sums.append(kw[name])
        kw.update(launch.scalars)
        if launch.kernel.wants_origin:
            rank = {name: kw[name].ndim for name, _ in launch.kernel.stores}
            first = launch.kernel.stores[0][0]
            kw["origin"] = PieceOrigin((0,) * rank[first],
                                       {n: (0,) * r for n, r in rank.items()})
        fn = launch.kernel.fn

        def reset() -> None:
            for a in sums:
                a[...] = 0
        return Timed(lambda: fn(**kw), reset if sums else None)

    def _run_all(self) -> None:
        """One forward and backward, in order (fills what later launches read)."""
        for ref in self.zero_saved:
            self.arrays[ref][...] = 0
        for launch in self.forward + self.backward:
            self._timed(launch).once()

    def calls(self, which: str, names: Sequence[str] | None = None) -> list[Timed]:
        """The forward or backward launches (those whose kernel name contains one of `names`,
        if given), as timed calls."""
        launches = self.forward if which == "fwd" else self.backward
        return [self._timed(launch) for launch in launches
                if names is None or any(n in launch.kernel.name for n in names)]

    def x(self, i: int = 0) -> np.ndarray:
        return self.arrays[Ref(RefKind.INPUT, i)]

    def w(self, name: str) -> np.ndarray:
        return self.arrays[Ref(RefKind.WEIGHT, name)]

    def dy(self) -> np.ndarray:
        return self.arrays[Ref(RefKind.GRAD_OUTPUT, 0)]


# ---------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------

def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _layouts(*tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """NCHW tensors contiguous, and all channels_last (PyTorch's two image layouts)."""
    return [tuple(a.contiguous(memory_format=f) for a in tensors)
            for f in (torch.contiguous_format, torch.channels_last)]


def _no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return fn()
    return run


def bench_conv(name: str, shape: tuple[int, ...], op: Conv2D, rng: np.random.Generator
               ) -> list[Cmp]:
    x = rng.standard_normal(shape).astype(np.float32)
    ours = OurRun(op, [x], rng)
    k = t(ours.w("kernel")).permute(3, 2, 0, 1)
    bias = t(ours.w("bias")) if op.use_bias else None
    pads = op._geometry(TensorShape(shape))[5]
    assert pads[0] == pads[1] and pads[2] == pads[3], "benchmark shapes use symmetric padding"
    pad = (pads[0], pads[2])
    args = (op.strides, pad, op.dilation_rate, False, (0, 0), op.groups)
    bsz = [op.filters] if op.use_bias else None
    fwd, bin_, bw = [], [], []
    for xl, kl, gl in _layouts(t(ours.x()).permute(0, 3, 1, 2), k, t(ours.dy()).permute(0, 3, 1, 2)):
        fwd.append([Timed(_no_grad(lambda xl=xl, kl=kl: F.conv2d(
            xl, kl, bias, op.strides, pad, op.dilation_rate, op.groups)))])
        bin_.append([Timed(_no_grad(lambda xl=xl, kl=kl, gl=gl: aten.convolution_backward(
            gl, xl, kl, bsz, *args, [True, False, False])))])
        bw.append([Timed(_no_grad(lambda xl=xl, kl=kl, gl=gl: aten.convolution_backward(
            gl, xl, kl, bsz, *args, [False, True, op.use_bias])))])
    s = str(shape)
    return [Cmp(f"{name}.fwd", s, ours.calls("fwd"), fwd),
            Cmp(f"{name}.bwd_input", s, ours.calls("bwd", ["backward_input"]), bin_),
            Cmp(f"{name}.bwd_weight", s, ours.calls("bwd", ["backward_kernel"]), bw)]


def bench_pool(name: str, shape: tuple[int, ...], op: Pool2D, rng: np.random.Generator
               ) -> list[Cmp]:
    x = rng.standard_normal(shape).astype(np.float32)
    ours = OurRun(op, [x], rng)
    pads = op._geometry(TensorShape(shape))[3]
    assert pads[0] == pads[1] and pads[2] == pads[3]
    pad = (pads[0], pads[2])
    k, st = op.pool_size, op.strides
    fwd, bwd = [], []
    for xl, gl in _layouts(t(ours.x()).permute(0, 3, 1, 2), t(ours.dy()).permute(0, 3, 1, 2)):
        if op.mode == "max":
            _, idx = F.max_pool2d(xl, k, st, pad, return_indices=True)
            fwd.append([Timed(_no_grad(lambda xl=xl: F.max_pool2d(
                xl, k, st, pad, return_indices=True)))])
            bwd.append([Timed(_no_grad(lambda xl=xl, gl=gl, idx=idx:
                                       aten.max_pool2d_with_indices_backward(
                                           gl, xl, k, st, pad, (1, 1), False, idx)))])
        else:
            fwd.append([Timed(_no_grad(lambda xl=xl: F.avg_pool2d(
                xl, k, st, pad, count_include_pad=False)))])
            bwd.append([Timed(_no_grad(lambda xl=xl, gl=gl: aten.avg_pool2d_backward(
                gl, xl, k, st, pad, False, False, None)))])
    return [Cmp(f"{name}.fwd", str(shape), ours.calls("fwd"), fwd),
            Cmp(f"{name}.bwd", str(shape), ours.calls("bwd"), bwd)]


def bench_global_pool(name: str, shape: tuple[int, ...], rng: np.random.Generator
                      ) -> list[Cmp]:
    x = rng.standard_normal(shape).astype(np.float32)
    ours = OurRun(GlobalAvgPool2D(), [x], rng)
    gy = t(ours.dy())
    hw = shape[1] * shape[2]
    fwd, bwd = [], []
    for (xl,) in _layouts(t(ours.x()).permute(0, 3, 1, 2)):
        fwd.append([Timed(_no_grad(lambda xl=xl: xl.mean((2, 3))))])
        # mean's backward: d_out / (H W) expanded over H and W, in the input's layout
        fmt = torch.channels_last if xl.is_contiguous(memory_format=torch.channels_last) \
            else torch.contiguous_format
        bwd.append([Timed(_no_grad(lambda xl=xl, fmt=fmt: (gy / hw)[:, :, None, None].expand(
            xl.shape).contiguous(memory_format=fmt)))])
    return [Cmp(f"{name}.fwd", str(shape), ours.calls("fwd"), fwd),
            Cmp(f"{name}.bwd", str(shape), ours.calls("bwd"), bwd)]


def bench_batch_norm(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> list[Cmp]:
    x = rng.standard_normal(shape).astype(np.float32)
    ours = OurRun(BatchNorm(axis=-1, momentum=0.9, epsilon=1e-5), [x], rng)
    g, b = t(ours.w("gamma")), t(ours.w("beta"))
    rm, rv = torch.zeros(shape[-1]), torch.ones(shape[-1])
    fwd, bwd = [], []
    for xl, gl in _layouts(t(ours.x()).movedim(-1, 1), t(ours.dy()).movedim(-1, 1)):
        _, sm, si = aten.native_batch_norm(xl, g, b, rm, rv, True, 0.1, 1e-5)
        fwd.append([Timed(_no_grad(lambda xl=xl: aten.native_batch_norm(
            xl, g, b, rm, rv, True, 0.1, 1e-5)))])
        bwd.append([Timed(_no_grad(lambda xl=xl, gl=gl, sm=sm, si=si:
                                   aten.native_batch_norm_backward(
                                       gl, xl, g, rm, rv, sm, si, True, 1e-5,
                                       [True, True, True])))])
    return [Cmp(f"{name}.fwd", str(shape), ours.calls("fwd"), fwd),
            Cmp(f"{name}.bwd", str(shape), ours.calls("bwd"), bwd)]


def bench_layer_norm(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> list[Cmp]:
    x = rng.standard_normal(shape).astype(np.float32)
    ours = OurRun(LayerNorm(axes=(-1,), epsilon=1e-12), [x], rng)
    g, b = t(ours.w("gamma")), t(ours.w("beta"))
    xt, gy = t(ours.x()), t(ours.dy())
    n = [shape[-1]]
    _, mean, rstd = aten.native_layer_norm(xt, n, g, b, 1e-12)
    fwd = Timed(_no_grad(lambda: aten.native_layer_norm(xt, n, g, b, 1e-12)))
    bwd = Timed(_no_grad(lambda: aten.native_layer_norm_backward(
        gy, xt, n, mean, rstd, g, b, [True, True, True])))
    return [Cmp(f"{name}.fwd", str(shape), ours.calls("fwd"), [[fwd]]),
            Cmp(f"{name}.bwd", str(shape), ours.calls("bwd"), [[bwd]])]


def bench_attention(name: str, shape: tuple[int, ...], heads: int, key_dim: int,
                    rng: np.random.Generator) -> list[Cmp]:
    q = rng.standard_normal(shape).astype(np.float32)
    v = rng.standard_normal(shape).astype(np.float32)
    ours = OurRun(MultiHeadAttention(heads, key_dim), [q, v], rng)
    w = {n: t(ours.w(n)).requires_grad_() for n in
         ("query_kernel", "query_bias", "key_kernel", "key_bias", "value_kernel", "value_bias",
          "output_kernel", "output_bias")}
    qt, vt = t(ours.x(0)).requires_grad_(), t(ours.x(1)).requires_grad_()
    gy = t(ours.dy())
    b, n, d = shape

    def project(src: torch.Tensor, nm: str) -> torch.Tensor:
        z = src.reshape(b * n, d) @ w[f"{nm}_kernel"].reshape(d, heads * key_dim)
        z = z + w[f"{nm}_bias"].reshape(-1)
        return z.reshape(b, n, heads, key_dim).transpose(1, 2)

    def forward() -> torch.Tensor:
        # the probabilities are materialised, as our kernels save them for backward
        qh = project(qt, "query") * (1.0 / math.sqrt(key_dim))
        kh, vh = project(vt, "key"), project(vt, "value")
        p = torch.softmax(qh @ kh.transpose(-1, -2), -1)
        c = (p @ vh).transpose(1, 2).reshape(b * n, heads * key_dim)
        out = c @ w["output_kernel"].reshape(heads * key_dim, d) + w["output_bias"]
        return out.reshape(b, n, d)

    holder: dict[str, torch.Tensor] = {}

    def setup() -> None:
        for p in list(w.values()) + [qt, vt]:
            p.grad = None
        holder["y"] = forward()

    return [Cmp(f"{name}.fwd", str(shape), ours.calls("fwd"), [[Timed(_no_grad(forward))]]),
            Cmp(f"{name}.bwd", str(shape), ours.calls("bwd"),
                [[Timed(lambda: holder["y"].backward(gy), setup)]])]


def bench_embedding(name: str, idx_shape: tuple[int, ...], rows: int, dim: int,
                    combiner: str | None, rng: np.random.Generator) -> list[Cmp]:
    idx = rng.integers(0, rows, size=idx_shape).astype(np.int64)
    ours = OurRun(Embedding(rows, dim, combiner=combiner), [idx], rng)
    table = t(ours.w("embeddings"))
    it, gy = t(ours.x()), t(ours.dy())
    if combiner is None:
        fwd = Timed(_no_grad(lambda: F.embedding(it, table)))
        bwd = Timed(_no_grad(lambda: aten.embedding_dense_backward(gy, it, rows, -1, False)))
    else:
        flat = it.reshape(-1, idx_shape[-1])
        fwd = Timed(_no_grad(lambda: F.embedding_bag(flat, table, mode=combiner)))
        tw = table.clone().requires_grad_()
        holder: dict[str, torch.Tensor] = {}

        def setup() -> None:
            tw.grad = None
            holder["y"] = F.embedding_bag(flat, tw, mode=combiner)

        bwd = Timed(lambda: holder["y"].backward(gy.reshape(holder["y"].shape)), setup)
    s = f"{idx_shape} of {rows}x{dim}"
    return [Cmp(f"{name}.fwd", s, ours.calls("fwd"), [[fwd]]),
            Cmp(f"{name}.bwd", s, ours.calls("bwd"), [[bwd]])]


def bench_softmax(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> list[Cmp]:
    x = rng.standard_normal(shape).astype(np.float32)
    ours = OurRun(Softmax((-1,)), [x], rng)
    xt, gy = t(ours.x()), t(ours.dy())
    y = torch.softmax(xt, -1)
    fwd = Timed(_no_grad(lambda: torch.softmax(xt, -1)))
    bwd = Timed(_no_grad(lambda: aten._softmax_backward_data(gy, y, -1, torch.float32)))
    return [Cmp(f"{name}.fwd", str(shape), ours.calls("fwd"), [[fwd]]),
            Cmp(f"{name}.bwd", str(shape), ours.calls("bwd"), [[bwd]])]


_TORCH_ACT = {
    "relu": (torch.relu, lambda g, x, y: aten.threshold_backward(g, y, 0)),
    "gelu": (F.gelu, lambda g, x, y: aten.gelu_backward(g, x)),
    "tanh": (torch.tanh, lambda g, x, y: aten.tanh_backward(g, y)),
    "sigmoid": (torch.sigmoid, lambda g, x, y: aten.sigmoid_backward(g, y)),
}


def bench_activation(name: str, shape: tuple[int, ...], fn: str, rng: np.random.Generator
                     ) -> list[Cmp]:
    x = rng.standard_normal(shape).astype(np.float32)
    ours = OurRun(Activation(fn), [x], rng)
    xt, gy = t(ours.x()), t(ours.dy())
    f, b = _TORCH_ACT[fn]
    y = f(xt)
    return [Cmp(f"{name}.fwd", str(shape), ours.calls("fwd"), [[Timed(_no_grad(lambda: f(xt)))]]),
            Cmp(f"{name}.bwd", str(shape), ours.calls("bwd"),
                [[Timed(_no_grad(lambda: b(gy, xt, y)))]])]


def bench_linear_act(name: str, shape: tuple[int, ...], units: int, fn: str,
                     rng: np.random.Generator) -> list[Cmp]:
    x = rng.standard_normal(shape).astype(np.float32)
    ours = OurRun(Linear(units, activation=fn), [x], rng)
    xt = t(ours.x()).reshape(-1, shape[-1])
    k, bias = t(ours.w("kernel")), t(ours.w("bias"))
    gy = t(ours.dy()).reshape(-1, units)
    f, b = _TORCH_ACT[fn]
    pre = torch.addmm(bias, xt, k)
    y = f(pre)

    def backward() -> None:
        g = b(gy, pre, y)
        g @ k.T
        xt.T @ g
        g.sum(0)
    return [Cmp(f"{name}.fwd", str(shape), ours.calls("fwd"),
                [[Timed(_no_grad(lambda: f(torch.addmm(bias, xt, k))))]]),
            Cmp(f"{name}.bwd", str(shape), ours.calls("bwd"), [[Timed(_no_grad(backward))]])]


def bench_add(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> list[Cmp]:
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    ours = OurRun(Add(), [a, b], rng)
    at_, bt = t(ours.x(0)), t(ours.x(1))
    return [Cmp(f"{name}.fwd", str(shape), ours.calls("fwd"),
                [[Timed(_no_grad(lambda: torch.add(at_, bt)))]])]


def cases(rng: np.random.Generator) -> list[tuple[str, Callable[[], list[Cmp]]]]:
    """(name, builder of its comparisons): shapes of the zoo's benchmark sizes at batch 32."""
    B = 32
    conv = [  # (name, input NHWC, operator): resnext50 and inception_v3 bench sizes
        ("conv_resnext_stem7x7s2", (B, 70, 70, 3), Conv2D(32, 7, 2, use_bias=False)),
        ("conv_resnext_1x1", (B, 16, 16, 128), Conv2D(32, 1, use_bias=False)),
        ("conv_resnext_1x1_expand", (B, 16, 16, 16), Conv2D(128, 1, use_bias=False)),
        ("conv_resnext_1x1s2_proj", (B, 16, 16, 128), Conv2D(256, 1, 2, use_bias=False)),
        ("conv_resnext_g8_3x3", (B, 16, 16, 16), Conv2D(16, 3, padding="same", groups=8,
                                                         use_bias=False)),
        ("conv_resnext_g8_3x3s2", (B, 18, 18, 32), Conv2D(32, 3, 2, groups=8, use_bias=False)),
        ("conv_inception_3x3s2", (B, 75, 75, 3), Conv2D(8, 3, 2, use_bias=False)),
        ("conv_inception_3x3", (B, 35, 35, 8), Conv2D(16, 3, padding="same", use_bias=False)),
        ("conv_inception_5x5", (B, 7, 7, 12), Conv2D(16, 5, padding="same", use_bias=False)),
        ("conv_inception_1x7", (B, 3, 3, 40), Conv2D(40, (1, 7), padding="same",
                                                      use_bias=False)),
        ("conv_bias_3x3", (B, 16, 16, 32), Conv2D(64, 3, padding="same")),
    ]
    out: list[tuple[str, Callable[[], list[Cmp]]]] = []
    for name, shape, op in conv:
        out.append((name, lambda name=name, shape=shape, op=op: bench_conv(name, shape, op, rng)))
    pools = [
        ("maxpool_resnext_3x3s2", (B, 34, 34, 32), Pool2D("max", 3, 2)),
        ("maxpool_inception_3x3s2", (B, 35, 35, 16), Pool2D("max", 3, 2)),
        ("avgpool_inception_3x3s1", (B, 9, 9, 64), Pool2D("avg", 3, 1)),
    ]
    for name, shape, op in pools:
        out.append((name, lambda name=name, shape=shape, op=op: bench_pool(name, shape, op, rng)))
    out.append(("global_avgpool", lambda: bench_global_pool("global_avgpool", (B, 8, 8, 256),
                                                            rng)))
    for name, shape in (("batchnorm_resnext_stem", (B, 32, 32, 32)),
                        ("batchnorm_resnext", (B, 16, 16, 128)),
                        ("batchnorm_inception", (B, 35, 35, 16))):
        out.append((name, lambda name=name, shape=shape: bench_batch_norm(name, shape, rng)))
    out.append(("layernorm_bert", lambda: bench_layer_norm("layernorm_bert", (B, 64, 256), rng)))
    out.append(("attention_bert", lambda: bench_attention("attention_bert", (B, 64, 256), 4, 64,
                                                          rng)))
    out.append(("embedding_bert_tokens", lambda: bench_embedding(
        "embedding_bert_tokens", (B, 64), 1000, 256, None, rng)))
    out.append(("embedding_dlrm_bag", lambda: bench_embedding(
        "embedding_dlrm_bag", (B, 1), 10_000, 64, "sum", rng)))
    out.append(("embedding_bag8_mean", lambda: bench_embedding(
        "embedding_bag8_mean", (B, 8), 10_000, 64, "mean", rng)))
    out.append(("softmax", lambda: bench_softmax("softmax", (B, 64, 1000), rng)))
    for fn, shape in (("relu", (B, 16, 16, 128)), ("gelu", (B, 64, 1024)),
                      ("tanh", (B, 1024)), ("sigmoid", (B, 1024))):
        out.append((f"act_{fn}", lambda fn=fn, shape=shape: bench_activation(
            f"act_{fn}", shape, fn, rng)))
    out.append(("linear_gelu_bert_ffn", lambda: bench_linear_act(
        "linear_gelu_bert_ffn", (B, 64, 256), 1024, "gelu", rng)))
    out.append(("add", lambda: bench_add("add", (B, 16, 16, 128), rng)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=9,
                   help="timed runs per figure at least (median; short kernels get more)")
    p.add_argument("--only", default="", help="comma-separated substrings of case names")
    args = p.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    only = [s for s in args.only.split(",") if s]
    rows: list[Row] = []
    print(f"{'kernel':34s} {'shape':28s} {'ours ms':>9s} {'torch ms':>9s} {'ratio':>6s}  "
          f"torch layout", flush=True)
    for name, build in cases(rng):
        if only and not any(s in name for s in only):
            continue
        case = [measure(cmp, args.reps) for cmp in build()]
        pick_layout(case)
        for row in case:
            rows.append(row)
            flag = "" if row.ratio <= 1.5 else "  > 1.5"
            print(f"{row.name:34s} {row.shape:28s} {row.ours_ms:9.3f} {row.torch_ms:9.3f} "
                  f"{row.ratio:6.2f}  {row.layout:13s}{flag}", flush=True)
    ratios = [r.ratio for r in rows]
    summary = {
        "kernels": {r.name: {"ours_ms": round(r.ours_ms, 4), "torch_ms": round(r.torch_ms, 4),
                             "ratio": round(r.ratio, 3)} | ({"torch_layout": r.layout}
                                                           if r.layout else {})
                    for r in rows},
        "max_ratio": round(max(ratios), 3) if ratios else None,
        "geomean_ratio": round(math.exp(statistics.fmean(math.log(r) for r in ratios)), 3)
        if ratios else None,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
