"""Turn an operator's numpy kernel into a registered Legate task (once per kernel)."""

from __future__ import annotations

import contextlib
import gc
import inspect
import threading
from functools import cache
from typing import Any, Iterator

import numpy as np
from legate.core import VariantCode
from legate.core import types as ty
from legate.core.task import ADD, InputStore, OutputStore, ReductionStore, task

from unity_legion.operators.base import Kernel, PieceOrigin, Role

_P = inspect.Parameter.POSITIONAL_OR_KEYWORD

# Legate maps a manual launch's inputs, outputs, reductions and scalars to the task's parameters
# of each kind in order; an in-place store is both an input and an output.
_SCALAR_TYPE = {int: ty.int64, float: ty.float64, bool: ty.bool_, str: ty.string_type}


def _store_params(k: Kernel, reduced: frozenset[str]) -> list[inspect.Parameter]:
    params = []
    for name, role in k.stores:
        if role is Role.INPUT:
            params.append(inspect.Parameter(name, _P, annotation=InputStore))
        elif role is Role.OUTPUT and name in reduced:
            params.append(inspect.Parameter(name, _P, annotation=ReductionStore[ADD]))
        elif role is Role.OUTPUT:
            params.append(inspect.Parameter(name, _P, annotation=OutputStore))
        elif role is Role.INOUT:
            params.append(inspect.Parameter(name + "__read", _P, annotation=InputStore))
            params.append(inspect.Parameter(name, _P, annotation=OutputStore))
        else:
            params.append(inspect.Parameter(name, _P, annotation=ReductionStore[ADD]))
    return params


_gc_lock = threading.Lock()
_gc_depth = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """No cyclic garbage collection while any task runs: a collection started inside a task could
    free an unreachable Legate store there, which Legion forbids in a leaf task (the process
    aborts). The main thread collects as usual between launches."""
    global _gc_depth, _gc_was_enabled
    with _gc_lock:
        if _gc_depth == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_depth += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_was_enabled:
                gc.enable()


@cache
def legate_task(k: Kernel, reduced: frozenset[str] = frozenset()) -> Any:
    """A Legate task running kernel `k` on the local pieces of its stores.

    `reduced` names outputs that several points of the launch write (their split misses a launch
    axis, e.g. the partial sums of a Linear split by input features): the task gets them as ADD
    reductions, runs the kernel into a zeroed temporary and adds that, so kernels always assign
    their outputs and never need to know."""
    store_params = _store_params(k, reduced)
    scalar_params = [inspect.Parameter(n, _P, annotation=t) for n, t in k.scalars]
    first_store = k.stores[0][0]
    params = store_params + scalar_params
    signature = inspect.Signature(params, return_annotation=None)

    def body(*args: Any, **kw: Any) -> None:
        with _no_collection():
            _run(*args, **kw)

    def _run(*args: Any, **kw: Any) -> None:
        kwargs = signature.bind(*args, **kw).arguments
        call: dict[str, Any] = {}
        for name, role in k.stores:
            call[name] = np.asarray(kwargs[name])
        partial = {name: call[name] for name, _ in k.stores if name in reduced}
        for name, buf in partial.items():
            call[name] = np.zeros_like(buf)
        for name, _ in k.scalars:
            call[name] = kwargs[name]
        if k.wants_origin:
            of = {name: tuple(int(v) for v in kwargs[name].domain.lo) for name, _ in k.stores}
            call["origin"] = PieceOrigin(of[first_store], of)
        k.fn(**call)
        for name, buf in partial.items():
            buf += call[name]

    body.__signature__ = signature  # type: ignore[attr-defined]
    body.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
    suffix = "".join(f"__sum_{n}" for n in sorted(reduced))
    body.__name__ = body.__qualname__ = k.name.replace(".", "_") + suffix
    return task(variants=(VariantCode.CPU,))(body)


def scalar_type(py_type: type) -> Any:
    return _SCALAR_TYPE[py_type]
