"""Start Legate once per process and describe the machine it runs on.

Importing this module does not start anything; `runtime()` does, the first time it is called.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
from dataclasses import dataclass
from functools import cache
from typing import Any, Callable


@dataclass(frozen=True)
class MachineInfo:
    """What the running Legate job has: ranks and processors per rank."""

    ranks: int
    rank: int
    cpus: int          # CPU processors in the whole job
    gpus: int          # GPU processors in the whole job
    gpus_asked: int = 0            # GPUs per rank the job's configuration asked for (--gpus)
    fbmem: int | None = None       # framebuffer bytes per GPU the configuration gives (--fbmem)
    gpu_name: str | None = None    # CUDA's name of the job's GPUs (None: no GPU, or unknown)

    @property
    def cpus_per_rank(self) -> int:
        return self.cpus // max(self.ranks, 1)

    @property
    def gpus_per_rank(self) -> int:
        return self.gpus // max(self.ranks, 1)

    @property
    def preferred_kind(self) -> str:
        return "gpu" if self.gpus else "cpu"

    @property
    def processors(self) -> int:
        """Processors of the preferred kind in the whole job: the default data-parallel degree."""
        return self.gpus or self.cpus

    @property
    def device_memory(self) -> int | None:
        """Bytes one device of the preferred kind may hold for a plan: the framebuffer the job
        gives each GPU (--fbmem) on a GPU job; None where the machine model's figure stands
        (CPU jobs, and GPU jobs where Legate sized the framebuffer itself)."""
        return self.fbmem if self.gpus else None

    def gpu_shortfall(self) -> str | None:
        """What a user who asked for GPUs must hear when the job has fewer (None if not)."""
        if self.gpus_asked <= self.gpus_per_rank:
            return None
        found = f"only {self.gpus_per_rank} GPU(s) per rank" if self.gpus else "no GPU"
        instead = (f"{self.gpus_per_rank} GPU(s) per rank" if self.gpus else
                   f"{self.cpus_per_rank} CPU processor(s) per rank")
        return (f"--gpus {self.gpus_asked} was asked for but Legate found {found} on this "
                f"machine (no CUDA device, or no driver): the job runs on {instead} instead")

    def __str__(self) -> str:
        per = f"{self.gpus_per_rank} GPU" if self.gpus else f"{self.cpus_per_rank} CPU"
        text = f"{self.ranks} rank(s) x {per} processor(s)"
        if self.gpus_asked > self.gpus_per_rank:
            text += f" (--gpus {self.gpus_asked} asked, {self.gpus_per_rank} found)"
        return text


def config_value(flag: str) -> str | None:
    """The value LEGATE_CONFIG gives `flag` (`--gpus 2` or `--gpus=2`; the last one counts), or
    None. The `legate` driver passes its --cpus/--gpus/--fbmem ... options this way too."""
    words = os.environ.get("LEGATE_CONFIG", "").split()
    value = None
    for i, word in enumerate(words):
        name, eq, rest = word.partition("=")
        if name == flag:
            value = rest if eq else (words[i + 1] if i + 1 < len(words) else None)
    return value


def _gpu_name() -> str | None:
    """The name of this rank's first GPU (CuPy, imported on GPU jobs only), or None."""
    try:
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    except Exception:  # no CuPy or no answer: the plan prices the GPUs as H100s
        return None
    return name.decode() if isinstance(name, bytes) else str(name)


