"""A strategy: one parallel configuration (degrees and machine view) per operator of a model,
saved as JSON, checked against a model and a machine before anything runs. Pure Python.

A strategy names operators by their (layer) names, so a file outlives the process that wrote it;
the graph signature (a short hash of the operators, their attributes and the input shapes) tells
a file made for another model apart. `compile(graph, ...)` resolves the strategy once into the
CompiledPlan the executor runs (strategy/plan.py: the graph that runs with its outputs, a config
by node id, the weight translation, the frozen weights); `explain` and `draw` show the PCG the
strategy implies (`pcg.lift`).

File format (version 1)::

    {"schema": "unity_legion.strategy", "version": 1, "model": "bert", "signature": "3f2a...",
     "source": "megatron", "machine": {"device_type": "cpu", "devices": 4},
     "operators": {"bert_layer_0_intermediate": {"degrees": {"out": 2, "sample": 2},
                                                 "view": {"device_type": "cpu", "start": 0,
                                                          "dims": [4], "strides": [1]}}, ...}}

A view may leave out any of its keys: the device type defaults to the machine's, the start to 0,
the dims to one dimension of as many devices as the degrees' product, the strides to row-major
packing (1 for one dimension). A view may be strided (`"dims": [2], "strides": [2]`: devices 0
and 2) or 2-D (`"dims": [2, 2], "strides": [4, 1]`: devices 0, 1, 4, 5, a node x device grid);
point i of a launch (row-major over its grid) runs on the view's i-th device. Refused, with the
reason: two points on one device, devices the machine lacks, more or fewer devices than points.

A strategy found by the search may also rewrite the graph first: an optional
`"substitutions": [{"rule": "unfuse_linear_activation", "nodes": ["dense_1"]}, ...]` lists the
rewrites (rule and matched operators) replayed, in order, on the model's graph; "operators" then
names the operators of the rewritten graph. The signature is always the model's own.

A pipelined strategy adds `"pipeline": {"micro_batches": 8, "schedule": "1f1b", "stages":
[{"name": "stage_0", "operators": [...], "devices": [0, 1, 2, 3]}, ...]}` (pcg/pipeline.py):
every operator in one stage, stages on disjoint devices, each operator's view on its stage's
devices; an operator the strategy does not configure runs data-parallel over its stage.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from unity_legion.operators._aten import DeviceDtypeError, check_device_dtype
from unity_legion.operators.base import SAMPLE
from unity_legion.pcg.graph import ComputationGraph, Node
from unity_legion.pcg.pcg import PCG, PCGError, check_axes, data_parallel_config, lift
from unity_legion.pcg.pipeline import (PipelineError, PipelineSpec, Stage, inexact_operator,
                                       lift_pipelined)
from unity_legion.strategy import report
from unity_legion.strategy.report import CostFn
from unity_legion.substitutions.apply import AppliedRule, Rewrite, replay
from unity_legion.substitutions.rule import SubstitutionError
from unity_legion.types import MachineView, OpConfig, ParallelShapeError

if TYPE_CHECKING:
    from unity_legion.strategy.plan import CompiledPlan

SCHEMA = "unity_legion.strategy"
VERSION = 1
SOURCES = ("data_parallel", "megatron", "table_parallel", "random", "manual", "search",
           "serial")
DEVICE_TYPES = ("cpu", "gpu")

class StrategyError(ValueError):
    """A strategy that cannot run on this model or machine; the message says which operator and
    what is wrong."""


def as_graph(model: Any) -> tuple[ComputationGraph, str]:
    """A computation graph and its model's name, from a graph or a built Keras model (anything
    with the public `.graph` and `.name`; duck-typed so this module needs no Keras). The graph
    knows its outputs (`graph.outputs`)."""
    if isinstance(model, ComputationGraph):
        return model, "model"
    graph = getattr(model, "graph", None)
    if not isinstance(graph, ComputationGraph):
        raise TypeError(f"expected a ComputationGraph or a built model, got {type(model).__name__}")
    return graph, str(getattr(model, "name", "model"))


def graph_signature(graph: ComputationGraph) -> str:
    """A short hash of what a strategy depends on: node names, operator types and attributes,
    and the graph's input shapes (batch left out)."""
    parts: list[Any] = [[graph.tensors[t].name, list(graph.tensors[t].shape.dims),
                         graph.tensors[t].shape.dtype.value] for t in graph.inputs]
    parts += [[n.name, n.op.describe(), list(n.inputs)] for n in graph.nodes]
    text = json.dumps(parts, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class MachineSpec:
    """The machine a strategy was made for: `devices` devices of one type."""

    device_type: str = "cpu"
    devices: int = 1

    def __post_init__(self) -> None:
        if self.device_type not in DEVICE_TYPES:
            raise StrategyError(f"machine: device type must be one of {DEVICE_TYPES}, got "
                                f"{self.device_type!r}")
        if isinstance(self.devices, bool) or not isinstance(self.devices, int) or self.devices < 1:
            raise StrategyError(f"machine: devices must be a positive integer, got {self.devices!r}")


def _available(devices: int | Mapping[str, int], default_type: str) -> dict[str, int]:
    """{device type: count} of the machine to run on; an int counts devices of `default_type`."""
    if isinstance(devices, Mapping):
        return {k: int(v) for k, v in devices.items() if int(v) > 0}
    return {default_type: int(devices)} if int(devices) > 0 else {}


@dataclass(frozen=True)
class Strategy:
    model: str
    signature: str
    source: str
    machine: MachineSpec
    # by operator name, in the graph the substitutions make (the model's own without any)
    configs: Mapping[str, OpConfig] = field(default_factory=dict)
    # graph rewrites applied to the model's graph first, in order (the search's algebraic
    # substitutions: each a rule name and the names of the operators it matched)
    substitutions: tuple[AppliedRule, ...] = ()
    # pipeline parallelism: stages (operators of the graph that runs, devices), micro-batches
    # and schedule (pcg/pipeline.py); None: one stage, the whole batch at once
    pipeline: PipelineSpec | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise StrategyError(f"unknown strategy source {self.source!r}; expected one of "
                                f"{SOURCES}")
        object.__setattr__(self, "configs", dict(self.configs))
        object.__setattr__(self, "substitutions", tuple(self.substitutions))

    @classmethod
    def for_graph(cls, model: Any, configs: Mapping[str, OpConfig], source: str = "manual",
                  device_type: str = "cpu", devices: int = 1, name: str | None = None,
                  substitutions: Sequence[AppliedRule] = (),
                  pipeline: PipelineSpec | None = None) -> "Strategy":
        """A strategy for `model` (a graph or a built Keras model) from configs by operator name
        (names of the rewritten graph when `substitutions` are given)."""
        graph, model_name = as_graph(model)
        return cls(name or model_name, graph_signature(graph), source,
                   MachineSpec(device_type, devices), dict(configs), tuple(substitutions),
                   pipeline)

    def rewrite(self, model: Any) -> Rewrite | None:
        """The model's graph with this strategy's substitutions applied (None without any);
        StrategyError naming the step that does not fit the model."""
        if not self.substitutions:
            return None
        graph, _ = as_graph(model)
        outs = graph.outputs
        try:
            rw = replay(graph, self.substitutions, outputs=outs)
        except SubstitutionError as exc:
            raise StrategyError(f"the strategy's substitutions do not fit model "
                                f"{self.model!r}: {exc}") from None
        rw.graph.set_outputs([rw.tensor_map[t] for t in outs])
        return rw

    def graph_for(self, model: Any) -> tuple[ComputationGraph, list[int]]:
        """The graph this strategy runs for `model` and its output tensors."""
        graph, _ = as_graph(model)
        rw = self.rewrite(graph)
        if rw is None:
            return graph, graph.outputs
        return rw.graph, rw.graph.outputs

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> str:
        ops = {}
        for name, cfg in self.configs.items():
            v = cfg.view
            ops[name] = {"degrees": cfg.as_dict(),
                         "view": {"device_type": v.device_type, "start": v.start,
                                  "dims": list(v.dims), "strides": list(v.strides)}}
        doc = {"schema": SCHEMA, "version": VERSION, "model": self.model,
               "signature": self.signature, "source": self.source,
               "machine": {"device_type": self.machine.device_type,
                           "devices": self.machine.devices},
               "operators": ops}
        if self.substitutions:
            doc["substitutions"] = [a.as_dict() for a in self.substitutions]
        if self.pipeline is not None:
            doc["pipeline"] = self.pipeline.to_dict()
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str = "strategy") -> "Strategy":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StrategyError(f"{origin}: not valid JSON ({exc})") from None
        return _parse(doc, origin)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON file atomically: a reader sees the old file or the new, never half."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".strategy-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.to_json())
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a saved file is not
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Strategy":
        path = os.fspath(path)
        try:
            with open(path) as f:
                text = f.read()
        except OSError as exc:
            raise StrategyError(f"strategy file {path!r}: cannot read it ({exc.strerror})") from None
        return cls.from_json(text, f"strategy file {path!r}")

    # ------------------------------------------------------------------ checks
    def config_for(self, node: Node, batch: int | None = None) -> OpConfig:
        """The node's configuration; an operator the strategy does not name runs data-parallel
        over the strategy's machine (at most one sample per device)."""
        cfg = self.configs.get(node.name)
        if cfg is None:
            stage = self._stage_of_name(node.name)
            if stage is not None:  # data-parallel over its stage's devices, on a micro-batch
                m = self.pipeline.micro_batches  # type: ignore[union-attr]
                micro = None if batch is None else max(batch // m, 1)
                dp = data_parallel_config(len(stage.devices), micro, self.machine.device_type)
                devs = stage.devices[:dp.num_points]
                return OpConfig.of(dp.as_dict(), MachineView(
                    self.machine.device_type, devs[0], (len(devs),),
                    (devs[1] - devs[0] if len(devs) > 1 else 1,)))
            return data_parallel_config(self.machine.devices, batch, self.machine.device_type)
        return cfg

    def _stage_of_name(self, name: str) -> Stage | None:
        if self.pipeline is None:
            return None
        return next((st for st in self.pipeline.stages if name in st.operators), None)

    def validate(self, model: Any, batch: int | None = None,
                 devices: int | Mapping[str, int] | None = None) -> None:
        """Raise StrategyError if this strategy cannot run `model` (a graph or a built model) at
        `batch` samples (None: not known yet; sample extents are not checked) on a machine of
        `devices` (an int: that many of the strategy's device type; a mapping: a count per device
        type; None: the strategy's own machine)."""
        original, _ = as_graph(model)
        self._check_signature(original)
        graph, _ = self.graph_for(original)
        self._validate_graph(graph, batch, devices)

    def compile(self, model: Any, batch: int | None = None,
                devices: int | Mapping[str, int] | None = None,
                frozen: Iterable[tuple[int, str]] = ()) -> "CompiledPlan":
        """This strategy resolved for `model` (a graph with its outputs, or a built model) into
        the one object the executor runs (strategy/plan.py): validated as `validate` does (the
        same errors), the substitutions replayed once, a configuration for every node of the
        graph that runs, the weight translation (StrategyError, naming the substitution, if the
        rewritten weights cannot be trained as the model's) and the model's `frozen` weights
        (checked against the translation)."""
        from unity_legion.strategy.plan import CompiledPlan, WeightTranslation

        original, _ = as_graph(model)
        self._check_signature(original)
        rw = self.rewrite(original)
        graph = original if rw is None else rw.graph
        self._validate_graph(graph, batch, devices)
        frozen = frozenset(frozen)
        translation = None
        run_frozen = frozen
        if rw is not None:
            translation = WeightTranslation.of(original, original.outputs, rw, self.substitutions)
            run_frozen = translation.frozen_keys(frozen)   # a mixed frozen weight fails now
        if self.pipeline is not None:
            self._check_pipeline_exact(graph, run_frozen, batch)
        return CompiledPlan(graph, graph.outputs, self._by_id(graph), translation, frozen,
                            self.substitutions, original, self.pipeline)

    def _check_pipeline_exact(self, graph: ComputationGraph, frozen: frozenset,
                              batch: int | None) -> None:
        """A pipelined step must train as the whole batch does: an operator normalising with
        its batch's statistics (batch norm, unless frozen) is refused, naming it and its stage."""
        spec = self.pipeline
        assert spec is not None
        n = inexact_operator(graph, graph.subgraph_nodes(graph.outputs), frozen)
        if n is None:
            return
        stage = self._stage_of_name(n.name)
        micro = (f"{spec.micro_batch(batch)} samples" if batch is not None
                 else f"1/{spec.micro_batches} of the batch")
        raise StrategyError(
            f"strategy for model {self.model!r}: stage {stage.name if stage else '?'!r}: "
            f"operator {n.name!r} ({n.op.op_type}) normalises with its batch's statistics; in "
            f"micro-batches of {micro} it would compute other numbers than the whole batch, "
            f"so the pipeline cannot train it exactly: freeze the layer or use a strategy "
            f"without a pipeline")

    def _check_signature(self, original: ComputationGraph) -> None:
        sig = graph_signature(original)
        # without substitutions the operators are the model's own: an unknown name says more
        # than a signature that differs; with them, the graph is only rebuilt for the right model
        names = {n.name: n for n in original.nodes}
        unknown = [] if self.substitutions else [k for k in self.configs if k not in names]
        if unknown or sig != self.signature:
            what = (f"operator {unknown[0]!r} is not in this model" if unknown else
                    "the model's operators, attributes or input shapes differ")
            raise StrategyError(f"this strategy was made for model {self.model!r} (signature "
                                f"{self.signature}), not this one (signature {sig}): {what}")

    def _validate_graph(self, graph: ComputationGraph, batch: int | None,
                        devices: int | Mapping[str, int] | None) -> None:
        """The checks of `validate` on the graph the strategy runs (substitutions applied)."""
        names = {n.name: n for n in graph.nodes}
        unknown = [k for k in self.configs if k not in names]
        if unknown:
            raise StrategyError(f"strategy for model {self.model!r}: operator {unknown[0]!r} is "
                                f"not in the graph its substitutions make")
        avail = _available(self.machine.devices if devices is None else devices,
                           self.machine.device_type)
        self._check_machine(self.machine.device_type, avail, "the strategy")
        if self.machine.devices > avail[self.machine.device_type]:
            raise StrategyError(f"the strategy was made for {self.machine.devices} "
                                f"{self.machine.device_type} devices; the machine has "
                                f"{avail[self.machine.device_type]}")
        shapes = graph.bind_batch(batch) if batch is not None else {
            t: s.shape for t, s in graph.tensors.items()}
        for name, cfg in self.configs.items():
            n = names[name]
            _check_config(n, [shapes[t] for t in n.inputs], cfg, avail)
        for n in graph.nodes:  # a GPU view runs the GPU kernels: dtypes they run only
            cfg = self.configs.get(n.name)
            if (cfg.view.device_type if cfg is not None else self.machine.device_type) == "gpu":
                _check_gpu_dtypes(n, [shapes[t] for t in n.inputs])
        lift_batch = batch
        if self.pipeline is not None:
            self._check_pipeline(graph, batch, avail)
            if batch is not None:
                lift_batch = batch // self.pipeline.micro_batches
        if lift_batch is not None:  # everything else the PCG finds (shapes that do not fit, ...)
            try:
                lift(graph, lift_batch, self._by_id(graph, batch))
            except (PCGError, ParallelShapeError) as exc:
                raise StrategyError(str(exc)) from None

    def _check_pipeline(self, graph: ComputationGraph, batch: int | None,
                        avail: Mapping[str, int]) -> None:
        """The pipeline's stages against the graph that runs (PipelineSpec.assign: overlapping
        devices, the micro-batch count, boundaries that cut no edge, ...), its devices against
        the machine, and every operator's view against its stage's devices."""
        spec = self.pipeline
        assert spec is not None
        have = avail.get(self.machine.device_type, 0)
        for st in spec.stages:
            if max(st.devices) >= have:
                raise StrategyError(f"stage {st.name!r}: uses {self.machine.device_type} device "
                                    f"{max(st.devices)} but the machine has {have}")
        try:
            stage_of = spec.assign(graph, batch)
            spec.check_configs(graph, stage_of, self._by_id(graph, batch), batch)
        except PipelineError as exc:
            raise StrategyError(f"strategy for model {self.model!r}: {exc}") from None

    @staticmethod
    def _check_machine(device_type: str, avail: Mapping[str, int], what: str) -> None:
        if device_type not in avail:
            have = ", ".join(f"{v} {k}" for k, v in avail.items()) or "no devices"
            raise StrategyError(f"{what} runs on {device_type} devices; the machine has {have} "
                                f"(0 {device_type})")

    # ------------------------------------------------------------------ use
    def _by_id(self, graph: ComputationGraph, batch: int | None = None) -> dict[int, OpConfig]:
        return {n.id: self.config_for(n, batch) for n in graph.nodes}

    def plan(self, model: Any) -> dict[int, OpConfig]:
        """{node id: OpConfig} of every node of the graph the strategy runs (`graph_for(model)`);
        the executor takes them in a CompiledPlan (`compile`)."""
        graph, _ = self.graph_for(model)
        return self._by_id(graph)

    def pcg(self, model: Any, batch: int) -> PCG:
        """The PCG this strategy implies at `batch` samples (a sample degree above the batch
        counts as the batch, as the executor runs it)."""
        graph, outs = self.graph_for(model)
        configs = {}
        micro = batch
        if self.pipeline is not None:
            try:
                micro = self.pipeline.micro_batch(batch)
            except PipelineError as exc:
                raise StrategyError(str(exc)) from None
        for nid, cfg in self._by_id(graph, batch).items():
            if cfg.degree(SAMPLE) > micro:
                cfg = OpConfig.of(cfg.as_dict() | {SAMPLE: max(micro, 1)}, cfg.view)
            configs[nid] = cfg
        try:
            if self.pipeline is not None:
                return lift_pipelined(graph, batch, self.pipeline, configs, outs)
            return lift(graph, batch, configs, outs)
        except (PCGError, ParallelShapeError) as exc:
            raise StrategyError(str(exc)) from None

    def explain(self, model: Any, batch: int, cost: CostFn | None = None,
                machine: Any = None, cost_model: Any = None) -> str:
        """The per-operator table (report.explain); with a `machine` model
        (unity_legion.cost.MachineModel) it simulates one training step there (with
        `cost_model`, default the analytic roofline) and adds each operator's compute,
        communication and waiting time, and the step time."""
        pcg = self.pcg(model, batch)
        sim = None
        if self.pipeline is not None:
            from unity_legion.strategy.pipeline import explain_pipeline

            priced = None
            if machine is not None:
                from unity_legion.cost.simulator import Simulator

                graph, outs = self.graph_for(model)
                priced = Simulator(machine, cost_model).simulate_pipeline(
                    graph, batch, self._by_id(graph, batch), self.pipeline, outs)
            return report.explain(self, pcg, batch // self.pipeline.micro_batches, cost, None) + \
                "\n" + explain_pipeline(self.pipeline, batch, priced)
        if machine is not None:
            from unity_legion.cost.simulator import Simulator

            graph, _ = self.graph_for(model)
            sim = Simulator(machine, cost_model).simulate_pcg(graph, pcg)
        return report.explain(self, pcg, batch, cost, sim)

    def draw(self, model: Any, batch: int, path: str | os.PathLike[str]) -> None:
        graph, outs = self.graph_for(model)
        report.draw(self, self.pcg(model, batch), path,
                    [graph.tensors[t].name for t in graph.inputs],
                    [graph.tensors[t].name for t in outs])


def _check_gpu_dtypes(node: Node, inputs: list[Any]) -> None:
    what = f"operator {node.name!r} ({node.op.op_type})"
    dtypes = ([s.dtype for s in inputs] + [o.dtype for o in node.op.infer_outputs(inputs)]
              + [w.shape.dtype for w in node.op.weights(inputs)])
    try:
        for dt in dtypes:
            check_device_dtype(what, dt, "gpu")
    except DeviceDtypeError as exc:
        raise StrategyError(str(exc)) from None


def _check_config(node: Node, inputs: list[Any], cfg: OpConfig, avail: Mapping[str, int]) -> None:
    what = f"operator {node.name!r} ({node.op.op_type})"
    try:
        check_axes(node.op, inputs, cfg, what)
    except PCGError as exc:
        raise StrategyError(str(exc)) from None
    view = cfg.view
    points, have = cfg.num_points, view.num_points
    shown = " x ".join(f"{a}={d}" for a, d in cfg.degrees) or "serial"
    if have < points:
        raise StrategyError(f"{what}: {shown} launches {points} points but its view has {have} "
                            f"device(s), {points - have} too few")
    if have > points:
        raise StrategyError(f"{what}: {shown} launches {points} point(s) but its view has {have} "
                            f"devices, {have - points} too many (one device per point)")
    # Any set of distinct devices runs: a contiguous range as one launch over that processor
    # range, a strided or 2-D view a point (or a run of consecutive devices) at a time, each
    # point on its own device (executor `_launch`, mappers/placement.py). Two points on one
    # device do not: a view gives each launch point a device of its own, and the cost model
    # prices it so.
    devs = view.devices()
    lo, hi = min(devs), max(devs) + 1
    seen: dict[int, int] = {}
    for i, d in enumerate(devs):
        if d in seen:
            raise StrategyError(f"{what}: its view (start {view.start}, dims {list(view.dims)}, "
                                f"strides {list(view.strides)}) puts points {seen[d]} and {i} "
                                f"both on {view.device_type} device {d}; a view must give each "
                                f"launch point its own device (devices {devs})")
        seen[d] = i
    Strategy._check_machine(view.device_type, avail, what)
    if hi > avail[view.device_type]:
        raise StrategyError(f"{what}: its view uses {view.device_type} devices [{lo}, {hi}) but "
                            f"the machine has {avail[view.device_type]}")


# ---------------------------------------------------------------------------------------------
# Parsing (every malformed field is a StrategyError that says where)
# ---------------------------------------------------------------------------------------------

def _need(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise StrategyError(f"{where}: missing {key!r}")
    value = doc[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise StrategyError(f"{where}: {key!r} must be a {names}, got {value!r}")
    return value


def _int_list(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                              for v in value):
        raise StrategyError(f"{where}: must be a list of integers, got {value!r}")
    return tuple(value)


def _packed_strides(dims: Sequence[int]) -> list[int]:
    """Row-major strides of a view with no gaps (1 for one dimension): a 2-D view [2, 3] that
    leaves its strides out covers 6 consecutive devices, not overlapping rows."""
    out = [1] * len(dims)
    for i in range(len(dims) - 2, -1, -1):
        out[i] = out[i + 1] * max(dims[i + 1], 1)
    return out


def _parse(doc: Any, origin: str) -> Strategy:
    if not isinstance(doc, dict):
        raise StrategyError(f"{origin}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("schema") != SCHEMA:
        raise StrategyError(f"{origin}: not a unity_legion strategy (schema "
                            f"{doc.get('schema')!r}, expected {SCHEMA!r})")
    version = doc.get("version")
    if version != VERSION:
        raise StrategyError(f"{origin}: strategy file version {version!r} is not supported "
                            f"(this unity_legion reads version {VERSION})")
    model = _need(doc, "model", str, origin)
    signature = _need(doc, "signature", str, origin)
    source = _need(doc, "source", str, origin)
    m = _need(doc, "machine", dict, origin)
    try:
        machine = MachineSpec(_need(m, "device_type", str, f"{origin}: machine"),
                              _need(m, "devices", int, f"{origin}: machine"))
    except StrategyError as exc:
        raise StrategyError(f"{origin}: {exc}" if not str(exc).startswith(origin) else str(exc)) \
            from None
    ops = _need(doc, "operators", dict, origin)
    configs: dict[str, OpConfig] = {}
    for name, entry in ops.items():
        where = f"{origin}: operator {name!r}"
        if not isinstance(entry, dict):
            raise StrategyError(f"{where}: expected an object with 'degrees' and 'view'")
        degrees = _need(entry, "degrees", dict, where)
        for axis, d in degrees.items():
            if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                raise StrategyError(f"{where}: degree of axis {axis!r} must be a positive "
                                    f"integer, got {d!r}")
        points = math.prod(degrees.values())
        v = entry.get("view", {})
        if not isinstance(v, dict):
            raise StrategyError(f"{where}: 'view' must be an object, got {v!r}")
        dims = _int_list(v.get("dims", [points]), f"{where}: view dims")
        strides = _int_list(v.get("strides", _packed_strides(dims)), f"{where}: view strides")
        start = v.get("start", 0)
        if isinstance(start, bool) or not isinstance(start, int):
            raise StrategyError(f"{where}: view start must be an integer, got {start!r}")
        try:
            view = MachineView(v.get("device_type", machine.device_type), start, dims, strides)
            configs[name] = OpConfig.of(degrees, view)
        except ValueError as exc:
            raise StrategyError(f"{where}: {exc}") from None
    subs = doc.get("substitutions", [])
    if not isinstance(subs, list):
        raise StrategyError(f"{origin}: 'substitutions' must be a list, got {subs!r}")
    try:
        applied = tuple(AppliedRule.from_dict(a) for a in subs)
    except SubstitutionError as exc:
        raise StrategyError(f"{origin}: substitutions: {exc}") from None
    pipeline = _parse_pipeline(doc.get("pipeline"), origin)
    try:
        return Strategy(model, signature, source, machine, configs, applied, pipeline)
    except StrategyError as exc:
        raise StrategyError(f"{origin}: {exc}") from None


def _parse_pipeline(p: Any, origin: str) -> PipelineSpec | None:
    """The optional "pipeline" object: {"micro_batches": m, "schedule": "gpipe" | "1f1b",
    "stages": [{"name": ..., "operators": [...], "devices": [...]}, ...]}."""
    if p is None:
        return None
    where = f"{origin}: pipeline"
    if not isinstance(p, dict):
        raise StrategyError(f"{where}: must be an object, got {p!r}")
    m = _need(p, "micro_batches", int, where)
    schedule = p.get("schedule", "1f1b")
    if not isinstance(schedule, str):
        raise StrategyError(f"{where}: 'schedule' must be a string, got {schedule!r}")
    raw = _need(p, "stages", list, where)
    stages = []
    try:
        for i, st in enumerate(raw):
            if not isinstance(st, dict):
                raise StrategyError(f"{where}: stage {i} must be an object, got {st!r}")
            name = st.get("name", f"stage_{i}")
            if not isinstance(name, str):
                raise StrategyError(f"{where}: stage {i}: 'name' must be a string, got {name!r}")
            ops = _need(st, "operators", list, f"{where}: stage {name!r}")
            if not all(isinstance(o, str) for o in ops):
                raise StrategyError(f"{where}: stage {name!r}: operators must be names, got "
                                    f"{ops!r}")
            devs = _int_list(_need(st, "devices", list, f"{where}: stage {name!r}"),
                             f"{where}: stage {name!r}: devices")
            stages.append(Stage(name, tuple(ops), devs))
        return PipelineSpec(tuple(stages), m, schedule)
    except PipelineError as exc:
        raise StrategyError(f"{where}: {exc}") from None
