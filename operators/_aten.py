"""PyTorch's ATen CPU operators on zero-copy views of kernel pieces.

Kernels whose numpy form is far from the machine's speed (convolutions, poolings, the
normalisations, softmax, attention's core, activations, embedding scatters) call ATen on
`torch.from_numpy` views of their pieces and write results into the output pieces (`out=` or
`.copy_()`), never copying an input. torch is imported on first use only, so importing the
operators stays cheap (the graph, the search and the cost model never pay for it); importing it
inside a task thread after Legate started works.

Threads: Legate's CPU processors are the parallelism, so ATen runs one thread per kernel call
(`torch.set_num_threads(1)` once per process, as unity_legion.runtime limits BLAS). Every call
runs under `torch.inference_mode()` (no autograd bookkeeping): use `with aten() as torch:`.

GPU pieces: a GPU variant hands the same kernels CuPy arrays over the store's device memory.
`view` then wraps one as a CUDA tensor through DLPack (zero copy), so the same ATen calls run
on the GPU; numpy functions of the kernels' glue dispatch to CuPy through `__array_function__`
/ `__array_ufunc__`, and `xp(a)` is the module to call where numpy cannot dispatch (array
creation). The CPU path pays nothing for this: `torch.from_numpy` is tried first and only its
TypeError on a non-numpy array takes the device path. CuPy is never imported here.
"""

from __future__ import annotations

import sys
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
            # the C++ guard behind torch.inference_mode (torch is pinned): entered by making it,
            # left by dropping it (1 us; the context manager's Python layers cost 3 us a kernel)
            _mode = torch._C._InferenceMode
            _torch = torch
    return _torch


_thread = threading.local()


class _Region:
    """`with aten() as torch:` imports torch once (single-threaded) and runs the block under
    inference mode. Inference mode is thread-local: a task thread (any but the main one: it
    runs nothing but kernels) enters it once and stays in it, since entering and leaving it
    around every kernel cost ~4% of a CNN step's task time (measured with py-spy); the main
    thread, where user code may use autograd, enters and leaves it per block."""

    __slots__ = ("_ctx",)

    def __enter__(self) -> Any:
        torch = _torch if _torch is not None else _load()
        stays = getattr(_thread, "stays", None)
        if stays is None:
            stays = _thread.stays = threading.current_thread() is not threading.main_thread()
            if stays:
                _thread.mode = _mode(True)
        if not stays:
            self._ctx = _mode(True)
        return torch

    def __exit__(self, *exc: Any) -> None:
        if not _thread.stays:
            self._ctx = None  # leaves inference mode


def aten() -> _Region:
    return _Region()


def view(a: np.ndarray) -> Any:
    """A tensor sharing `a`'s memory (any non-negative strides; writes go through to `a`):
    a CPU tensor for a numpy array, a CUDA tensor for a device array (CuPy)."""
    torch = _torch if _torch is not None else _load()
    try:
        return torch.from_numpy(a)
    except TypeError:  # not a numpy array: a GPU piece (zero-cost try on the CPU path)
        return _device_view(torch, a)


# the dtypes the GPU variants run: what CuPy has arrays of, and bfloat16, which CuPy has not
# but our stores hold as uint16 bits that the task body widens to float32 (operators/precision.py)
GPU_DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "float16", "float32",
                        "float64", "bfloat16"})


class DeviceDtypeError(TypeError):
    """A kernel was given a dtype its device's arrays do not support."""


def check_device_dtype(what: str, dtype: Any, device_type: str) -> None:
    """Refuse, before anything is launched, a dtype the `device_type` kernels cannot run, naming
    `what` (the operator) and the dtype."""
    if device_type != "gpu":
        return
    name = dtype if isinstance(dtype, str) else getattr(dtype, "value", None) or np.dtype(dtype).name
    if name not in GPU_DTYPES:
        raise DeviceDtypeError(f"{what}: the GPU kernels do not support dtype {name} "
                               f"(supported: {', '.join(sorted(GPU_DTYPES))})")


def _device_view(torch: Any, a: Any) -> Any:
    if not hasattr(a, "__cuda_array_interface__"):
        raise TypeError(f"kernel piece of type {type(a).__name__}: expected a numpy array or a "
                        f"device (CuPy) array")
    if a.size == 0:  # DLPack of an empty array may carry a null pointer; nothing to share
        return empty_like_device(a, a.shape, a.dtype)
    return torch.from_dlpack(a)


def array(t: Any) -> Any:
    """A tensor's data as an array of its device's kind, sharing memory: numpy for a CPU
    tensor, CuPy for a CUDA one (DLPack). The CPU path is plain `t.numpy()`."""
    try:
        return t.numpy()
    except TypeError:  # a CUDA tensor (only GPU variants make them: CuPy is loaded)
        return sys.modules["cupy"].from_dlpack(t)


def xp(a: Any) -> Any:
    """The array module of `a`: numpy for a numpy array, cupy for a CuPy array (already
    imported by whoever made it). For the calls numpy cannot dispatch: np.empty, np.full..."""
    if type(a) is np.ndarray:
        return np
    return sys.modules[type(a).__module__.split(".", 1)[0]]


def empty_like_device(a: Any, shape: Any, np_dtype: Any) -> Any:
    """An uninitialised torch tensor of `shape` on `a`'s device (a CuPy array's GPU, not
    whichever device is current)."""
    torch = _torch if _torch is not None else _load()
    if type(a) is np.ndarray:
        return torch.empty(shape, dtype=dtype(np_dtype))
    return torch.empty(shape, dtype=dtype(np_dtype), device=torch.device("cuda", a.device.id))


@lru_cache(maxsize=None)
def dtype(np_dtype: np.dtype) -> Any:
    """The torch dtype of a numpy dtype."""
    return view(np.empty(0, np.dtype(np_dtype))).dtype


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
            self._tmp = empty_like_device(a, a.shape, a.dtype)
            t = self._tmp
        self.t = t if shape is None else shape(t)

    def done(self) -> None:
        if self._tmp is not None:
            view(self._a).copy_(self._tmp)


# Matrix products: ATen's (MKL) single-threaded sgemm against numpy's OpenBLAS on this machine,
# same shapes, in-place outputs (ms, numpy / ATen): a batch of 32 through 5270 -> 512 features
# 5.9 / 1.8 forward, 3.4 / 2.2 input gradient, 2.4 / 1.4 weight gradient; 256 x 4096 x 4096
# 78 / 63, 65 / 61, 64 / 60; never slower over the zoo's shapes (1.0-1.8x elsewhere).

def mm(a: Any, b: Any, out: Any) -> None:
    """out = a @ b for 2-D pieces (any strides: a transposed view is not copied)."""
    with aten() as torch:
        torch.mm(view(a), view(b), out=view(out))


def mm_add(a: Any, b: Any, out: Any) -> None:
    """out += a @ b for 2-D pieces, without a temporary for the product."""
    with aten():
        view(out).addmm_(view(a), view(b))
