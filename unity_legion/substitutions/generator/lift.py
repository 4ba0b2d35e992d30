"""Convolutions: the roles of a conv rule's tensors and its float32 cross-check on 4-D tensors.

The generator sees a convolution over a channel-structured 2-D view: an image batch
(n, H, W, c) is the n x c matrix whose entry (i, c) is the plane x[i, :, :, c], a kernel
(kh, kw, c_in, c_out) the c_in x c_out matrix of its kernel planes, and conv(x, w) is that matrix
product with planes multiplied by 2-D convolution, then cropped (padding, stride) plane by plane.
Plane convolution is a commutative, associative product, and the crop is additive and acts on
each entry alone, so every conv axiom (bilinearity, distribution over channel and sample concats,
the parallel forms) holds in this model, which the fingerprint's 3 * (x @ w) mod P is also an
instance of. A proof from the axioms therefore holds for real convolutions.

A tensor of a conv rule is an image or a kernel (its `role`): conv reads an image and a kernel
and makes an image; every other operator of the conv pass keeps one role. The role says which
4-D axes a 2-D dim stands for: dim 0 is the batch of an image and the input channels of a
kernel, dim 1 the channels of an image and the output channels of a kernel."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .terms import Shape, Term, size, subterms

CONV_OPS = frozenset({"conv", "convact"})
IMAGE, KERNEL = "image", "kernel"
HW = (5, 4)          # the planes of the 4-D cross-check (H, W)
KHW = (3, 3)         # the kernel planes; 'same' padding, stride 1
# the 4-D axis each 2-D dim stands for, per role
AXIS = {IMAGE: (0, 3), KERNEL: (2, 3)}


def uses_conv(*terms: Term) -> bool:
    return any(not isinstance(s, str) and s[0] in CONV_OPS for t in terms for s in subterms(t))


def roles(*terms: Term) -> dict[Term, str] | None:
    """The role of every subterm of `terms` (the terms themselves share one: the two sides of a
    rule), or None where some tensor would be both an image and a kernel. A tensor no conv
    reaches is an image."""
    parent: dict[Term, Term] = {}
    fixed: dict[Term, str] = {}

    def find(t: Term) -> Term:
        while parent.setdefault(t, t) != t:
            t = parent[t]
        return t

    def fix(t: Term, role: str) -> bool:
        r = find(t)
        if fixed.get(r, role) != role:
            return False
        fixed[r] = role
        return True

    def union(a: Term, b: Term) -> bool:
        ra, rb = find(a), find(b)
        if ra == rb:
            return True
        parent[ra] = rb
        if ra in fixed:
            return fix(rb, fixed.pop(ra))
        return True

    for t in terms:
        for s in subterms(t):
            find(s)
            if isinstance(s, str):
                continue
            if s[0] in CONV_OPS:
                ok = fix(s, IMAGE) and fix(s[1], IMAGE) and fix(s[2], KERNEL)
            else:
                ok = all(union(a, s) for a in s[1:])
            if not ok:
                return None
    for t in terms[1:]:
        if not union(terms[0], t):
            return None
    return {s: fixed.get(find(s), IMAGE) for s in parent}


def role_consistent(t: Term) -> bool:
    return roles(t) is not None


def _conv(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """A real 2-D convolution (cross-correlation, as Keras): x (n, H, W, ci), k (kh, kw, ci, co),
    'same' padding, stride 1; float32 in and out."""
    kh, kw = k.shape[:2]
    xp = np.pad(x, ((0, 0), (kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))
    return np.einsum("nhwcij,ijco->nhwo", win, k, optimize=True).astype(np.float32)


def random_4d(shape: Shape, role: str, rng: np.random.Generator) -> np.ndarray:
    d0, d1 = size(shape.d0), size(shape.d1)
    dims = (d0, *HW, d1) if role == IMAGE else (*KHW, d0, d1)
    return rng.standard_normal(dims).astype(np.float32)


def evaluate_4d(t: Term, env: Mapping[str, np.ndarray], shapes: Mapping[str, Shape],
                role: Mapping[Term, str], table) -> np.ndarray:
    """The value of `t` on 4-D tensors: convolutions run as real ones, concats and splits along
    the axis their 2-D dim stands for, parallel operators as the identity on the value (they
    change only the layout)."""
    from .evaluate import infer
    from .specs import ACT_FN, _k_activation
    if isinstance(t, str):
        return env[t]
    args = [evaluate_4d(a, env, shapes, role, table) for a in t[1:]]
    op = t[0]
    if op == "conv":
        return _conv(args[0], args[1])
    if op == "convact":
        return _k_activation(ACT_FN)([_conv(args[0], args[1])], None)
    if op == "act":
        return _k_activation(ACT_FN)(args, None)
    if op == "add":
        return (args[0] + args[1]).astype(np.float32)
    if op.startswith("concat"):
        return np.concatenate(args, axis=AXIS[role[t]][int(op[-1])])
    if op.startswith("split"):
        d = int(op[5])
        cut = size(infer(t[1], shapes, table).dim(d)[0])
        parts = np.split(args[0], [cut], axis=AXIS[role[t]][d])
        return parts[1 if op.endswith("r") else 0]
    if table[op].kind == "parallel":
        return args[0]
    raise ValueError(f"operator {op!r} has no 4-D form in a conv rule")


def cross_check_4d(lhs: Term, rhs: Term, shapes: Mapping[str, Shape], table,
                   seeds: int = 2) -> str | None:
    """None if both sides agree in float32 on random images and kernels, else why not."""
    role = roles(lhs, rhs)
    if role is None:
        return "a tensor is both an image and a kernel"
    for seed in range(seeds):
        rng = np.random.default_rng(200 + seed)
        env = {v: random_4d(s, role[v], rng) for v, s in sorted(shapes.items())}
        try:
            a = evaluate_4d(lhs, env, shapes, role, table)
            b = evaluate_4d(rhs, env, shapes, role, table)
        except ValueError as exc:
            return str(exc)
        if a.dtype != np.float32 or b.dtype != np.float32:
            return f"not float32 ({a.dtype}, {b.dtype})"
        if a.shape != b.shape:
            return f"shapes {a.shape} and {b.shape} differ"
        scale = max(1.0, float(np.abs(a).max(initial=0.0)))
        if not np.allclose(a, b, rtol=1e-4, atol=1e-4 * scale):
            return f"values differ by {float(np.abs(a - b).max()):.3g}"
    return None
