"""Check the GPU side of the kernels: every registered kernel has a GPU variant, and, where a GPU
is present, every kernel computes what PyTorch CUDA does.

    python scripts/check_gpu.py [--device auto|gpu|cpu]

Needs numpy, scipy and PyTorch (and CuPy for the GPU check); not Legate, nor the project
installed (run from a copy of the tree it finds the packages itself).

1. Counts: every kernel the operators define (found by walking unity_legion.operators, so a new
   operator's kernels count without being listed) and, where Legate is installed, how many of
   them got a GPU variant when registered as tasks (executor/tasks.py registers each kernel's
   task here, on this machine's runtime; GPU variants register on a CPU-only build too).
2. Where CuPy sees a device (or with --device cpu, the same harness on numpy arrays against
   PyTorch CPU): every operator example (`Operator.examples()`, batch made 3, inputs, weights
   and output gradients random) run forward and backward through its kernels on CuPy arrays,
   called directly (no Legate: the lent GPU machines have CuPy and PyTorch CUDA but no Legate),
   against the operator run by PyTorch (unity_legion.testing.torch_twin) on CUDA tensors with
   autograd (float32, TF32 off), outputs and the gradients of the float inputs and trainable
   weights compared; an operator the twin has no version of, or a dropout (its own random mask),
   is compared with the same kernels on numpy arrays instead. Then 5 SGD steps of an MLP
   (Linear relu, Linear, mean-squared error) through the kernels, on the device, against the
   same steps on numpy (the CPU run) and against PyTorch.
   The error of an array is max |ours - reference| / max |reference| (normwise relative; the
   denominator at least 1e-2 of the example's largest reference value: an array that is zero
   in exact arithmetic, as a key bias's gradient is, holds rounding noise only).

The last line is JSON: {"gpu": bool, "kernels": N, "gpu_variants": N or null (no Legate), ...},
with "checked" (kernels run on the device), "max_rel_error", "unchecked" (kernels nothing here
reaches), "derived_checked" (kernels made from others at run time) and "ok" where the device
check ran.
Exits 1 if a device check ran and failed (error above 1e-4 or an exception), else 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import traceback
from typing import Any, Callable

import numpy as np

# TF32 off in CuPy's products (it reads this when it loads); torch's switches are set below
os.environ.setdefault("CUPY_TF32", "0")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

RTOL = 1e-4
BATCH = 3


def _find_package() -> None:
    """Where the project is not installed (a bare GPU machine with a copy of the tree), let
    unity_legion.operators resolve to ./operators as the installed package's mapping does
    (setuptools package-dir: operators/, mappers/ and models/ sit beside unity_legion/)."""
    import unity_legion

    try:
        import unity_legion.operators  # noqa: F401
    except ModuleNotFoundError:
        unity_legion.__path__.append(ROOT)


# ---------------------------------------------------------------------------------------------
# Counting

def all_kernels() -> list[Any]:
    """Every Kernel object of every module of unity_legion.operators, once each."""
    import unity_legion.operators as ops
    from unity_legion.operators.base import Kernel

    found: dict[int, Any] = {}
    for info in sorted(pkgutil.iter_modules(ops.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"unity_legion.operators.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Kernel):
                found.setdefault(id(value), value)
    return sorted(found.values(), key=lambda k: k.name)


def gpu_variant_count(kernels: list[Any]) -> int | None:
    """How many kernels' tasks were registered with a GPU variant (None: no Legate here)."""
    try:
        import legate.core  # noqa: F401  (starts nothing by itself before runtime())
    except ImportError:
        return None
    from unity_legion.runtime import runtime

    runtime()
    from unity_legion.executor.tasks import VARIANTS, program_task, single

    count = 0
    for k in kernels:
        program = single(k)
        program_task(program).task_id  # completes the registration
        count += "gpu" in VARIANTS.get(program, ())
    return count


def gpu_present() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device: all mean no GPU to check on
        return False


# ---------------------------------------------------------------------------------------------
# Running an operator's launches serially on whole arrays

