"""Pipeline parallelism in the PCG: a model cut into stages, each a sub-graph on its own devices,
a step's batch cut into micro-batches that flow through them. Pure Python.

A `PipelineSpec` is plain data (stages by operator name, each with its devices; the micro-batch
count; the schedule) so a strategy file can carry it. `assign` checks it against a graph, before
anything runs, and names the stage at fault:

- two stages share a device (a device runs one stage: its micro-batches would queue behind the
  other stage's);
- the micro-batch count does not divide the batch, or exceeds it;
- a stage boundary cuts no edge (nothing flows from the stages before it to those after it: the
  "pipeline" is two unrelated models, or the order of the stages is wrong);
- an operator in no stage or in two, a stage that consumes what a later stage makes.

Schedules (both have a bubble of stages - 1 micro-batch slots; they differ in memory):
- "gpipe": every micro-batch's forward, then every backward: each stage holds the activations of
  all micro-batches at the end of the forward pass;
- "1f1b": after a warm-up each stage alternates one forward and one backward: stage i (0-based)
  holds at most stages - i micro-batches' activations (PipeDream-Flush).

`lift_pipelined` builds the PCG of a pipelined strategy: a Pipeline operator on every graph input
(the batch into micro-batches), the graph lifted at the micro-batch size, a Batch operator on
every model output.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from unity_legion.operators.base import SAMPLE
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.pcg.parallel_ops import Batch, Pipeline
from unity_legion.pcg.pcg import PCG, PCGError, PNode, lift
from unity_legion.types import OpConfig, ParallelTensorShape

SCHEDULES = ("gpipe", "1f1b")


class PipelineError(PCGError):
    """A pipeline that cannot run on this graph or batch; the message names the stage."""


@dataclass(frozen=True)
class Stage:
    """A sub-graph (its operators, by name) on a subset of the devices (their indices)."""

    name: str
    operators: tuple[str, ...]
    devices: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "operators", tuple(self.operators))
        object.__setattr__(self, "devices", tuple(self.devices))
        if not self.operators:
            raise PipelineError(f"stage {self.name!r} has no operators")
        if not self.devices:
            raise PipelineError(f"stage {self.name!r} has no devices")
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in self.devices):
            raise PipelineError(f"stage {self.name!r}: devices must be integers >= 0, got "
                                f"{list(self.devices)}")
        if len(set(self.devices)) != len(self.devices):
            raise PipelineError(f"stage {self.name!r} lists a device twice: {list(self.devices)}")


@dataclass(frozen=True)
class PipelineSpec:
    stages: tuple[Stage, ...]
    micro_batches: int
    schedule: str = "1f1b"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        m = self.micro_batches
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise PipelineError(f"pipeline: the micro-batch count must be a positive integer, "
                                f"got {m!r}")
        if self.schedule not in SCHEDULES:
            raise PipelineError(f"pipeline: unknown schedule {self.schedule!r}; schedules: "
                                f"{', '.join(SCHEDULES)}")
        if not self.stages:
            raise PipelineError("pipeline: needs at least one stage")
        names: set[str] = set()
        owner: dict[str, str] = {}
        where: dict[int, str] = {}
        for st in self.stages:
            if st.name in names:
                raise PipelineError(f"pipeline: two stages are named {st.name!r}")
            names.add(st.name)
            for op in st.operators:
                if op in owner:
                    raise PipelineError(f"stage {st.name!r}: operator {op!r} is already in stage "
                                        f"{owner[op]!r}")
                owner[op] = st.name
            shared = sorted(d for d in st.devices if d in where)
            if shared:
                raise PipelineError(f"stage {st.name!r} overlaps stage {where[shared[0]]!r} in "
                                    f"devices {shared}: stages need disjoint devices")
            where.update((d, st.name) for d in st.devices)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def micro_batch(self, batch: int) -> int:
        """Samples per micro-batch (PipelineError if the count does not fit the batch)."""
        m = self.micro_batches
        if m > batch:
            raise PipelineError(f"pipeline: {m} micro-batches exceed the batch of {batch} "
                                f"samples")
        if batch % m:
            raise PipelineError(f"pipeline: {m} micro-batches do not divide the batch of {batch} "
                                f"samples (micro-batches must be equal)")
        return batch // m

    def in_flight(self, stage: int) -> int:
        """Micro-batches whose activations stage `stage` (0-based) holds at most at once."""
        if self.schedule == "gpipe":
            return self.micro_batches
        return min(self.micro_batches, self.num_stages - stage)

    def bubble_slots(self) -> int:
        """Idle micro-batch slots per step on the critical path (both schedules)."""
        return self.num_stages - 1

    def assign(self, graph: ComputationGraph, batch: int | None = None) -> dict[int, int]:
        """{node id: stage index} for `graph` (see the module doc for what is checked)."""
        if batch is not None:
            self.micro_batch(batch)
        by_name = {n.name: n for n in graph.nodes}
        stage_of: dict[int, int] = {}
        for i, st in enumerate(self.stages):
            for op in st.operators:
                if op not in by_name:
                    raise PipelineError(f"stage {st.name!r}: operator {op!r} is not in the graph")
                stage_of[by_name[op].id] = i
        missing = [n.name for n in graph.nodes if n.id not in stage_of]
        if missing:
            raise PipelineError(f"pipeline: operator {missing[0]!r} is in no stage (every operator "
                                f"needs one; {len(missing)} without)")
        for n in graph.nodes:
            for t in n.inputs:
                p = graph.tensors[t].producer
                if p is not None and stage_of[p] > stage_of[n.id]:
                    raise PipelineError(
                        f"stage {self.stages[stage_of[n.id]].name!r}: operator {n.name!r} reads "
                        f"{graph.tensors[t].name!r}, made by the later stage "
                        f"{self.stages[stage_of[p]].name!r}")
        for i, crossing in enumerate(boundary_tensors(graph, stage_of, self.num_stages)):
            if not crossing:
                a, b = self.stages[i].name, self.stages[i + 1].name
                raise PipelineError(f"pipeline: the boundary between stage {a!r} and stage {b!r} "
                                    f"cuts no edge: nothing made up to {a!r} is read from {b!r} "
                                    f"on")
        return stage_of

    def check_configs(self, graph: ComputationGraph, stage_of: Mapping[int, int],
                      configs: Mapping[int, OpConfig], batch: int | None = None) -> None:
        """Every operator's view lies on its stage's devices and splits at most a micro-batch."""
        micro = self.micro_batch(batch) if batch is not None else None
        for n in graph.nodes:
            cfg = configs.get(n.id)
            if cfg is None:
                continue
            st = self.stages[stage_of[n.id]]
            outside = sorted(set(cfg.view.devices()) - set(st.devices))
            if outside:
                raise PipelineError(f"stage {st.name!r}: operator {n.name!r} runs on devices "
                                    f"{outside} outside the stage's {list(st.devices)}")
            if micro is not None and cfg.degree(SAMPLE) > micro:
                raise PipelineError(f"stage {st.name!r}: operator {n.name!r} splits samples "
                                    f"{cfg.degree(SAMPLE)} ways but a micro-batch has {micro}")

    def to_dict(self) -> dict:
        return {"micro_batches": self.micro_batches, "schedule": self.schedule,
                "stages": [{"name": s.name, "operators": list(s.operators),
                            "devices": list(s.devices)} for s in self.stages]}


def boundary_tensors(graph: ComputationGraph, stage_of: Mapping[int, int], stages: int
                     ) -> list[list[int]]:
    """Per boundary i (between stage i and i + 1): the tensors made in a stage <= i that a
    stage > i reads (each crosses once per micro-batch, forward, and its gradient back)."""
    last_reader: dict[int, int] = {}
    for n in graph.nodes:
        for t in n.inputs:
            if graph.tensors[t].producer is not None:
                last_reader[t] = max(last_reader.get(t, -1), stage_of[n.id])
    out: list[list[int]] = [[] for _ in range(max(stages - 1, 0))]
    for t, reader in last_reader.items():
        made = stage_of[graph.tensors[t].producer]  # type: ignore[index]
        for b in range(made, min(reader, stages - 1)):
            out[b].append(t)
    return out


def lift_pipelined(graph: ComputationGraph, batch: int, spec: PipelineSpec,
                   configs: Mapping[int, OpConfig], outputs: Sequence[int] | None = None,
                   default: OpConfig | None = None) -> PCG:
    """The PCG of a pipelined strategy at `batch` samples per step: Pipeline(m) on every graph
    input, the graph lifted at the micro-batch size, Batch(m) on every model output."""
    m = spec.micro_batches
    body = lift(graph, spec.micro_batch(batch), configs, outputs, default)
    if m == 1:
        return body
    shapes = graph.bind_batch(batch)
    out = PCG(dict(body.tensors), [], [], [], dict(body.weights))
    nxt = max(out.tensors, default=-1) + 1
    front: list[PNode] = []
    for k, (t, micro) in enumerate(zip(graph.inputs, body.inputs)):
        whole = nxt
        nxt += 1
        out.tensors[whole] = ParallelTensorShape.of(shapes[t])
        out.inputs.append(whole)
        front.append(PNode(k, f"{graph.tensors[t].name}:pipeline", Pipeline(m), (whole,),
                           (micro,)))
    out.nodes = front + [replace(n, id=n.id + len(front)) for n in body.nodes]
    for t in body.outputs:
        whole = nxt
        nxt += 1
        out.tensors[whole] = Batch(m).infer(body.tensors[t])
        out.nodes.append(PNode(len(out.nodes), f"output_{len(out.outputs)}:batch", Batch(m),
                               (t,), (whole,)))
        out.outputs.append(whole)
    return out


@dataclass(frozen=True)
class Slot:
    """One stage's forward ("F") or backward ("B") pass over one micro-batch."""

    phase: str
    stage: int
    micro: int


