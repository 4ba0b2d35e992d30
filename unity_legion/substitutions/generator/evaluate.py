"""Evaluating terms: their shape (typing), their exact value mod P (the fingerprint) and their
float32 value through the real kernels; and the check that every axiom holds in the reference
semantics (a spec whose axioms contradict its own evaluation is named)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .specs import P, SPECS, OpSpec, by_name
from .terms import Shape, Term, parse, size, subterms


class SpecError(ValueError):
    """An operator spec is inconsistent (names the operator)."""


def infer(t: Term, shapes: Mapping[str, Shape], specs: Mapping[str, OpSpec]) -> Shape | None:
    memo: dict = {}
    for s in subterms(t):
        if s in memo:
            continue
        if isinstance(s, str):
            memo[s] = shapes.get(s)
        else:
            args = [memo[a] for a in s[1:]]
            memo[s] = None if any(a is None for a in args) else specs[s[0]].shape(*args)
    return memo[t]


def evaluate(t: Term, env: Mapping[str, tuple[np.ndarray, Shape]], specs: Mapping[str, OpSpec],
             mode: str = "ref") -> tuple[np.ndarray, Shape] | None:
    """(value, shape) of `t`, or None where it does not type-check."""
    memo: dict = {}
    for s in subterms(t):
        if s in memo:
            continue
        if isinstance(s, str):
            memo[s] = env[s]
            continue
        args = [memo[a] for a in s[1:]]
        if any(a is None for a in args):
            memo[s] = None
            continue
        spec = specs[s[0]]
        shp = spec.shape(*[a[1] for a in args])
        if shp is None:
            memo[s] = None
            continue
        fn = spec.ref if mode == "ref" else spec.f32
        memo[s] = (fn([a[0] for a in args], [a[1] for a in args]), shp)
    return memo[t]


def random_value(shape: Shape, rng: np.random.Generator, mode: str = "ref") -> np.ndarray:
    dims = (size(shape.d0), size(shape.d1))
    if mode == "ref":
        return rng.integers(0, P, size=dims, dtype=np.int64)
    return rng.standard_normal(dims).astype(np.float32)


def parse_axiom(text: str) -> tuple[Term, Term, dict[str, Shape]]:
    left, sep, right = text.partition("=")
    if not sep:
        raise SpecError(f"axiom {text!r}: no '='")
    lt, ls = parse(left)
    rt, rs = parse(right)
    ls.update(rs)
    return lt, rt, ls


def check_specs(specs: tuple[OpSpec, ...] = SPECS, seeds: int = 3) -> int:
    """Every axiom, on random inputs of its annotated shapes: both sides type-check and agree
    exactly. Raises SpecError naming the operator at fault: the one every failing axiom mentions
    (a wrong reference evaluation breaks all the axioms it takes part in), else the owner of the
    failing axiom (a wrong axiom). Returns the number of axioms."""
    table = by_name(specs)
    n = 0
    failures: list[tuple[str, str, str, set[str]]] = []
    for spec in specs:
        for ax in spec.axioms:
            try:
                lt, rt, shapes = parse_axiom(ax)
            except ValueError as exc:
                raise SpecError(f"operator {spec.name!r}: axiom {ax!r}: {exc}") from None
            for t in (lt, rt):
                for s in subterms(t):
                    if not isinstance(s, str) and s[0] not in table:
                        raise SpecError(f"operator {spec.name!r}: axiom {ax!r}: unknown "
                                        f"operator {s[0]!r}")
                for s in subterms(t):
                    if isinstance(s, str) and s not in shapes:
                        raise SpecError(f"operator {spec.name!r}: axiom {ax!r}: variable {s!r} "
                                        f"has no shape annotation")
            n += 1
            why = _check_axiom(lt, rt, shapes, table, seeds)
            if why is not None:
                used = {s[0] for t in (lt, rt) for s in subterms(t) if not isinstance(s, str)}
                failures.append((spec.name, ax, why, used))
    if failures:
        common = set.intersection(*(f[3] for f in failures))
        owner, ax, why, _ = failures[0]
        blame = common.pop() if len(common) == 1 and len(failures) > 1 else owner
        raise SpecError(f"operator {blame!r}: axiom {ax!r} {why} ({len(failures)} axiom(s) "
                        f"fail: {'; '.join(f[1] for f in failures[:5])})")
    return n


def _check_axiom(lt: Term, rt: Term, shapes, table, seeds: int) -> str | None:
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        env = {v: (random_value(sh, rng), sh) for v, sh in sorted(shapes.items())}
        a, b = evaluate(lt, env, table), evaluate(rt, env, table)
        if a is None or b is None:
            side = "left" if a is None else "right"
            return f"does not type-check (the {side} side) under the specs' shape rules"
        if not _same_key(a[1], b[1]):
            return f"contradicts the reference evaluation: layouts {a[1]} and {b[1]} differ"
        if a[0].shape != b[0].shape or not np.array_equal(a[0], b[0]):
            return "contradicts the reference evaluation: the two sides differ on random inputs"
    return None


def _same_key(a: Shape, b: Shape) -> bool:
    from .terms import shape_key
    return shape_key(a) == shape_key(b)