def _config_int(flag: str) -> int | None:
    value = config_value(flag)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _limit_blas_threads() -> None:
    """Legate's CPU processors are the parallelism; BLAS threads on top would fight for cores."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # numpy reads the variables above when BLAS starts; nothing more to do
        return
    threadpool_limits(limits=1, user_api="blas")


_started = False


def configure(cpus: int | None = None, gpus: int | None = None, sysmem: int | None = None) -> None:
    """Set Legate's processor counts before it starts (what `legate --cpus N ...` would set).

    Values given here replace the same options already in LEGATE_CONFIG; the rest is kept.
    """
    if _started or "legate.core" in sys.modules:
        raise RuntimeError("unity_legion.runtime.configure: Legate has already started; pass "
                           "--cpus/--gpus/--sysmem to the `legate` launcher instead")
    opts = {"--cpus": cpus, "--gpus": gpus, "--sysmem": sysmem}
    for flag, value in opts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{flag} must be a non-negative integer, got {value!r}")
    words = os.environ.get("LEGATE_CONFIG", "").split()
    kept: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        name = word.split("=", 1)[0]
        if opts.get(name) is not None:
            skip = "=" not in word
            continue
        kept.append(word)
    for flag, value in opts.items():
        if value is not None:
            kept += [flag, str(value)]
    os.environ["LEGATE_CONFIG"] = " ".join(kept)


def _default_sysmem_mib() -> int:
    """Half of this node's memory shared among its ranks, at most 8 GiB each (Legate's own
    default is far smaller and running out of it aborts the process)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError):
        return 4096
    local_ranks = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1") or 1)
    return max(256, min(8192, total // 2 // max(local_ranks, 1)))


def _default_option(flag: str, value: Callable[[], int | None]) -> None:
    """Add `flag value()` to LEGATE_CONFIG unless it sets `flag` already (the user's choice)
    or `value()` is None (Legate's own default stands)."""
    words = os.environ.get("LEGATE_CONFIG", "").split()
    if any(w.split("=", 1)[0] == flag for w in words):
        return
    chosen = value()
    if chosen is not None:
        os.environ["LEGATE_CONFIG"] = " ".join(words + [flag, str(chosen)])


def _default_utility_threads() -> int | None:
    """Legate's utility threads (Legion's analysis and mapping; Legate's default is 2) for a
    rank of a node with few cores: one where the rank's processor threads, two utility threads
    and the issuing thread would outnumber its share of the cores. There the runtime's threads
    took cores from the processors: a data-parallel ResNeXt step on 2 cores and 2 CPU
    processors ran 73-95 ms with two and 61-68 ms with one (scripts/bench_simulator.py's
    resnext/data). None: keep Legate's default."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    local_ranks = max(int(os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1") or 1), 1)
    processors = (_config_int("--cpus") or 1) + (_config_int("--gpus") or 0)
    return 1 if (processors + 2 + 1) * local_ranks > cores else None


def _keep_freed_memory() -> None:
    """Have glibc's malloc keep freed memory for reuse instead of returning it to the system.

    Kernels allocate numpy temporaries of many sizes every step. By default, blocks over
    glibc's adaptive mmap threshold are mapped anew each time and the heap's top is trimmed
    when freed, so the next step touches fresh pages: a bert_large step on one processor took
    ~4,400 page faults (84 ms), with these settings 8 (76 ms); a data-parallel one 2,400 (58
    ms) and 130 (56 ms). The process keeps its peak heap. A user's own MALLOC_* settings
    win; non-glibc systems are left alone."""
    if any(k.startswith("MALLOC_") for k in os.environ):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    mallopt(m_mmap_threshold, 32 * 2**20)   # glibc's largest: bigger blocks are still mapped
    mallopt(m_trim_threshold, 2**30)
    mallopt(m_top_pad, 64 * 2**20)


@cache
def runtime() -> Any:
    """The Legate runtime, started on first call (the CUDA shim loaded first where needed)."""
    from unity_legion._native import preload_cuda_shim

    preload_cuda_shim()  # where no driver exists; also turns off Legate's GPU auto-configuration
    _limit_blas_threads()
    _default_option("--sysmem", _default_sysmem_mib)
    _default_option("--utility", _default_utility_threads)
    _keep_freed_memory()
    previous = signal.getsignal(signal.SIGINT)
    from legate.core import get_legate_runtime

    rt = get_legate_runtime()
    global _started
    _started = True
    _collect_on_this_thread_only()
    # Realm takes SIGINT at start-up; give Ctrl-C back to Python so training stops cleanly.
    if previous in (signal.default_int_handler, signal.SIG_DFL, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    else:
        signal.signal(signal.SIGINT, previous)
    return rt


def _collect_on_this_thread_only() -> None:
    """Turn off Python's automatic cyclic garbage collection: `collect_garbage` runs it on
    the thread that started Legate instead.

    Why: an automatic collection runs in whichever thread allocates when a threshold is
    crossed, and Legate's processor threads run Python tasks (our kernels, and Legate's own
    wrapper code around them, which allocates). A collection there may free an unreachable
    Legate store made by the main thread, and freeing a store inside a leaf task makes Legion
    abort the process ("Illegal discard operation call performed in leaf task", seen with
    `--cpus 4` and models trained one after another). Turning collection off only inside
    kernel bodies, as before, left the wrapper's allocations open to it."""
    global _gc_thread
    gc.disable()
    _gc_thread = threading.get_ident()


_gc_thread: int | None = None


def collect_garbage() -> None:
    """Run the cyclic collection that is due, as Python's thresholds would have, on the
    thread that started Legate (a no-op on another thread). The executor calls it between
    steps."""
    if _gc_thread != threading.get_ident():
        return
    c0, c1, c2 = gc.get_count()
    t0, t1, t2 = gc.get_threshold()
    if t0 and c0 > t0:
        gc.collect(2 if c2 > t2 else 1 if c1 > t1 else 0)


@cache
def machine_info() -> MachineInfo:
    rt = runtime()  # first: importing legate.core starts Legate with whatever config is set
    from legate.core import TaskTarget

    m = rt.get_machine()
    gpus = m.count(TaskTarget.GPU) if TaskTarget.GPU in m.valid_targets else 0
    cpus = m.count(TaskTarget.CPU) if TaskTarget.CPU in m.valid_targets else 0
    fbmem = _config_int("--fbmem")  # MiB per GPU
    info = MachineInfo(ranks=rt.node_count, rank=rt.node_id, cpus=cpus, gpus=gpus,
                       gpus_asked=_config_int("--gpus") or 0,
                       fbmem=fbmem * 2**20 if fbmem else None,
                       gpu_name=_gpu_name() if gpus else None)
    shortfall = info.gpu_shortfall()
    if shortfall and info.rank == 0:
        # before anything is planned or trained: the user asked for GPUs and gets none
        print(f"unity_legion: warning: {shortfall}", file=sys.stderr, flush=True)
    return info


# ------------------------------------------------------------------------------------------------
# The job's ranks (MPI): what the profiling code agrees on between ranks. Nothing here starts
# Legate: before it has started the job is one rank.
# ------------------------------------------------------------------------------------------------

def job_ranks() -> int:
    """Ranks of the running Legate job; 1 when legate has not started (nothing is started
    here)."""
    if "legate.core" not in sys.modules:
        return 1
    return machine_info().ranks


def job_gpus() -> int:
    """GPUs of the running Legate job; 0 when legate has not started (nothing is started here)."""
    if "legate.core" not in sys.modules:
        return 0
    return machine_info().gpus


def rank_comm() -> Any:
    """MPI's world communicator when the job has several ranks (mpi4py, imported after legate,
    as it must be), else None."""
    if job_ranks() <= 1:
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD


def bcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (itself on a one-rank job)."""
    comm = rank_comm()
    return obj if comm is None else comm.bcast(obj, root=0)


def is_rank0() -> bool:
    comm = rank_comm()
    return comm is None or comm.Get_rank() == 0