class Device:
    """Where the kernels run: numpy or CuPy arrays, and the torch device of the reference."""

    def __init__(self, kind: str) -> None:
        import torch

        self.kind = kind
        self.torch = torch
        if kind == "gpu":
            import cupy

            self.xp = cupy
            self.tdev = torch.device("cuda")
            torch.set_float32_matmul_precision("highest")  # TF32 off: products and cuDNN
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        else:
            self.xp = np
            self.tdev = torch.device("cpu")

    def put(self, a: np.ndarray) -> Any:
        return self.xp.asarray(a)

    def host(self, a: Any) -> np.ndarray:
        return a.get() if self.xp is not np else np.asarray(a)

    def sync(self) -> None:
        if self.xp is not np:
            self.xp.cuda.get_current_stream().synchronize()


def _run(launches: list[Any], arrays: dict[Any, Any], ran: set[str]) -> None:
    from unity_legion.operators.base import PieceOrigin

    for ln in launches:
        call: dict[str, Any] = {name: arrays[arg.ref] for name, arg in ln.args.items()}
        call.update(ln.scalars)
        if ln.kernel.wants_origin:  # one point holding everything: every piece starts at 0
            of = {name: (0,) * arrays[arg.ref].ndim for name, arg in ln.args.items()}
            call["origin"] = PieceOrigin(of[ln.kernel.stores[0][0]], of)
        ln.kernel.fn(**call)
        ran.add(ln.kernel.name)


def _value(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 2, shape).astype(dtype)  # indices, masks: valid for every example


def _with_batch(s: Any) -> Any:
    return s.with_dims((BATCH,) + tuple(s.dims[1:])) if s.dims and s.dims[0] is not None else s


def run_kernels(op: Any, shapes: list[Any], values: dict[Any, np.ndarray], dev: Device,
                ran: set[str], input_grads: bool = True) -> dict[Any, np.ndarray]:
    """`op` forward (training) and backward through its kernels on `dev`'s arrays, from the
    inputs, weights and output gradients in `values`; every array afterwards, on the host.
    input_grads=False: the backward of a node whose inputs need no gradient (weights only)."""
    from unity_legion.operators.base import RefKind

    outs = op.infer_outputs(shapes)
    saved = {s.name: s.shape for s in op.saved(shapes)}
    wspecs = {w.name: w.shape for w in op.weights(shapes)}
    arrays = {ref: dev.put(v) for ref, v in values.items()}
    shape_of: dict[RefKind, Callable[[Any], Any]] = {
        RefKind.OUTPUT: lambda k: outs[k], RefKind.SAVED: lambda k: saved[k],
        RefKind.GRAD_INPUT: lambda k: shapes[k], RefKind.GRAD_WEIGHT: lambda k: wspecs[k]}
    forward = op.forward(shapes, True)
    backward = op.backward(shapes, [input_grads and s.dtype.is_float for s in shapes])
    for ln in forward + backward:
        for arg in ln.args.values():
            if arg.ref not in arrays:  # outputs, saved tensors and gradients start at zero
                s = shape_of[arg.ref.kind](arg.ref.key)
                arrays[arg.ref] = dev.put(np.zeros(s.dims, s.dtype.numpy))
    _run(forward, arrays, ran)
    _run(backward, arrays, ran)
    dev.sync()
    return {ref: dev.host(a) for ref, a in arrays.items()}


def torch_reference(op: Any, shapes: list[Any], values: dict[Any, np.ndarray], dev: Device
                    ) -> dict[Any, np.ndarray]:
    """The outputs and the float inputs' and trainable weights' gradients by PyTorch."""
    from unity_legion.operators.base import dw, dx, dy, w, x, y
    from unity_legion.testing.torch_twin import run_node

    torch = dev.torch
    xs = [torch.tensor(values[x(i)], device=dev.tdev, requires_grad=s.dtype.is_float)
          for i, s in enumerate(shapes)]
    specs = op.weights(shapes)
    ws = {s.name: torch.tensor(values[w(s.name)], device=dev.tdev, requires_grad=s.trainable)
          for s in specs}
    ys = run_node(op, xs, ws, True, shapes)
    total = sum((t * torch.tensor(values[dy(i)], device=dev.tdev)).sum() for i, t in enumerate(ys))
    leaves = [t for t in xs + list(ws.values()) if t.requires_grad]
    grads = (torch.autograd.grad(total, leaves, allow_unused=True)
             if leaves and total.requires_grad else [None] * len(leaves))
    got = dict(zip(map(id, leaves), grads))
    ref = {y(i): t.detach().cpu().numpy() for i, t in enumerate(ys)}
    for i, t in enumerate(xs):
        if t.requires_grad and got.get(id(t)) is not None:
            ref[dx(i)] = got[id(t)].cpu().numpy()
    for name, t in ws.items():
        if t.requires_grad and got.get(id(t)) is not None:
            ref[dw(name)] = got[id(t)].cpu().numpy()
    return ref


