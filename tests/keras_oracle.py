"""Real Keras 3 (torch backend) as a test oracle, run in a subprocess so that it and
unity_legion.keras never share a process.

`real_keras(code, workdir, **values)` runs `code` with `keras`, `np` and each value bound to its
name (numpy arrays travel as .npz, the rest as JSON); whatever the code puts in the dict `out`
comes back (arrays as numpy arrays). Model builders are written once as source text and executed
against both APIs, so the two sides build the same architecture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

_RUNNER = r'''
import json, os, sys
os.environ["KERAS_BACKEND"] = "torch"
import numpy as np
import keras
keras.utils.set_random_seed(0)
workdir = sys.argv[1]
ns = {"keras": keras, "np": np, "out": {}}
with open(os.path.join(workdir, "in.json")) as f:
    ns.update(json.load(f))
with np.load(os.path.join(workdir, "in.npz"), allow_pickle=False) as data:
    ns.update({k: data[k] for k in data.files})
with open(os.path.join(workdir, "code.py")) as f:
    exec(compile(f.read(), "real_keras_code", "exec"), ns)
out = ns["out"]
arrays = {k: np.asarray(v) for k, v in out.items() if isinstance(v, np.ndarray)}
np.savez(os.path.join(workdir, "out.npz"), **arrays)
with open(os.path.join(workdir, "out.json"), "w") as f:
    json.dump({k: v for k, v in out.items() if k not in arrays}, f)
'''


def real_keras(code: str, workdir: Path | str, timeout: float = 300,
               **values: Any) -> dict[str, Any]:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    arrays = {k: v for k, v in values.items() if isinstance(v, np.ndarray)}
    np.savez(workdir / "in.npz", **arrays)
    (workdir / "in.json").write_text(json.dumps({k: v for k, v in values.items()
                                                 if k not in arrays}))
    (workdir / "code.py").write_text(textwrap.dedent(code))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEGATE", "REALM"))}
    env["KERAS_BACKEND"] = "torch"
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(workdir)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"real Keras failed:\n{proc.stderr[-4000:]}")
    out: dict[str, Any] = json.loads((workdir / "out.json").read_text())
    with np.load(workdir / "out.npz", allow_pickle=False) as data:
        out.update({k: data[k] for k in data.files})
    return out


def build(source: str, builder: str, keras_module: Any) -> Any:
    """Run a builder written as source text (`def builder(keras): ...`) against `keras_module`."""
    ns: dict[str, Any] = {"np": np}
    exec(compile(textwrap.dedent(source), f"<{builder}>", "exec"), ns)
    return ns[builder](keras_module)
