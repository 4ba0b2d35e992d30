"""Moving values between host arrays and stores over several ranks, without attachments.

Why: Legion keeps an attached store (and a store the host mapped) mapped in the issuing
context, and every launch that uses it unmaps it for the task and maps it again at once, which
makes the issuing thread wait until that task has run (TaskContext::remap_unmapped_regions;
measured, Legate 25.11, 2 ranks: a data-parallel MLP step ~450 ms for ~60 ms of work, the main
thread waiting in that call). On one rank a read-only attachment copied into a store of its own
avoids it, but over several ranks Legate's mapper aborts mapping a copy operation (map_copy), so
there a task moves the values instead: `load` writes a host array every rank holds (each rank
runs the same program on the same data) into a store, `copy` copies a store into another, and
`gather` copies several into one, which is read back with a single mapping.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from unity_legion.executor.launcher import submit_program
from unity_legion.executor.tasks import Access, Program, Step, single
from unity_legion.operators._aten import xp
from unity_legion.operators.base import In, Out, kernel
from unity_legion.operators.convert import cast_copy

# host arrays a pending load task reads, by key (the same key on every rank: the keys count
# loads, which every rank issues in the same order)
_HOST: dict[int, np.ndarray] = {}
_KEYS = itertools.count()


@kernel
def load_host(out: Out, key: int) -> None:
    out[...] = xp(out).asarray(_HOST[key])


@kernel
def copy_flat(x: In, out: Out, offset: int) -> None:
    out.reshape(-1)[offset:offset + x.size] = x.reshape(-1)


_LOAD = single(load_host)
_COPY = single(cast_copy)


def load(rt: Any, arr: np.ndarray, dst: Any) -> int:
    """Fill `dst` (whole, in one task) with `arr`, which must stay unchanged until the task has
    run; returns the key to `release` then."""
    key = next(_KEYS)
    _HOST[key] = arr
    submit_program(rt, _LOAD, [(dst, None, None)], [(key, int)], (1,))
    return key


def release(key: int) -> None:
    """Forget a loaded array (its task has run)."""
    _HOST.pop(key, None)


def copy(rt: Any, src: Any, dst: Any) -> None:
    """dst[...] = src, whole, in one task (a copy operation is refused over several ranks)."""
    submit_program(rt, _COPY, [(src, None, None), (dst, None, None)], [], (1,))


def gather(rt: Any, srcs: list[Any]) -> Any:
    """A new 1-D store holding every store of `srcs` (one element type) flattened, one after
    another, copied by one task: read back with one mapping where each costs a round trip
    between the ranks (GraphExecutor reads a step's losses, metrics and finiteness so)."""
    n = len(srcs)
    program = Program(tuple(Step(copy_flat, (i, n)) for i in range(n)),
                      (Access.READ,) * n + (Access.WRITE,))
    offsets = [0]
    for src in srcs:
        offsets.append(offsets[-1] + src.volume)
    dst = rt.create_store(srcs[0].type, (offsets[-1],))
    submit_program(rt, program, [(src, None, None) for src in srcs] + [(dst, None, None)],
                   [(o, int) for o in offsets[:-1]], (1,))
    return dst