def rel_error(ours: np.ndarray, ref: np.ndarray, floor: float = 1e-6) -> float:
    """max |ours - ref| / max |ref|, the denominator at least `floor` (a gradient that is zero
    in exact arithmetic, as a key bias's is, compares with the example's scale instead)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if not ref.size:
        return 0.0
    if ours.shape != ref.shape:
        ours = ours.reshape(ref.shape)
    same = (ours == ref) | (np.isnan(ours) & np.isnan(ref))  # NaN, inf where both have them
    if same.all():
        return 0.0
    diff = np.where(same, 0.0, np.abs(ours - ref))
    scale = np.abs(np.where(np.isfinite(ref), ref, 0.0)).max()
    return float(diff.max()) / max(float(scale), floor)


def check_example(op: Any, shapes: list[Any], dev: Device, rng: np.random.Generator,
                  ran: set[str]) -> tuple[float, str]:
    """The largest error of one operator example on `dev`, and what it was compared with."""
    from unity_legion.operators.base import RefKind, dy, w, x
    from unity_legion.testing.torch_twin import supports

    shapes = [_with_batch(s) for s in shapes]
    values = {x(i): _value(rng, s.dims, s.dtype.numpy) for i, s in enumerate(shapes)}
    for spec in op.weights(shapes):  # positive: variances, scales
        values[w(spec.name)] = rng.uniform(0.5, 1.5, spec.shape.dims).astype(
            spec.shape.dtype.numpy)
    for i, s in enumerate(op.infer_outputs(shapes)):
        values[dy(i)] = _value(rng, s.dims, s.dtype.numpy)
    ours = run_kernels(op, shapes, values, dev, ran)
    if supports(op) and not getattr(op, "rate", 0):
        ref, against = torch_reference(op, shapes, values, dev), f"torch {dev.tdev.type}"
    else:  # no torch twin (or a random mask of our own): the same kernels on numpy
        cpu = run_kernels(op, shapes, values, Device("cpu"), set())
        ref = {k: v for k, v in cpu.items() if k not in values}
        against = "numpy kernels"
    scale = max((float(np.abs(v).max()) for v in ref.values() if v.size), default=1.0)
    err = max((rel_error(ours[k], v, 1e-2 * scale) for k, v in ref.items()), default=0.0)
    if op.weights(shapes):
        # the weights-only backward (inputs needing no gradient: their own kernels)
        alone = run_kernels(op, shapes, values, dev, ran, input_grads=False)
        err = max([err] + [rel_error(alone[k], v, 1e-2 * scale) for k, v in ref.items()
                           if k.kind is RefKind.GRAD_WEIGHT])
    updates = op.state_updates(shapes)  # moving statistics, from this step's tensors
    if updates:
        err = max(err, compare_launches(updates, ours, dev, ran))
    return err, against


# ---------------------------------------------------------------------------------------------
# Kernels no operator example reaches

def extra_examples() -> list[tuple[Any, list[Any]]]:
    """Operator configurations whose kernels the examples (chosen for the search's rules) do not
    run: normalisations without beta or gamma, no bias, three summands, a fused activation on a
    convolution, average pooling with and without padding, channels_first flattening."""
    import dataclasses

    from unity_legion.operators.attention import MultiHeadAttention
    from unity_legion.operators.batch_norm import BatchNorm
    from unity_legion.operators.conv2d import Conv2D
    from unity_legion.operators.elementwise import Add
    from unity_legion.operators.layer_norm import LayerNorm
    from unity_legion.operators.linear import Linear
    from unity_legion.operators.pooling import Pool2D
    from unity_legion.operators.reshape import Flatten
    from unity_legion.types import TensorShape

    mha, mha_shapes = MultiHeadAttention.examples()[0]
    norms = [(dataclasses.replace(op, **{off: False}), list(shapes))
             for cls in (BatchNorm, LayerNorm) for op, shapes in cls.examples()[:1]
             for off in ("center", "scale")]   # gamma or beta alone
    return norms + [(dataclasses.replace(mha, use_bias=False), list(mha_shapes)),
            (Add(), [TensorShape((4, 6))] * 3),
            (Conv2D(4, 3, use_bias=False), [TensorShape((2, 7, 7, 3))]),
            (Linear(8, use_bias=False), [TensorShape((4, 6))]),
            (Linear(8, activation="relu", use_bias=False), [TensorShape((4, 6))]),
            (Conv2D(4, 3, activation="relu"), [TensorShape((2, 7, 7, 3))]),
            (Pool2D("avg"), [TensorShape((2, 8, 8, 3))]),
            (Pool2D("avg", (3, 3), (2, 2), "same"), [TensorShape((2, 7, 7, 3))]),
            (Flatten(channels_first=True), [TensorShape((2, 3, 4, 5))])]


def compare_launches(launches: list[Any], values: dict[Any, np.ndarray], dev: Device,
                     ran: set[str]) -> float:
    """Launches run on `dev`'s arrays and on numpy from the same `values` (every store they
    name): the largest error of any array afterwards, the numpy run as the reference."""
    results = []
    for d, r in ((dev, ran), (Device("cpu"), set())):
        arrays = {ref: d.put(v.copy()) for ref, v in values.items()}
        _run(launches, arrays, r)
        d.sync()
        results.append({ref: d.host(a) for ref, a in arrays.items()})
    ours, ref = results
    scale = max((float(np.abs(v).max()) for v in ref.values() if v.size), default=1.0)
    return max(rel_error(ours[k], v.astype(np.float64), 1e-2 * scale) for k, v in ref.items())


def glue_loss_metric_optimizer_checks(dev: Device, rng: np.random.Generator, ran: set[str]
                                      ) -> list[tuple[str, float]]:
    """The executor's glue, every loss, metric kind and update rule, on `dev` against numpy."""
    from unity_legion.operators import losses, metrics, optimizers
    import dataclasses

    from unity_legion.operators.base import dx, dy, saved, w, x, y
    from unity_legion.operators.glue import accumulate_launch, add_partials_launch
    from unity_legion.types import TensorShape

    b, c = BATCH + 2, 7
    f32 = np.float32
    out: list[tuple[str, float]] = []
    normal = lambda *shape: rng.standard_normal(shape).astype(f32)  # noqa: E731
    out.append(("glue accumulate", compare_launches(
        [accumulate_launch(y(0), x(0), 2)], {y(0): normal(b, c), x(0): normal(b, c)}, dev, ran)))
    out.append(("glue add_partials", compare_launches(
        [add_partials_launch(y(0), x(0), 2, 1)], {y(0): normal(b, c), x(0): normal(3, b, c)},
        dev, ran)))
    pred = TensorShape((b, c))
    probs = np.exp(normal(b, c))
    probs /= probs.sum(axis=1, keepdims=True)
    targets = {"sparse_categorical_crossentropy": rng.integers(0, c, b).astype(np.int64),
               "categorical_crossentropy": probs[::-1].copy()}
    for cls in losses.LossFunction.__subclasses__():
        loss = cls()
        want = loss.target_shape(pred)
        t = targets.get(cls.name, normal(*want.dims).astype(want.dtype.numpy))
        launch = loss.launch(pred, TensorShape(t.shape, want.dtype), b, True)
        vals = {x(0): probs.copy(), x(1): t, y(0): np.zeros(b, f32), dx(0): np.zeros((b, c), f32)}
        out.append((f"loss {cls.name}", compare_launches([launch], vals, dev, ran)))
    metric_targets = {"sparse_accuracy": targets["sparse_categorical_crossentropy"],
                      "categorical_accuracy": probs[::-1].copy(),
                      "binary_accuracy": (normal(b, c) > 0).astype(f32)}
    for kind in metrics.Metric._KERNELS:
        t = metric_targets.get(kind, normal(b, c))
        launch = metrics.Metric(kind, kind).launch(pred, TensorShape(t.shape,
                                                                     _dtype_of(t.dtype)))
        vals = {x(0): probs.copy(), x(1): t, y(0): np.zeros(b, np.float64)}
        out.append((f"metric {kind}", compare_launches([launch], vals, dev, ran)))
    from unity_legion.operators.embedding import Embedding

    for op, shapes in Embedding.examples():  # the sparse update of the rows a batch used
        shapes = [_with_batch(sh) for sh in shapes]
        launch = op.sparse_sgd_update(shapes, "embeddings")
        launch = dataclasses.replace(launch, scalars=dict(launch.scalars) | {"lr": 0.1})
        table = op.weights(shapes)[0].shape.dims
        vals = {w("embeddings"): normal(*table),
                x(0): rng.integers(0, table[0], shapes[0].dims).astype(shapes[0].dtype.numpy),
                dy(0): normal(*op.infer_outputs(shapes)[0].dims)}
        out.append((f"update {op.describe()[:40]} rows", compare_launches([launch], vals, dev,
                                                                          ran)))
    rules = [optimizers.SGDRule(), optimizers.SGDRule(momentum=0.9, nesterov=True),
             optimizers.SGDRule(momentum=0.9, weight_decay=0.01), optimizers.AdamRule(),
             optimizers.RMSpropRule()]
    for rule in rules:
        launch = rule.launch(2, 0.01, 3)
        vals = {w("param"): normal(b, c), optimizers.GRAD: normal(b, c)}
        for name in rule.slots:
            vals[saved(name)] = np.abs(normal(b, c))
        out.append((f"update {rule}", compare_launches([launch], vals, dev, ran)))
    return out


