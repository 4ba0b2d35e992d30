"""What one operator costs on one device under a configuration: time forward and backward.

The analytic model is a roofline per point of the launch: the operator's flops (its own
`flops()`) divide evenly over the points of its configuration (every form of parallelism here
splits the work: samples, output or input features, heads); the bytes a point touches are its
pieces of inputs, outputs and weights (from the PCG's parallel shapes, so a replicated input
counts whole). time = max(flops / (peak x efficiency), bytes / bandwidth) + launches x overhead.

Efficiency factors per operator family (`Operator.cost_family`: the fraction of peak a
well-tuned kernel reaches) default to the operators' own `flops_efficiency` (EFFICIENCY below
collects them) and can be calibrated from measurements (profiling/calibrate.py). The backward pass
costs the operator's `backward_ratio` times the forward (by default 2 for operators with
weights: one product for the input gradient, one for the weights; 1 for the rest).
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

from unity_legion.cost.machine import DeviceSpec
from unity_legion.operators.base import Operator
from unity_legion.operators.registry import OPERATORS
from unity_legion.pcg.pcg import NodeShapes, node_shapes
from unity_legion.types import OpConfig, TensorShape

# Fraction of peak FLOP/s reached, per cost family, before calibration: what the operators of
# the family state (dense matrix work is compute-bound and efficient); the rest is memory-bound,
# where the bandwidth term decides, and takes DEFAULT_EFFICIENCY.
EFFICIENCY: dict[str, float] = {cls.cost_family: cls.flops_efficiency for cls in OPERATORS
                                if cls.flops_efficiency is not None}
DEFAULT_EFFICIENCY = 0.3
MEMORY_EFFICIENCY = 0.7      # fraction of peak bandwidth streaming kernels reach


@dataclass(frozen=True)
class OpCost:
    forward: float            # seconds, one point of the launch
    backward: float
    launches_forward: int = 1
    launches_backward: int = 1
    # seconds of the issuing thread for the forward / backward launches, where measured (None:
    # the simulator charges its machine's RuntimeSpec.issue per launch)
    issue_forward: float | None = None
    issue_backward: float | None = None
    # whether forward already holds the zero-fills the executor runs before the launches (of
    # outputs written as partial sums, of saved tensors accumulated into): a measurement does
    fills_included: bool = False
    # seconds of the runtime's own thread (Legion's analysis and mapping) for the forward /
    # backward launches, before their tasks can start, where measured (None: the machine's
    # RuntimeSpec.analysis per launch)
    runtime_forward: float | None = None
    runtime_backward: float | None = None
    # seconds of the kernels alone (one point), without the tasks' own overhead, where
    # measured (None: forward / backward less the device's launch overhead per launch): what
    # a step of a fused task costs (RuntimeSpec.fusion)
    kernel_forward: float | None = None
    kernel_backward: float | None = None
    # the fraction of backward after which the input gradients are written (the operator's
    # input_grads_share; 1: at its end, as a measured cost, which does not split, says)
    input_grads_at: float = 1.0

    @property
    def total(self) -> float:
        return self.forward + self.backward

    def kernels(self, launch_overhead: float) -> tuple[float, float]:
        """(forward, backward) seconds of the kernels alone, one point."""
        kf = (self.kernel_forward if self.kernel_forward is not None
              else self.forward - self.launches_forward * launch_overhead)
        kb = (self.kernel_backward if self.kernel_backward is not None
              else self.backward - self.launches_backward * launch_overhead)
        return max(kf, 0.0), max(kb, 0.0)


class CostModel(Protocol):
    """Anything that prices an operator under a configuration on a device kind.

    `needs_input_grad` (optional; default: every float input) says which inputs the backward
    pass computes a gradient for: a graph's first layers compute none, only weight gradients."""

    def op_cost(self, op: Operator, inputs: Sequence[TensorShape], config: OpConfig,
                device: DeviceSpec, needs_input_grad: Sequence[bool] | None = None
                ) -> OpCost: ...