def stage_sequence(spec_stages: int, micro_batches: int, schedule: str, stage: int
                   ) -> list[Slot]:
    """What stage `stage` runs, in its order. GPipe: every forward, then every backward (the
    last micro-batch's first: its activations are the freshest, as GPipe drains). 1F1B
    (PipeDream-Flush): stages - 1 - stage forwards to fill the pipe, then one forward and one
    backward alternately, then the remaining backwards."""
    m = micro_batches
    if schedule == "gpipe":
        return ([Slot("F", stage, j) for j in range(m)]
                + [Slot("B", stage, j) for j in reversed(range(m))])
    warm = min(spec_stages - 1 - stage, m)
    seq = [Slot("F", stage, j) for j in range(warm)]
    for i in range(m - warm):
        seq += [Slot("F", stage, warm + i), Slot("B", stage, i)]
    return seq + [Slot("B", stage, j) for j in range(m - warm, m)]


def schedule_order(stages: int, micro_batches: int, schedule: str) -> list[Slot]:
    """Every stage's sequence merged into one issue order, in time slots: in each slot every
    stage runs its next pass if what it needs ran in an earlier slot (F(s, j) needs
    F(s - 1, j); B(s, j) needs B(s + 1, j), the last stage's F(s, j)). A runtime that runs
    tasks in dependency order then overlaps the stages as the schedule draws them."""
    if schedule not in SCHEDULES:
        raise PipelineError(f"pipeline: unknown schedule {schedule!r}; schedules: "
                            f"{', '.join(SCHEDULES)}")
    seqs = [stage_sequence(stages, micro_batches, schedule, s) for s in range(stages)]
    pos = [0] * stages
    done: set[Slot] = set()
    order: list[Slot] = []

    def needs(sl: Slot) -> Slot | None:
        if sl.phase == "F":
            return Slot("F", sl.stage - 1, sl.micro) if sl.stage > 0 else None
        if sl.stage < stages - 1:
            return Slot("B", sl.stage + 1, sl.micro)
        return Slot("F", sl.stage, sl.micro)

    while len(order) < sum(map(len, seqs)):
        ready = [seqs[s][pos[s]] for s in range(stages) if pos[s] < len(seqs[s])
                 and (needs(seqs[s][pos[s]]) is None or needs(seqs[s][pos[s]]) in done)]
        assert ready, "pipeline schedule deadlocked"   # the sequences above never do
        for sl in ready:
            order.append(sl)
            pos[sl.stage] += 1
        done.update(ready)
    return order


def micro_batch_sizes(batch: int, micro_batches: int) -> list[int]:
    """Samples per micro-batch for a step of `batch` samples: equal where the count divides the
    batch (what a strategy is checked for), otherwise as equal as possible (a short last batch
    of an epoch), never an empty one."""
    if batch < 1:
        raise PipelineError(f"pipeline: a step needs at least one sample, got {batch}")
    k = min(micro_batches, batch)
    base, extra = divmod(batch, k)
    return [base + (1 if j < extra else 0) for j in range(k)]


def inexact_operator(graph: ComputationGraph, nodes: Sequence, frozen: frozenset = frozenset()
                     ) -> object | None:
    """The first of `nodes` that micro-batches would change: its training forward uses the
    statistics of its whole batch (batch norm), unless it runs in inference mode because all its
    weights are `frozen` (as Keras' frozen BatchNormalization does). None: all run exactly."""
    for n in nodes:
        if not getattr(n.op, "batch_statistics", False):
            continue
        if (n.op.inference_when_frozen and n.weights
                and all((n.id, ws.name) in frozen for ws in n.weights)):
            continue
        return n
    return None
