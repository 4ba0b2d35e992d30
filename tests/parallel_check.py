"""Run one operator under a parallel configuration and compare with its serial run.

`legal_configs` enumerates every assignment of degrees to the operator's launch axes
(`Operator.parallel_dims`) whose product is at most `max_points` and whose degrees fit the axes'
extents; `check_configs` runs each through the executor (more points than processors share
them) and compares outputs, input gradients and weight gradients with the unsplit run.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import numpy as np

from op_check import OpRun, assert_close, run_op, run_op_outputs
from unity_legion.executor.executor import GraphExecutor
from unity_legion.operators.base import Operator
from unity_legion.types import DataType, MachineView, OpConfig, TensorShape

TOL = dict(rtol=1e-5, atol=1e-6)


def legal_configs(op: Operator, inputs: Sequence[np.ndarray], max_points: int = 4
                  ) -> list[dict[str, int]]:
    shapes = [TensorShape(a.shape, DataType.of(a.dtype)) for a in inputs]
    dims = op.parallel_dims(shapes)
    choices = [[d for d in range(1, max_points + 1) if pd.size is None or d <= pd.size]
               for pd in dims]
    configs = []
    for degrees in itertools.product(*choices):
        if math.prod(degrees) <= max_points:
            configs.append({pd.axis: d for pd, d in zip(dims, degrees) if d > 1})
    return configs


def planned(config: Mapping[str, int]) -> Any:
    """An executor factory whose single node (id 0) runs with `config`."""

    def make(*args: Any, **kwargs: Any) -> GraphExecutor:
        ex = GraphExecutor(*args, **kwargs)
        points = min(math.prod(config.values()), ex.machine.processors)
        ex.set_plan({0: OpConfig.of(config, MachineView.contiguous(ex.view.device_type, 0,
                                                                   points))})
        return ex
    return make


def check_configs(op: Operator, inputs: Sequence[np.ndarray],
                  weights: Mapping[str, np.ndarray] | None = None, max_points: int = 4,
                  atol: float = TOL["atol"], **kwargs: Any) -> list[dict[str, int]]:
    """Every legal configuration equals the serial run; returns the configurations checked."""
    shapes = [TensorShape(a.shape, DataType.of(a.dtype)) for a in inputs]
    run = run_op_outputs if len(op.infer_outputs(shapes)) > 1 else run_op
    serial = run(op, inputs, weights, **kwargs)
    configs = legal_configs(op, inputs, max_points)
    for config in configs:
        if not config:
            continue
        got = run(op, inputs, serial.weights, output_grads=serial.output_grads,
                  executor=planned(config), **kwargs)
        compare(serial, got, f"{op.describe()} {config}", atol)
    return configs


def compare(want: OpRun, got: OpRun, what: str, atol: float = TOL["atol"]) -> None:
    tol = TOL | {"atol": atol}
    for i, (a, b) in enumerate(zip(got.outputs, want.outputs)):
        assert_close(a, b, f"{what}: output {i}", **tol)
    for i, (a, b) in enumerate(zip(got.input_grads, want.input_grads)):
        if b is not None:
            assert_close(a, b, f"{what}: d input {i}", **tol)
    for name, b in want.weight_grads.items():
        assert_close(got.weight_grads[name], b, f"{what}: d {name}", **tol)
