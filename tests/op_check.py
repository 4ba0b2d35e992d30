"""Run one operator through the executor and compare it with PyTorch (CPU) as the oracle.

`run_op` builds a one-node graph, feeds random (or given) inputs, weights and output gradients,
and returns what GraphExecutor.gradients computed; `check_op` also runs `torch_fn` on the same
values and compares the output, every float input's gradient and every weight's gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from unity_legion.executor.executor import GraphExecutor
from unity_legion.operators.base import SAMPLE, Operator
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.types import DataType, TensorShape

RTOL = 1e-4
ATOL = 1e-5


class FixedSplitExecutor(GraphExecutor):
    """Splits every batch into exactly `degree` pieces (more pieces than processors allowed: the
    points then share processors), to check results do not depend on the split."""

    def __init__(self, *args: Any, degree: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.degree = degree

    def degrees_for(self, batch: int) -> dict[str, int]:
        return {SAMPLE: self.degree}


@dataclass
class OpRun:
    inputs: list[np.ndarray]
    weights: dict[str, np.ndarray]
    output_grads: list[np.ndarray]
    outputs: list[np.ndarray]
    input_grads: list[np.ndarray | None]          # None where the input has no gradient
    weight_grads: dict[str, np.ndarray] = field(default_factory=dict)


def randn(rng: np.random.Generator, *shape: int, dtype: Any = np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def run_op(op: Operator, inputs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray] | None = None,
           output_grads: Sequence[np.ndarray] | None = None, training: bool = True, seed: int = 0,
           executor: Callable[..., GraphExecutor] = GraphExecutor, input_ids: Sequence[int] | None = None
           ) -> OpRun:
    """Run `op` forward and backward once. `input_ids` maps operator inputs to graph inputs
    (e.g. [0, 0] feeds one tensor twice); by default each array is its own graph input."""
    rng = np.random.default_rng(seed)
    g = ComputationGraph()
    tids = [g.add_input(TensorShape((None,) + a.shape[1:], DataType.of(a.dtype)), f"x{i}")
            for i, a in enumerate(inputs)]
    ids = list(range(len(inputs))) if input_ids is None else list(input_ids)
    (out,) = g.add_node(op, [tids[k] for k in ids], "op")
    ex = executor(g, [out], seed=seed, input_grads=True)
    w_vals: dict[str, np.ndarray] = {}
    for key, spec in ex.weight_specs():
        given = (weights or {}).get(key[1])
        w_vals[key[1]] = (np.asarray(given, dtype=spec.shape.dtype.numpy) if given is not None
                          else randn(rng, *spec.shape.dims, dtype=spec.shape.dtype.numpy))
        ex.set_weight(key, w_vals[key[1]])
    batch = len(inputs[0])
    out_shape = g.bind_batch(batch)[out]
    if output_grads is None:
        output_grads = [randn(rng, *out_shape.dims, dtype=out_shape.dtype.numpy)]
    feeds = {tids[i]: a for i, a in enumerate(inputs)}
    outs, in_grads, w_grads = ex.gradients(feeds, output_grads, training=training)
    return OpRun(list(inputs), w_vals, list(output_grads), outs,
                 [in_grads.get(t) for t in tids], {k[1]: v for k, v in w_grads.items()})


def torch_reference(torch_fn: Callable[..., torch.Tensor], run: OpRun
                    ) -> tuple[np.ndarray, list[np.ndarray | None], dict[str, np.ndarray]]:
    """torch_fn(*inputs, **weights) on the run's values; its output and gradients as numpy."""
    t_in = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in run.inputs]
    t_w = {k: torch.tensor(v, requires_grad=True) for k, v in run.weights.items()}
    out = torch_fn(*t_in, **t_w)
    out.backward(torch.tensor(run.output_grads[0]))
    in_grads = [None if t.grad is None else t.grad.numpy() for t in t_in]
    return (out.detach().numpy(), in_grads,
            {k: (t.grad.numpy() if t.grad is not None else np.zeros_like(run.weights[k]))
             for k, t in t_w.items()})


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str, rtol: float = RTOL,
                 atol: float = ATOL) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def check_op(op: Operator, inputs: Sequence[np.ndarray], torch_fn: Callable[..., torch.Tensor],
             weights: Mapping[str, np.ndarray] | None = None, rtol: float = RTOL, atol: float = ATOL,
             **kwargs: Any) -> OpRun:
    """Run `op` and compare output, input gradients (float inputs) and weight gradients with
    torch_fn. Returns the run for further checks."""
    run = run_op(op, inputs, weights, **kwargs)
    t_out, t_in_grads, t_w_grads = torch_reference(torch_fn, run)
    desc = op.describe()
    assert_close(run.outputs[0], t_out, f"{desc}: output", rtol, atol)
    for i, (a, (got, want)) in enumerate(zip(run.inputs, zip(run.input_grads, t_in_grads))):
        if a.dtype.kind != "f":
            continue
        assert got is not None, f"{desc}: no gradient for input {i}"
        assert_close(got, want if want is not None else np.zeros_like(a), f"{desc}: d input {i}",
                     rtol, atol)
    for name, want in t_w_grads.items():
        assert_close(run.weight_grads[name], want, f"{desc}: d {name}", rtol, atol)
    return run


