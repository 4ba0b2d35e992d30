"""Enumeration of small graphs and TASO-style fingerprinting.

Terms are built bottom-up by size (number of operators) over a fixed set of input variables,
only from the representative of each fingerprint class (a term built from a non-representative
subterm is implied by the rule that equates that subterm with its representative plus
congruence). Each class's other members give candidates `member = representative`. Candidates
whose two sides share a non-variable subterm are implied by a smaller rule plus common-subgraph
elimination and are dropped as redundant; so are renamings of an earlier candidate.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from .evaluate import random_value
from .specs import SPECS, OpSpec
from .terms import Shape, Term, logical, rename, shape_key, subterms, variables

# the input tensors of every enumerated graph: name -> logical shape (names in a group share it)
INPUTS: dict[str, Shape] = {
    "x": logical("n", "m"), "y": logical("n", "m"), "z": logical("n", "m"),
    "w": logical("m", "p"), "v": logical("m", "p"),
    "u": logical("p", "n"),
}
# the conv pass's inputs (see specs.CONV_PASS): images x, y and kernels v, w
CONV_INPUTS: dict[str, Shape] = {
    "x": logical("n", "m"), "y": logical("n", "m"),
    "v": logical("m", "p"), "w": logical("m", "p"),
}
MAX_DEVICES = 4  # parallel layouts over more devices than this are not enumerated


class GenerationTimeout(RuntimeError):
    pass


@dataclass
class Enumeration:
    classes: dict[tuple, list[tuple[Term, int]]]   # fingerprint -> [(term, size)], rep first
    shapes: dict[Term, Shape]
    terms: int
    seconds: float
    complete: bool = True
    stopped_at: int | None = None


def _fingerprint(value: np.ndarray, shape: Shape) -> tuple:
    return (shape_key(shape), hashlib.blake2b(value.tobytes(), digest_size=12).digest())


def enumerate_terms(k: int, specs: tuple[OpSpec, ...] = SPECS, inputs: Mapping[str, Shape] = INPUTS,
                    seed: int = 0, deadline: float | None = None,
                    progress: Callable[[int, int, int], None] | None = None,
                    admit: Callable[[Term], bool] | None = None) -> Enumeration:
    """Every term with up to `k` operators built from class representatives (and, with
    `admit`, that it admits)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    ops = [s for s in specs if s.enumerate]
    values: dict[Term, np.ndarray] = {}
    shapes: dict[Term, Shape] = {}
    classes: dict[tuple, list[tuple[Term, int]]] = {}
    reps: dict[int, list[Term]] = {0: []}
    for name in sorted(inputs):
        values[name] = random_value(inputs[name], rng)
        shapes[name] = inputs[name]
        fp = _fingerprint(values[name], inputs[name])
        classes.setdefault(fp, []).append((name, 0))
        reps[0].append(name)
    count = 0
    for n in range(1, k + 1):
        reps[n] = []
        todo = []
        for spec in ops:
            if spec.arity == 1:
                todo += [(spec, (a,)) for a in reps[n - 1]]
            else:
                for n1 in range(n):
                    for a in reps[n1]:
                        todo += [(spec, (a, b)) for b in reps[n - 1 - n1]]
        for i, (spec, args) in enumerate(todo):
            if deadline is not None and i % 2000 == 0 and time.perf_counter() > deadline:
                return Enumeration(classes, shapes, count, time.perf_counter() - t0, False, n)
            if progress is not None and i % 5000 == 0:
                progress(n, i, len(todo))
            shp = spec.shape(*[shapes[a] for a in args])
            if shp is None or shp.devices > MAX_DEVICES:
                continue
            t = (spec.name,) + args
            if admit is not None and not admit(t):
                continue
            val = spec.ref([values[a] for a in args], [shapes[a] for a in args])
            count += 1
            fp = _fingerprint(val, shp)
            members = classes.get(fp)
            if members is None:
                classes[fp] = [(t, n)]
                values[t] = val
                shapes[t] = shp
                reps[n].append(t)
            else:
                members.append((t, n))
                shapes[t] = shp
        if progress is not None:
            progress(n, len(todo), len(todo))
    return Enumeration(classes, shapes, count, time.perf_counter() - t0)


@dataclass(frozen=True)
class Candidate:
    lhs: Term
    rhs: Term
    shapes: tuple[tuple[str, Shape], ...]   # the variables both sides use


def canonical_pair(lhs: Term, rhs: Term, inputs: Mapping[str, Shape] = INPUTS) -> tuple[Term, Term]:
    """Rename variables, per shape group, in order of first use (lhs then rhs)."""
    groups: dict[Shape, list[str]] = {}
    for name in sorted(inputs):
        groups.setdefault(inputs[name], []).append(name)
    used: dict[Shape, int] = {}
    m: dict[str, str] = {}
    for v in variables(("pair", lhs, rhs)):
        g = inputs[v]
        m[v] = groups[g][used.get(g, 0)]
        used[g] = used.get(g, 0) + 1
    return rename(lhs, m), rename(rhs, m)


