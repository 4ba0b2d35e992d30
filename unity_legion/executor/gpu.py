"""The device side of a task's GPU variant: a store's piece as a CuPy array over its framebuffer
memory, and the stream the kernels run on.

The kernels are the CPU variant's own (operators/): on CuPy arrays their numpy glue dispatches to
CuPy (`__array_function__` / `__array_ufunc__`: cuBLAS for the products) and their ATen calls
get CUDA tensors (operators/_aten.view, DLPack): cuDNN for convolution, pooling and batch norm
through PyTorch. CuPy and torch's CUDA side are imported by the first GPU task only, so a
CPU-only machine never imports them (nor needs CuPy installed).

Streams: a Python task cannot reach the task's Legate stream without a TaskContext parameter,
which would cost every CPU launch a context object. Each GPU processor thread runs its kernels
on a non-blocking stream of its own (CuPy and ATen both on it) and waits for it before the task
returns, so Legate sees the results complete when the task ends; Legate has made the inputs
ready before the task starts.
"""

from __future__ import annotations

import threading
from typing import Any

_local = threading.local()


def device_array(store: Any) -> Any:
    """The piece of a PhysicalStore in GPU memory as a writable CuPy array (zero copy, through
    `__cuda_array_interface__`)."""
    import cupy

    return cupy.asarray(store)


class OnDevice:
    """`with OnDevice():` the block's CuPy and ATen work goes to this thread's stream on the
    current device, and the exit waits for it."""

    __slots__ = ("_cp", "_ts")

    def __enter__(self) -> None:
        import cupy

        from unity_legion.operators._aten import aten

        dev = cupy.cuda.runtime.getDevice()
        streams = getattr(_local, "streams", None)
        if streams is None:
            streams = _local.streams = {}
        if dev not in streams:
            with aten() as torch:
                s = cupy.cuda.Stream(non_blocking=True)
                streams[dev] = (s, torch.cuda.ExternalStream(s.ptr, device=torch.device("cuda",
                                                                                          dev)))
        s, ts = streams[dev]
        self._cp = s
        s.__enter__()
        import torch

        self._ts = torch.cuda.stream(ts)
        self._ts.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._ts.__exit__(*exc)
        self._cp.__exit__(*exc)
        self._cp.synchronize()
