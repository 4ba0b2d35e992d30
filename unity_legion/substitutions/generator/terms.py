"""Terms, symbolic shapes and the small text syntax the specs and rule files use.

A term is a variable name (str) or a tuple ``(op, arg, ...)``. A dimension is a symbol (``"n"``,
``"m"``, ``"p"``, ``"1"``) or a pair ``(left, right)``: the dimension a concat built, which a split
cuts again at the same seam. A `Shape` is two logical dims and their parallel layout (shard degree
per dim, partial-sum degree, copy degree), as `unity_legion.types.ParallelTensorShape` has them.
Text: ``matmul(x, concat1(w, v))``; an annotated variable ``x:n.m`` (or ``x:n.m/2.1.1.1`` with a
parallel layout) in an axiom.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterator, Union

Term = Union[str, tuple]
Dim = Union[str, tuple]


@dataclass(frozen=True)
class Shape:
    """A 2-D tensor of the generator: its dims and how it is laid out over devices.

    Frozen, so it keys dicts (shape groups, fingerprints); its hash is its fields' tuple, so a
    set or dict of shapes iterates as one of the former 6-tuples did (the enumeration, and so the
    generated rule files, do not depend on the type)."""

    d0: Dim
    d1: Dim
    deg0: int = 1               # shard degree of dim 0
    deg1: int = 1               # shard degree of dim 1
    sum_degree: int = 1         # partial sums: the tensor is the sum of these copies
    copy_degree: int = 1        # identical copies

    def dim(self, i: int) -> Dim:
        return (self.d0, self.d1)[i]

    def degree(self, i: int) -> int:
        return (self.deg0, self.deg1)[i]

    @property
    def layout(self) -> tuple[int, int, int, int]:
        return (self.deg0, self.deg1, self.sum_degree, self.copy_degree)

    @property
    def devices(self) -> int:
        """How many pieces (devices) the tensor occupies."""
        return self.deg0 * self.deg1 * self.sum_degree * self.copy_degree

    def with_dim(self, i: int, d: Dim) -> "Shape":
        return replace(self, **{f"d{i}": d})

    def with_degree(self, i: int, degree: int) -> "Shape":
        return replace(self, **{f"deg{i}": degree})

    def transposed(self) -> "Shape":
        return replace(self, d0=self.d1, d1=self.d0, deg0=self.deg1, deg1=self.deg0)

    def __str__(self) -> str:
        return shape_text(self)

# concrete sizes of the dimension symbols (distinct and even, so a degree-2 partition applies);
# the enumeration's inputs use n, m, p, the rest give a rule's inputs sizes of their own
SIZES = {"1": 1, "n": 2, "m": 4, "p": 6, "q": 8, "r": 10, "s": 12, "t": 14, "g": 16, "h": 18,
         "j": 20}
FRESH = ("q", "r", "s", "t", "g", "h", "j")
DEGREE = 2   # the parallel degree of the enumeration; the prover treats it as a symbol k


class TermSyntaxError(ValueError):
    pass


def size(d: Dim) -> int:
    return SIZES[d] if isinstance(d, str) else size(d[0]) + size(d[1])


def flat(d: Dim) -> tuple[str, ...]:
    return (d,) if isinstance(d, str) else flat(d[0]) + flat(d[1])


def shape_key(s: Shape) -> tuple:
    """What must agree for two tensors to be interchangeable (the concat tree may differ)."""
    return (flat(s.d0), flat(s.d1)) + s.layout


def logical(d0: Dim, d1: Dim) -> Shape:
    return Shape(d0, d1)


def dim_text(d: Dim) -> str:
    return d if isinstance(d, str) else f"({dim_text(d[0])}+{dim_text(d[1])})"


def shape_text(s: Shape) -> str:
    base = f"{dim_text(s.d0)}.{dim_text(s.d1)}"
    return base if s.layout == (1, 1, 1, 1) else base + "/" + ".".join(map(str, s.layout))


def parse_dim(text: str) -> Dim:
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        depth = 0
        for i, ch in enumerate(text[1:-1], 1):
            depth += ch == "("
            depth -= ch == ")"
            if ch == "+" and depth == 0:
                return (parse_dim(text[1:i]), parse_dim(text[i + 1:-1]))
    if text not in SIZES:
        raise TermSyntaxError(f"unknown dimension {text!r}")
    return text


def parse_shape(text: str) -> Shape:
    dims, _, par = text.partition("/")
    parts = _split_top(dims, ".")
    if len(parts) != 2:
        raise TermSyntaxError(f"shape {text!r}: two dims expected")
    layout = tuple(int(v) for v in par.split(".")) if par else (1, 1, 1, 1)
    if len(layout) != 4:
        raise TermSyntaxError(f"shape {text!r}: layout is deg0.deg1.sum.copy")
    return Shape(parse_dim(parts[0]), parse_dim(parts[1]), *layout)


def _split_top(text: str, sep: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == sep and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return out


def fmt(t: Term) -> str:
    return t if isinstance(t, str) else f"{t[0]}({', '.join(fmt(a) for a in t[1:])})"


def _tokens(text: str) -> list[str]:
    """Names (with an optional ``:shape`` annotation, whose parentheses nest), '(' ')' ','."""
    toks, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "(),":
            toks.append(ch)
            i += 1
        elif ch.isalpha() or ch == "_":
            j = i
            while j < len(text) and (text[j].isalnum() or text[j] == "_"):
                j += 1
            if j < len(text) and text[j] == ":":
                depth = 0
                while j < len(text) and not (depth == 0 and (text[j] in ",)" or text[j].isspace())):
                    depth += text[j] == "("
                    depth -= text[j] == ")"
                    j += 1
            toks.append(text[i:j])
            i = j
        else:
            raise TermSyntaxError(f"cannot read term {text!r} at {text[i:]!r}")
    return toks


def parse(text: str) -> tuple[Term, dict[str, Shape]]:
    """A term and the shapes of its annotated variables (``x:n.m``)."""
    toks = _tokens(text)
    shapes: dict[str, Shape] = {}
    pos = 0

    def term() -> Term:
        nonlocal pos
        if pos >= len(toks):
            raise TermSyntaxError(f"{text!r}: unexpected end")
        tok = toks[pos]
        pos += 1
        if pos < len(toks) and toks[pos] == "(":
            pos += 1
            args = [term()]
            while toks[pos] == ",":
                pos += 1
                args.append(term())
            if toks[pos] != ")":
                raise TermSyntaxError(f"{text!r}: ')' expected")
            pos += 1
            return (tok,) + tuple(args)
        name, _, ann = tok.partition(":")
        if ann:
            shapes[name] = parse_shape(ann)
        return name

    try:
        t = term()
    except IndexError:
        raise TermSyntaxError(f"{text!r}: unexpected end") from None
    if pos != len(toks):
        raise TermSyntaxError(f"{text!r}: trailing text")
    return t, shapes


def subterms(t: Term) -> Iterator[Term]:
    """Every subterm, children before parents."""
    if not isinstance(t, str):
        for a in t[1:]:
            yield from subterms(a)
    yield t


def variables(t: Term) -> list[str]:
    """Variables in order of first occurrence (left to right)."""
    seen: dict[str, None] = {}
    for s in subterms(t):
        if isinstance(s, str):
            seen.setdefault(s)
    return list(seen)


def ops(t: Term) -> list[str]:
    return [s[0] for s in subterms(t) if not isinstance(s, str)]


def rename(t: Term, m: dict[str, str]) -> Term:
    return m.get(t, t) if isinstance(t, str) else (t[0],) + tuple(rename(a, m) for a in t[1:])


def tree_size(t: Term) -> int:
    return 0 if isinstance(t, str) else 1 + sum(tree_size(a) for a in t[1:])


def dag_size(t: Term) -> int:
    return len({s for s in subterms(t) if not isinstance(s, str)})


def to_json(x: Any) -> Any:
    return list(map(to_json, x)) if isinstance(x, tuple) else x