def _dtype_of(dt: np.dtype) -> Any:
    from unity_legion.types import DataType

    return DataType.of(dt)


# ---------------------------------------------------------------------------------------------
# An MLP trained through the kernels

def mlp_losses(dev: Device, steps: int = 5, lr: float = 0.05) -> list[float]:
    """Losses of `steps` SGD steps of Linear(13, relu) -> Linear(3) on mean-squared error, all
    compute through the operators' kernels on `dev`'s arrays."""
    from unity_legion.operators.base import dw, dx, dy, saved, w, x, y
    from unity_legion.operators.linear import Linear
    from unity_legion.types import TensorShape

    rng = np.random.default_rng(7)
    xv = rng.standard_normal((BATCH * 3, 5)).astype(np.float32)
    tv = rng.standard_normal((BATCH * 3, 3)).astype(np.float32)
    layers = [Linear(13, activation="relu"), Linear(3)]
    shapes = [TensorShape(xv.shape), TensorShape((xv.shape[0], 13))]
    params = [{s.name: dev.put(rng.uniform(-0.5, 0.5, s.shape.dims).astype(np.float32))
               for s in op.weights([sh])} for op, sh in zip(layers, shapes)]
    xp, losses, ran = dev.xp, [], set()
    for _ in range(steps):
        acts, stores = [dev.put(xv)], []
        for op, sh, p in zip(layers, shapes, params):
            a = {x(0): acts[-1], **{w(k): v for k, v in p.items()},
                 y(0): xp.zeros(op.infer_outputs([sh])[0].dims, np.float32)}
            for s in op.saved([sh]):  # the fused activation's pre-activation
                a[saved(s.name)] = xp.zeros(s.shape.dims, np.float32)
            _run(op.forward([sh], True), a, ran)
            stores.append(a)
            acts.append(a[y(0)])
        diff = acts[-1] - dev.put(tv)
        losses.append(float((diff * diff).mean()))
        grad = 2.0 * diff / diff.size
        for op, sh, p, a in reversed(list(zip(layers, shapes, params, stores))):
            a[dy(0)] = grad
            a[dx(0)] = xp.zeros(sh.dims, np.float32)
            for k, v in p.items():
                a[dw(k)] = xp.zeros_like(v)
            _run(op.backward([sh], [True]), a, ran)
            for k, v in p.items():
                v -= lr * a[dw(k)]
            grad = a[dx(0)]
    return losses