# ---------------------------------------------------------------------------------------------
# Operators with several outputs
# ---------------------------------------------------------------------------------------------

def run_op_outputs(op: Operator, inputs: Sequence[np.ndarray],
                   weights: Mapping[str, np.ndarray] | None = None,
                   output_grads: Sequence[np.ndarray] | None = None, training: bool = True,
                   seed: int = 0, executor: Callable[..., GraphExecutor] = GraphExecutor,
                   used: Sequence[int] | None = None) -> OpRun:
    """`run_op` for an operator with several outputs. `used` picks which of its outputs are the
    graph's outputs (default: all); the others are computed but consumed by nobody, so backward
    sees a zero gradient for them. The run's outputs and output_grads are the used ones, in
    `used` order."""
    rng = np.random.default_rng(seed)
    g = ComputationGraph()
    tids = [g.add_input(TensorShape((None,) + a.shape[1:], DataType.of(a.dtype)), f"x{i}")
            for i, a in enumerate(inputs)]
    outs = g.add_node(op, tids, "op")
    picked = [outs[i] for i in (range(len(outs)) if used is None else used)]
    ex = executor(g, picked, seed=seed, input_grads=True)
    w_vals: dict[str, np.ndarray] = {}
    for key, spec in ex.weight_specs():
        given = (weights or {}).get(key[1])
        w_vals[key[1]] = (np.asarray(given, dtype=spec.shape.dtype.numpy) if given is not None
                          else randn(rng, *spec.shape.dims, dtype=spec.shape.dtype.numpy))
        ex.set_weight(key, w_vals[key[1]])
    shapes = g.bind_batch(len(inputs[0]))
    if output_grads is None:
        output_grads = [randn(rng, *shapes[t].dims, dtype=shapes[t].dtype.numpy) for t in picked]
    feeds = {tids[i]: a for i, a in enumerate(inputs)}
    values, in_grads, w_grads = ex.gradients(feeds, output_grads, training=training)
    return OpRun(list(inputs), w_vals, list(output_grads), values,
                 [in_grads.get(t) for t in tids], {k[1]: v for k, v in w_grads.items()})


def check_op_outputs(op: Operator, inputs: Sequence[np.ndarray],
                     torch_fn: Callable[..., Sequence[torch.Tensor]],
                     weights: Mapping[str, np.ndarray] | None = None, rtol: float = RTOL,
                     atol: float = ATOL, used: Sequence[int] | None = None, **kwargs: Any) -> OpRun:
    """`check_op` for an operator with several outputs: torch_fn returns all of them; the used
    outputs are compared, and gradients flow back from the used outputs only."""
    run = run_op_outputs(op, inputs, weights, used=used, **kwargs)
    t_in = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in run.inputs]
    t_w = {k: torch.tensor(v, requires_grad=True) for k, v in run.weights.items()}
    t_outs = list(torch_fn(*t_in, **t_w))
    picked = [t_outs[i] for i in (range(len(t_outs)) if used is None else used)]
    desc = op.describe()
    assert len(run.outputs) == len(picked), f"{desc}: {len(run.outputs)} outputs, torch {len(picked)}"
    for k, (got, want) in enumerate(zip(run.outputs, picked)):
        assert_close(got, want.detach().numpy(), f"{desc}: output {k}", rtol, atol)
    torch.autograd.backward(picked, [torch.tensor(gr) for gr in run.output_grads])
    for i, (a, got, t) in enumerate(zip(run.inputs, run.input_grads, t_in)):
        if a.dtype.kind != "f":
            continue
        assert got is not None, f"{desc}: no gradient for input {i}"
        want = t.grad.numpy() if t.grad is not None else np.zeros_like(a)
        assert_close(got, want, f"{desc}: d input {i}", rtol, atol)
    for name, t in t_w.items():
        want = t.grad.numpy() if t.grad is not None else np.zeros_like(run.weights[name])
        assert_close(run.weight_grads[name], want, f"{desc}: d {name}", rtol, atol)
    return run
