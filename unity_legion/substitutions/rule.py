"""Substitutions as data: a pattern of operators, a replacement built from the matched ones, and
which pattern outputs the replacement's outputs stand for.

Everything here is a frozen dataclass, so a rule list reads like tinygrad's pattern list and a
rule can be hashed, compared and written out. The only code a rule names is looked up by name in
`exprs` (attribute values computed from the match, and predicates over a match), so every
function a rule may use is small, listed once, and tested once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Union

from . import exprs
# (re-exported: rules are written with them; exprs evaluates them without importing rule)
from .values import AttrOf, Computed, SubstitutionError  # noqa: F401


# --- references to tensors inside a rule ---------------------------------------------------------

@dataclass(frozen=True)
class In:
    """Pattern input `index` (an open edge: a tensor made outside the pattern)."""

    index: int


@dataclass(frozen=True)
class Out:
    """Output `index` of the pattern (or replacement) op labelled `op`."""

    op: str
    index: int = 0


TensorRef = Union[In, Out]


# --- attribute constraints of a pattern op ------------------------------------------------------

@dataclass(frozen=True)
class AttrEq:
    attr: str
    value: Any


@dataclass(frozen=True)
class AttrIn:
    attr: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class AttrNot:
    attr: str
    value: Any


Constraint = Union[AttrEq, AttrIn, AttrNot]


def check_constraint(c: Constraint, op: Any) -> bool:
    if not hasattr(op, c.attr):
        return False
    v = getattr(op, c.attr)
    if isinstance(c, AttrEq):
        return v == c.value
    if isinstance(c, AttrIn):
        return v in c.values
    return v != c.value


# --- values a replacement op is built from -------------------------------------------------------

Value = Any  # a literal, an AttrOf or a Computed


@dataclass(frozen=True)
class Copy:
    """The matched op `source` with some attributes replaced."""

    source: str
    set: tuple[tuple[str, Value], ...] = ()


@dataclass(frozen=True)
class New:
    """A fresh operator of `op_type` (see `exprs.OPERATOR_TYPES`) with these attributes."""

    op_type: str
    set: tuple[tuple[str, Value], ...] = ()


Builder = Union[Copy, New]


@dataclass(frozen=True)
class Pred:
    """A predicate over a whole match: `exprs.PREDICATES[name](ctx, *args)`."""

    name: str
    args: tuple[Any, ...] = ()


# --- weights of a replacement op -----------------------------------------------------------------

@dataclass(frozen=True)
class WeightFrom:
    """Weight `name` of a replacement op, made from weights of matched ops.

    mode "concat" joins `sources` along `axis` (one source: the same weight), "sum" adds them,
    "slice" takes [start, stop) of the single source along `axis`; `start`/`stop` may be
    Computed. Sources whose matched op has no such weight (e.g. no bias) are left out; with none
    left the weight must not exist on the new op."""

    name: str
    sources: tuple[tuple[str, str], ...]
    mode: Literal["concat", "sum", "slice"] = "concat"
    axis: int = 0
    start: Value = None
    stop: Value = None


# --- ops of a pattern and of a replacement -------------------------------------------------------

@dataclass(frozen=True)
class OpPattern:
    label: str
    op_type: str
    inputs: tuple[TensorRef, ...]
    where: tuple[Constraint, ...] = ()
    num_outputs: int | None = None  # None: any


@dataclass(frozen=True)
class OpTemplate:
    """A replacement op. `name_from`: keep the name of that matched op (its weights stay keyed by
    it); otherwise a new name is derived from the matched names. Weights not listed in
    `weights` are taken unchanged from a Copy's source (by name)."""

    label: str
    build: Builder
    inputs: tuple[TensorRef, ...]
    weights: tuple[WeightFrom, ...] = ()
    name_from: str | None = None


@dataclass(frozen=True)
class Rule:
    """`outputs` maps each pattern output that may be used outside to what replaces it: an output
    of a replacement op or a pattern input (a rule that removes ops). `where` holds predicates (`Pred`) over
    the whole match. `symmetric` lists pairs of pattern labels whose
    swap gives an equivalent rewrite: only the match with the lower node id first is kept."""

    name: str
    family: str
    kind: Literal["algebraic", "parallel"]
    pattern: tuple[OpPattern, ...]
    replacement: tuple[OpTemplate, ...]
    outputs: tuple[tuple[Out, TensorRef], ...]
    where: tuple[Pred, ...] = ()
    symmetric: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        validate(self)

    @property
    def num_inputs(self) -> int:
        refs = [r for op in self.pattern for r in op.inputs if isinstance(r, In)]
        return 1 + max(r.index for r in refs) if refs else 0


def validate(rule: Rule) -> None:
    """Structural checks: labels unique, references point backwards, inputs numbered 0..n-1."""
    def fail(msg: str) -> None:
        raise SubstitutionError(f"rule {rule.name!r}: {msg}")

    if rule.kind not in ("algebraic", "parallel"):
        fail(f"kind must be 'algebraic' or 'parallel', got {rule.kind!r}")
    if not rule.pattern:
        fail("the pattern has no operator")
    for side, ops in (("pattern", rule.pattern), ("replacement", rule.replacement)):
        seen: set[str] = set()
        for op in ops:
            if op.label in seen:
                fail(f"{side} label {op.label!r} is used twice")
            for r in op.inputs:
                if isinstance(r, Out) and r.op not in seen:
                    fail(f"{side} op {op.label!r} reads {r.op!r}, which is not an earlier op")
            seen.add(op.label)
    n = rule.num_inputs
    used = {r.index for op in rule.pattern for r in op.inputs if isinstance(r, In)}
    if used != set(range(n)):
        fail(f"pattern inputs must be numbered 0..{n - 1}, got {sorted(used)}")
    pat = {op.label for op in rule.pattern}
    rep = {op.label for op in rule.replacement}
    for t in rule.replacement:
        if any(isinstance(r, In) and r.index >= n for r in t.inputs):
            fail(f"replacement op {t.label!r} reads a pattern input that does not exist")
        if isinstance(t.build, Copy) and t.build.source not in pat:
            fail(f"replacement op {t.label!r} copies {t.build.source!r}, not a pattern op")
        if isinstance(t.build, New) and t.build.op_type not in exprs.OPERATOR_TYPES:
            fail(f"replacement op {t.label!r}: unknown operator type {t.build.op_type!r}")
        if t.name_from is not None and t.name_from not in pat:
            fail(f"replacement op {t.label!r} takes its name from {t.name_from!r}, not a pattern op")
    names = [t.name_from for t in rule.replacement if t.name_from]
    if len(names) != len(set(names)):
        fail("two replacement ops take the name of the same matched op")
    for src, dst in rule.outputs:
        if src.op not in pat:
            fail(f"mapped output {src} is not an output of a pattern op")
        if isinstance(dst, Out) and dst.op not in rep:
            fail(f"mapped output {src} -> {dst}: not a replacement op")
        if isinstance(dst, In) and dst.index >= n:
            fail(f"mapped output {src} -> {dst}: no such pattern input")
    for p in rule.where:
        if not isinstance(p, Pred) or p.name not in exprs.PREDICATES:
            fail(f"unknown predicate {p!r}")
    for a, b in rule.symmetric:
        if a not in pat or b not in pat:
            fail(f"symmetric pair ({a!r}, {b!r}) names a label that is not in the pattern")