def mlp_torch(dev: Device, steps: int = 5, lr: float = 0.05) -> list[float]:
    """The same steps by PyTorch (same data and initial weights)."""
    torch = dev.torch
    rng = np.random.default_rng(7)
    xv = torch.tensor(rng.standard_normal((BATCH * 3, 5)).astype(np.float32), device=dev.tdev)
    tv = torch.tensor(rng.standard_normal((BATCH * 3, 3)).astype(np.float32), device=dev.tdev)
    ws = [torch.tensor(rng.uniform(-0.5, 0.5, d).astype(np.float32), device=dev.tdev,
                       requires_grad=True) for d in ((5, 13), (13,), (13, 3), (3,))]
    losses = []
    for _ in range(steps):
        h = torch.relu(xv @ ws[0] + ws[1])
        loss = ((h @ ws[2] + ws[3] - tv) ** 2).mean()
        losses.append(float(loss.detach()))
        grads = torch.autograd.grad(loss, ws)
        with torch.no_grad():
            for p, g in zip(ws, grads):
                p -= lr * g
    return losses


def device_check(dev: Device) -> dict[str, Any]:
    from unity_legion.operators.registry import OPERATORS

    rng = np.random.default_rng(0)
    ran: set[str] = set()
    rows, worst, failures = [], 0.0, []
    examples = [(op, list(shapes)) for cls in OPERATORS for op, shapes in cls.examples()]
    for op, shapes in examples + extra_examples():
        name = op.describe()
        try:
            err, against = check_example(op, list(shapes), dev, rng, ran)
        except Exception as exc:  # a kernel that cannot run on this device: say which
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            traceback.print_exc(file=sys.stderr)
            rows.append((name, "-", "FAILED"))
            continue
        worst = max(worst, err)
        rows.append((name, against, f"{err:.2e}"))
        if not err <= RTOL:
            failures.append(f"{name}: error {err:.2e} against {against}")
    try:
        for name, err in glue_loss_metric_optimizer_checks(dev, rng, ran):
            worst = max(worst, err)
            rows.append((name, "numpy kernels", f"{err:.2e}"))
            if not err <= RTOL:
                failures.append(f"{name}: error {err:.2e} against the numpy kernels")
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        failures.append(f"glue/loss/metric/update: {type(exc).__name__}: {exc}")
    try:
        ours, cpu, ref = mlp_losses(dev), mlp_losses(Device("cpu")), mlp_torch(dev)
        mlp_err = max(max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(ours, r))
                      for r in (cpu, ref))
        rows.append((f"MLP {len(ours)} SGD steps", "numpy kernels, torch", f"{mlp_err:.2e}"))
        if not mlp_err <= RTOL:
            failures.append(f"MLP losses {ours} vs CPU {cpu} vs torch {ref}")
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        failures.append(f"MLP: {type(exc).__name__}: {exc}")
        mlp_err = float("nan")
    for row in rows:
        print(f"  {row[0][:70]:70s} {row[1]:22s} {row[2]}")
    return {"checked": len(ran), "checked_kernels": sorted(ran), "max_rel_error": worst,
            "mlp_rel_error": mlp_err, "failures": failures}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto",
                   help="auto: check on the GPU where CuPy sees one, else count only; cpu: run "
                        "the same check on numpy arrays against PyTorch CPU")
    args = p.parse_args(argv)
    _find_package()
    kernels = all_kernels()
    variants = gpu_variant_count(kernels)
    gpu = gpu_present()
    print(f"{len(kernels)} kernels; GPU variants: "
          f"{'(no Legate here to register them)' if variants is None else variants}; "
          f"GPU: {'yes' if gpu else 'none seen by CuPy'}")
    for k in kernels:
        print(f"  {k.name}")
    result: dict[str, Any] = {"gpu": gpu, "kernels": len(kernels), "gpu_variants": variants}
    kind = "gpu" if args.device == "gpu" or (args.device == "auto" and gpu) else (
        "cpu" if args.device == "cpu" else None)
    if kind == "gpu" and not gpu:
        print("check_gpu.py: --device gpu but CuPy sees no GPU", file=sys.stderr)
        kind = None
    code = 0
    if kind is not None:
        print(f"kernels on {kind} arrays against PyTorch ({kind}), rtol {RTOL}:")
        checked = device_check(Device(kind))
        names, ran = {k.name for k in kernels}, set(checked["checked_kernels"])
        checked["checked"] = len(ran & names)
        checked["unchecked"] = sorted(names - ran)
        # kernels made from others at run time (one_d's lifted 2-D kernels), checked too
        checked["derived_checked"] = sorted(ran - names)
        checked["device"] = kind
        checked["ok"] = not checked["failures"]
        del checked["checked_kernels"]
        result |= checked
        code = 0 if checked["ok"] else 1
    print(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main())
