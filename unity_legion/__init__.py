"""unity_legion: Unity's joint algebraic + parallelisation optimisation, executed on Legate.

Importing the package starts nothing. Legate starts on first use (see `unity_legion.runtime`).
"""

from unity_legion._native import preload_cuda_shim as _preload_cuda_shim

__version__ = "0.1.0"

# Legate's wheels need libcuda.so.1 when they are imported, by whichever module imports them
# first; where no driver exists the no-device shim is loaded now (it never imports legate).
# A missing shim is reported by `unity_legion.runtime.runtime()` when Legate is first needed.
try:
    _preload_cuda_shim()
except RuntimeError:
    pass
