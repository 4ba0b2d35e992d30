"""Measure every distinct operator of the zoo's paper-size models on a CUDA GPU (PyTorch kernels,
float32, TF32 off), forward and backward, to calibrate the roofline's GPU figures.

Runs where PyTorch sees a GPU (not under legate; our executor's GPU variants are not measured
here): `python scripts/calibrate_gpu.py --out gpu_measurements.json`. Each record holds the
operator's type, its flops (the operator's own `flops()`), the bytes one launch reads and
writes, and the median forward and backward times. `unity_legion.cost.gpu_calibration` fits the
efficiency factors from such a file. PyTorch is the measuring tool only; unity_legion never
imports this script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from unity_legion.cost.op_cost import piece_bytes
from unity_legion.models.zoo import ZOO
from unity_legion.pcg.pcg import node_shapes
from unity_legion.testing.torch_twin import run_node, supports
from unity_legion.types import OpConfig

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bool": torch.bool, "int64": torch.int64, "int32": torch.int32}


DEVICE = "cuda"


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if DEVICE != "cuda":  # a dry run of the script on a machine without a GPU
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _tensor(shape, table: int | None) -> torch.Tensor:
    dtype = _DTYPES[shape.dtype.value]
    if dtype.is_floating_point:
        return torch.randn(*shape.dims, device=DEVICE, dtype=dtype, requires_grad=True)
    return torch.randint(0, table or 2, tuple(shape.dims), device=DEVICE, dtype=dtype)


def measure_case(op, inputs, weights, repeats: int) -> tuple[float, float]:
    tables = getattr(op, "input_dim", None)
    xs = [_tensor(s, tables) for s in inputs]
    w = {ws.name: torch.randn(*ws.shape.dims, device=DEVICE, requires_grad=ws.trainable) * 0.05
         for ws in weights}
    w = {k: v.detach().requires_grad_(True) for k, v in w.items()}

    def fwd():
        return run_node(op, xs, w, True, list(inputs))

    for _ in range(3):
        fwd()
    _sync()
    t_fwd = _median_ms(fwd, repeats)
    outs = [o for o in fwd() if o.is_floating_point()]
    grads_of = [t for t in xs + list(w.values()) if t.requires_grad]
    if not outs or not grads_of:
        return t_fwd, 0.0
    seeds = [torch.randn_like(o) for o in outs]

    def bwd():
        torch.autograd.grad(outs, grads_of, seeds, retain_graph=True, allow_unused=True)

    for _ in range(2):
        bwd()
    _sync()
    return t_fwd, _median_ms(bwd, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", default="8,64", help="per-device batch sizes to measure")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop measuring after this")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run")
    ap.add_argument("--models", default=",".join(ZOO), help="comma-separated zoo names")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    began = time.perf_counter()
    # launch overhead: an empty-ish kernel
    tiny = torch.zeros(1, device=DEVICE)
    launch_ms = _median_ms(lambda: tiny.add_(1), 50)
    records, seen = [], set()
    for name in args.models.split(","):
        model = ZOO[name].build()
        for batch in (int(b) for b in args.batches.split(",")):
            shapes = model.graph.bind_batch(batch)
            for node in model.graph.nodes:
                op = node.op
                if op.reshape_only or not supports(op):
                    continue
                inputs = [shapes[t] for t in node.inputs]
                key = (repr(op), tuple(repr(s) for s in inputs))
                if key in seen:
                    continue
                seen.add(key)
                if time.perf_counter() - began > args.budget_s:
                    break
                try:
                    t_fwd, t_bwd = measure_case(op, inputs, node.weights, args.repeats)
                except Exception as exc:  # a case torch cannot run is reported, not fatal
                    print(f"skip {name}/{node.name}: {type(exc).__name__}: {exc}", flush=True)
                    continue
                nbytes = piece_bytes(node_shapes(op, inputs, OpConfig()))
                records.append({"model": name, "node": node.name, "op_type": op.op_type,
                                "batch": batch, "flops": int(op.flops(inputs)), "bytes": nbytes,
                                "forward_s": t_fwd / 1e3, "backward_s": t_bwd / 1e3})
        print(f"{name}: {len(records)} cases so far, {time.perf_counter() - began:.0f} s",
              flush=True)
    device_name = torch.cuda.get_device_properties(0).name if DEVICE == "cuda" else "cpu"
    doc = {"device": device_name, "torch": torch.__version__, "dtype": "float32", "tf32": False,
           "launch_s": launch_ms / 1e3, "records": records}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps({"device": device_name, "cases": len(records), "launch_s": launch_ms / 1e3}))


if __name__ == "__main__":
    main()
