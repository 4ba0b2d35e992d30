"""Native-library fallback so that Legate can load without an NVIDIA driver.

The Legate / cuPyNumeric wheels are CUDA builds: importing them needs
``libcuda.so.1`` (the driver) and ``libcudart.so.12`` (the CUDA runtime).
``make setup`` builds a tiny "no device" ``libcuda.so.1`` into
``<venv>/lib/unity_legion_shims/`` on machines without a driver, and
``.venv/unity_legion_env.sh`` (also sourced by ``bin/activate``) puts it and
the wheel's CUDA runtime on ``LD_LIBRARY_PATH``.

:func:`preload_cuda_shim` covers the case where that environment was not
sourced (e.g. ``.venv/bin/python`` run directly): it loads the libraries by
path with ``RTLD_GLOBAL`` so the later ``import legate`` finds them.  It must
run before legate is imported, and it never imports legate itself.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

__all__ = ["preload_cuda_shim", "shim_path"]

_SHIM_DIR_NAME = "unity_legion_shims"
_CUDA_DRIVER = "libcuda.so.1"
_CUDA_RUNTIME = "libcudart.so.12"

# Keep handles alive for the life of the process.
_loaded: dict[str, ctypes.CDLL] = {}


def shim_path() -> Path:
    """Where ``make setup`` puts the no-device ``libcuda.so.1``."""
    return Path(sys.prefix) / "lib" / _SHIM_DIR_NAME / _CUDA_DRIVER


def _can_load(name: str) -> bool:
    try:
        _loaded[name] = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return True


def _is_no_device_shim(lib: ctypes.CDLL) -> bool:
    """A real driver exports hundreds of entry points; the shim only nine."""
    return not hasattr(lib, "cuCtxCreate_v2")


def _find_wheel_cudart() -> Path | None:
    """``nvidia/cuda_runtime/lib/libcudart.so.12`` from the pip wheel."""
    for entry in sys.path:
        if not entry:
            continue
        candidate = Path(entry) / "nvidia" / "cuda_runtime" / "lib" / _CUDA_RUNTIME
        if candidate.is_file():
            return candidate
    return None


def preload_cuda_shim() -> None:
    """Make ``libcuda.so.1`` (and ``libcudart.so.12``) loadable before legate.

    * If a ``libcuda.so.1`` can be loaded already (a real driver, or the shim
      via ``LD_LIBRARY_PATH``), nothing is done for the driver.
    * Otherwise the shim at ``<sys.prefix>/lib/unity_legion_shims/`` is loaded
      with ``RTLD_GLOBAL``.
    * Whenever the loaded ``libcuda.so.1`` is the shim, ``LEGATE_AUTO_CONFIG``
      defaults to ``0``: Legate's automatic configuration aborts when it
      cannot count GPUs, which is what the shim makes it see.
    * If neither exists, ``RuntimeError`` says to run ``make setup``.

    ``libcudart.so.12`` is taken from the ``nvidia-cuda-runtime-cu12`` wheel
    when the dynamic loader cannot find it on its own.  Safe to call twice.
    """
    if _CUDA_DRIVER not in _loaded and not _can_load(_CUDA_DRIVER):
        shim = shim_path()
        if not shim.is_file():
            raise RuntimeError(
                f"No {_CUDA_DRIVER} could be loaded (this machine has no NVIDIA "
                f"driver) and the no-device shim {shim} does not exist. "
                "Run `make setup` in the unity_legion repository to build it, "
                "then use the project's virtual environment (.venv)."
            )
        try:
            _loaded[_CUDA_DRIVER] = ctypes.CDLL(str(shim), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise RuntimeError(
                f"Could not load the no-device CUDA shim {shim}: {exc}. "
                "Run `make setup` to rebuild it."
            ) from exc

    if _is_no_device_shim(_loaded[_CUDA_DRIVER]):
        os.environ.setdefault("LEGATE_AUTO_CONFIG", "0")

    if _CUDA_RUNTIME not in _loaded and not _can_load(_CUDA_RUNTIME):
        cudart = _find_wheel_cudart()
        if cudart is not None:
            try:
                _loaded[_CUDA_RUNTIME] = ctypes.CDLL(
                    str(cudart), mode=ctypes.RTLD_GLOBAL
                )
            except OSError:
                pass  # legate's own import error will name the library