def candidates(e: Enumeration, inputs: Mapping[str, Shape] = INPUTS) -> tuple[list[Candidate], dict[str, int]]:
    """Pairs of equal fingerprint, less the trivial and redundant ones, in a fixed order."""
    stats = {"pairs": 0, "trivial": 0, "redundant_renaming": 0, "redundant_common_subgraph": 0}
    out: list[Candidate] = []
    seen: set = set()
    for fp in sorted(e.classes, key=repr):
        members = e.classes[fp]
        rep = members[0][0]
        for t, _ in members[1:]:
            stats["pairs"] += 1
            if t == rep:
                stats["trivial"] += 1
                continue
            inner_l = {s for s in subterms(t) if not isinstance(s, str)}
            inner_r = {s for s in subterms(rep) if not isinstance(s, str)}
            if (inner_l & inner_r) - {t, rep}:
                stats["redundant_common_subgraph"] += 1
                continue
            lhs, rhs = canonical_pair(t, rep, inputs)
            if (lhs, rhs) in seen or (rhs, lhs) in seen:
                stats["redundant_renaming"] += 1
                continue
            seen.add((lhs, rhs))
            vs = variables(("pair", lhs, rhs))
            out.append(Candidate(lhs, rhs, tuple((v, inputs[v]) for v in vs)))
    out.sort(key=lambda c: (_size(c.lhs) + _size(c.rhs), repr(c.lhs), repr(c.rhs)))
    # the same rule at other input shapes, or an instance of a more general one (a variable
    # used twice where the general rule has two): keep the general form only
    stats["redundant_instance"] = 0
    forms = {erased(c.lhs, c.rhs) for c in out}
    kept, seen_forms = [], set()
    by_top: dict = {}
    for c in out:
        f = erased(c.lhs, c.rhs)
        top = (_top(c.lhs), _top(c.rhs))
        if f in seen_forms or any(g in forms for g in _generalisations(c.lhs, c.rhs)) or any(
                _instance(g, c) for g in by_top.get(top, []) + (
                    by_top.get((top[0], None), []) if top[1] is not None else [])):
            stats["redundant_instance"] += 1
            continue
        by_top.setdefault(top, []).append(c)
        seen_forms.add(f)
        kept.append(c)
    return kept, stats


def _set_partitions(n: int) -> list[tuple[int, ...]]:
    """Restricted growth strings: the set partitions of n items."""
    out = [()]
    for _ in range(n):
        out = [p + (k,) for p in out for k in range(max(p, default=-1) + 2)]
    return out


def _top(t: Term):
    return None if isinstance(t, str) else t[0]


def _match(pat: Term, t: Term, env: dict) -> bool:
    if isinstance(pat, str):
        if pat in env:
            return env[pat] == t
        env[pat] = t
        return True
    if isinstance(t, str) or pat[0] != t[0] or len(pat) != len(t):
        return False
    return all(_match(p, a, env) for p, a in zip(pat[1:], t[1:]))


def _instance(general: Candidate, c: Candidate) -> bool:
    """`c` is `general` with terms substituted for its variables (and not a renaming)."""
    env: dict = {}
    if not (_match(general.lhs, c.lhs, env) and _match(general.rhs, c.rhs, env)):
        return False
    return any(not isinstance(v, str) for v in env.values())


def erased(lhs: Term, rhs: Term) -> tuple[Term, Term]:
    """The pair with variables renamed v0, v1, ... in order of first use, shapes ignored."""
    m = {v: f"v{i}" for i, v in enumerate(variables(("pair", lhs, rhs)))}
    return rename(lhs, m), rename(rhs, m)


def _generalisations(lhs: Term, rhs: Term) -> list[tuple[Term, Term]]:
    """Erased forms of the pair with some occurrences of a repeated variable made distinct."""
    occ: list[str] = []

    def walk(t: Term) -> None:
        if isinstance(t, str):
            occ.append(t)
        else:
            for a in t[1:]:
                walk(a)
    walk(lhs)
    walk(rhs)
    reps = [v for v in dict.fromkeys(occ) if occ.count(v) > 1]
    if not reps or len(occ) > 10:
        return []
    # every way to cut the occurrences of each repeated variable into groups (set partitions)
    choices = []
    for v in reps:
        pos = [i for i, x in enumerate(occ) if x == v]
        choices.append([(pos, labels) for labels in _set_partitions(len(pos))])
    out = []
    for combo in itertools.product(*choices):
        names = list(occ)
        for pos, labels in combo:
            for i, lb in zip(pos, labels):
                names[i] = f"{occ[i]}#{lb}"
        if len(set(names)) == len(set(occ)):
            continue
        it = iter(names)

        def rebuild(t: Term) -> Term:
            return next(it) if isinstance(t, str) else (t[0],) + tuple(rebuild(a) for a in t[1:])
        out.append(erased(rebuild(lhs), rebuild(rhs)))
    return out


def _size(t: Term) -> int:
    return len({s for s in subterms(t) if not isinstance(s, str)})
