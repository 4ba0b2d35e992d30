"""Per-sample values (a step's losses and metrics) that its tasks post straight to the host.

Reading a store back costs a Legion round trip each: a copy into a temporary store, mapping it
on the host, dropping it (executor.read: ~0.3-0.5 ms a store here, one after another, where a
small model's whole step is 3 ms; over 2 ranks of this host 112-148 ms, where a fence takes 16).
A task runs in the process of the rank whose processor runs it, so a kernel right after each loss
and metric kernel (in their fused task) can hand its piece to that process: `post_rows` copies its
rows into a `Box` the host opened for the step, and the host takes them from it once the step has
run (after the fence that ends every executor call) instead of reading stores. Over several ranks
each rank's box holds the rows its own processors computed, and the ranks exchange them (`share`:
one MPI allgather for all of a call's boxes) before they are taken. The stores are still written
as before (the updates' guards read the losses).

A box is numbered per step, alike on every rank (each rank's executor opens the same boxes in the
same order); the number is a scalar the executor passes with every launch of the step that
posts (a dynamic scalar: replayed steps post to their own box), and a post to a box already
closed is dropped.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from unity_legion.operators.base import Arg, In, Launch, Origin, Ref, kernel, origin_of

_BOXES: dict[int, Box] = {}
_BOXES_LOCK = threading.Lock()
_NUMBERS = itertools.count()


class Box:
    """What one step's tasks post: per key (a store), its rows' pieces by starting row. The
    processors' threads put; the host reads it once the step has run."""

    __slots__ = ("number", "_lock", "_pieces", "_rows")

    def __init__(self, number: int) -> None:
        self.number = number
        self._lock = threading.Lock()
        self._pieces: dict[int, dict[int, np.ndarray]] = {}
        self._rows: dict[int, int] = {}

    def put(self, key: int, start: int, rows: np.ndarray) -> None:
        with self._lock:
            pieces = self._pieces.setdefault(key, {})
            if start not in pieces:   # (a replicated launch posts the same rows twice)
                pieces[start] = rows
                self._rows[key] = self._rows.get(key, 0) + len(rows)

    def pieces(self) -> dict[int, dict[int, np.ndarray]]:
        """A copy of what it holds: per key, rows by starting row."""
        with self._lock:
            return {k: dict(v) for k, v in self._pieces.items()}

    def holds(self, rows: Mapping[int, int]) -> bool:
        """Whether every key has its `rows`."""
        with self._lock:
            return all(self._rows.get(k, 0) >= n for k, n in rows.items())

    def value(self, key: int, rows: int) -> np.ndarray:
        """The posted values of `key`, its pieces put in row order."""
        pieces = self._pieces.get(key, {})
        if len(pieces) == 1:
            (only,) = pieces.values()
            return only[:rows]
        if not pieces:
            return np.zeros(rows)
        return np.concatenate([pieces[s] for s in sorted(pieces)])[:rows]


def share(boxes: list[Box], comm: Any) -> None:
    """Over several ranks: every rank's `boxes` (the same steps' on each, in the same order)
    take the rows every other rank's tasks posted (an MPI allgather; called by all ranks)."""
    mine = [box.pieces() for box in boxes]
    for theirs in comm.allgather(mine):
        for box, pieces in zip(boxes, theirs):
            for key, by_start in pieces.items():
                for start, rows in by_start.items():
                    box.put(key, start, rows)


def open_box() -> Box:
    box = Box(next(_NUMBERS))
    with _BOXES_LOCK:
        _BOXES[box.number] = box
    return box


def close_box(box: Box) -> None:
    with _BOXES_LOCK:
        _BOXES.pop(box.number, None)


def open_boxes() -> int:
    """How many boxes are open (0 between the executor's calls)."""
    return len(_BOXES)


@kernel
def post_rows(x: In, box: int, key: int, origin: Origin) -> None:
    target = _BOXES.get(box)
    if target is None:   # closed: nothing waits for it
        return
    # a copy: the piece is Legion's memory, reused once the task ends (a device piece: to host)
    rows = np.array(x) if isinstance(x, np.ndarray) else x.get()
    target.put(key, origin_of(origin, "x", 1)[0], rows)


def post_launch(value: Ref, box: int, key: int) -> Launch:
    """Post the per-sample `value` (a (batch,) store split by samples) to `box` under `key`."""
    return Launch(post_rows, {"x": Arg.by_sample(value, 1)}, {"box": box, "key": key})
