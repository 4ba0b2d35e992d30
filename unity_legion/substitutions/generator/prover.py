"""Proving candidates with z3 from the specs' axioms.

Tensors are an uninterpreted sort; every operator is an uninterpreted function (tensors, then
its integer parameters: a split point, a parallel degree); `dim0`/`dim1` give a tensor's sizes.
Each axiom becomes a universally quantified equality over tensors (E-matching patterns: either
side), guarded by the dimension equalities its annotations imply; each operator adds the axioms
that give its output dims. A candidate `lhs = rhs` is proven when z3 finds `lhs != rhs`
unsatisfiable under the axioms within the time limit; dimension symbols and the parallel degree k
stay symbolic, so a proof holds for every size and degree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import z3

from .evaluate import parse_axiom
from .specs import SPECS, OpSpec, by_name
from .terms import Dim, Shape, Term, subterms


@dataclass(frozen=True)
class Proof:
    status: str          # "proven", "refuted" (z3 found a model) or "unknown" (timeout / gave up)
    seconds: float = 0.0
    reason: str = ""


class Prover:
    def __init__(self, specs: tuple[OpSpec, ...] = SPECS, timeout_ms: int = 2000,
                 rlimit: int = 2_000_000) -> None:
        self.specs = by_name(specs)
        self.timeout_ms = timeout_ms
        self.rlimit = rlimit    # z3's deterministic work bound per candidate (a proof uses ~1e4)
        self.T = z3.DeclareSort("T")
        self.dim = [z3.Function(f"dim{i}", self.T, z3.IntSort()) for i in (0, 1)]
        self.fn: dict[str, z3.FuncDeclRef] = {}
        for s in specs:
            self.fn[s.name] = z3.Function(s.name, *([self.T] * s.arity + [z3.IntSort()] * s.nparams
                                                    + [self.T]))
        self.axioms = self._dim_axioms(specs) + [a for s in specs for a in self._spec_axioms(s)]
        self._solver: z3.Solver | None = None

    # --- encoding ----------------------------------------------------------------------------

    def _dim_axioms(self, specs) -> list:
        out = []
        for s in specs:
            f = self.fn[s.name]
            xs = [z3.Const(f"t{i}", self.T) for i in range(s.arity)]
            ps = [z3.Int(f"i{j}") for j in range(f.arity() - s.arity)]
            app = f(*xs, *ps)
            d0, d1 = s.dims([(self.dim[0](x), self.dim[1](x)) for x in xs], ps)
            out.append(z3.ForAll(xs + ps, z3.And(self.dim[0](app) == d0, self.dim[1](app) == d1),
                                 patterns=[app]))
        return out

    def _spec_axioms(self, spec: OpSpec) -> list:
        out = []
        for text in spec.axioms:
            lt, rt, shapes = parse_axiom(text)
            tvars = {v: z3.Const(f"a_{v}", self.T) for v in sorted(shapes)}
            k = z3.Int("k")
            sym: dict[str, z3.ArithRef] = {}
            guards = []
            for v in sorted(shapes):
                for i in (0, 1):
                    self._bind_dim(shapes[v].dim(i), self.dim[i](tvars[v]), sym, guards)
            extra: list = []
            table = dict(shapes)
            lz = self._term(lt, tvars, table, k, sym, guards, extra)
            rz = self._term(rt, tvars, table, k, sym, guards, extra)
            bound = list(tvars.values()) + extra
            body = lz == rz if not guards else z3.Implies(z3.And(*guards), lz == rz)
            uses_k = any(not isinstance(s, str) and self.specs[s[0]].kind == "parallel"
                         for s in list(subterms(lt)) + list(subterms(rt)))
            if uses_k:
                bound.append(k)
            names = {str(b) for b in bound}
            pats = [p for p, t in ((lz, lt), (rz, rt)) if not isinstance(t, str)
                    and _names(p) >= names]
            out.append(z3.ForAll(bound, body, patterns=pats) if pats else z3.ForAll(bound, body))
        return out

    def _bind_dim(self, d: Dim, expr, sym, guards) -> None:
        if isinstance(d, str):
            if d == "1":
                guards.append(expr == 1)
            elif d in sym:
                guards.append(expr == sym[d])
            else:
                sym[d] = expr
        else:
            guards.append(expr == self._dim_expr(d, sym))

    def _dim_expr(self, d: Dim, sym):
        if isinstance(d, str):
            return z3.IntVal(1) if d == "1" else sym.setdefault(d, z3.Int(f"sym_{d}"))
        return self._dim_expr(d[0], sym) + self._dim_expr(d[1], sym)

    def _term(self, t: Term, tvars, shapes, k, sym, guards, extra):
        """z3 term of `t`; split points become bound integers guarded to equal their seam."""
        from .evaluate import infer
        if isinstance(t, str):
            return tvars[t]
        args = [self._term(a, tvars, shapes, k, sym, guards, extra) for a in t[1:]]
        spec = self.specs[t[0]]
        params = []
        arg_shapes = [infer(a, shapes, self.specs) for a in t[1:]]
        for p in spec.params(arg_shapes) if None not in arg_shapes else ():
            if p[0] == "degree":
                params.append(k)
            else:
                s = z3.Int(f"cut{len(extra)}")
                extra.append(s)
                guards.append(s == self._dim_expr(p[1], sym))
                params.append(s)
        return self.fn[t[0]](*args, *params)

    def ground(self, t: Term, shapes: Mapping[str, Shape], consts, k, sym):
        from .evaluate import infer
        if isinstance(t, str):
            return consts[t]
        args = [self.ground(a, shapes, consts, k, sym) for a in t[1:]]
        arg_shapes = [infer(a, shapes, self.specs) for a in t[1:]]
        params = [k if p[0] == "degree" else self._dim_expr(p[1], sym)
                  for p in self.specs[t[0]].params(arg_shapes)]
        return self.fn[t[0]](*args, *params)

    # --- proving -----------------------------------------------------------------------------

    def prove(self, lhs: Term, rhs: Term, shapes: Mapping[str, Shape]) -> Proof:
        import time
        t0 = time.perf_counter()
        if self._solver is None:
            self._solver = z3.Solver()
            self._solver.set("timeout", self.timeout_ms)
            self._solver.set("rlimit", self.rlimit)
            self._solver.set("smt.mbqi", False)
            self._solver.add(*self.axioms)
        s = self._solver
        s.push()
        try:
            return self._check(s, lhs, rhs, shapes, t0)
        finally:
            s.pop()

    def _check(self, s, lhs, rhs, shapes, t0) -> Proof:
        import time
        consts = {v: z3.Const(f"in_{v}", self.T) for v in sorted(shapes)}
        sym: dict = {}
        k = z3.Int("K")
        s.add(k >= 2)
        for v, shp in sorted(shapes.items()):
            for i in (0, 1):
                s.add(self.dim[i](consts[v]) == self._dim_expr(shp.dim(i), sym))
        for e in sym.values():
            s.add(e >= 1)
        s.add(self.ground(lhs, shapes, consts, k, sym) != self.ground(rhs, shapes, consts, k, sym))
        before = _rlimit(s)
        r = s.check()
        secs = time.perf_counter() - t0
        self.last_rlimit = _rlimit(s) - before
        if r == z3.unsat:
            return Proof("proven", secs)
        if r == z3.sat:
            return Proof("refuted", secs, "z3 found a model of the axioms where the sides differ")
        return Proof("unknown", secs, str(s.reason_unknown()))


def _names(e) -> set[str]:
    """Names of the constants in a z3 expression (a pattern must mention every bound one)."""
    out, todo = set(), [e]
    while todo:
        x = todo.pop()
        if z3.is_const(x):
            out.add(str(x))
        todo.extend(x.children())
    return out


def _rlimit(s: z3.Solver) -> int:
    st = s.statistics()
    return int(st.get_key_value("rlimit count")) if "rlimit count" in st.keys() else -1
