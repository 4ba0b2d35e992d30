"""The Parallel Computation Graph: a computation graph whose every tensor has a parallel shape and
whose re-distributions are explicit parallel operators. Pure Python.

Lifting needs no table of parallel rules beside the operators: an operator's launches name, per
dim of each argument, the launch axis that splits it, so for a configuration (a degree per axis)
the parallel shape of every input it reads, output it writes and weight it uses follows:

- a dim split by axis `a` has degree `degrees[a]`;
- an input or weight that some launch axis of degree > 1 does not split is read whole by those
  points: its copy degree is the product of their degrees (a Replicate);
- an output that such an axis does not split is written by all those points: its sum degree is
  their product (partial sums, a Reduce follows).

Between a producer and each consumer whose parallel shapes differ, `lift` inserts the parallel
operators of `parallel_ops.conversion` (Reduce, Combine, Partition, Replicate): the PCG then
shows every data movement a strategy implies, which the cost model prices and `explain` shows.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from unity_legion.operators.base import SAMPLE, Arg, Launch, Operator, RefKind
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.pcg.parallel_ops import FusedParallelOp, ParallelOp, conversion
from unity_legion.types import (OpConfig, ParallelShapeError, ParallelTensorShape, TensorShape,
                                effective_degree)


class PCGError(ValueError):
    """A configuration does not fit its operator (the message names the operator)."""



def arg_shape(shape: TensorShape, arg: Arg, degrees: Mapping[str, int],
              launch_axes: Sequence[str], writes: bool) -> ParallelTensorShape:
    """The parallel shape of one launch argument under `degrees`."""
    if not arg.split:
        split: tuple[str | None, ...] = (None,) * shape.rank
    else:
        split = arg.split
    dims = tuple(effective_degree(s, degrees.get(a, 1)) if a else 1
                 for s, a in zip(shape.dims, split))  # type: ignore[arg-type]
    others = math.prod(degrees.get(a, 1) for a in launch_axes if a not in split)
    if writes:
        return ParallelTensorShape.of(shape, dims, sum_degree=others)
    return ParallelTensorShape.of(shape, dims, copy_degree=others)


def _axes(launch: Launch) -> list[str]:
    seen: list[str] = []
    for arg in launch.args.values():
        for a in arg.split:
            if a and a not in seen:
                seen.append(a)
    return seen


@dataclass(frozen=True)
class NodeShapes:
    """Parallel shapes of one operator under a configuration."""

    inputs: tuple[ParallelTensorShape, ...]
    outputs: tuple[ParallelTensorShape, ...]
    weights: Mapping[str, ParallelTensorShape]


def check_axes(op: Operator, inputs: Sequence[TensorShape], config: OpConfig, what: str) -> None:
    """Every axis of `config` is one of the operator's and fits its extent (PCGError, prefixed
    with `what`, otherwise)."""
    dims = {pd.axis: pd for pd in op.parallel_dims(inputs)}
    for axis, d in config.degrees:
        if axis not in dims:
            raise PCGError(f"{what}: cannot split axis {axis!r}; its axes are {sorted(dims)}")
        size = dims[axis].size
        if size is not None and d > size:
            raise PCGError(f"{what}: axis {axis!r} has extent {size}, cannot split it {d} ways")


def node_shapes(op: Operator, inputs: Sequence[TensorShape], config: OpConfig) -> NodeShapes:
    """What `op` reads, writes and keeps under `config` (from its forward launches); checks that
    every axis of the configuration is one of the operator's and fits its extent."""
    check_axes(op, inputs, config, op.op_type)
    degrees = config.as_dict()
    plan = _shape_plan(op, tuple(inputs))
    return NodeShapes(tuple(_lifted(a, degrees, False) for a in plan.inputs),
                      tuple(_lifted(a, degrees, True) for a in plan.outputs),
                      {name: _lifted(a, degrees, False) for name, a in plan.weights})


# per argument of an operator: its shape, the Arg of the first forward launch that reads or
# writes it and that launch's axes (None, None: no launch uses it; its shape only)
_ArgPlan = tuple[TensorShape, Arg | None, tuple[str, ...] | None]


def _lifted(a: _ArgPlan, degrees: Mapping[str, int], writes: bool) -> ParallelTensorShape:
    shape, arg, axes = a
    if arg is None or axes is None:
        return ParallelTensorShape.of(shape)
    return arg_shape(shape, arg, degrees, axes, writes)


@dataclass(frozen=True)
class _ShapePlan:
    inputs: tuple[_ArgPlan, ...]
    outputs: tuple[_ArgPlan, ...]
    weights: tuple[tuple[str, _ArgPlan], ...]


