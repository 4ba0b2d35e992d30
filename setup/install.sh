#!/usr/bin/env bash
# Install the unity_legion environment into <repo>/.venv.  Idempotent: run it
# again at any time (`make setup` runs it when its inputs change).
#
#  1. creates .venv with `python3 -m venv` if it is missing;
#  2. installs the pinned Legate stack and the package itself (editable);
#  3. builds the no-device libcuda.so.1 ONLY where no real libcuda.so.1 can be
#     loaded, and always the UCX IB_SEG_SIZE shim (multi-rank runs);
#  4. writes the runtime environment to .venv/unity_legion_env.sh and a block
#     in .venv/bin/activate that sources it.
#
# Knobs: PYTHON (interpreter for a new venv, default python3), CC (default cc).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

VENV="$REPO_ROOT/.venv"
PYTHON="${PYTHON:-python3}"
CC="${CC:-cc}"
SHIM_DIR="$VENV/lib/unity_legion_shims"
ENV_FILE="$VENV/unity_legion_env.sh"
MARK_BEGIN="# >>> unity_legion environment (written by setup/install.sh) >>>"
MARK_END="# <<< unity_legion environment <<<"

# Pins (see shared/LEGATE_NOTES.md): legate 25.11 is the last wheel with UCX
# networking; cupynumeric 25.11 breaks on numpy 2.4; legate needs
# libcudart.so.12 without depending on it.  Keep in sync with pyproject.toml.
# torch==2.13.0 (the CPU wheel that lies on this machine): operator kernels call its ATen CPU
# operators, and the tests compare with it.
# keras==3.15.1 (torch backend): the oracle whole programs and file formats are checked against;
# h5py reads and writes Keras 3's .weights.h5 files.
PINNED=(
    "legate==25.11.0"
    "nvidia-cupynumeric==25.11.0"
    "nvidia-cuda-runtime-cu12==12.9.*"
    "numpy<2.4"
    "mpi4py>=4,<5"
    "openmpi>=5.0,<6"
    "rich"
    "scikit-learn"
    "matplotlib"
    "networkx"
    "z3-solver==4.15.*"
    "pytest"
    "torch==2.13.0"
    "numba==0.68.1"   # one-pass normalisation loops (operators/_jit.py)
    "keras==3.15.1"
    "h5py"
    "ml-dtypes>=0.5"   # predict's bfloat16 arrays (ml_dtypes.bfloat16), as Keras 3 returns them
    "cupy-cuda12x==14.2.*"   # GPU task variants only (CUDA 12 runtime, as legate 25.11)
    "setuptools>=64"
)

log() { printf '[setup] %s\n' "$*"; }
t0=$SECONDS

# Our own variables must not steer the probes below: a shell that sourced the
# env file would otherwise find our shim and take it for a driver.
strip_path_entry() { # strip_path_entry LIST ENTRY -> LIST without ENTRY
    local out="" e
    local IFS=:
    for e in $1; do
        [[ -z "$e" || "$e" == "$2" ]] && continue
        out="${out:+$out:}$e"
    done
    printf '%s' "$out"
}
LD_LIBRARY_PATH="$(strip_path_entry "${LD_LIBRARY_PATH:-}" "$SHIM_DIR")"
if [[ -n "$LD_LIBRARY_PATH" ]]; then export LD_LIBRARY_PATH; else unset LD_LIBRARY_PATH; fi
unset LD_PRELOAD

# --- 1. virtual environment ---------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
else
    log "reusing $VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' || {
    echo "setup: Python >= 3.11 is required (PYTHON=... picks the interpreter)" >&2
    exit 1
}

