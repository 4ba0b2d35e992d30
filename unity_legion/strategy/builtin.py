"""Ready-made strategies: data parallel, Megatron-style tensor parallel, table parallel, random.
Pure Python.

Each asks the operators what they can split (`Operator.parallel_dims`) and never assumes an axis
exists: an operator without the axis a rule wants stays data-parallel, so every builtin fits every
model. `model` is a ComputationGraph or a built Keras model; `batch` (optional) caps the sample
degree at the batch size.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np

from unity_legion.operators.base import SAMPLE, ParallelDim
from unity_legion.pcg.graph import ComputationGraph, Node
from unity_legion.pcg.pcg import PCGError, node_shapes
from unity_legion.strategy.strategy import (MachineSpec, Strategy, StrategyError, as_graph,
                                            graph_signature)
from unity_legion.types import MachineView, OpConfig, ParallelShapeError, TensorShape

# Megatron's column- and row-parallel axes of a Linear, and attention's heads axis.
OUT, IN, HEADS, COLUMNS = "out", "in", "heads", "columns"


def _check_devices(devices: int) -> int:
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise StrategyError(f"devices must be a positive integer, got {devices!r}")
    return devices


def _shapes(graph: ComputationGraph, batch: int | None) -> dict[int, TensorShape]:
    if batch is not None:
        return graph.bind_batch(batch)
    return {t: s.shape for t, s in graph.tensors.items()}


def _dims(node: Node, shapes: Mapping[int, TensorShape]) -> dict[str, ParallelDim]:
    return {pd.axis: pd for pd in node.op.parallel_dims([shapes[t] for t in node.inputs])}


def _cap(degree: int, size: int | None) -> int:
    return degree if size is None else max(1, min(degree, size))


def _config(degrees: Mapping[str, int], device_type: str, start: int = 0) -> OpConfig:
    return OpConfig.of({a: d for a, d in degrees.items() if d > 1}, device_type=device_type,
                       start=start)


def _data_parallel(dims: Mapping[str, ParallelDim], devices: int, device_type: str) -> OpConfig:
    if SAMPLE not in dims:
        return OpConfig.of({}, device_type=device_type)
    return _config({SAMPLE: _cap(devices, dims[SAMPLE].size)}, device_type)


def _largest_divisor(devices: int, fits: Callable[[int], bool]) -> int:
    """The largest divisor of `devices` that `fits` (1 at worst)."""
    return max(d for d in range(1, devices + 1) if devices % d == 0 and (d == 1 or fits(d)))


def _with_sample(dims: Mapping[str, ParallelDim], tensor: Mapping[str, int], devices: int,
                 device_type: str) -> OpConfig:
    """Tensor-parallel degrees, times as many samples as the remaining devices allow."""
    degree = math.prod(tensor.values())
    sample = _cap(devices // degree, dims[SAMPLE].size) if SAMPLE in dims else 1
    return _config(dict(tensor) | {SAMPLE: sample}, device_type)


def _make(model: Any, source: str, device_type: str, devices: int,
          configs: Mapping[str, OpConfig]) -> Strategy:
    graph, name = as_graph(model)
    return Strategy(name, graph_signature(graph), source, MachineSpec(device_type, devices),
                    configs)


# ---------------------------------------------------------------------------------------------

def data_parallel(model: Any, devices: int, device_type: str = "cpu",
                  batch: int | None = None) -> Strategy:
    """Every operator split by samples over all devices."""
    graph, _ = as_graph(model)
    devices = _check_devices(devices)
    shapes = _shapes(graph, batch)
    return _make(model, "data_parallel", device_type, devices,
                 {n.name: _data_parallel(_dims(n, shapes), devices, device_type)
                  for n in graph.nodes})


def serial(model: Any, devices: int, device_type: str = "cpu",
           batch: int | None = None) -> Strategy:
    """Every operator whole on the first device: no launch has more than one point (on a
    small model, one processor's tasks can beat two processors' for the runtime's cost per
    point and per partial sum)."""
    graph, _ = as_graph(model)
    devices = _check_devices(devices)
    return _make(model, "serial", device_type, devices,
                 {n.name: _config({}, device_type) for n in graph.nodes})


def _linear_partner(graph: ComputationGraph, node: Node) -> tuple[Node, list[Node]] | None:
    """The Linear that `node`'s output reaches through elementwise operators only (each tensor
    on the way read by one operator), and those operators."""
    middle: list[Node] = []
    tensor = node.outputs[0]
    while True:
        consumers = graph.consumers(tensor)
        if len(consumers) != 1:
            return None
        c = consumers[0]
        if c.op.op_type == "linear":
            return c, middle
        # a column-parallel output passes an operator that acts on each element alone with its
        # features still split (Operator.is_elementwise)
        if not c.op.is_elementwise() or len(c.inputs) != 1 or len(c.outputs) != 1:
            return None
        middle.append(c)
        tensor = c.outputs[0]


def _feature_axis(node: Node, concrete: Mapping[int, TensorShape], degree: int) -> str | None:
    """An axis of `node` that splits the last dim of its input and output `degree` ways (found by
    asking the PCG's shape rule, so no operator's axis names are assumed)."""
    inputs = [concrete[t] for t in node.inputs]
    for pd in node.op.parallel_dims(inputs):
        if pd.axis == SAMPLE or (pd.size is not None and pd.size < degree):
            continue
        try:
            ns = node_shapes(node.op, inputs, OpConfig.of({pd.axis: degree}))
        except (PCGError, ParallelShapeError, ValueError):
            continue
        if ns.inputs[0].degrees[-1] == degree and ns.outputs[0].degrees[-1] == degree \
                and ns.outputs[0].sum_degree == 1:
            return pd.axis
    return None


def megatron(model: Any, devices: int, device_type: str = "cpu",
             batch: int | None = None, max_tensor: int | None = None) -> Strategy:
    """Megatron-LM's tensor parallelism: a Linear whose output reaches another Linear (directly
    or through elementwise operators) splits its output features ("out", column-parallel) and
    the second its input features ("in", row-parallel), so the pair needs no data movement
    between them; attention splits its heads. The tensor-parallel degree is the largest divisor
    of `devices` that fits; the devices left over split the samples. Everything else is
    data-parallel over all devices. `max_tensor` caps the tensor-parallel degree (Megatron keeps
    it inside a node: the devices of one node)."""
    graph, _ = as_graph(model)
    devices = _check_devices(devices)
    cap = devices if max_tensor is None else max(1, min(devices, max_tensor))
    shapes = _shapes(graph, batch)
    concrete = graph.bind_batch(batch or devices)
    configs: dict[str, OpConfig] = {}
    for n in graph.nodes:
        if n.name in configs:
            continue
        dims = _dims(n, shapes)
        if HEADS in dims and dims[HEADS].size:
            heads = dims[HEADS].size
            t = _largest_divisor(devices, lambda d: heads % d == 0 and d <= cap)
            if t > 1:
                configs[n.name] = _with_sample(dims, {HEADS: t}, devices, device_type)
                continue
        pair = _linear_partner(graph, n) if n.op.op_type == "linear" else None
        if pair is not None and OUT in dims and pair[0].name not in configs:
            second, middle = pair
            dims2 = _dims(second, shapes)
            if IN in dims2:
                extent = min(dims[OUT].size or devices, dims2[IN].size or devices)
                t = _largest_divisor(devices, lambda d: d <= min(extent, cap))
                if t > 1:
                    configs[n.name] = _with_sample(dims, {OUT: t}, devices, device_type)
                    configs[second.name] = _with_sample(dims2, {IN: t}, devices, device_type)
                    for m in middle:
                        axis = _feature_axis(m, concrete, t)
                        tensor = {axis: t} if axis else {}
                        configs[m.name] = (_with_sample(_dims(m, shapes), tensor, devices,
                                                        device_type) if axis else
                                           _data_parallel(_dims(m, shapes), devices, device_type))
                    continue
        configs[n.name] = _data_parallel(dims, devices, device_type)
    return _make(model, "megatron", device_type, devices,
                 {n.name: configs[n.name] for n in graph.nodes})


def table_parallel(model: Any, devices: int, device_type: str = "cpu",
                   batch: int | None = None) -> Strategy:
    """DLRM-style: each embedding table whole on a device of its own (round robin over the
    devices), or split by columns over all devices where the operator offers "columns"; the
    rest data-parallel."""
    graph, _ = as_graph(model)
    devices = _check_devices(devices)
    shapes = _shapes(graph, batch)
    configs: dict[str, OpConfig] = {}
    table = 0
    for n in graph.nodes:
        dims = _dims(n, shapes)
        if n.op.op_type == "embedding":
            cols = dims.get(COLUMNS)
            if cols is not None:
                size = cols.size or devices
                t = _largest_divisor(devices, lambda d: d <= size)
                if t > 1:
                    configs[n.name] = _with_sample(dims, {COLUMNS: t}, devices, device_type)
                    continue
            configs[n.name] = _config({}, device_type, start=table % devices)
            table += 1
            continue
        configs[n.name] = _data_parallel(dims, devices, device_type)
    return _make(model, "table_parallel", device_type, devices, configs)


def random_strategy(model: Any, devices: int, rng: np.random.Generator | int,
                    batch: int | None = None, device_type: str = "cpu") -> Strategy:
    """A random legal configuration per operator: a random subset of its axes, random degrees
    (each within its axis' extent, their product at most `devices`), a random first device such
    that the view fits. Used by tests and as the search's starting points."""
    graph, _ = as_graph(model)
    devices = _check_devices(devices)
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    shapes = _shapes(graph, batch)
    configs: dict[str, OpConfig] = {}
    for n in graph.nodes:
        dims = list(_dims(n, shapes).values())
        degrees: dict[str, int] = {}
        points = 1
        for i in rng.permutation(len(dims)):
            pd = dims[int(i)]
            top = _cap(devices // points, pd.size)
            if top < 2 or rng.random() < 0.4:
                continue
            d = int(rng.integers(2, top + 1))
            degrees[pd.axis] = d
            points *= d
        start = int(rng.integers(0, devices - points + 1))
        configs[n.name] = OpConfig.of(degrees, MachineView.contiguous(device_type, start, points))
    return _make(model, "random", device_type, devices, configs)


def expert(model: Any, devices: int, device_type: str = "cpu",
           batch: int | None = None, devices_per_node: int | None = None) -> Strategy:
    """What an expert would write by hand (the Unity paper's baseline): Megatron-style tensor
    parallelism (inside a node) for a model with attention, table-parallel embeddings for a model
    with embeddings (DLRM, XDL), data parallelism otherwise."""
    graph, _ = as_graph(model)
    kinds = {n.op.op_type for n in graph.nodes}
    if "multi_head_attention" in kinds:
        return megatron(model, devices, device_type, batch, max_tensor=devices_per_node)
    if "embedding" in kinds:
        return table_parallel(model, devices, device_type, batch)
    return data_parallel(model, devices, device_type, batch)


BUILTINS: dict[str, Callable[..., Strategy]] = {
    "data_parallel": data_parallel, "megatron": megatron, "table_parallel": table_parallel,
    "expert": expert, "serial": serial}


def by_name(name: str, model: Any, devices: int, device_type: str = "cpu",
            batch: int | None = None) -> Strategy:
    """A builtin strategy by name ("data_parallel", "megatron", "table_parallel", "expert",
    "serial")."""
    if name not in BUILTINS:
        raise StrategyError(f"no builtin strategy named {name!r}; builtins: "
                            f"{', '.join(BUILTINS)}")
    return BUILTINS[name](model, devices, device_type=device_type, batch=batch)