@functools.lru_cache(maxsize=1 << 14)
def _shape_plan(op: Operator, inputs: tuple[TensorShape, ...]) -> _ShapePlan:
    """Which launch argument gives each of `op`'s arguments its parallel shape: the same for
    every configuration (the search asks node_shapes for many; building the launches and
    inferring the outputs each time was most of its cost). Operators are frozen dataclasses of
    hashable attributes (the cost model's tables key by them too)."""
    outs = op.infer_outputs(list(inputs))
    weights = {ws.name: ws.shape for ws in op.weights(list(inputs))}
    saved = {sv.name: sv.shape for sv in op.saved(list(inputs))}
    in_args: dict[int, _ArgPlan] = {}
    out_args: dict[int, _ArgPlan] = {}
    w_args: dict[str, _ArgPlan] = {}
    for launch in op.forward(list(inputs), training=True):
        axes = tuple(_axes(launch))
        for name, role in launch.kernel.stores:
            arg = launch.args[name]
            ref = arg.ref
            writes = role.value in ("output", "inout", "sum")
            if ref.kind is RefKind.INPUT and ref.key not in in_args:
                in_args[ref.key] = (inputs[ref.key], arg, axes)
            elif ref.kind is RefKind.OUTPUT and writes and ref.key not in out_args:
                out_args[ref.key] = (outs[ref.key], arg, axes)
            elif ref.kind is RefKind.WEIGHT and ref.key in weights and ref.key not in w_args:
                w_args[ref.key] = (weights[ref.key], arg, axes)
            elif ref.kind is RefKind.SAVED and ref.key not in saved:
                raise PCGError(f"{op.op_type}: launch uses an undeclared saved tensor {ref.key!r}")
    return _ShapePlan(
        tuple(in_args.get(i, (s, None, None)) for i, s in enumerate(inputs)),
        tuple(out_args.get(i, (s, None, None)) for i, s in enumerate(outs)),
        # (weights in the order their launches first use them, then the unused ones)
        tuple(w_args.items()) + tuple((name, (s, None, None)) for name, s in weights.items()
                                      if name not in w_args))


@dataclass(frozen=True)
class PNode:
    """An operator of the PCG: a computation (with its configuration) or a parallel operator."""

    id: int
    name: str
    op: Operator | ParallelOp
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    config: OpConfig | None = None          # computations only
    source: int | None = None               # the computation graph's node id (computations)

    @property
    def is_parallel(self) -> bool:
        return isinstance(self.op, ParallelOp)


@dataclass
class PCG:
    tensors: dict[int, ParallelTensorShape] = field(default_factory=dict)
    nodes: list[PNode] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    weights: dict[tuple[int, str], ParallelTensorShape] = field(default_factory=dict)

    def _tensor(self, shape: ParallelTensorShape) -> int:
        tid = len(self.tensors)
        self.tensors[tid] = shape
        return tid

    def parallel_nodes(self) -> list[PNode]:
        return [n for n in self.nodes if n.is_parallel]

    def computations(self) -> list[PNode]:
        return [n for n in self.nodes if not n.is_parallel]

    def bytes_moved(self) -> int:
        """Bytes the parallel operators move in one forward pass."""
        return sum(n.op.bytes_moved(self.tensors[n.inputs[0]])  # type: ignore[union-attr]
                   for n in self.parallel_nodes())


def lift(graph: ComputationGraph, batch: int, configs: Mapping[int, OpConfig],
         outputs: Sequence[int] | None = None, default: OpConfig | None = None) -> PCG:
    """The PCG of `graph` at `batch` samples with one configuration per node id (nodes missing
    from `configs` get `default`, by default serial). Graph inputs arrive whole; model outputs
    are gathered whole at the end (as the loss reads them)."""
    default = default or OpConfig()
    outputs = list(outputs) if outputs is not None else [
        t for n in graph.nodes for t in n.outputs if not graph.consumers(t)]
    shapes = graph.bind_batch(batch)
    pcg = PCG()
    current: dict[int, int] = {}  # graph tensor -> pcg tensor holding it as produced
    for t in graph.inputs:
        current[t] = pcg._tensor(ParallelTensorShape.of(shapes[t]))
        pcg.inputs.append(current[t])
    for n in graph.subgraph_nodes(outputs):
        cfg = configs.get(n.id, default)
        in_shapes = [shapes[t] for t in n.inputs]
        try:
            ns = node_shapes(n.op, in_shapes, cfg)
        except (PCGError, ParallelShapeError) as exc:
            raise PCGError(f"operator {n.name!r}: {exc}") from None
        # an operator that reads one tensor twice the same way (self-attention's query and
        # value) gets it moved once: both arguments bind the same pieces
        moved: dict[tuple[int, ParallelTensorShape], int] = {}
        ins = []
        for i, (t, want) in enumerate(zip(n.inputs, ns.inputs)):
            key = (current[t], want)
            if key not in moved:
                moved[key] = _convert(pcg, current[t], want, f"{n.name}:in{i}")
            ins.append(moved[key])
        outs = tuple(pcg._tensor(s) for s in ns.outputs)
        pcg.nodes.append(PNode(len(pcg.nodes), n.name, n.op, tuple(ins), outs, cfg, n.id))
        current.update(zip(n.outputs, outs))
        for name, s in ns.weights.items():
            pcg.weights[(n.id, name)] = s
    for t in outputs:
        whole = ParallelTensorShape.of(shapes[t])
        pcg.outputs.append(_convert(pcg, current[t], whole, f"{graph.tensors[t].name}:out"))
    return pcg


def _convert(pcg: PCG, tid: int, want: ParallelTensorShape, name: str) -> int:
    ops = conversion(pcg.tensors[tid], want)
    if not ops:
        return tid
    op: ParallelOp = ops[0] if len(ops) == 1 else FusedParallelOp(ops)
    out = pcg._tensor(op.infer(pcg.tensors[tid]))
    pcg.nodes.append(PNode(len(pcg.nodes), f"{name}:{op.op_type}", op, (tid,), (out,)))
    return out


def data_parallel_config(processors: int, batch: int | None = None,
                         device_type: str = "cpu") -> OpConfig:
    """Every operator split by samples over `processors` devices."""
    degree = processors if batch is None else min(processors, max(batch, 1))
    return OpConfig.of({SAMPLE: degree} if degree > 1 else {}, device_type=device_type)
