"""PyTorch's ATen CPU operators on zero-copy views of kernel pieces.

Kernels whose numpy form is far from the machine's speed (convolutions, poolings, the
normalisations, softmax, activations, embedding scatters) call ATen on `torch.from_numpy` views
of their pieces and write results into the output pieces (`out=` or `.copy_()`), never copying
an input. torch is imported on first use only, so importing the operators stays cheap (the
graph, the search and the cost model never pay for it); importing it inside a task thread after
Legate started works.

Threads: Legate's CPU processors are the parallelism, so ATen runs one thread per kernel call
(`torch.set_num_threads(1)` once per process, as unity_legion.runtime limits BLAS). Every call
runs under `torch.inference_mode()` (no autograd bookkeeping): use `with aten() as torch:`.
"""

from __future__ import annotations

import threading
import warnings
from functools import lru_cache
from typing import Any

import numpy as np

_torch: Any = None
_mode: Any = None
_lock = threading.Lock()


def _load() -> Any:
    global _torch, _mode
    with _lock:
        if _torch is None:
            import torch

            torch.set_num_threads(1)
            # pieces handed over read-only (window views) are never written through their views
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable",
                                    category=UserWarning)
            _mode = torch.inference_mode
            _torch = torch
    return _torch


class _Region:
    """`with aten() as torch:` imports torch once (single-threaded) and runs the block under
    inference mode (thread-local: each task thread enters its own)."""

    __slots__ = ("_ctx",)

    def __enter__(self) -> Any:
        torch = _torch if _torch is not None else _load()
        self._ctx = _mode()
        self._ctx.__enter__()
        return torch

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def aten() -> _Region:
    return _Region()


def view(a: np.ndarray) -> Any:
    """A tensor sharing `a`'s memory (any non-negative strides; writes go through to `a`)."""
    torch = _torch if _torch is not None else _load()
    return torch.from_numpy(a)


@lru_cache(maxsize=None)
def dtype(np_dtype: np.dtype) -> Any:
    """The torch dtype of a numpy dtype."""
    return view(np.empty(0, np_dtype)).dtype


def nchw(a: np.ndarray) -> Any:
    """An NHWC numpy view as an NCHW tensor sharing its memory (channels_last strides when `a`
    is a contiguous NHWC array, contiguous when `a` is a transposed NCHW array)."""
    return view(a).permute(0, 3, 1, 2)


class Into:
    """An `out=` target for array `a` (through `shape`, e.g. a permutation to NCHW): a view of
    `a` when `a` is one dense block, else a temporary that `done()` copies into `a` (some ATen
    out= kernels, softmax and gelu among them, write a strided output as if it were dense)."""

    __slots__ = ("t", "_a", "_tmp")

    def __init__(self, a: np.ndarray, shape: Any = None) -> None:
        self._a = a
        if a.flags.c_contiguous:
            self._tmp = None
            t = view(a)
        else:
            torch = _torch if _torch is not None else _load()
            self._tmp = torch.empty(a.shape, dtype=dtype(a.dtype))
            t = self._tmp
        self.t = t if shape is None else shape(t)

    def done(self) -> None:
        if self._tmp is not None:
            view(self._a).copy_(self._tmp)