@dataclass
class AnalyticCost:
    """The roofline model; `efficiency` overrides the family factors (e.g. after calibration)."""

    efficiency: Mapping[str, float] = field(default_factory=dict)
    memory_efficiency: float = MEMORY_EFFICIENCY
    _cache: dict = field(default_factory=dict, repr=False)

    def factor(self, family: str, device: DeviceSpec | None = None) -> float:
        """Fraction of peak FLOP/s of a cost family: this model's override, else the device's
        calibration, else the family default."""
        if family in self.efficiency:
            return self.efficiency[family]
        fitted = dict(device.efficiency) if device is not None else {}
        return fitted.get(family, EFFICIENCY.get(family, DEFAULT_EFFICIENCY))

    def memory_factor(self, family: str, device: DeviceSpec) -> float:
        return dict(device.memory_efficiency).get(family, self.memory_efficiency)

    def op_cost(self, op: Operator, inputs: Sequence[TensorShape], config: OpConfig,
                device: DeviceSpec, needs_input_grad: Sequence[bool] | None = None) -> OpCost:
        needs = (tuple(s.dtype.is_float for s in inputs) if needs_input_grad is None
                 else tuple(bool(n) and s.dtype.is_float for n, s in zip(needs_input_grad, inputs)))
        key = (op, tuple(inputs), config.degrees, device, needs)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._compute(op, inputs, config, device, needs)
        return hit

    def _compute(self, op: Operator, inputs: Sequence[TensorShape], config: OpConfig,
                 device: DeviceSpec, needs: Sequence[bool]) -> OpCost:
        shapes = node_shapes(op, inputs, config)
        points = max(config.num_points, 1)
        flops = op.flops(list(inputs)) / points
        nbytes = piece_bytes(shapes)
        touched = op.weight_bytes_touched(list(inputs))
        if touched is not None:   # a lookup reads the rows it gathers, not the whole table
            whole = sum(s.piece_bytes() for s in shapes.weights.values())
            nbytes += min(touched / points, whole) - whole
        fwd_launches = len(op.forward(list(inputs), training=True))
        bwd_launches = len(op.backward(list(inputs), list(needs)))
        # an operator computing in a half precision (mixed precision: its float inputs are
        # bf16/fp16) runs at the device's 16-bit rate (tensor cores); the calibrated fraction
        # of peak is kept. Its bytes are already half: piece_bytes counts 2 per element.
        peak = device.flops_bf16 if _computes_half(inputs) else device.flops_fp32
        compute = flops / (peak * self.factor(op.cost_family, device))
        memory = nbytes / (device.mem_bandwidth * self.memory_factor(op.cost_family, device))
        fwd = max(compute, memory)
        weighted = bool(op.weights(list(inputs)))
        own = op.backward_ratio if op.backward_ratio is not None else (2.0 if weighted else 1.0)
        ratio = dict(device.backward_ratio).get(op.cost_family, own)
        if weighted and not any(needs):  # weight gradients only: one product of two
            ratio /= 2
        return OpCost(fwd + fwd_launches * device.launch_overhead,
                      ratio * fwd + bwd_launches * device.launch_overhead,
                      fwd_launches, bwd_launches,
                      input_grads_at=op.input_grads_share(list(inputs), list(needs)))


def _computes_half(inputs: Sequence[TensorShape]) -> bool:
    """Whether an operator with these inputs computes in a 16-bit float: its float inputs are
    all half (a Cast from float32 to bf16 is memory-bound either way)."""
    floats = [s.dtype for s in inputs if s.dtype.is_float]
    return bool(floats) and all(dt.is_half for dt in floats)


def priced(model: CostModel, op: Operator, inputs: Sequence[TensorShape], config: OpConfig,
           device: DeviceSpec, needs_input_grad: Sequence[bool] | None = None) -> OpCost:
    """model.op_cost, passing `needs_input_grad` only to a cost model whose op_cost takes it (a
    cost model written before that keyword still works)."""
    if needs_input_grad is not None and _takes_needs(type(model)):
        return model.op_cost(op, inputs, config, device, needs_input_grad=needs_input_grad)
    return model.op_cost(op, inputs, config, device)


@functools.cache
def _takes_needs(cls: type) -> bool:
    try:
        return "needs_input_grad" in inspect.signature(cls.op_cost).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def piece_bytes(shapes: NodeShapes) -> int:
    """Bytes one point reads and writes: its pieces of every input, output and weight."""
    return (sum(s.piece_bytes() for s in shapes.inputs) + sum(s.piece_bytes() for s in shapes.outputs)
            + sum(s.piece_bytes() for s in shapes.weights.values()))


def points_of(config: OpConfig) -> int:
    return max(math.prod(d for _, d in config.degrees), 1)
