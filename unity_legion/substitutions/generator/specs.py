"""Operator specifications: one declarative entry per operator family, in one place.

Each `OpSpec` says, for its operator:
- `shape`: the typing rule, on logical dims AND the parallel layout (which layouts of the inputs
  are a correct parallelisation, and the layout of the output); None where it does not apply.
- `ref`: the reference semantics on integer tensors mod the prime `P` (exact: the fingerprint).
- `f32`: the same operator run in float32 through our real kernels (operators/*, parallel_ref),
  for the numerical cross-check of every kept rule.
- `dims`: its output dims for the prover (z3 integer terms), and `params`: the integer arguments
  its prover function takes besides tensors (a split point, a parallel degree).
- `axioms`: equalities that hold for it (``lhs = rhs`` with annotated variables ``x:n.m``), the
  prover's whole knowledge; each is checked against `ref` before use (`check_specs`).
- `taso`: its TASO/FlexFlow operator type and parameters; `ours`: our op_type where it maps.

A parallel tensor's meaning is its logical value (a sum of partials counts as their sum); the
parallel operators change only the layout. So `ref` of a parallel op is the identity on the value,
the layout tells partitioned, replicated and partial tensors apart, and the prover sees the parallel
operators as uninterpreted functions that only the axioms relate to the rest.

A new operator = one more `OpSpec` in `SPECS` (and its axioms).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from .terms import DEGREE, Shape, flat, size

P = 1_000_003  # the fingerprint prime


@dataclass(frozen=True)
class OpSpec:
    name: str
    arity: int
    kind: str                      # "algebraic" or "parallel"
    shape: Callable[..., Shape | None]
    ref: Callable[[list, list], np.ndarray]
    f32: Callable[[list, list], np.ndarray]
    dims: Callable[[list, list], tuple]            # (arg dims, params) -> (d0, d1), z3 terms
    params: Callable[[list], tuple] = lambda shapes: ()   # ("dim", Dim) | ("degree",)
    nparams: int = 0               # how many integer parameters `params` gives
    axioms: tuple[str, ...] = ()
    taso: tuple[str, tuple[tuple[str, int], ...]] = ("OP_NOOP", ())
    ours: str | None = None
    enumerate: bool = True
    doc: str = ""


# --- layout helpers ------------------------------------------------------------------------

def _same(a: Shape, b: Shape) -> bool:
    return flat(a.d0) == flat(b.d0) and flat(a.d1) == flat(b.d1) and a.layout == b.layout


# --- float32 helpers through the real kernels ----------------------------------------------

def _k_combine(fn: str):
    def run(v, s):
        from unity_legion.operators.elementwise import combine
        y = np.empty_like(v[0])
        combine(a=v[0], b=v[1], y=y, fn=fn)
        return y
    return run


def _k_matmul(v, s):
    from unity_legion.operators.matmul import batch_matmul_forward
    a, b = v[0][None], v[1][None]
    y = np.empty((1, a.shape[1], b.shape[2]), np.float32)
    batch_matmul_forward(a=a, b=b, y=y, transpose_a=False, transpose_b=False, normalize=False)
    return y[0]


ACT_FN = "tanh"  # the real activation the opaque `act` stands for in the cross-check


def _k_activation(fn: str):
    def run(v, s):
        from unity_legion.operators.activation import activation_forward
        y = np.empty_like(v[0])
        activation_forward(x=v[0], y=y, fn=fn)
        return y
    return run


_k_act = _k_activation(ACT_FN)


def _k_transpose(v, s):
    from unity_legion.operators.permute import permute_copy
    y = np.empty(v[0].shape[::-1], v[0].dtype)
    permute_copy(x=v[0], y=y, perm="1,0")
    return y


def _k_concat(axis):
    def run(v, s):
        from unity_legion.operators.concat import concat_first, concat_next
        shp = list(v[0].shape)
        shp[axis] += v[1].shape[axis]
        y = np.empty(shp, v[0].dtype)
        concat_first(x=v[0], y=y, axis=axis, start=0)
        concat_next(y=y, x=v[1], axis=axis, start=v[0].shape[axis])
        return y
    return run


def _k_split(axis, right):
    def run(v, s):
        from unity_legion.operators.split import split_forward
        cut = size(s[0].dim(axis)[0])
        shp = list(v[0].shape)
        shp[axis] = shp[axis] - cut if right else cut
        y = np.empty(shp, v[0].dtype)
        split_forward(x=v[0], y=y, axis=axis, start=cut if right else 0)
        return y
    return run


def _k_parallel(make):
    """Run a parallel op piece by piece (parallel_ref) on the input laid out as its shape says."""
    def run(v, s):
        from unity_legion.substitutions import parallel_ref as pr
        x = v[0].astype(np.float64)
        t = pr.distribute(x, (s[0].deg0, s[0].deg1), s[0].sum_degree, s[0].copy_degree,
                          np.random.default_rng(1))
        return pr.value(pr.run(make(), t)).astype(np.float32)
    return run


def _opaque(x: np.ndarray) -> np.ndarray:
    """An arbitrary non-linear function mod P (stands for any elementwise activation)."""
    return (x * x % P * x + 3 * x + 7) % P


# --- the specs -----------------------------------------------------------------------------

def _matmul_shape(a: Shape, b: Shape) -> Shape | None:
    if flat(a.d1) != flat(b.d0):
        return None
    g0, g1, s, c = a.layout
    h0, h1, t, e = b.layout
    # devices: (row shard g0, column shard h1, contracted shard g1, partial source s|t, copies r)
    if g1 != h0 or (s > 1 and t > 1) or c % (h1 * t):
        return None
    r = c // (h1 * t)
    if e != g0 * s * r:
        return None
    return Shape(a.d0, b.d1, g0, h1, g1 * s * t, r)


def _linact_shape(a: Shape, b: Shape) -> Shape | None:
    out = _matmul_shape(a, b)
    return out if out is not None and out.sum_degree == 1 else None


def _ew_shape(linear: bool):
    def shape(a: Shape, b: Shape) -> Shape | None:
        if not _same(a, b) or (not linear and a.sum_degree > 1):
            return None
        return a
    return shape


def _act_shape(a: Shape) -> Shape | None:
    return a if a.sum_degree == 1 else None


def _concat_shape(d: int):
    def shape(a: Shape, b: Shape) -> Shape | None:
        o = 1 - d
        if flat(a.dim(o)) != flat(b.dim(o)) or a.layout != b.layout or a.degree(d) != 1:
            return None
        return a.with_dim(d, (a.dim(d), b.dim(d)))
    return shape


def _split_shape(d: int, right: bool):
    def shape(a: Shape) -> Shape | None:
        if isinstance(a.dim(d), str) or a.degree(d) != 1:
            return None
        return a.with_dim(d, a.dim(d)[1 if right else 0])
    return shape


def _rsum_shape(d: int):
    def shape(a: Shape) -> Shape | None:
        # summing a partitioned dim leaves one partial sum per shard
        return replace(a.with_dim(d, "1").with_degree(d, 1),
                       sum_degree=a.sum_degree * a.degree(d))
    return shape


def _part_shape(d: int):
    def shape(a: Shape) -> Shape | None:
        if size(a.dim(d)) % (a.degree(d) * DEGREE):
            return None
        return a.with_degree(d, a.degree(d) * DEGREE)
    return shape


def _comb_shape(d: int):
    def shape(a: Shape) -> Shape | None:
        if a.degree(d) % DEGREE:
            return None
        return a.with_degree(d, a.degree(d) // DEGREE)
    return shape


def _identity(v, s):
    return v[0]


def _split_dims(d: int, right: bool):
    def dims(ad, p):
        out = list(ad[0])
        out[d] = ad[0][d] - p[0] if right else p[0]
        return tuple(out)
    return dims


def _split_params(d: int):
    return lambda shapes: (("dim", shapes[0].dim(d)[0]),)


_DEG = lambda shapes: (("degree",),)  # noqa: E731


def _ax(*lines: str) -> tuple[str, ...]:
    return tuple(lines)


def _build() -> list[OpSpec]:
    specs = [
        OpSpec("matmul", 2, "algebraic", _matmul_shape,
               lambda v, s: (v[0] @ v[1]) % P, _k_matmul, lambda ad, p: (ad[0][0], ad[1][1]),
               axioms=_ax(
                   "matmul(matmul(a:n.m, b:m.p), c:p.q) = matmul(a, matmul(b, c))",
                   "matmul(a:n.m, add(b:m.p, c:m.p)) = add(matmul(a, b), matmul(a, c))",
                   "matmul(add(a:n.m, b:n.m), c:m.p) = add(matmul(a, c), matmul(b, c))",
                   "transpose(matmul(a:n.m, b:m.p)) = matmul(transpose(b), transpose(a))",
                   "matmul(concat0(a:n.m, b:p.m), c:m.q) = concat0(matmul(a, c), matmul(b, c))",
                   "matmul(a:n.m, concat1(b:m.p, c:m.q)) = concat1(matmul(a, b), matmul(a, c))",
                   "matmul(concat1(a:n.m, b:n.p), concat0(c:m.q, d:p.q)) = add(matmul(a, c), matmul(b, d))",
                   "rsum0(matmul(a:n.m, b:m.p)) = matmul(rsum0(a), b)",
                   "rsum1(matmul(a:n.m, b:m.p)) = matmul(a, rsum1(b))",
                   # parallelisations: sample, parameter, reduction, replicated, partial input
                   "matmul(part0(a:n.m), repl(b:m.p)) = part0(matmul(a, b))",
                   "matmul(repl(a:n.m), part1(b:m.p)) = part1(matmul(a, b))",
                   "matmul(part1(a:n.m), part0(b:m.p)) = partial(matmul(a, b))",
                   "matmul(repl(a:n.m), repl(b:m.p)) = repl(matmul(a, b))",
                   "matmul(partial(a:n.m), repl(b:m.p)) = partial(matmul(a, b))",
                   "matmul(repl(a:n.m), partial(b:m.p)) = partial(matmul(a, b))",
               ),
               taso=("OP_MATMUL", ()), ours="linear",
               doc="2-D matrix product (Linear with its weight as an input)"),
        OpSpec("linact", 2, "algebraic", _linact_shape,
               lambda v, s: _opaque((v[0] @ v[1]) % P), lambda v, s: _k_act([_k_matmul(v, s)], s),
               lambda ad, p: (ad[0][0], ad[1][1]),
               axioms=_ax(
                   "linact(a:n.m, b:m.p) = act(matmul(a, b))",
                   "linact(part0(a:n.m), repl(b:m.p)) = part0(linact(a, b))",
                   "linact(repl(a:n.m), part1(b:m.p)) = part1(linact(a, b))",
                   "linact(repl(a:n.m), repl(b:m.p)) = repl(linact(a, b))",
               ),
               taso=("OP_MATMUL_ACT", ()), ours="linear",
               doc="matmul with a fused activation (Linear(activation=...))"),
        OpSpec("add", 2, "algebraic", _ew_shape(True), lambda v, s: (v[0] + v[1]) % P,
               _k_combine("add"), lambda ad, p: ad[0],
               axioms=_ax(
                   "add(a:n.m, b:n.m) = add(b, a)",
                   "add(add(a:n.m, b:n.m), c:n.m) = add(a, add(b, c))",
                   "transpose(add(a:n.m, b:n.m)) = add(transpose(a), transpose(b))",
                   "add(concat0(a:n.m, b:p.m), concat0(c:n.m, d:p.m)) = concat0(add(a, c), add(b, d))",
                   "add(concat1(a:n.m, b:n.p), concat1(c:n.m, d:n.p)) = concat1(add(a, c), add(b, d))",
                   "rsum0(add(a:n.m, b:n.m)) = add(rsum0(a), rsum0(b))",
                   "rsum1(add(a:n.m, b:n.m)) = add(rsum1(a), rsum1(b))",
                   "add(part0(a:n.m), part0(b:n.m)) = part0(add(a, b))",
                   "add(part1(a:n.m), part1(b:n.m)) = part1(add(a, b))",
                   "add(repl(a:n.m), repl(b:n.m)) = repl(add(a, b))",
                   "add(partial(a:n.m), partial(b:n.m)) = partial(add(a, b))",
               ),
               taso=("OP_EW_ADD", ()), ours="add", doc="elementwise sum"),
        OpSpec("mul", 2, "algebraic", _ew_shape(False), lambda v, s: (v[0] * v[1]) % P,
               _k_combine("multiply"), lambda ad, p: ad[0],
               axioms=_ax(
                   "mul(a:n.m, b:n.m) = mul(b, a)",
                   "mul(mul(a:n.m, b:n.m), c:n.m) = mul(a, mul(b, c))",
                   "mul(a:n.m, add(b:n.m, c:n.m)) = add(mul(a, b), mul(a, c))",
                   "transpose(mul(a:n.m, b:n.m)) = mul(transpose(a), transpose(b))",
                   "mul(concat0(a:n.m, b:p.m), concat0(c:n.m, d:p.m)) = concat0(mul(a, c), mul(b, d))",
                   "mul(concat1(a:n.m, b:n.p), concat1(c:n.m, d:n.p)) = concat1(mul(a, c), mul(b, d))",
                   "mul(part0(a:n.m), part0(b:n.m)) = part0(mul(a, b))",
                   "mul(part1(a:n.m), part1(b:n.m)) = part1(mul(a, b))",
                   "mul(repl(a:n.m), repl(b:n.m)) = repl(mul(a, b))",
               ),
               taso=("OP_EW_MUL", ()), ours="multiply", doc="elementwise product"),
        OpSpec("act", 1, "algebraic", _act_shape, lambda v, s: _opaque(v[0]), _k_act,
               lambda ad, p: ad[0],
               axioms=_ax(
                   "transpose(act(a:n.m)) = act(transpose(a))",
                   "act(concat0(a:n.m, b:p.m)) = concat0(act(a), act(b))",
                   "act(concat1(a:n.m, b:n.p)) = concat1(act(a), act(b))",
                   "act(split0l(a:(n+p).m)) = split0l(act(a))",
                   "act(split0r(a:(n+p).m)) = split0r(act(a))",
                   "act(split1l(a:n.(m+p))) = split1l(act(a))",
                   "act(split1r(a:n.(m+p))) = split1r(act(a))",
                   "act(part0(a:n.m)) = part0(act(a))",
                   "act(part1(a:n.m)) = part1(act(a))",
                   "act(comb0(a:n.m/2.1.1.1)) = comb0(act(a))",
                   "act(comb1(a:n.m/1.2.1.1)) = comb1(act(a))",
                   "act(repl(a:n.m)) = repl(act(a))",
               ),
               taso=("OP_RELU", ()), ours="activation",
               doc="an opaque elementwise function (any of relu, tanh, sigmoid, gelu)"),
        OpSpec("transpose", 1, "algebraic", lambda a: a.transposed(),
               lambda v, s: np.ascontiguousarray(v[0].T), _k_transpose,
               lambda ad, p: (ad[0][1], ad[0][0]),
               axioms=_ax(
                   "transpose(transpose(a:n.m)) = a",
                   "transpose(concat0(a:n.m, b:p.m)) = concat1(transpose(a), transpose(b))",
                   "transpose(concat1(a:n.m, b:n.p)) = concat0(transpose(a), transpose(b))",
                   "transpose(rsum0(a:n.m)) = rsum1(transpose(a))",
                   "transpose(rsum1(a:n.m)) = rsum0(transpose(a))",
                   "transpose(part0(a:n.m)) = part1(transpose(a))",
                   "transpose(part1(a:n.m)) = part0(transpose(a))",
                   "transpose(comb0(a:n.m/2.1.1.1)) = comb1(transpose(a))",
                   "transpose(comb1(a:n.m/1.2.1.1)) = comb0(transpose(a))",
                   "transpose(repl(a:n.m)) = repl(transpose(a))",
                   "transpose(partial(a:n.m)) = partial(transpose(a))",
                   "transpose(red(a:n.m/1.1.2.1)) = red(transpose(a))",
               ),
               taso=("OP_TRANSPOSE", (("PM_PERM", 10),)), ours="permute", doc="2-D transpose"),
    ]
    for d in (0, 1):
        o = 1 - d
        cat, sl, sr = f"concat{d}", f"split{d}l", f"split{d}r"
        A = "a:(n+p).m" if d == 0 else "a:n.(m+p)"
        B, C = ("p.m", "q.m") if d == 0 else ("n.p", "n.q")
        specs += [
            OpSpec(cat, 2, "algebraic", _concat_shape(d),
                   (lambda d: lambda v, s: np.concatenate(v, axis=d))(d), _k_concat(d),
                   (lambda d: lambda ad, p: tuple(ad[0][i] + ad[1][i] if i == d else ad[0][i]
                                                  for i in (0, 1)))(d),
                   axioms=_ax(
                       f"{sl}({cat}(a:n.m, b:{B})) = a",
                       f"{sr}({cat}(a:n.m, b:{B})) = b",
                       f"{cat}({cat}(a:n.m, b:{B}), c:{C}) = {cat}(a, {cat}(b, c))",
                       f"{cat}(part{o}(a:n.m), part{o}(b:{B})) = part{o}({cat}(a, b))",
                       f"{cat}(repl(a:n.m), repl(b:{B})) = repl({cat}(a, b))",
                       f"{cat}(partial(a:n.m), partial(b:{B})) = partial({cat}(a, b))",
                       f"rsum{o}({cat}(a:n.m, b:{B})) = {cat}(rsum{o}(a), rsum{o}(b))",
                       f"rsum{d}({cat}(a:n.m, b:{B})) = add(rsum{d}(a), rsum{d}(b))",
                   ) + (() if d == 0 else _ax(  # a 2 x 2 grid of blocks, either way round
                       "concat1(concat0(a:n.m, b:p.m), concat0(c:n.q, d:p.q)) = "
                       "concat0(concat1(a, c), concat1(b, d))")),
                   taso=("OP_CONCAT", (("PM_AXIS", d if d == 0 else -1), ("PM_NUM_INPUTS", 2))),
                   ours="concatenate", doc=f"concatenation along dim {d}"),
            OpSpec(sl, 1, "algebraic", _split_shape(d, False),
                   (lambda d: lambda v, s: np.split(v[0], [size(s[0].dim(d)[0])], axis=d)[0])(d),
                   _k_split(d, False), _split_dims(d, False), _split_params(d), 1,
                   axioms=_ax(
                       f"{cat}({sl}({A}), {sr}(a)) = a",
                       f"{sl}(part{o}({A})) = part{o}({sl}(a))",
                       f"{sl}(repl({A})) = repl({sl}(a))",
                       f"{sl}(partial({A})) = partial({sl}(a))",
                       f"{sl}(add({A}, b:{A[2:]})) = add({sl}(a), {sl}(b))",
                   ),
                   taso=("OP_SPLIT", (("PM_AXIS", d if d == 0 else -1), ("PM_NUM_OUTPUTS", 2))),
                   ours="split",
                   doc=f"first part of a split along dim {d} (at the seam of the concat that built the dim)"),
            OpSpec(sr, 1, "algebraic", _split_shape(d, True),
                   (lambda d: lambda v, s: np.split(v[0], [size(s[0].dim(d)[0])], axis=d)[1])(d),
                   _k_split(d, True), _split_dims(d, True), _split_params(d), 1,
                   axioms=_ax(
                       f"{sr}(part{o}({A})) = part{o}({sr}(a))",
                       f"{sr}(repl({A})) = repl({sr}(a))",
                       f"{sr}(partial({A})) = partial({sr}(a))",
                       f"{sr}(add({A}, b:{A[2:]})) = add({sr}(a), {sr}(b))",
                   ),
                   taso=("OP_SPLIT", (("PM_AXIS", d if d == 0 else -1), ("PM_NUM_OUTPUTS", 2))),
                   ours="split",
                   doc=f"second part of a split along dim {d}"),
            OpSpec(f"rsum{d}", 1, "algebraic", _rsum_shape(d),
                   (lambda d: lambda v, s: v[0].sum(axis=d, keepdims=True) % P)(d),
                   (lambda d: lambda v, s: v[0].sum(axis=d, keepdims=True, dtype=np.float32))(d),
                   (lambda d: lambda ad, p: tuple(1 if i == d else ad[0][i] for i in (0, 1)))(d),
                   axioms=_ax(
                       f"rsum{d}(part{d}(a:n.m)) = partial(rsum{d}(a))",
                       f"rsum{d}(part{o}(a:n.m)) = part{o}(rsum{d}(a))",
                       f"rsum{d}(repl(a:n.m)) = repl(rsum{d}(a))",
                       f"rsum{d}(partial(a:n.m)) = partial(rsum{d}(a))",
                       f"rsum{d}(rsum{o}(a:n.m)) = rsum{o}(rsum{d}(a))",
                       f"rsum{d}(rsum{d}(a:n.m)) = rsum{d}(a)",
                   ),
                   taso=("OP_REDUCE_SUM", (("PM_AXIS", d if d == 0 else -1),)), ours=None,
                   doc=f"sum over dim {d} (kept as size 1)"),
        ]
    specs += _conv_specs()
    from unity_legion.pcg.parallel_ops import Combine, Partition, Reduce, Replicate
    for d in (0, 1):
        o = 1 - d
        specs += [
            OpSpec(f"part{d}", 1, "parallel", _part_shape(d), _identity,
                   _k_parallel((lambda d: lambda: Partition(d, DEGREE))(d)),
                   lambda ad, p: ad[0], _DEG, 1,
                   axioms=_ax(f"comb{d}(part{d}(a:n.m)) = a",
                              f"part{o}(part{d}(a:n.m)) = part{d}(part{o}(a))",
                              f"repl(part{d}(a:n.m)) = part{d}(repl(a))",
                              f"partial(part{d}(a:n.m)) = part{d}(partial(a))",
                              f"red(part{d}(a:n.m/1.1.2.1)) = part{d}(red(a))"),
                   taso=("OP_PARTITION", (("PM_PARALLEL_DIM", 1 - d), ("PM_PARALLEL_DEGREE", DEGREE),
                                          ("PM_NUMDIM", 2))),
                   ours="partition", doc=f"Partition(dim {d}, degree k)"),
            OpSpec(f"comb{d}", 1, "parallel", _comb_shape(d), _identity,
                   _k_parallel((lambda d: lambda: Combine(d, DEGREE))(d)),
                   lambda ad, p: ad[0], _DEG, 1,
                   axioms=_ax(f"part{d}(comb{d}(a:n.m/{'2.1' if d == 0 else '1.2'}.1.1)) = a",
                              f"repl(comb{d}(a:n.m/{'2.1' if d == 0 else '1.2'}.1.1)) = comb{d}(repl(a))",
                              f"red(comb{d}(a:n.m/{'2.1' if d == 0 else '1.2'}.2.1)) = comb{d}(red(a))"),
                   taso=("OP_COMBINE", (("PM_PARALLEL_DIM", 1 - d), ("PM_PARALLEL_DEGREE", DEGREE),
                                        ("PM_NUMDIM", 2))),
                   ours="combine", doc=f"Combine(dim {d}, degree k)"),
        ]
    specs += [
        OpSpec("repl", 1, "parallel", lambda a: replace(a, copy_degree=a.copy_degree * DEGREE),
               _identity, _k_parallel(lambda: Replicate(DEGREE)), lambda ad, p: ad[0], _DEG, 1,
               axioms=_ax("red(repl(a:n.m/1.1.2.1)) = repl(red(a))",
                          "partial(repl(a:n.m)) = repl(partial(a))"),
               taso=("OP_REPLICATE", (("PM_PARALLEL_DEGREE", DEGREE),)), ours="replicate",
               doc="Replicate(degree k): k copies"),
        OpSpec("red", 1, "parallel",
               lambda a: replace(a, sum_degree=a.sum_degree // DEGREE)
               if a.sum_degree % DEGREE == 0 else None, _identity, _k_parallel(lambda: Reduce(DEGREE)), lambda ad, p: ad[0], _DEG, 1,
               axioms=_ax("red(partial(a:n.m)) = a", "partial(red(a:n.m/1.1.2.1)) = a"),
               taso=("OP_REDUCTION", (("PM_PARALLEL_DEGREE", DEGREE),)), ours="reduce",
               doc="Reduce(degree k): add groups of k partial sums"),
        # not enumerated: the prover's name for "the same value, cut into k partial sums"
        OpSpec("partial", 1, "parallel", lambda a: replace(a, sum_degree=a.sum_degree * DEGREE),
               _identity,
               _identity, lambda ad, p: ad[0], _DEG, 1, enumerate=False,
               doc="k partial sums of the value (what a reduction-parallel op produces)"),
    ]
    return specs


CONV_SCALE = 3  # the fingerprint's stand-in for the crop of a convolution (see lift.py)


def _no_2d(v, s):
    raise NotImplementedError("a convolution is cross-checked on 4-D tensors (generator/lift.py)")


def _conv_specs() -> list[OpSpec]:
    """Conv2D over the channel-structured 2-D view of lift.py: x (batch, channels) an image
    batch, w (in channels, out channels) a kernel. Its axioms are the laws of a real convolution
    (any kernel size, stride, padding, dilation; one group): bilinear, per sample, distributing
    over concats of channels, and its parallel forms. Unlike matmul it is not associative, has
    no transpose law and no law with a reduction over samples or channels (none is stated).
    Not enumerated with the other operators: the conv pass (`CONV_PASS`) enumerates it with
    images and kernels as inputs, and its rules are cross-checked on 4-D tensors."""
    scaled = lambda v, s: (CONV_SCALE * ((v[0] @ v[1]) % P)) % P  # noqa: E731
    return [
        OpSpec("conv", 2, "algebraic", _matmul_shape, scaled, _no_2d,
               lambda ad, p: (ad[0][0], ad[1][1]),
               axioms=_ax(
                   "conv(a:n.m, add(b:m.p, c:m.p)) = add(conv(a, b), conv(a, c))",
                   "conv(add(a:n.m, b:n.m), c:m.p) = add(conv(a, c), conv(b, c))",
                   "conv(concat0(a:n.m, b:p.m), c:m.q) = concat0(conv(a, c), conv(b, c))",
                   "conv(a:n.m, concat1(b:m.p, c:m.q)) = concat1(conv(a, b), conv(a, c))",
                   "conv(concat1(a:n.m, b:n.p), concat0(c:m.q, d:p.q)) = add(conv(a, c), conv(b, d))",
                   # parallelisations: sample, output channels, input channels (reduction),
                   # replicated, partial input
                   "conv(part0(a:n.m), repl(b:m.p)) = part0(conv(a, b))",
                   "conv(repl(a:n.m), part1(b:m.p)) = part1(conv(a, b))",
                   "conv(part1(a:n.m), part0(b:m.p)) = partial(conv(a, b))",
                   "conv(repl(a:n.m), repl(b:m.p)) = repl(conv(a, b))",
                   "conv(partial(a:n.m), repl(b:m.p)) = partial(conv(a, b))",
                   "conv(repl(a:n.m), partial(b:m.p)) = partial(conv(a, b))",
               ),
               taso=("OP_CONV2D", (("PM_GROUP", 1), ("PM_ACTI", 0))), ours="conv2d",
               enumerate=False,
               doc="Conv2D without activation (any kernel size, stride, padding; one group)"),
        OpSpec("convact", 2, "algebraic", _linact_shape, lambda v, s: _opaque(scaled(v, s)),
               _no_2d, lambda ad, p: (ad[0][0], ad[1][1]),
               axioms=_ax(
                   "convact(a:n.m, b:m.p) = act(conv(a, b))",
                   "convact(part0(a:n.m), repl(b:m.p)) = part0(convact(a, b))",
                   "convact(repl(a:n.m), part1(b:m.p)) = part1(convact(a, b))",
                   "convact(repl(a:n.m), repl(b:m.p)) = repl(convact(a, b))",
               ),
               taso=("OP_CONV2D", (("PM_GROUP", 1), ("PM_ACTI", 2))), ours="conv2d",
               enumerate=False,
               doc="Conv2D with a fused activation (Conv2D(activation=...))"),
    ]


SPECS: tuple[OpSpec, ...] = tuple(_build())

# The conv pass: the operators enumerated with the convolutions (no matmul, transpose or
# reduction, which have no image/kernel meaning here) and its inputs, images x, y and kernels
# v, w (see lift.py; every enumerated term must give each tensor one role).
CONV_PASS = ("conv", "convact", "add", "act", "concat0", "split0l", "split0r", "concat1",
             "split1l", "split1r", "part0", "comb0", "part1", "comb1", "repl", "red")


def by_name(specs=SPECS) -> dict[str, OpSpec]:
    return {s.name: s for s in specs}


def with_activation(table: dict[str, OpSpec], fn: str) -> dict[str, OpSpec]:
    """`table` with the opaque `act` (alone and fused in `linact`) run in float32 as the real
    activation `fn` (e.g. softmax, which reads whole rows of dim 1 and is no elementwise
    function: a rule holds for it only where the cross-check through it says so)."""
    act = _k_activation(fn)
    return table | {"act": replace(table["act"], f32=act),
                    "linact": replace(table["linact"], f32=lambda v, s: act([_k_matmul(v, s)], s))}