# --- 2. packages ----------------------------------------------------------------
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
log "installing the pinned stack (about 4.4 GB on a fresh venv)"
"$VPY" -m pip install --quiet "${PINNED[@]}"
log "installing unity_legion (editable)"
# The editable finder maps these folders into one namespace; each must be a
# regular package (have __init__.py) or `import unity_legion.<part>` fails.
for d in unity_legion operators mappers models; do
    if [[ -d "$d" && ! -f "$d/__init__.py" ]]; then
        pkg="unity_legion.$d"; [[ "$d" == unity_legion ]] && pkg=unity_legion
        echo "setup: WARNING: $d/__init__.py is missing: \`import $pkg\` will" \
             "fail until it exists (see package-dir in pyproject.toml)" >&2
    fi
done
# --no-build-isolation: build with the venv's setuptools, no extra download.
"$VPY" -m pip install --quiet --no-build-isolation -e "$REPO_ROOT[test]"

SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
WRAPPER_DIR="$SITE/legate/lib64/legate/wrapper"
CUDART_DIR="$SITE/nvidia/cuda_runtime/lib"
MPI_WRAPPER="$WRAPPER_DIR/liblegate_mpi_wrapper_ompi.so"
UCP_BOOTSTRAP="$WRAPPER_DIR/librealm_ucp_bootstrap_mpi_ompi.so"
for f in "$MPI_WRAPPER" "$UCP_BOOTSTRAP" "$CUDART_DIR/libcudart.so.12" \
         "$VENV/lib/libmpi.so.40" "$VENV/bin/mpirun"; do
    [[ -e "$f" ]] || { echo "setup: expected file missing: $f" >&2; exit 1; }
done

# --- 3. native shims --------------------------------------------------------------
if ! command -v "$CC" >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "no C compiler: installing gcc with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null
        CC=gcc
    else
        echo "setup: a C compiler (cc) is needed to build setup/*.c" >&2
        exit 1
    fi
fi
mkdir -p "$SHIM_DIR"

UCX_SHIM="$SHIM_DIR/libucx_ib_seg_shim.so"
"$CC" -O2 -Wall -shared -fPIC -o "$UCX_SHIM.tmp" setup/ucx_ib_seg_shim.c -ldl
mv -f "$UCX_SHIM.tmp" "$UCX_SHIM"

if "$VPY" -c 'import ctypes; ctypes.CDLL("libcuda.so.1")' >/dev/null 2>&1; then
    log "a real libcuda.so.1 loads here: no CUDA shim built"
    rm -f "$SHIM_DIR/libcuda.so.1"
    CUDA_SHIM=0
else
    log "no libcuda.so.1 on this machine: building the no-device shim"
    "$CC" -O2 -Wall -shared -fPIC -Wl,-soname,libcuda.so.1 \
        -o "$SHIM_DIR/libcuda.so.1.tmp" setup/no_device_libcuda.c
    mv -f "$SHIM_DIR/libcuda.so.1.tmp" "$SHIM_DIR/libcuda.so.1"
    CUDA_SHIM=1
fi

# --- 4. environment ---------------------------------------------------------------
# Loader path, first wins: the venv's Open MPI 5 libs (Debian's system Open MPI
# 4.1 / UCX 1.13 must not win), libcudart.so.12 from the wheel, the shim dir.
LIB_DIRS=("$VENV/lib" "$CUDART_DIR")
[[ "$CUDA_SHIM" == 1 ]] && LIB_DIRS+=("$SHIM_DIR")

{
    cat <<'END_STATIC'
# unity_legion runtime environment; generated by setup/install.sh, do not edit.
# POSIX sh: `. .venv/unity_legion_env.sh` (the venv's bin/activate sources it).
# Sourcing it twice adds nothing twice.
_ul_prepend() { # _ul_prepend VAR VALUE: put VALUE first in a :-list unless there
    eval "_ul_cur=\${$1:-}"
    case ":$_ul_cur:" in
        *":$2:"*) ;;
        *) eval "export $1=\"\$2\${_ul_cur:+:\$_ul_cur}\"" ;;
    esac
    unset _ul_cur
}
# legate's driver runs `python` and `mpirun` from PATH.
END_STATIC
    printf '_ul_prepend PATH "%s"\n' "$VENV/bin"
    echo "# Loader path: venv Open MPI libs before the system's, CUDA runtime wheel,"
    echo "# and the no-device libcuda.so.1 where it was built."
    for (( i=${#LIB_DIRS[@]}-1; i>=0; i-- )); do
        printf '_ul_prepend LD_LIBRARY_PATH "%s"\n' "${LIB_DIRS[$i]}"
    done
    cat <<'END_STATIC'
# Realm calls ucp_config_modify("IB_SEG_SIZE"), which the wheel's UCX (built
# without verbs) rejects in multi-rank runs; the shim turns that one failure
# into success.  Harmless in single-process runs, so always preloaded.
END_STATIC
    printf '_ul_prepend LD_PRELOAD "%s"\n' "$UCX_SHIM"
    echo "# MPI for legate/Realm: the Open MPI flavours of the wrapper and bootstrap."
    printf 'export LEGATE_MPI_WRAPPER="%s"\n' "$MPI_WRAPPER"
    printf 'export REALM_UCP_BOOTSTRAP_PLUGIN="%s"\n' "$UCP_BOOTSTRAP"
    cat <<'END_STATIC'
# Multi-rank on one host over loopback (UCX and Open MPI), as root.
export UCX_TLS="tcp,self,sm"
export UCX_NET_DEVICES="lo"
export OMPI_MCA_btl_tcp_if_include="lo"
export OMPI_MCA_oob_tcp_if_include="lo"
export OMPI_ALLOW_RUN_AS_ROOT=1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# One background worker thread: 2-rank start-up ~6.5 s instead of ~12 s on
# 2 cores; no loss at 1 rank.
export REALM_DEFAULT_ARGS="-ll:bgwork 1"
# Legate's CPU processors give the parallelism; BLAS/OpenMP threads would fight them.
export OPENBLAS_NUM_THREADS=1
export OMP_NUM_THREADS=1
export MKL_NUM_THREADS=1
END_STATIC
    if [[ "$CUDA_SHIM" == 1 ]]; then
        cat <<'END_STATIC'
# No NVIDIA driver: Legate's auto-configuration aborts when it cannot count
# GPUs ("CUDA Realm module could not determine the number of GPUs"), so the
# configuration comes from LEGATE_CONFIG / legate flags only.
export LEGATE_AUTO_CONFIG=0
END_STATIC
    fi
    echo 'unset -f _ul_prepend'
} >"$ENV_FILE.tmp"
mv -f "$ENV_FILE.tmp" "$ENV_FILE"

# bin/activate: drop an old block (idempotent re-runs), append the current one.
ACTIVATE="$VENV/bin/activate"
awk -v b="$MARK_BEGIN" -v e="$MARK_END" \
    '$0 == b { skip = 1 } !skip { print } $0 == e { skip = 0 }' \
    "$ACTIVATE" >"$ACTIVATE.tmp"
cat >>"$ACTIVATE.tmp" <<END_BLOCK
$MARK_BEGIN
if [ -f "$ENV_FILE" ]; then
    . "$ENV_FILE"
fi
$MARK_END
END_BLOCK
cat "$ACTIVATE.tmp" >"$ACTIVATE"
rm -f "$ACTIVATE.tmp"

# --- smoke check --------------------------------------------------------------------
log "checking that legate starts under the new environment"
CHECK_LOG="$VENV/unity_legion_setup_check.log"
if ! ( . "$ENV_FILE" && cd /tmp && LEGATE_CONFIG="--cpus 1 --sysmem 256" "$VPY" -c '
import importlib.util
assert importlib.util.find_spec("unity_legion") is not None, "unity_legion not installed"
import legate.core as lc
assert lc.get_legate_runtime().node_count == 1
' ) >"$CHECK_LOG" 2>&1; then
    echo "setup: smoke check failed; last lines of $CHECK_LOG:" >&2
    tail -n 20 "$CHECK_LOG" >&2
    exit 1
fi
log "done in $((SECONDS - t0)) s (no-device CUDA shim built: $CUDA_SHIM)"
