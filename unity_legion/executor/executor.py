"""Run a computation graph's training steps as Legate launches.

Weights, gradients and optimizer slots live in Legate stores across steps; numpy is used only at
the edges (a batch in, per-sample losses and metrics out, weights read or written on request).
By default every operator runs data-parallel: its launch splits samples over all processors of
the job, weights are broadcast and weight gradients are summed by ADD reduction. A plan
(`set_plan`: an OpConfig per node) gives an operator its own degree per launch axis and its own
processors; an output that several points write (a launch axis missing from its split) becomes an
ADD reduction into a zeroed store, and a consumer that tiles a store differently from its producer
makes Legate move the data: that is how the PCG's Partition, Combine, Replicate and Reduce run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from legate.core import LogicalStore
from legate.core import types as ty

from unity_legion.executor import host_data, posted
from unity_legion.executor.fusion import FusionQueue, fuses_by_default
from unity_legion.executor.replay import (DYNAMIC_BOX, DYNAMIC_LR, DYNAMIC_SEED, DYNAMIC_STEP,
                                          Recorder, StepTrace)
from unity_legion.executor.tasks import release_local_buffers
from unity_legion.executor.launcher import (BoundArg, bind, box_points, effective_degree,
                                           forget_store_dims, in_kernel_order, launch_axes,
                                           launch_boxes, launch_grid, partitioned_reductions,
                                           reduced_outputs, store_dims, submit)
from unity_legion.mappers.placement import placed
from unity_legion.operators.base import (SAMPLE, Arg, Launch, Ref, RefKind, Role, dx, dy,
                                         last_input_grad, saved, w, x, y)
from unity_legion.operators.convert import cast_copy
from unity_legion.operators.precision import from_storage, to_storage
from unity_legion.operators.glue import PARTIAL_SUMS_MIN as PARTIAL_SUMS_MIN_DEFAULT
from unity_legion.operators.glue import (PARTIAL_ROWS, accumulate, accumulate_launch,
                                         add_partials, add_partials_launch)
from unity_legion.operators.losses import LossFunction
from unity_legion.operators.metrics import Metric
from unity_legion.operators.optimizers import (FINITE, GRAD, PARAM, ROWS, SGDRule, UpdateRule,
                                               rows_split, slot, unscale_launch, weight_axis)
from unity_legion.pcg.graph import ComputationGraph, Node
from unity_legion.pcg.pcg import node_shapes
from unity_legion.runtime import collect_garbage, machine_info, rank_comm, runtime
from unity_legion.types import DataType, MachineView, OpConfig, TensorShape

# BFLOAT16 as its bits in uint16: Legate 25.11 has no bfloat16 type (operators/precision.py)
_LEGATE_TYPE = {DataType.FLOAT32: ty.float32, DataType.FLOAT64: ty.float64,
                DataType.INT32: ty.int32, DataType.INT64: ty.int64, DataType.BOOL: ty.bool_,
                DataType.FLOAT16: ty.float16, DataType.BFLOAT16: ty.uint16}
_DATA_TYPE = {v: k for k, v in _LEGATE_TYPE.items()}
_STORAGE_TYPE = {dt.storage: lt for dt, lt in _LEGATE_TYPE.items()}   # numpy piece -> Legate

WeightKey = tuple[int, str]  # (node id, weight name)
_MAX_TRACES = 4   # recorded steps kept (each keeps its stores alive)
_ACTIVATIONS = ("act", "saved")   # scratch purposes a pipeline's micro-batches take in turn
# whole-store sums of fewer elements stay Legion ADD reductions (operators.glue says why)
PARTIAL_SUMS_MIN = int(os.environ.get("UNITY_LEGION_PARTIAL_SUMS_MIN", PARTIAL_SUMS_MIN_DEFAULT))
# elements per point of a bank of small sums (more banks open as they fill)
BANK_CAPACITY = 16384
_BANK_TYPES = (ty.float32, ty.float64)


def gathers_by_default() -> bool:
    """Whether executors exchange batch statistics inside their fused tasks (on unless
    UNITY_LEGION_GATHERS=0; calibrate prices steps the same way). Measured on this host's two
    processors (bench_simulator's sizes, 2026-12-07, alternating in one process, 12 rounds):
    ResNeXt's data-parallel step 46.7 -> 44.1 ms, with its classifier on one processor 47.8
    -> 42.7 ms; the simulator, which prices the meetings (`RuntimeSpec.gather`), predicted
    the data-parallel step +10.6% and -3.3% off the measured one in two runs of
    bench_simulator."""
    return os.environ.get("UNITY_LEGION_GATHERS", "1") != "0"


@dataclass
class _Partials:
    """Partial sums pending for `store`: one per point of a launch grid on a view."""

    store: Any
    partials: Any
    grid: tuple[int, ...]
    view: MachineView
    pending: bool = False    # False: every partial sum is zero
    # made for a launch whose points exchange it (GraphExecutor._gathers_on): a reader over
    # the same grid and processors reads store + the sums inside its fused task
    gathered: bool = False
    # in a bank of small sums (_SumBank) instead of a store of its own: the bank and the
    # (offset, shape) of this store's sums in each point's row
    bank: Any = None
    window: tuple[int, tuple[int, ...]] | None = None


@dataclass
class _SumBank:
    """One store holding the partial sums of several small stores (weight gradients) side by
    side: a row per point of `grid`, each store a window of it (GraphExecutor._banked)."""

    store: Any
    grid: tuple[int, ...]
    view: MachineView
    capacity: int
    used: int = 0
    members: list[_Partials] = field(default_factory=list)
LOSS_LABEL = "(loss and metrics)"   # the profiler's name for the objective's launches


@dataclass
class StepResult:
    """Per-sample values of one step, read back to numpy."""

    batch: int
    loss: np.ndarray                        # per-sample total loss (sum over outputs)
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    applied: bool = True                    # False: the loss was not finite, nothing was updated
    # False: under loss scaling, some gradient was not finite (nothing was updated either)
    grads_finite: bool = True

    @property
    def mean_loss(self) -> float:
        return float(self.loss.mean()) if self.loss.size else float("nan")


class Staged:
    """An array uploaded once into a store (e.g. one epoch of shuffled samples); batches are row
    ranges of it, so a step attaches or loads nothing (either costs a collective on every
    rank)."""

    def __init__(self, store: Any, buffer: np.ndarray) -> None:
        self.store = store
        self._buffer = buffer  # the store may be attached to this memory: keep it alive

    def __len__(self) -> int:
        return len(self._buffer)

    def rows(self, start: int, stop: int) -> "StagedRows":
        return StagedRows(self, start, min(stop, len(self)))


@dataclass(frozen=True)
class StagedRows:
    staged: Staged
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def store(self) -> Any:
        return self.staged.store.slice(0, slice(self.start, self.stop))


Feed = np.ndarray | StagedRows


@dataclass(frozen=True)
class Objective:
    """What training minimises: a loss per model output, and metrics per output."""

    losses: tuple[LossFunction, ...]
    metrics: tuple[tuple[Metric, ...], ...]
    loss_weights: tuple[float, ...] = ()


class GraphExecutor:
    def __init__(self, graph: ComputationGraph, outputs: Sequence[int], seed: int = 0,
                 input_grads: bool = False) -> None:
        self.graph = graph
        self.outputs = tuple(outputs)
        self.rt = runtime()
        self.machine = machine_info()
        self.view = MachineView.contiguous(self.machine.preferred_kind, 0, self.machine.processors)
        self.nodes = graph.subgraph_nodes(self.outputs)
        self.weights: dict[WeightKey, Any] = {}
        self.grads: dict[WeightKey, Any] = {}
        self.slots: dict[tuple[WeightKey, str], Any] = {}
        self._slot_names: tuple[str, ...] | None = None
        self._seed_rng = np.random.default_rng(seed + 7919)
        self._pool: dict[tuple[Any, ...], Any] = {}
        self._shape_cache: dict[int, dict[int, TensorShape]] = {}
        # Stores attached to numpy buffers (read-only: see _store_from) with their buffers, and
        # buffers copied into stores: dropped at the next call, when no task can use them (every
        # public call ends with its work done: see _drain).
        self._attached: list[tuple[np.ndarray, Any]] = []
        self._uploads: list[Any] = []
        # several ranks: host arrays load tasks read (host_data), released once drained,
        # and the stores each step's feeds are loaded into, by shape and type
        self._loads: list[int] = []
        self._feed_pool: dict[tuple[Any, ...], Any] = {}
        self._feeds_loaded = 0
        self._input_grads = input_grads
        self._loss_scale = 1.0   # train_step's, while it issues the objective
        self._grads_zeroed = False   # True after an update: its kernels zeroed every gradient
        self.frozen: frozenset[WeightKey] = frozenset()
        self.requires_grad = self._requires_grad(input_grads)
        self.plan: dict[int, OpConfig] = {}
        self._layouts: dict[tuple[WeightKey, int], Any] = {}
        # A point of a spatial split receives only its window of the image (tile plus halo),
        # one launch per spatial tile. False: every point reads the image whole, in one launch.
        # On one rank's CPUs (one shared memory: nothing moves either way) windows cost a few
        # percent of a training step (2 convs split by height on 2 CPUs: 118 vs 111 ms), more
        # where results are read back every step (separate launches then ran one after the
        # other: 105 vs 60 ms for a conv's forward+backward read back each time; measured).
        self.halo_reads = True
        # Consecutive launches over the same grid and processors run as one fused task
        # (fusion.py; CPU jobs by default); False: every launch is a task of its own (GPU jobs,
        # as their machine models price them, and the measuring code).
        self.fusion = fuses_by_default(self.machine.preferred_kind,
                                       os.environ.get("UNITY_LEGION_FUSION"))
        self._queue = FusionQueue(self.rt)
        # Whole-store reductions as partial sums (see _partial; fused launches only)
        self.partial_sums = os.environ.get("UNITY_LEGION_PARTIAL_SUMS", "1") != "0"
        self._partials: dict[int, _Partials] = {}   # by id of the store they sum into
        # small weight gradients' partial sums in banks (see _banked), per (grid, view, type)
        self.sum_banks = os.environ.get("UNITY_LEGION_SUM_BANKS", "1") != "0"
        self._banks: dict[tuple[Any, ...], list[_SumBank]] = {}
        # Sums read by the same fused task that adds them (batch statistics under a split of
        # the batch) exchanged between its points inside the task, on one rank (see
        # _gathers_on; see gathers_by_default); off: such a read ends the fused group and the
        # sum is settled first.
        self.gathers = gathers_by_default()
        # Plain SGD of weights whose operator updates only what a batch used (an embedding's
        # looked-up rows: Operator.sparse_sgd_update) skips their dense gradients and updates
        self.sparse_updates = os.environ.get("UNITY_LEGION_SPARSE_UPDATES", "1") != "0"
        self._backward_refs: dict[int, dict[Ref, Any]] = {}   # this step's, per node
        # Off (None) by default; set_profiler: a step's tasks record their kernels' intervals
        # and each operator's issuing time is measured (unity_legion/executor/profile.py).
        self.profiler: Any = None
        # A pipelined plan's runner (executor/pipeline.py; None: every step runs the whole
        # batch at once), and the micro-batch whose launches are being issued: it joins every
        # scratch store's key, so each micro-batch in flight has its own activations
        self.pipeline: Any = None
        self._scratch_tag: tuple[Any, ...] = ()
        # a pipeline's train step: the tag of the activation stores (outputs, saved tensors)
        # in place of the micro-batch's own (executor/pipeline.py: activation_buffers)
        self._activation_tag: tuple[Any, ...] = ()
        # Training steps re-issued from a recording of an earlier step of the same kind
        # (executor/replay.py); False: every step walks the graph (the measuring code's choice)
        self.replay = os.environ.get("UNITY_LEGION_REPLAY", "1") != "0"
        self._traces: dict[tuple[Any, ...], StepTrace] = {}
        # In replays, a store one fused task alone uses in a step, writing and then reading it,
        # is a temporary of that task's own (replay.Recorder.finish; False: every store stays
        # bound, as the measuring code's launches want). CPU processors only: on a GPU the
        # temporaries would be CuPy memory beside the framebuffer Legate reserves, unmeasured
        self.local_temporaries = (self.machine.preferred_kind == "cpu" and os.environ.get(
            "UNITY_LEGION_LOCAL_TEMPORARIES", "1") != "0")
        self.replayed = False   # whether the last training step was re-issued from one
        self._recorder: Recorder | None = None
        # while a pipelined step is walked: every feed made a store, in order
        # (PipelineRunner._recorded)
        self._feed_log: list[Feed] | None = None
        # while a launch is issued: its scalars that change from step to step, by name -> kind
        self._dynamic: dict[str, str] = {}
        # A step's losses and metrics are posted to the host by its tasks instead of read back
        # from their stores (executor/posted.py; over several ranks each rank's tasks post to
        # its own box and the ranks share them, posted.share); the box of the step being
        # issued and the boxes of the call
        self.posts = os.environ.get("UNITY_LEGION_POSTED", "1") != "0"
        self._post_box: posted.Box | None = None
        self._boxes: list[posted.Box] = []
        # per open box (by number): id(store) -> (store, key) of each store its step posts; a
        # step's own, dropped with its box (a recorded step's is kept in its trace), so the
        # stores of steps that are not replayed do not pile up here
        self._box_posts: dict[int, dict[int, tuple[Any, int]]] = {}

    @classmethod
    def from_plan(cls, plan: Any, values: Mapping[WeightKey, np.ndarray] | None = None
                  ) -> "GraphExecutor":
        """An executor of a compiled plan (unity_legion.strategy.plan.CompiledPlan) that runs the
        model's own graph (no substitutions: a rewritten one runs in a RewrittenExecutor), from
        the weights `values`, with the plan's configurations and frozen weights."""
        if plan.translation is not None:
            raise ValueError("GraphExecutor.from_plan: the plan rewrites the model's graph; run "
                             "it with executor.rewritten.RewrittenExecutor")
        executor = cls(plan.graph, plan.outputs)
        for key, value in (values or {}).items():
            executor.set_weight(key, value)
        executor.set_plan(plan.configs, getattr(plan, "pipeline", None))
        if plan.frozen:
            executor.set_frozen(plan.frozen)
        return executor

    def set_plan(self, plan: Mapping[int, OpConfig], pipeline: Any = None) -> None:
        """Per node id, its degrees and machine view; nodes not named run data-parallel. The
        caller (a Strategy) has validated it against the graph and the machine. `pipeline` (a
        pcg.pipeline.PipelineSpec): steps run in micro-batches through its stages
        (executor/pipeline.py); None: the whole batch at once."""
        for nid, cfg in plan.items():
            cfg.view.check_fits(self.machine.processors,
                                f"operator {self.graph.nodes[nid].name!r}")
        runner = None
        if pipeline is not None:
            from unity_legion.executor.pipeline import PipelineRunner

            runner = PipelineRunner.of(self, pipeline, plan)   # checked before it is set
        # a pipeline's runner gives every operator a config (on its stage when the plan has none)
        self.plan = dict(plan) if runner is None else dict(runner.configs)
        self.pipeline = runner
        self._layouts.clear()
        self.forget_traces()

    # ------------------------------------------------------------------ weights
    def weight_specs(self) -> list[tuple[WeightKey, Any]]:
        """Every weight of the graph as the executor keeps it: a weight an operator computes
        with in a half precision is kept in float32 (its master copy; so are its gradient and
        optimizer slots) and rounded for the operator each step (`_forward`), as Keras 3 keeps
        variables in float32 under a mixed policy."""
        return [((n.id, ws.name), _master(ws)) for n in self.nodes for ws in n.weights]

    def set_weight(self, key: WeightKey, value: np.ndarray) -> None:
        """Replace a weight's values (a copy into a new store; the buffer goes at the next
        step)."""
        spec = dict(self.weight_specs())[key]
        arr = np.ascontiguousarray(value, dtype=spec.shape.dtype.numpy)
        if arr.shape != spec.shape.dims:
            raise ValueError(f"weight {self.graph.nodes[key[0]].name}/{key[1]}: expected shape "
                             f"{spec.shape.dims}, got {arr.shape}")
        self.forget_traces()   # (before the copy is issued: nothing pending when they go)
        self.weights[key] = self._store_from(arr, persistent=True)

    def forget_traces(self) -> None:
        """Drop every recorded step (executor/replay.py): a store they name was replaced, or
        what shapes a step changed."""
        for trace in self._traces.values():
            release_local_buffers(trace.local_programs())
        self._traces.clear()

    def get_weight(self, key: WeightKey) -> np.ndarray:
        self.flush()
        return read(self.weights[key])

    def set_frozen(self, keys: Iterable[WeightKey]) -> None:
        """Weights that training leaves alone (Keras' layer.trainable = False)."""
        keys = frozenset(keys)
        if keys != self.frozen:
            # an update zeroes only the gradients of the weights it trained: a weight frozen then
            # may still hold a gradient (from gradients()), so the next backward zero-fills all
            self._grads_zeroed = False
        self.frozen = keys
        self.requires_grad = self._requires_grad(self._input_grads)
        self.forget_traces()

    def trainable(self, key: WeightKey, spec: Any) -> bool:
        return spec.trainable and key not in self.frozen

    def reset_optimizer_state(self) -> None:
        self.slots.clear()
        self._slot_names = None
        self.forget_traces()

    def _ensure_slots(self, rule: UpdateRule) -> None:
        names = tuple(rule.slots)
        if self._slot_names != names:
            self.slots.clear()
            self._slot_names = names
            self.forget_traces()
        # every weight trainable now has its slots (a weight unfrozen later starts from zeros)
        for key, spec in self.weight_specs():
            if self.trainable(key, spec):
                for s in names:
                    if (key, s) not in self.slots:
                        self.slots[(key, s)] = self._zeros(spec.shape)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        self.flush()
        return {f"{self.graph.nodes[k[0]].name}/{k[1]}/{s}": read(v) for (k, s), v in self.slots.items()}

    def slot_values(self) -> dict[tuple[WeightKey, str], np.ndarray]:
        """The optimizer's state as host copies, per (weight, slot name); empty before the
        first update."""
        self.flush()
        return {ks: read(self.slots[ks]) for ks in sorted(self.slots)}

    def set_slot_values(self, names: Sequence[str],
                        values: Mapping[tuple[WeightKey, str], np.ndarray]) -> None:
        """Replace the optimizer's state (the rule's slot names, and values per (weight, slot));
        every array is checked before any is set. A trainable weight without values gets zeros
        at the next update, as a fresh one does."""
        specs = dict(self.weight_specs())
        checked = {}
        for (key, s), value in values.items():
            if key not in specs or s not in names:
                raise ValueError(f"optimizer state: no slot {s!r} of weight {key} in this graph "
                                 f"(slots: {tuple(names)})")
            spec = specs[key]
            arr = np.ascontiguousarray(value, dtype=spec.shape.dtype.numpy)
            if arr.shape != spec.shape.dims:
                raise ValueError(f"optimizer state {self.graph.nodes[key[0]].name}/{key[1]}/{s}: "
                                 f"expected shape {spec.shape.dims}, got {arr.shape}")
            checked[(key, s)] = arr
        self.slots.clear()
        self._slot_names = tuple(names)
        self.forget_traces()
        for ks in sorted(checked):  # the same order on every rank
            self.slots[ks] = self._store_from(checked[ks], persistent=True)

    @property
    def random_state(self) -> dict[str, Any]:
        """The stream that seeds every dropout launch (JSON-able), to resume a run exactly."""
        return self._seed_rng.bit_generator.state

    @random_state.setter
    def random_state(self, state: Mapping[str, Any]) -> None:
        self._seed_rng.bit_generator.state = dict(state)

    # ------------------------------------------------------------------ plan
    def degrees_for(self, batch: int) -> dict[str, int]:
        return {SAMPLE: effective_degree(batch, self.view.num_points)}

    def _view_for(self, points: int, view: MachineView | None = None) -> MachineView:
        """The processors of a launch of `points` points: the first ones of `view` (default: the
        whole job); more points than processors share them."""
        base = view or self.view
        return MachineView.contiguous(base.device_type, base.start, min(points, base.num_points))

    def _node_plan(self, n: Node, degrees: Mapping[str, int]
                   ) -> tuple[Mapping[str, int], MachineView | None]:
        cfg = self.plan.get(n.id)
        return (degrees, None) if cfg is None else (cfg.as_dict(), cfg.view)

    def loss_placement(self, t: int, degrees: Mapping[str, int]
                       ) -> tuple[Mapping[str, int], MachineView | None]:
        """Where the loss and metrics of model output `t` run: on its producer's processors,
        split by samples as it is, where its plan splits nothing else (a serial producer's
        loss then joins its fused task, no copy to other processors in between); otherwise
        (and in a pipeline, whose glue runs on its stage's processors) split by samples over
        the launch's default processors. The cost model states the same rule
        (cost.simulator: `loss_devices`)."""
        producer = self.graph.tensors[t].producer
        cfg = self.plan.get(producer) if producer is not None and self.pipeline is None else None
        if cfg is None or cfg.view is None or any(a != SAMPLE for a, _d in cfg.degrees):
            return degrees, None
        return {SAMPLE: cfg.as_dict().get(SAMPLE, 1)}, cfg.view

    def _launch(self, launch: Launch, refs: Mapping[Ref, Any], degrees: Mapping[str, int],
                view: MachineView | None = None, guards: Sequence[Any] = ()) -> None:
        self._settle_reads(launch, refs)
        axes = launch_axes(launch)
        eff = {}
        for a in axes:  # tiles of the first dim the axis splits (a short last batch, uneven dims)
            size = next(store_dims(refs[arg.ref])[d] for arg in launch.args.values()
                        for d, s in enumerate(arg.split) if s == a)
            eff[a] = effective_degree(size, degrees.get(a, 1))
        reduced = reduced_outputs(launch, eff)
        refs, narrow = self._stage_half_sums(launch, refs, reduced, (view or self.view).num_points)
        # partial sums land in a zeroed store; zeroed in the kernel's order, the same on every
        # rank (a frozenset's order is not: it follows each process's hash seed)
        for name in in_kernel_order(launch, reduced):
            self.fill(refs[launch.args[name].ref])
        self._issue_grid(launch, refs, eff, reduced, view, guards)
        for step, step_refs, step_degrees in narrow:   # the float32 sums, rounded once
            self._launch(step, step_refs, step_degrees, view)

    def _stage_half_sums(self, launch: Launch, refs: Mapping[Ref, Any], reduced: frozenset[str],
                         points: int) -> tuple[Mapping[Ref, Any],
                                               list[tuple[Launch, dict[Ref, Any], dict[str, int]]]]:
        """Half-precision stores the launch adds into (an output several points write, a Sum
        target) replaced by zeroed float32 staging stores, and the launches that then put each
        staged sum into its half store (cast for an output, add for a Sum target: one rounding).

        Why: Legion's ADD reduction of a uint16 store (bfloat16 bits: Legate has no bfloat16)
        adds the bit patterns, garbage; of a float16 store it rounds at every fold. Summing in
        float32 and rounding once is also what the kernels do on one point (float32
        accumulation, operators/precision.py), so a split changes a result only by float32
        reassociation. The narrowing launches split the store by rows over the `points`
        processors of the launch."""
        narrow: list[tuple[Launch, dict[Ref, Any], dict[str, int]]] = []
        staged: dict[Ref, Any] = {}
        for name, role in launch.kernel.stores:
            if not (role is Role.SUM or name in reduced):
                continue
            ref = launch.args[name].ref
            real = refs[ref]
            if not _DATA_TYPE[real.type].is_half or ref in staged:
                continue
            dims = store_dims(real)
            stage = self._scratch("half_sum", name, shape=TensorShape(dims, DataType.FLOAT32))
            if role is Role.SUM:   # (a reduced output's stage is zeroed with the others)
                self.fill(stage)
            staged[ref] = stage
            split = (PARTIAL_ROWS,) + (None,) * (len(dims) - 1) if dims else ()
            src, dst = Ref(RefKind.INPUT, 0), Ref(RefKind.OUTPUT, 0)
            if role is Role.SUM:   # adds to what the store holds
                step = Launch(accumulate, {"total": Arg(dst, split), "part": Arg(src, split)})
            else:                  # a reduced output: the sum is its value
                step = Launch(cast_copy, {"x": Arg(src, split), "y": Arg(dst, split)})
            degrees = {PARTIAL_ROWS: effective_degree(dims[0], points)} if dims else {}
            narrow.append((step, {src: stage, dst: real}, degrees))
        if not staged:
            return refs, narrow
        return {**refs, **staged}, narrow

    def _issue_grid(self, launch: Launch, refs: Mapping[Ref, Any], eff: Mapping[str, int],
                    reduced: frozenset[str], view: MachineView | None,
                    guards: Sequence[Any]) -> None:
        """Issue `launch` over the grid `eff` gives (its reduced outputs zeroed)."""
        base = view or self.view
        points = math.prod(eff.values())
        boxes = launch_boxes(launch, eff) if self.halo_reads else None
        if boxes is None and _consecutive(base.devices()[:min(points, base.num_points)]):
            # the common case: one launch, its points spread in blocks over a processor range
            self._issue(launch, refs, eff, reduced, self._view_for(points, view), None, guards)
            return
        # Points that must run apart: per tile of the axes an argument is read through windows
        # along (each such launch slices that argument to its window), or on the devices of a
        # view that is no contiguous range (strided, 2-D), where a point runs on its own device.
        grid = launch_grid(launch, eff)
        devices = base.point_devices(points)
        # A launch over part of the grid whose points ADD into the same tile of a tiled store
        # lost one of the contributions: over several ranks about 1 run in 6 (measured, Legate
        # 25.11), and on one rank too once launches stopped waiting for each other (a conv's
        # input gradient split by "out" and "height": half its elements wrong, 1 full test run
        # in 3); never with one point per launch: such launches go one point at a time.
        apart = partitioned_reductions(launch, eff, reduced)
        for box in boxes or [((0,) * len(grid), grid)]:
            pts = box_points(box)
            devs = [devices[int(np.ravel_multi_index(p, grid))] for p in pts]  # row-major
            if _consecutive(devs) and not (apart and len(pts) > 1):
                self._issue(launch, refs, eff, reduced,
                            MachineView.contiguous(base.device_type, devs[0], len(devs)), box,
                            guards)
                continue
            for p, dev in zip(pts, devs):
                self._issue(launch, refs, eff, reduced,
                            MachineView.contiguous(base.device_type, dev, 1),
                            (p, tuple(i + 1 for i in p)), guards)

    def _issue(self, launch: Launch, refs: Mapping[Ref, Any], degrees: Mapping[str, int],
               reduced: frozenset[str], where: MachineView, box: Any = None,
               guards: Sequence[Any] = ()) -> None:
        """One launch over the grid `degrees` gives (only the points of `box`, when given) on
        the processors `where`: it joins the fused group being collected where it can, else
        goes alone (a box slices stores to windows: never fused). `guards`: stores that must
        be all finite for its kernel to run (read whole)."""
        if self.fusion and box is None:
            bound = bind(launch, refs, degrees, reduced)
            grid = launch_grid(launch, degrees)
            if self._partial_sums_on() and math.prod(grid) > 1:
                bound = [self._partial_sum(b, grid, where)
                         if b.is_reduction and b.tile is None and store_dims(b.store) else b
                         for b in bound]
            gathers = self._gathered_reads(bound, grid, where)
            bound += [BoundArg(f"_gather{p}", Role.INOUT, False, rec.partials,
                               *self._piece_of(rec), len(grid)) for p, rec in gathers]
            gathers = [(p, len(launch.kernel.stores) + i) for i, (p, _r) in enumerate(gathers)]
            bound += [BoundArg(f"_guard{i}", Role.INPUT, False, g, None, None)
                      for i, g in enumerate(guards)]
            scalars = [(launch.scalars[n], t) for n, t in launch.kernel.scalars]
            dynamic = [(i, self._dynamic[n]) for i, (n, _t) in enumerate(launch.kernel.scalars)
                       if n in self._dynamic] if self._dynamic else ()
            if self._queue.add(launch.kernel, bound, reduced, scalars, grid, where, len(guards),
                               dynamic, gathers):
                return
        self._settle_reads(launch, refs, keep_gathered=False)   # (a task of its own)
        self.flush()
        if self._recorder is not None:
            self._recorder.launch(launch, dict(refs), self._dynamic, dict(degrees), reduced, box,
                                  where, guards, self._queue.label)
        uid = -1 if self.profiler is None else self.profiler.task([self.profiler.label])
        with placed(where):
            submit(self.rt, launch, refs, degrees, reduced, box, uid, guards)

    def flush(self) -> None:
        """Submit the fused group being collected (before anything reads a store, and at the
        end of every step: nothing stays pending between calls)."""
        self._queue.flush()

    def fill(self, store: Any) -> None:
        """Zero `store`, after every launch issued so far that uses it (and its partial sums)."""
        zero = _zero(_DATA_TYPE[store.type])
        rec = self._partials.get(id(store))
        if rec is not None and rec.pending and rec.bank is not None:
            self._settle_bank(rec.bank)   # (its window alone cannot be zeroed: settled, moot)
        elif rec is not None and rec.pending:  # (not pending: the partial sums are zero)
            if self._queue.uses(rec.partials):
                self.flush()
            if self._recorder is not None:
                self._recorder.fill(rec.partials, zero)
            rec.partials.fill(zero)
            rec.pending = False
        if self._queue.uses(store):
            self.flush()
        if self._recorder is not None:
            self._recorder.fill(store, zero)
        store.fill(zero)

    # ------------------------------------------------------------------ partial sums
    # A store that every point of a launch adds into whole (a weight's gradient under data
    # parallelism, batch statistics) was an ADD reduction: Legion gives each point a reduction
    # instance of the whole store, initialises it and folds it into the store afterwards. For a
    # large store that dominated the step (8 stores of 300,000 floats reduced by 2 points:
    # 9.5 ms per task, 0.33 ms with 1 point; a DLRM step waited 11 ms for its backward task to
    # start, measured). The executor instead gives each point its own piece of a store of
    # partial sums, stacked along leading dims one per grid dim (read-write, no reduction),
    # and adds them into the store (`add_partials`, split by rows) right before anything reads
    # it: a pass over the pieces, in parallel, in the reader's fused group. Over several ranks
    # too: there a point reads the other ranks' pieces of its rows as plain copies, where
    # Legion's fold of a reduction instance across ranks cost ~100-250 ms here (a 2-rank
    # data-parallel MLP step, width 512: 356-372 ms with folds, 180-200 ms with partial sums).

    def _partial_sums_on(self) -> bool:
        return self.fusion and self.partial_sums

    #
    # Smaller stores (fewer than PARTIAL_SUMS_MIN elements) each of its own would cost more in
    # Legion's analysis than their sums do; a weight gradient's sums go to a bank instead:
    # one store of partial sums per grid and view, a row per point, each gradient a window
    # of it. A task then binds one bank where it bound dozens of small reductions (each an
    # instance Legion makes, zeroes and folds per point: bert's data-parallel step waited
    # for 25 of them before its first kernel and between its backward and its updates), and
    # the first read of any of them adds all of the bank's pending sums into their stores, on
    # one processor, in one fused task (_settle_bank).

    def _partial_sum(self, b: Any, grid: tuple[int, ...], where: MachineView) -> Any:
        """`b` (a whole-store reduction over `grid`) as partial sums, where it gets any."""
        def grad() -> bool:
            return any(g is b.store for g in self.grads.values())

        # a saved sum (batch statistics) the operator's next launch reads
        if (self._gathers_on(grid, where) and b.role is Role.SUM
                and b.store.type in _BANK_TYPES and not grad()):
            return self._partial(b, grid, where, gathered=True)
        if math.prod(store_dims(b.store)) >= PARTIAL_SUMS_MIN:
            return self._partial(b, grid, where)
        if self.sum_banks and b.store.type in _BANK_TYPES and grad():
            return self._banked(b, grid, where)
        return b

    # ------------------------------------------------------------------ gathered sums
    # Batch statistics under a split of the batch: every point adds its piece's sums, and the
    # same operator's next launch needs the whole batch's before any point may go on. Read
    # from the store, that is a group's end (one task before, one after, and a task adding
    # the sums between: each boundary ~0.4 ms a step on this host's two processors, and a
    # ResNeXt step has 34). On one rank the points of a fused task are threads of one process:
    # each keeps its partial sums (a piece of its own, as `_partial`), and a reader over the
    # same grid and processors gets the store plus every point's piece, exchanged inside the
    # task (tasks.gathered: a barrier, ~30 us here), its launch concurrent. The store itself
    # gets the sums when something else reads it (`_settle`).

    def _gathers_on(self, grid: tuple[int, ...], where: MachineView) -> bool:
        """Whether the points of a fused launch over `grid` on `where` may exchange sums:
        one point per processor, all of them in this process."""
        return (self.gathers and self.machine.ranks == 1 and math.prod(grid) > 1
                and math.prod(grid) == where.num_points)

    def _gathered_reads(self, bound: Sequence[BoundArg], grid: tuple[int, ...],
                        where: MachineView) -> list[tuple[int, _Partials]]:
        """(parameter index, partial sums) of each whole store the launch reads whose pending
        sums its points can exchange (`_gathers_on`); the others' sums are settled first."""
        if not self._partials:
            return []
        out = []
        for i, b in enumerate(bound):
            rec = self._partials.get(id(b.store))
            if rec is None or not rec.pending or b.role is Role.SUM:
                continue
            if (b.role is Role.INPUT and rec.gathered and b.tile is None
                    and rec.grid == grid and rec.view == where):
                out.append((i, rec))
            else:
                self._settle(b.store)
        return out

    @staticmethod
    def _piece_of(rec: _Partials) -> tuple[tuple[int, ...], tuple[int | None, ...]]:
        """The tile and projection that give each point its own piece of `rec`'s sums."""
        dims = store_dims(rec.store)
        return ((1,) * len(rec.grid) + dims,
                tuple(range(len(rec.grid))) + (None,) * len(dims))

    def _banked(self, b: Any, grid: tuple[int, ...], where: MachineView) -> Any:
        """`b`, a small weight gradient's whole-store reduction over `grid` on `where`, as a
        read-write argument on its window of that point's row of a bank."""
        store = b.store
        rec = self._partials_over(store, grid, where)
        if rec is None:
            dims = store_dims(store)
            n = math.prod(dims)
            banks = self._banks.setdefault((grid, where, store.type), [])
            if not banks or banks[-1].used + n > banks[-1].capacity:
                cap = max(BANK_CAPACITY, n)
                banks.append(_SumBank(
                    self._zeros(TensorShape(grid + (cap,), _DATA_TYPE[store.type])), grid,
                    where, cap))
            bank = banks[-1]
            rec = _Partials(store, bank.store, grid, where, bank=bank, window=(bank.used, dims))
            bank.used += n
            bank.members.append(rec)
            self._partials[id(store)] = rec   # (the record keeps the store alive)
        rec.pending = True
        return BoundArg(b.name, b.role, b.reduced, rec.partials, (1,) * len(grid) + (
            rec.bank.capacity,), tuple(range(len(grid))) + (None,), len(grid), rec.window)

    def _settle_bank(self, bank: _SumBank) -> None:
        """Add the pending sums of every store in `bank` into it (their windows zeroed
        again), one processor, one fused task."""
        pending = [rec for rec in bank.members if rec.pending]
        first = MachineView.contiguous(bank.view.device_type, bank.view.start, 1)
        for rec in pending:
            rec.pending = False
            bound = [BoundArg("total", Role.INOUT, False, rec.store, None, None),
                     BoundArg("partials", Role.INOUT, False, bank.store, None, None, 0,
                              rec.window)]
            if not self._queue.add(add_partials, bound, frozenset(), [], (1,), first):
                raise AssertionError("a bank's sums could not form a task")  # (two whole stores)

    def _partial(self, b: Any, grid: tuple[int, ...], where: MachineView,
                 gathered: bool = False) -> Any:
        """`b`, a whole-store reduction over a launch of `grid` on `where`, as a read-write
        argument on that point's piece of the store's partial sums (`gathered`: its readers
        over the same grid may exchange them, see _gathers_on)."""
        store = b.store
        rec = self._partials_over(store, grid, where)
        if rec is None:
            shape = TensorShape(grid + store_dims(store), _DATA_TYPE[store.type])
            # the record keeps the store alive: its id names no other store meanwhile
            rec = self._partials[id(store)] = _Partials(store, self._zeros(shape), grid, where,
                                                        gathered=gathered)
        rec.pending = True
        return BoundArg(b.name, b.role, b.reduced, rec.partials, *self._piece_of(rec), len(grid))

    def _partials_over(self, store: Any, grid: tuple[int, ...], where: MachineView
                       ) -> _Partials | None:
        """The record of `store`'s partial sums over `grid` on `where`; None where it has
        none (those over another grid are added into it first: summing starts anew)."""
        rec = self._partials.get(id(store))
        if rec is not None and (rec.grid != grid or rec.view != where):
            self._settle(store)
            rec = None
        return rec

    def _settle(self, store: Any) -> None:
        """Add `store`'s pending partial sums into it (the kernel zeroes them again)."""
        rec = self._partials.get(id(store))
        if rec is None or not rec.pending:
            return
        if rec.bank is not None:
            self._settle_bank(rec.bank)
            return
        rec.pending = False
        total, parts = Ref(RefKind.OUTPUT, 0), Ref(RefKind.INPUT, 0)
        launch = add_partials_launch(total, parts, len(store_dims(store)), len(rec.grid))
        self._launch(launch, {total: store, parts: rec.partials},
                     {PARTIAL_ROWS: rec.view.num_points}, rec.view)

    def _settle_reads(self, launch: Launch, refs: Mapping[Ref, Any],
                      keep_gathered: bool = True) -> None:
        """Settle the partial sums of every store `launch` reads or overwrites (a launch that
        adds into it adds to the same sum: those stay pending; with `keep_gathered`, a read of
        sums its points may exchange is left to `_issue`, which knows the launch's grid)."""
        if not self._partials:
            return
        for name, role in launch.kernel.stores:
            if role is Role.SUM:
                continue
            store = refs[launch.args[name].ref]
            rec = self._partials.get(id(store))
            if rec is not None and not (keep_gathered and rec.gathered and role is Role.INPUT):
                self._settle(store)

    def settle_all(self) -> None:
        """Add every pending partial sum into its store (before reading stores back)."""
        for rec in list(self._partials.values()):
            self._settle(rec.store)

    # ------------------------------------------------------------------ profiling
    def set_profiler(self, profiler: Any) -> None:
        """Profile what follows with `profiler` (executor.profile.Profiler), or stop (None)."""
        self.profiler = self._queue.profiler = profiler

    def _mark(self, name: str | None, phase: str) -> None:
        """What the host does from now on, for the profiler: issue operator `name`'s `phase`
        (None: wait for results)."""
        self._queue.label = (name, phase)   # (also a recording's: see FusionQueue.label)
        if self.profiler is not None:
            self.profiler.switch(name, phase)

    # ------------------------------------------------------------------ stores
    def _store_from(self, arr: np.ndarray, persistent: bool = False) -> Any:
        """A store with `arr`'s values: for this step's tasks to read, or `persistent`: a store
        of its own that tasks may also write (a weight, an optimizer slot).

        On one rank the store is attached read-only to a private copy of `arr` (kept until the
        next step ends), and a persistent one is filled from such an attachment by a copy. Never
        attached writable: a task that uses a store attached writable makes Legate's submit wait
        for that task to finish (measured, Legate 25.11: 33 ms per submit of a 30 ms task, 0.1 ms
        read-only or copied in), so the issuing thread would never get ahead. Over several ranks
        nothing is attached: a task loads the values (host_data says why)."""
        arr = np.array(arr, order="C", copy=True)
        if self.machine.ranks > 1:
            return self._loaded(arr, pooled=not persistent)
        src = self._store_from_buffer(arr)
        if not persistent:
            self._attached.append((arr, src))
            return src
        dst = self.rt.create_store(src.type, src.shape)
        self.rt.issue_copy(dst, src)
        self._uploads.append((arr, src))
        return dst

    def _loaded(self, arr: np.ndarray, pooled: bool) -> Any:
        """A store (`pooled`: one per shape and type, which each step's feeds reuse) that a task
        fills with `arr` (several ranks: see _store_from)."""
        if arr.ndim == 0:
            arr = arr.reshape(1)
        key = (self._feeds_loaded, arr.shape, arr.dtype.str)   # this call's n-th feed
        self._feeds_loaded += 1
        dst = self._feed_pool.get(key) if pooled else None
        if dst is None:
            dst = self.rt.create_store(_STORAGE_TYPE[arr.dtype], arr.shape)
            if pooled:
                self._feed_pool[key] = dst
        self._loads.append(host_data.load(self.rt, arr, dst))
        return dst

    def _new_step(self) -> None:
        """Start a call: the previous one drained its work, so stores and buffers it left
        can go, and garbage is collected (on this thread only: runtime.collect_garbage)."""
        self._attached.clear()
        self._uploads.clear()
        self._close_boxes()
        self._feeds_loaded = 0
        forget_store_dims()
        collect_garbage()

    def _drain(self) -> None:
        """Submit what is pending and wait until every task issued so far has run.

        Why every public call ends so: freeing a Legate store (a model dropped, a weight
        replaced, the garbage collector) issues a Legion operation from a destructor that
        holds the GIL, and that operation may wait for earlier tasks; our tasks are Python and
        need the GIL to run, so the process hangs (seen: the collector freeing earlier models'
        stores while a fit's last tasks were pending). With nothing pending between calls,
        nothing freed there can wait on a task. Inside a call launches stay asynchronous."""
        self.flush()
        self._mark(None, "sync")
        self.rt.issue_execution_fence(block=True)
        for key in self._loads:   # their tasks have run
            host_data.release(key)
        self._loads.clear()

    def upload(self, arr: np.ndarray, copy: bool = True) -> Staged:
        """Stage an array in a store for later steps to read slices of (copy=False: the caller
        hands over `arr` and does not touch it again)."""
        buffer = np.array(arr, order="C", copy=True) if copy else np.ascontiguousarray(arr)
        if self.machine.ranks > 1:
            return Staged(self._loaded(buffer, pooled=False), buffer)
        return Staged(self._store_from_buffer(buffer), buffer)

    def _as_store(self, feed: Feed) -> Any:
        store = feed.store() if isinstance(feed, StagedRows) else self._store_from(feed)
        if self._recorder is not None:
            self._recorder.feed(store)
        if self._feed_log is not None:
            self._feed_log.append(feed)
        return store

    def _store_from_buffer(self, arr: np.ndarray) -> Any:
        """A store attached read-only to `arr` (one rank only: see _store_from)."""
        if arr.ndim == 0:
            arr = arr.reshape(1)
        return self.rt.create_store_from_buffer(_STORAGE_TYPE[arr.dtype], arr.shape, arr, True)

    def _scratch(self, *key: Any, shape: TensorShape, zero: bool = False) -> Any:
        """A store reused by every step that asks for the same purpose and shape: creating a
        store costs a collective on every rank, reusing one costs nothing (Legate orders the
        reuse after the previous step's readers)."""
        tag = (self._activation_tag if self._activation_tag and key[0] in _ACTIVATIONS
               else self._scratch_tag)
        full = key + tag + (shape.dims, shape.dtype)
        store = self._pool.get(full)
        if store is None:
            store = self._pool[full] = self._zeros(shape) if zero else self._new(shape)
        return store

    def _shapes(self, batch: int) -> dict[int, TensorShape]:
        shapes = self._shape_cache.get(batch)
        if shapes is None:
            shapes = self._shape_cache[batch] = self.graph.bind_batch(batch)
        return shapes

    def _new(self, shape: TensorShape) -> Any:
        if self._recorder is not None:
            self._recorder.created = True   # a step that makes stores is not replayed
        return self.rt.create_store(_LEGATE_TYPE[shape.dtype], shape.dims)

    def _zeros(self, shape: TensorShape) -> Any:
        s = self._new(shape)
        s.fill(_zero(shape.dtype))
        return s

    # ------------------------------------------------------------------ graph analysis
    def _requires_grad(self, input_grads: bool) -> dict[int, bool]:
        req = {t: input_grads and self.graph.tensors[t].shape.dtype.is_float for t in self.graph.inputs}
        for n in self.nodes:
            r = any(req.get(t, False) for t in n.inputs) or any(
                self.trainable((n.id, ws.name), ws) for ws in n.weights)
            for t in n.outputs:
                req[t] = r and self.graph.tensors[t].shape.dtype.is_float
        return req

    # ------------------------------------------------------------------ forward
    def _forward(self, feeds: Mapping[int, np.ndarray], training: bool, batch: int,
                 degrees: Mapping[str, int], nodes: Sequence[Node] | None = None,
                 env: dict[int, Any] | None = None,
                 node_refs: dict[int, dict[Ref, Any]] | None = None
                 ) -> tuple[dict[int, Any], dict[int, dict[Ref, Any]]]:
        """The forward launches of `nodes` (default: all), adding to `env` and `node_refs`
        (default: new ones; a pipeline's stages continue a micro-batch's)."""
        shapes = self._shapes(batch)
        env = {} if env is None else env
        env.update({t: self._as_store(a) for t, a in feeds.items()})
        node_refs = {} if node_refs is None else node_refs
        for n in (self.nodes if nodes is None else nodes):
            self._mark(n.name, "forward")
            in_shapes = [shapes[t] for t in n.inputs]
            refs: dict[Ref, Any] = {x(i): env[t] for i, t in enumerate(n.inputs)}
            for i, t in enumerate(n.outputs):
                env[t] = refs[y(i)] = self._scratch("act", t, shape=shapes[t])
            for ws in n.weights:
                refs[w(ws.name)] = self._weight_for(n, ws)
            for sv in n.op.saved(in_shapes):
                refs[saved(sv.name)] = self._scratch("saved", n.id, sv.name, shape=sv.shape)
                if sv.zero:  # a Sum target of this step's launches
                    self.fill(refs[saved(sv.name)])
            n_degrees, n_view = self._node_plan(n, degrees)
            for launch in n.op.forward(in_shapes, training and not self._runs_as_inference(n)):
                if "seed" in launch.scalars:
                    launch = Launch(launch.kernel, launch.args,
                                    dict(launch.scalars) | {"seed": self._next_seed()})
                    with self._dynamic_scalars({"seed": DYNAMIC_SEED}):
                        self._launch(launch, refs, n_degrees, n_view)
                    continue
                self._launch(launch, refs, n_degrees, n_view)
            node_refs[n.id] = refs
        return env, node_refs

    def _weight_for(self, n: Node, ws: Any) -> Any:
        """The store node `n`'s launches read weight `ws` from: the weight itself, or for an
        operator computing in a half precision this step's copy of the float32 weight rounded
        to it (Keras' autocast of a variable; the gradient still lands in float32)."""
        master = self.weights[(n.id, ws.name)]
        if not ws.shape.dtype.is_half:
            return master
        half = self._scratch("half_weight", n.id, ws.name, shape=ws.shape)
        r = ws.shape.rank
        self._launch(Launch(cast_copy, {"x": Arg(x(0), (None,) * r), "y": Arg(y(0), (None,) * r)}),
                     {x(0): master, y(0): half}, {})
        return half

    def _runs_as_inference(self, n: Node) -> bool:
        """A node whose operator asks for it, all of whose weights are frozen, runs in
        inference mode even in a training step (Keras' frozen BatchNormalization)."""
        return (n.op.inference_when_frozen and bool(n.weights)
                and all((n.id, ws.name) in self.frozen for ws in n.weights))

    def _next_seed(self) -> int:
        return int(self._seed_rng.integers(0, 2**62))

    # ------------------------------------------------------------------ loss and metrics
    def _objective(self, objective: Objective, env: Mapping[int, Any], targets: Sequence[Feed],
                   batch: int, degrees: Mapping[str, int], with_grad: bool,
                   batch_total: int | None = None
                   ) -> tuple[list[Any], list[Any], dict[str, list[Any]]]:
        """`batch_total`: the samples a mean loss averages over (default `batch`; a
        pipeline's micro-batch gives its step's, so the gradients summed equal the step's)."""
        shapes = self._shapes(batch)
        loss_stores, grad_stores = [], []
        metric_stores: dict[str, list[Any]] = {}
        weights = objective.loss_weights or (1.0,) * len(self.outputs)
        for k, (t, target) in enumerate(zip(self.outputs, targets)):
            self._mark(LOSS_LABEL, "loss")
            loss_degrees, loss_view = self.loss_placement(t, degrees)
            pred_shape = shapes[t]
            target_store = self._as_store(target)
            target_shape = TensorShape(tuple(target_store.shape), _DATA_TYPE[target_store.type])
            refs = {x(0): env[t], x(1): target_store,
                    y(0): self._scratch("loss", k, shape=TensorShape((batch,), DataType.FLOAT64)),
                    dx(0): self._scratch("dpred", k, shape=pred_shape)}
            loss_fn = objective.losses[k]
            launch = loss_fn.launch(pred_shape, target_shape, batch_total or batch, with_grad)
            factor = weights[k] * (self._loss_scale if with_grad else 1.0)
            if factor != 1.0 and "scale" in launch.scalars:
                # (the loss scale multiplies the gradient only: the loss read back is unscaled)
                launch = Launch(launch.kernel, launch.args,
                                dict(launch.scalars) | {"scale": launch.scalars["scale"] * factor})
            self._launch(launch, refs, loss_degrees, loss_view)
            self._post(refs[y(0)], loss_degrees, loss_view)
            loss_stores.append((refs[y(0)], weights[k]))
            grad_stores.append(refs[dx(0)])
            for m in objective.metrics[k]:
                mrefs = {x(0): env[t], x(1): target_store,
                         y(0): self._scratch("metric", k, m.name,
                                             shape=TensorShape((batch,), DataType.FLOAT64))}
                self._launch(m.launch(pred_shape, target_shape), mrefs, loss_degrees, loss_view)
                self._post(mrefs[y(0)], loss_degrees, loss_view)
                metric_stores.setdefault(m.name, []).append(mrefs[y(0)])
        return loss_stores, grad_stores, metric_stores

    # ------------------------------------------------------------------ posted values
    def _open_box(self) -> posted.Box | None:
        """A box for the step about to be issued to post its losses and metrics to (None where
        the executor reads them back: UNITY_LEGION_POSTED=0). Every rank opens it (the same
        number on each: they issue the same calls)."""
        if not self.posts:
            return None
        box = self._post_box = posted.open_box()
        self._boxes.append(box)
        return box

    def _box_number(self) -> int:
        return self._post_box.number if self._post_box is not None else -1

    def _close_boxes(self) -> None:
        for box in self._boxes:
            posted.close_box(box)
        self._boxes.clear()
        self._box_posts.clear()
        self._post_box = None

    def _posts_of(self, box: posted.Box | None) -> dict[int, tuple[Any, int]]:
        """id(store) -> (store, key) of the stores whose values the tasks post to `box`."""
        return {} if box is None else self._box_posts.get(box.number, {})

    def _post(self, store: Any, degrees: Mapping[str, int], view: MachineView | None) -> None:
        """Have the tasks post per-sample `store` to the step's box (see posted.py)."""
        if self._post_box is None:
            return
        posts = self._box_posts.setdefault(self._post_box.number, {})
        key = posts.setdefault(id(store), (store, len(posts)))[1]
        ref = Ref(RefKind.INPUT, 0)
        with self._dynamic_scalars({"box": DYNAMIC_BOX}):
            self._launch(posted.post_launch(ref, self._post_box.number, key), {ref: store},
                         degrees, view)

    def _take_posted(self, box: posted.Box, stores: Sequence[Any], batch: int
                     ) -> list[tuple[int, np.ndarray]]:
        """(index, values) of each of `stores` that the step's tasks posted to `box`, taken
        once the step has run (the caller fenced: every post is in) and the box closed."""
        posts = self._posts_of(box)
        keys = [(j, posts[id(st)][1]) for j, st in enumerate(stores) if id(st) in posts]
        need = {key: batch for _j, key in keys}
        if not box.holds(need):
            raise RuntimeError(f"the step's tasks ran but did not post every loss and metric "
                               f"(box {box.number}: keys {sorted(need)})")
        posted.close_box(box)
        return [(j, box.value(key, batch)) for j, key in keys]

    def _read_objectives(self, parts: Sequence[tuple[int, list[Any], dict[str, list[Any]]]],
                         extra: Sequence[Any] = (), direct: bool = False,
                         boxes: Sequence[posted.Box | None] = ()
                         ) -> tuple[list[StepResult], list[np.ndarray]]:
        """The results of (batch, loss stores, metric stores) `parts` (a step's, or each
        micro-batch's), and the values of the `extra` stores, all read together (read_all;
        `direct`: the stores are copies no launch uses again, mapped as they are). `boxes`:
        per part, the box its tasks posted its stores' values to (None: read them)."""
        per_part = [[st for st, _w in ls] + [st for v in ms.values() for st in v]
                    for _b, ls, ms in parts]
        got: dict[tuple[int, int], np.ndarray] = {}   # (part, index) -> posted values
        if self.machine.ranks > 1 and any(box is not None for box in boxes):
            # (every rank's tasks posted their own rows: all of them, exchanged at once)
            posted.share([box for box in dict.fromkeys(boxes) if box is not None], rank_comm())
        for i, box in enumerate(boxes):
            if box is not None:
                got |= {(i, j): v for j, v in self._take_posted(box, per_part[i], parts[i][0])}
        unread = [st for i, sts in enumerate(per_part) for j, st in enumerate(sts)
                  if (i, j) not in got]
        read_back = iter(read_all(unread + list(extra), self._uploads, direct))
        values = iter([got[(i, j)] if (i, j) in got else next(read_back)
                       for i, sts in enumerate(per_part) for j, _st in enumerate(sts)]
                      + list(read_back))
        results = []
        for batch, ls, ms in parts:
            loss = np.zeros(batch)
            for _st, weight in ls:
                loss += weight * next(values)
            metrics = {name: _mean_of([next(values) for _ in v]) for name, v in ms.items()}
            results.append(StepResult(batch, loss, metrics))
        return results, list(values)

    def _read_and_drain(self, parts: Sequence[tuple[int, list[Any], dict[str, list[Any]]]],
                        extra: Sequence[Any] = (), direct: bool = False,
                        boxes: Sequence[posted.Box | None] = ()
                        ) -> tuple[list[StepResult], list[np.ndarray]]:
        """_read_objectives, and the call's closing fence (_drain) in the order its values
        come in: posted values are all in once every task has run, so the fence comes first
        (a host woken by the loss mid-step would take turns at the interpreter's lock with the
        tasks still running: the data-parallel MLP of bench_fit ran 1.025x slower so); stores
        are read before it (over several ranks their round trips overlap the step's work)."""
        posts = any(box is not None for box in boxes)
        if posts:
            self._drain()
        out = self._read_objectives(parts, extra, direct, boxes)
        if not posts:
            self._drain()
        return out

    # ------------------------------------------------------------------ public steps
    def train_step(self, feeds: Mapping[int, Feed], targets: Sequence[Feed],
                   objective: Objective, rule: UpdateRule, lr: float, step: int,
                   loss_scale: float | None = None) -> StepResult:
        """One forward, backward and update; nothing is updated if the loss is not finite.

        The whole step is issued before anything is read back: every update kernel (optimizer,
        sparse and state updates) reads the step's losses and runs only where they are all
        finite (tasks.Step.guards; a skipped update still zeroes the gradient it consumed), so
        the host never waits for the forward pass before it issues the backward one. The
        losses are read at the end."""
        if self.pipeline is not None:
            return self.pipeline.train_step(feeds, targets, objective, rule, lr, step, loss_scale)
        batch = _batch_of(feeds)
        targets = self._checked_targets(objective, targets, batch)
        self._new_step()
        box = self._open_box()
        loss_stores, metric_stores, finite = self._issue_step(
            feeds, targets, objective, rule, lr, step, loss_scale, batch)
        self._mark(None, "sync")
        (result,), checked = self._read_and_drain([(batch, loss_stores, metric_stores)],
                                                  [finite] if finite is not None else [],
                                                  boxes=[box])
        if finite is not None and not np.all(np.isfinite(checked[0])):
            result.grads_finite = result.applied = False
        if not np.all(np.isfinite(result.loss)):
            # the update kernels changed nothing: the weights, slots and statistics are as
            # they were (the gradients were zeroed all the same)
            result.applied = False
        return result

    def train_steps(self, batches: Sequence[tuple[Mapping[int, Feed], Sequence[Feed]]],
                    objective: Objective, rule: UpdateRule, lrs: Sequence[float],
                    first_step: int) -> list[StepResult]:
        """Training steps on `batches` in order (step numbers first_step, first_step + 1, ...;
        learning rates `lrs`, one per step), issued one after another and read back together:
        the host waits once for all of them (Keras' steps_per_execution). Each step's update
        is guarded by its own losses as in train_step, so a non-finite batch changes nothing
        and the steps after it run as they would have; they keep the step numbers they were
        issued with. Every batch is checked before anything is issued. Without loss scaling
        (whose scale the host adjusts after each step); a pipelined plan's steps each run in
        its schedule (PipelineRunner.train_steps)."""
        if not batches:
            return []
        if len(lrs) != len(batches):
            raise ValueError(f"train_steps: {len(batches)} batches but {len(lrs)} learning rates")
        if len(batches) == 1:
            return [self.train_step(*batches[0], objective, rule, lrs[0], first_step)]
        if self.pipeline is not None:
            return self.pipeline.train_steps(batches, objective, rule, lrs, first_step)
        checked = self._checked_batches(objective, batches)
        for i, lr in enumerate(lrs):   # the rule checks its arguments before anything is issued
            rule.launch(1, lr, first_step + i)
        self._new_step()
        parts, boxes = [], []
        for i, ((feeds, targets, batch), lr) in enumerate(zip(checked, lrs)):
            box = self._open_box()
            loss_stores, metric_stores, _ = self._issue_step(
                feeds, targets, objective, rule, lr, first_step + i, None, batch)
            parts.append(self._copied_out(batch, loss_stores, metric_stores, box))
            boxes.append(box)
        self._mark(None, "sync")
        results, _ = self._read_and_drain(parts, direct=True, boxes=boxes)
        for result in results:
            if not np.all(np.isfinite(result.loss)):
                result.applied = False   # (as train_step)
        return results

    def _checked_batches(self, objective: Objective,
                         batches: Sequence[tuple[Mapping[int, Feed], Sequence[Feed]]]
                         ) -> list[tuple[Mapping[int, Feed], list[Feed], int]]:
        """(feeds, checked targets, batch size) of each of a group's `batches`, all checked
        before any is issued."""
        out = []
        for feeds, targets in batches:
            batch = _batch_of(feeds)
            out.append((feeds, self._checked_targets(objective, targets, batch), batch))
        return out

    def _copied_out(self, batch: int, loss_stores: list[Any], metric_stores: dict[str, list[Any]],
                    box: posted.Box | None = None) -> tuple[int, list[Any], dict[str, list[Any]]]:
        """A step's (batch, losses, metrics) as copies (snapshot): the next step of a group
        writes the same stores (a recorded step reuses them), so each step's values are copied
        out as it ends and the copies read together. Stores its tasks post to `box` are not
        copied: the box holds their values (_read_objectives)."""
        keep, posts = self._uploads, self._posts_of(box)

        def out(st: Any) -> Any:
            return st if id(st) in posts else snapshot(st, keep)
        return (batch, [(out(st), w) for st, w in loss_stores],
                {k: [out(st) for st in v] for k, v in metric_stores.items()})

    def _issue_step(self, feeds: Mapping[int, Feed], targets: Sequence[Feed],
                    objective: Objective, rule: UpdateRule, lr: float, step: int,
                    loss_scale: float | None, batch: int) -> tuple[list[Any], dict[str, list[Any]], Any]:
        """Issue one training step (replayed where it was recorded): the stores of its losses,
        metrics and gradients' finiteness (None without loss scaling)."""
        degrees = self.degrees_for(batch)
        key = self._trace_key("train", feeds, targets, objective, rule, batch, loss_scale)
        values = {DYNAMIC_LR: lr, DYNAMIC_STEP: step, DYNAMIC_BOX: self._box_number()}
        if key is not None and key in self._traces:
            rule.launch(1, lr, step)   # the rule checks its arguments before anything is issued
        return self._recorded(
            key, list(feeds.values()) + list(targets), values,
            lambda: self._issue_train_step(feeds, targets, objective, rule, lr, step,
                                           loss_scale, batch, degrees))

    def _issue_train_step(self, feeds: Mapping[int, Feed], targets: Sequence[Feed],
                          objective: Objective, rule: UpdateRule, lr: float, step: int,
                          loss_scale: float | None, batch: int, degrees: Mapping[str, int]
                          ) -> tuple[list[Any], dict[str, list[Any]], Any]:
        """Issue a training step by walking the graph (all of it submitted): the stores of its
        losses, of its metrics and of its gradients' finiteness (None without loss scaling)."""
        env, node_refs = self._forward(feeds, True, batch, degrees)
        # loss_scale (dynamic loss scaling): the loss gradient is multiplied by it, the weight
        # gradients divided by it before the update, which runs only if they are all finite
        self._loss_scale = float(loss_scale) if loss_scale is not None else 1.0
        try:
            loss_stores, grad_stores, metric_stores = self._objective(
                objective, env, targets, batch, degrees, with_grad=True)
        finally:
            self._loss_scale = 1.0
        for st in [st for st, _w in loss_stores] + [st for v in metric_stores.values() for st in v]:
            self._settle(st)
        # (a sparse update reads dy itself, which loss scaling leaves scaled: dense then)
        sparse = self._sparse_weights(rule, batch) if loss_scale is None else frozenset()
        self._backward(env, node_refs, grad_stores, batch, degrees, sparse)
        guards = [st for st, _w in loss_stores]
        finite = self._unscale_grads(loss_scale) if loss_scale is not None else None
        if finite is not None:
            guards.append(finite)
        self._update(rule, lr, step, node_refs, batch, degrees, sparse, guards=guards)
        self.flush()
        return loss_stores, metric_stores, finite

    # ------------------------------------------------------------------ recorded steps
    def _trace_key(self, kind: str, feeds: Mapping[int, Feed], targets: Sequence[Feed] = (),
                   objective: Objective | None = None, rule: UpdateRule | None = None,
                   batch: int = 0, loss_scale: float | None = None) -> tuple[Any, ...] | None:
        """What makes two steps of `kind` ("train", "evaluate", "predict") issue the same
        operations on the same stores (the batch's own stores and the dynamic scalars aside:
        executor/replay.py); None where no step is recorded or replayed (off, or an unhashable
        objective)."""
        if not self.replay:
            return None
        pending = tuple(sorted(k for k, rec in self._partials.items() if rec.pending))
        key = (kind, batch, tuple((t, _feed_signature(a)) for t, a in feeds.items()),
               tuple(_feed_signature(t) for t in targets), objective, rule, loss_scale,
               self._grads_zeroed, pending, self.fusion, self.partial_sums, self.sparse_updates,
               self.halo_reads, self._post_box is not None)
        try:
            hash(key)
        except TypeError:
            return None
        return key

    def _trace_state(self) -> tuple[Any, ...]:
        """What a step leaves that the next one depends on, besides the stores' values."""
        return (self._grads_zeroed, tuple((rec, rec.pending) for rec in self._partials.values()))

    def _recorded(self, key: tuple[Any, ...] | None, batch_feeds: Sequence[Feed],
                  values: Mapping[str, Any], issue: Callable[[], Any]) -> Any:
        """Issue a step of `key` from its recording, or by `issue()` (recording it, where `key`
        is not None), and return what it returns (the stores read back after it).
        `batch_feeds`: the batch's arrays or rows in the order the walk makes their stores
        (inputs, then targets); `values`: the dynamic scalars by kind (seeds are drawn)."""
        trace = None if key is None else self._traces.get(key)
        self.replayed = trace is not None
        if trace is not None:
            fresh = [self._as_store(a) for a in batch_feeds]

            def value(kind: str) -> Any:
                return self._next_seed() if kind == DYNAMIC_SEED else values[kind]

            trace.replay(self.rt, fresh, value, self.profiler)
            if self._post_box is not None:   # (the replayed posts carry the recorded keys)
                self._box_posts[self._post_box.number] = trace.posts
            self._grads_zeroed, pending = trace.end_state
            for rec, was in pending:
                rec.pending = was
            self._backward_refs = {}
            self._queue.tasks += trace.tasks
            self._queue.launches += trace.launches
            return trace.result
        with self._recording(key is not None) as rec:
            result = issue()
        state = self._trace_state()
        recorded = None if rec is None else rec.finish(
            result, state, kept=_stores_in((result, [(r.store, r.partials) for r, _p in state[1]])),
            localize=self.local_temporaries)
        if recorded is not None:
            recorded.posts = self._posts_of(self._post_box)
            while len(self._traces) >= _MAX_TRACES:
                release_local_buffers(self._traces.pop(next(iter(self._traces))).local_programs())
            self._traces[key] = recorded
        return result

    @contextlib.contextmanager
    def _recording(self, on: bool = True) -> Iterator[Recorder | None]:
        """Launches, fills and batch stores issued inside are noted by the Recorder yielded
        (None: nothing is recorded)."""
        rec = Recorder() if on else None
        self._recorder = self._queue.recorder = rec
        try:
            yield rec
        finally:
            self._recorder = self._queue.recorder = None

    @contextlib.contextmanager
    def _dynamic_scalars(self, kinds: dict[str, str]) -> Iterator[None]:
        """The launches issued inside carry scalars (by name) that change from step to step."""
        outer = self._dynamic
        self._dynamic = outer | kinds
        try:
            yield
        finally:
            self._dynamic = outer

    def _unscale_grads(self, loss_scale: float) -> Any:
        """Divide every trainable weight's gradient by `loss_scale`; the returned one-element
        store is 0 if they are all finite, NaN otherwise (operators.optimizers.unscale_grad):
        a guard of the step's updates."""
        finite = self._scratch("grads_finite", shape=TensorShape((1,), DataType.FLOAT64))
        self.fill(finite)
        for key, spec in self.weight_specs():
            if self.trainable(key, spec) and key in self.grads:
                self._launch(unscale_launch(spec.shape.rank, loss_scale),
                             {GRAD: self.grads[key], FINITE: finite}, {})
        return finite

    def _sparse_weights(self, rule: UpdateRule, batch: int) -> frozenset[WeightKey]:
        """The trainable weights this step updates sparsely: under plain SGD (no momentum, no
        weight decay: rows the batch did not use keep their values, as the dense update leaves
        them), whose operator has a sparse update, and that the update splits by rows (not a
        weight its configuration tiles)."""
        if not (self.sparse_updates and type(rule) is SGDRule and not rule.momentum
                and not rule.weight_decay):
            return frozenset()
        out = set()
        shapes = self._shapes(batch)
        for key, spec in self.weight_specs():
            if not self.trainable(key, spec):
                continue
            n = self.graph.nodes[key[0]]
            if n.op.sparse_sgd_update([shapes[t] for t in n.inputs], key[1]) is None:
                continue
            _split, up_degrees, _view = self.update_layout(key, batch)
            if set(up_degrees) <= {ROWS}:
                out.add(key)
        return frozenset(out)

    def evaluate_step(self, feeds: Mapping[int, Feed], targets: Sequence[Feed],
                      objective: Objective) -> StepResult:
        if self.pipeline is not None:
            return self.pipeline.evaluate_step(feeds, targets, objective)
        batch = _batch_of(feeds)
        targets = self._checked_targets(objective, targets, batch)
        self._new_step()
        box = self._open_box()
        loss_stores, metric_stores = self._issue_evaluate(feeds, targets, objective, batch)
        return self._read_and_drain([(batch, loss_stores, metric_stores)], boxes=[box])[0][0]

    def evaluate_steps(self, batches: Sequence[tuple[Mapping[int, Feed], Sequence[Feed]]],
                       objective: Objective) -> list[StepResult]:
        """evaluate_step on each of `batches`, issued one after another and read back together
        (as train_steps)."""
        if len(batches) < 2:
            return [self.evaluate_step(f, t, objective) for f, t in batches]
        if self.pipeline is not None:
            return self.pipeline.evaluate_steps(batches, objective)
        checked = self._checked_batches(objective, batches)
        self._new_step()
        parts, boxes = [], []
        for feeds, targets, batch in checked:
            boxes.append(self._open_box())
            parts.append(self._copied_out(
                batch, *self._issue_evaluate(feeds, targets, objective, batch), boxes[-1]))
        results, _ = self._read_and_drain(parts, direct=True, boxes=boxes)
        return results

    def _issue_evaluate(self, feeds: Mapping[int, Feed], targets: Sequence[Feed],
                        objective: Objective, batch: int
                        ) -> tuple[list[Any], dict[str, list[Any]]]:
        """Issue one evaluation step (replayed where it was recorded): its loss and metric
        stores."""
        degrees = self.degrees_for(batch)

        def issue() -> tuple[list[Any], dict[str, list[Any]]]:
            env, _ = self._forward(feeds, False, batch, degrees)
            loss_stores, _, metric_stores = self._objective(objective, env, targets, batch,
                                                            degrees, with_grad=False)
            self.settle_all()
            self.flush()
            return loss_stores, metric_stores

        return self._recorded(self._trace_key("evaluate", feeds, targets, objective, batch=batch),
                              list(feeds.values()) + list(targets),
                              {DYNAMIC_BOX: self._box_number()}, issue)

    def _checked_targets(self, objective: Objective, targets: Sequence[Feed], batch: int
                         ) -> list[Feed]:
        """One target per output with the batch's length; numpy targets are also checked and
        cast by their loss (a kernel fed a bad label would abort the process)."""
        if len(targets) != len(self.outputs) or len(objective.losses) != len(self.outputs):
            raise ValueError(f"the model has {len(self.outputs)} output(s); got {len(targets)} "
                             f"target(s) and {len(objective.losses)} loss(es)")
        shapes = self._shapes(batch)
        out: list[Feed] = []
        for t, target, loss in zip(self.outputs, targets, objective.losses):
            if len(target) != batch:
                raise ValueError(f"targets for output {self.graph.tensors[t].name!r} have "
                                 f"{len(target)} samples, the inputs {batch}")
            if isinstance(target, np.ndarray):
                target = loss.prepare_target(shapes[t], target)
            out.append(target)
        return out

    def predict_step(self, feeds: Mapping[int, Feed]) -> list[np.ndarray]:
        if self.pipeline is not None:
            return self.pipeline.predict_step(feeds)
        self._new_step()
        outputs = self._issue_predict(feeds)
        self._drain()
        return read_all(outputs)   # over several ranks: one mapping for all of them

    def predict_steps(self, batches: Sequence[Mapping[int, Feed]]) -> list[list[np.ndarray]]:
        """predict_step on each of `batches` (feeds), issued one after another, each step's
        outputs copied out as it ends (the next step writes the same stores) and all read
        back together (as train_steps)."""
        if len(batches) < 2:
            return [self.predict_step(f) for f in batches]
        if self.pipeline is not None:
            return self.pipeline.predict_steps(batches)
        self._new_step()
        keep = self._uploads
        outputs = [[snapshot(st, keep) for st in self._issue_predict(feeds)] for feeds in batches]
        self._drain()
        values = iter(read_all([st for out in outputs for st in out], keep, direct=True))
        return [[next(values) for _ in out] for out in outputs]

    def _issue_predict(self, feeds: Mapping[int, Feed]) -> list[Any]:
        """Issue one prediction step (replayed where it was recorded): its output stores."""
        batch = _batch_of(feeds)

        def issue() -> list[Any]:
            env, _ = self._forward(feeds, False, batch, self.degrees_for(batch))
            self.settle_all()
            self.flush()
            return [env[t] for t in self.outputs]

        return self._recorded(self._trace_key("predict", feeds, batch=batch),
                              list(feeds.values()), {}, issue)

    def gradients(self, feeds: Mapping[int, np.ndarray], output_grads: Sequence[np.ndarray],
                  training: bool = True
                  ) -> tuple[list[np.ndarray], dict[int, np.ndarray], dict[WeightKey, np.ndarray]]:
        """Outputs, gradients of graph inputs (with input_grads=True) and of weights, for given
        gradients of the outputs: the per-operator check against another framework."""
        batch = _batch_of(feeds)
        degrees = self.degrees_for(batch)
        self._new_step()
        env, node_refs = self._forward(feeds, training, batch, degrees)
        # persistent: a seed may be added into (an output that also feeds another node)
        seeds = [self._store_from(to_storage(g, self.graph.tensors[t].shape.dtype.storage),
                                  persistent=True)
                 for t, g in zip(self.outputs, output_grads)]
        grads = self._backward(env, node_refs, seeds, batch, degrees)
        self.settle_all()
        self._drain()
        specs = dict(self.weight_specs())
        keys = [k for k in self.grads if self.trainable(k, specs[k])]
        values = read_all([env[t] for t in self.outputs] + [self.grads[k] for k in keys])
        outs = values[:len(self.outputs)]
        # (an input no backward kernel writes a gradient of has a store never written)
        in_grads = {t: read(grads[t], direct=True) for t in self.graph.inputs if t in grads}
        return outs, in_grads, dict(zip(keys, values[len(self.outputs):]))

    # ------------------------------------------------------------------ backward and update
    def _backward(self, env: Mapping[int, Any], node_refs: Mapping[int, dict[Ref, Any]],
                  grad_stores: Sequence[Any], batch: int, degrees: Mapping[str, int],
                  sparse: frozenset[WeightKey] = frozenset()) -> dict[int, Any]:
        grads = self._seed_grads(grad_stores, batch, degrees)
        self._zero_weight_grads(sparse)
        self._backward_nodes(self.nodes, env, node_refs, grads, batch, degrees, sparse)
        return grads

    def _seed_grads(self, grad_stores: Sequence[Any], batch: int, degrees: Mapping[str, int]
                    ) -> dict[int, Any]:
        """{output tensor: its gradient}, summed where a tensor is output more than once."""
        shapes = self._shapes(batch)
        grads: dict[int, Any] = {}
        for t, g in zip(self.outputs, grad_stores):
            if t in grads:
                self._launch(accumulate_launch(Ref(RefKind.OUTPUT, 0), Ref(RefKind.INPUT, 0),
                                               shapes[t].rank),
                             {Ref(RefKind.OUTPUT, 0): grads[t], Ref(RefKind.INPUT, 0): g}, degrees)
            else:
                grads[t] = g
        return grads

    def _zero_weight_grads(self, sparse: frozenset[WeightKey] = frozenset()) -> None:
        """Every trainable weight's gradient store exists and is zero (backward kernels add
        into them) before a step's first backward launch."""
        self._backward_refs = {}
        for key, spec in self.weight_specs():
            if self.trainable(key, spec):
                g = self.grads.get(key)
                if g is None:
                    if key not in sparse:   # (a sparse update forms no dense gradient)
                        self.grads[key] = self._zeros(spec.shape)
                elif not self._grads_zeroed:
                    self.fill(g)
        self._grads_zeroed = False

    def _backward_nodes(self, nodes: Sequence[Node], env: Mapping[int, Any],
                        node_refs: Mapping[int, dict[Ref, Any]], grads: dict[int, Any],
                        batch: int, degrees: Mapping[str, int],
                        sparse: frozenset[WeightKey] = frozenset()) -> None:
        """The backward launches of `nodes` (in reverse), from the gradients in `grads` (to
        which the input gradients they make are added); weight gradients add into self.grads."""
        shapes = self._shapes(batch)
        for n in reversed(nodes):
            if not any(t in grads for t in n.outputs):
                continue
            self._mark(n.name, "backward")
            in_shapes = [shapes[t] for t in n.inputs]
            refs = dict(node_refs[n.id])
            for i, t in enumerate(n.outputs):
                refs[dy(i)] = grads[t] if t in grads else self._scratch("zero", t, shape=shapes[t],
                                                                        zero=True)
            skipped = {ws.name for ws in n.weights if (n.id, ws.name) in sparse}
            for ws in n.weights:
                if ws.name in skipped:
                    continue
                g = self.grads.get((n.id, ws.name)) if self.trainable((n.id, ws.name), ws) else None
                # a frozen weight's gradient is computed by the shared kernel but never used
                refs[Ref(RefKind.GRAD_WEIGHT, ws.name)] = g if g is not None else self._scratch(
                    "frozen_grad", n.id, ws.name, shape=ws.shape, zero=True)
            needs = [bool(self.requires_grad.get(t)) for t in n.inputs]
            pending: list[tuple[int, Any]] = []
            for i, t in enumerate(n.inputs):
                if not needs[i]:
                    continue
                if t in grads:
                    tmp = self._scratch("grad_part", t, n.id, i, shape=shapes[t])
                    refs[dx(i)] = tmp
                    pending.append((t, tmp))
                else:
                    grads[t] = refs[dx(i)] = self._scratch("grad", t, shape=shapes[t])
            n_degrees, n_view = self._node_plan(n, degrees)
            launches = n.op.backward(in_shapes, needs)
            # each further consumer's part is added on the consumer's processors (split by
            # samples as it is), so it joins the consumer's fused task; a pipeline's runs on
            # its stage's default processors. Where each launch is a task of its own (no
            # fusion, as the simulator's GPU runtime), the additions follow the last launch
            # writing an input gradient, before those writing weight gradients alone: the
            # gradient is then whole for the producer while the weights' are computed. Fused,
            # they come last, as a grid of their own would split the operator's task in three
            acc_degrees, acc_view = ((n_degrees, n_view) if self.pipeline is None
                                     else (degrees, None))
            cut = len(launches)
            if not self.fusion:
                cut = last_input_grad(launches) + 1 or cut
                if self.pipeline is None and n_view is not None:
                    # a task of its own: split by samples over all the operator's processors
                    acc_degrees = {SAMPLE: n_view.num_points}
            for launch in [*launches[:cut], None, *launches[cut:]]:
                if launch is None:   # the additions' place
                    for t, tmp in pending:
                        total, part = Ref(RefKind.OUTPUT, 0), Ref(RefKind.INPUT, 0)
                        self._launch(accumulate_launch(total, part, shapes[t].rank),
                                     {total: grads[t], part: tmp}, acc_degrees, acc_view)
                elif not (skipped and _only_writes_grads_of(launch, skipped)):
                    # (skipped: the sparse update reads the step's inputs and dy instead)
                    self._launch(launch, refs, n_degrees, n_view)
            if skipped:
                self._backward_refs[n.id] = refs

    def _update(self, rule: UpdateRule, lr: float, step: int,
                node_refs: Mapping[int, dict[Ref, Any]], batch: int,
                degrees: Mapping[str, int], sparse: frozenset[WeightKey] = frozenset(),
                guards: Sequence[Any] = ()) -> None:
        """Apply `rule` to every trainable weight (the rule's kernels also zero the gradients),
        then every operator's state updates (launches writing a frozen weight are skipped);
        each update runs only where the `guards` stores are all finite."""
        self._ensure_slots(rule)
        updates = []
        for key, spec in self.weight_specs():
            if not self.trainable(key, spec):
                continue
            split, up_degrees, view = self.update_layout(key, batch)
            where = view or self.view
            # updates are independent: those over the same grid and processors go together,
            # so they fuse into one task (a sort key the same on every rank: no hashing)
            order = (where.device_type, where.start, where.num_points,
                     tuple(sorted(up_degrees.items())))
            updates.append((order, key, spec, split, up_degrees, view))
        shapes = self._shapes(batch)
        # banked gradients first, all at once: settled at the first update that reads one,
        # they would split the updates' fused task in two
        for banks in self._banks.values():
            for bank in banks:
                self._settle_bank(bank)   # (adds only what is pending: nothing, or all)
        for _order, key, spec, split, up_degrees, view in sorted(updates, key=lambda u: u[0]):
            self._mark(self.graph.nodes[key[0]].name, "update")
            if key in sparse:
                refs_b = self._backward_refs.get(key[0])
                if refs_b is None:   # no gradient reached the operator: nothing changes
                    continue
                n = self.graph.nodes[key[0]]
                launch = n.op.sparse_sgd_update([shapes[t] for t in n.inputs], key[1])
                assert launch is not None
                launch = Launch(launch.kernel, launch.args, dict(launch.scalars) | {"lr": lr})
                with self._dynamic_scalars({"lr": DYNAMIC_LR}):
                    self._launch(launch, refs_b, up_degrees, view, guards)
                continue
            refs = {PARAM: self.weights[key], GRAD: self.grads[key]}
            for s in rule.slots:
                refs[slot(s)] = self.slots[(key, s)]
            with self._dynamic_scalars({"lr": DYNAMIC_LR, "step": DYNAMIC_STEP}):
                self._launch(rule.launch(spec.shape.rank, lr, step, split), refs, up_degrees,
                             view, guards)
        self._grads_zeroed = True
        self._backward_refs = {}
        if any(rec.pending and rec.gathered for rec in self._partials.values()):
            self.settle_all()   # (together: one task, not one between each state update)
        for n in self.nodes:
            for launch in n.op.state_updates([shapes[t] for t in n.inputs]):
                self._mark(n.name, "update")
                if not self._writes_frozen(n.id, launch):
                    self._launch(launch, node_refs[n.id], *self._node_plan(n, degrees),
                                 guards=guards)

    def update_layout(self, key: WeightKey, batch: int
                      ) -> tuple[tuple[str | None, ...], dict[str, int], MachineView | None]:
        """How the optimizer update of weight `key` runs: (split per dim, degree per axis,
        processors). A weight its operator's configuration tiles (a Linear's kernel split by
        columns under "out") is updated over the same tiles on the operator's processors, so
        its slots live where its pieces live; a weight every point holds whole (data
        parallelism, or an operator without a plan) is split by rows over the operator's
        processors (its launch's points; the whole job without a plan). The simulator prices
        the same (`Simulator.update_points`)."""
        cached = self._layouts.get((key, batch))
        if cached is not None:
            return cached
        spec = dict(self.weight_specs())[key]
        rank = spec.shape.rank
        cfg = self.plan.get(key[0])
        view = None if cfg is None else cfg.view
        split: tuple[str | None, ...] = rows_split(rank)
        degrees: dict[str, int] = {}
        if cfg is not None and rank:
            n = self.graph.nodes[key[0]]
            shapes = self._shapes(batch)
            shape_cfg = cfg
            if cfg.degree(SAMPLE) > batch:  # a short last batch: the weight's tiles are the same
                shape_cfg = OpConfig.of(cfg.as_dict() | {SAMPLE: max(batch, 1)}, cfg.view)
            ws = node_shapes(n.op, [shapes[t] for t in n.inputs], shape_cfg).weights[key[1]]
            if ws.shard_degree > 1:
                split = tuple(weight_axis(d) if deg > 1 else None
                              for d, deg in enumerate(ws.degrees))
                degrees = {weight_axis(d): deg for d, deg in enumerate(ws.degrees) if deg > 1}
        if not degrees and rank:
            # the operator's processors: the points of its launch, at most its view's size
            points = (self.view.num_points if cfg is None
                      else min(max(cfg.num_points, 1), cfg.view.num_points))
            degrees = {ROWS: effective_degree(spec.shape.dims[0], points)}
        layout = self._layouts[(key, batch)] = (split, degrees, view)
        return layout

    def _writes_frozen(self, node_id: int, launch: Launch) -> bool:
        return any(role is not Role.INPUT and launch.args[name].ref.kind is RefKind.WEIGHT
                   and (node_id, launch.args[name].ref.key) in self.frozen
                   for name, role in launch.kernel.stores)

    # ================================================================== profiling API
    # The public face that code timing the executor (unity_legion.profiling: measuring
    # operators, calibrating the local machine) uses: stores, one launch, one forward or
    # backward pass without the objective, a fence. Nothing here starts a step or drains at
    # the end: the caller fences (`fence`) where it times. Set `fusion = False` first to have
    # every launch run as a task of its own (as each is priced).

    def new_store(self, shape: TensorShape, value: float | None = None) -> Any:
        """A new store of `shape`, uninitialised, or every element `value`."""
        store = self._new(shape)
        if value is not None:
            store.fill(value)
        return store

    def store_of(self, arr: np.ndarray) -> Any:
        """A store of its own holding a copy of `arr`'s values, that tasks may also write (a
        weight, a gradient seed); it lives as long as the caller holds it."""
        return self._store_from(arr, persistent=True)

    def launch(self, launch: Launch, refs: Mapping[Ref, Any], degrees: Mapping[str, int],
               view: MachineView | None = None) -> None:
        """Issue one launch as an operator's are issued: `refs` gives the store of every
        reference its arguments name, `degrees` the degree per launch axis, `view` the
        processors (default: the whole job's); its ADD-reduction targets are zeroed first."""
        self._launch(launch, refs, degrees, view)

    def forward_pass(self, feeds: Mapping[int, Feed], batch: int,
                     degrees: Mapping[str, int] | None = None, training: bool = True
                     ) -> tuple[dict[int, Any], dict[int, dict[Ref, Any]]]:
        """Issue one forward pass of the graph over `feeds` (graph input id -> array or staged
        rows) of `batch` samples, without the objective: (tensor id -> store, the per-node
        references `backward_pass` needs). `degrees`: default `degrees_for(batch)`."""
        if degrees is None:
            degrees = self.degrees_for(batch)
        return self._forward(feeds, training, batch, degrees)

    def backward_pass(self, env: Mapping[int, Any], node_refs: Mapping[int, dict[Ref, Any]],
                      output_grads: Sequence[Any], batch: int,
                      degrees: Mapping[str, int] | None = None, grads_zeroed: bool = False
                      ) -> dict[int, Any]:
        """Issue one backward pass after `forward_pass` (its two results), seeded by
        `output_grads` (stores, one per graph output, e.g. from `store_of`): tensor id ->
        gradient store; weight gradients land in `self.grads`. `grads_zeroed`: the weight
        gradients are taken as zero already (as after an update), so none is zero-filled."""
        if degrees is None:
            degrees = self.degrees_for(batch)
        if grads_zeroed:
            self._grads_zeroed = True
        return self._backward(env, node_refs, output_grads, batch, degrees)

    def fence(self) -> None:
        """Submit what is pending and block until every task issued so far has run."""
        self.flush()
        self.rt.issue_execution_fence(block=True)

    def record(self, issue: Callable[[], None]) -> StepTrace | None:
        """Run `issue` (launches through this API; what it leaves pending is submitted) with a
        recording on, as a training step is recorded (executor/replay.py): the recording, or
        None where it may not be issued again (it made stores). `reissue` issues it again as a
        replayed step issues its tasks, so the host's cost of a replayed step can be timed."""
        with self._recording() as rec:
            issue()
            self.flush()
        assert rec is not None
        return rec.finish(None, None)

    def reissue(self, trace: StepTrace) -> None:
        """Issue a recording of `record` again (its launches carry no step-to-step scalars)."""
        def no_value(kind: str) -> Any:
            raise ValueError(f"reissue: the recording has a {kind!r} scalar to put in; only a "
                             f"training step's recording does")
        trace.replay(self.rt, [], no_value)


def _only_writes_grads_of(launch: Launch, names: set[str]) -> bool:
    """Whether every store `launch` writes is the gradient of one of the weights `names`."""
    written = [launch.args[name].ref for name, role in launch.kernel.stores
               if role is not Role.INPUT]
    return bool(written) and all(r.kind is RefKind.GRAD_WEIGHT and r.key in names
                                 for r in written)


def _consecutive(devices: Sequence[int]) -> bool:
    """Whether point i runs on device devices[0] + i: a launch over that processor range
    places its points so (one point per processor, in order)."""
    return list(devices) == list(range(devices[0], devices[0] + len(devices)))


def _mean_of(values: list[np.ndarray]) -> np.ndarray:
    """The element-wise mean of a metric's per-output values: one output's as it is (the same
    numbers as np.mean's, at a fiftieth of its ~20 us)."""
    return values[0] if len(values) == 1 else np.mean(values, axis=0)


def read(store: Any, keep: list[Any] | None = None, direct: bool = False) -> np.ndarray:
    """A numpy copy of a whole store (blocks until its producers are done).

    The store itself is never mapped on the host: Legate keeps a store's host mapping for the
    store's lifetime, and Legion then makes every later launch that uses the store wait, in the
    issuing thread, until that launch has run (it unmaps the mapping for the task and maps it
    again at once: measured, Legate 25.11, a 2 ms task chain issued at 2.4 ms per launch instead
    of 0.03 ms). The loss is read every step and its store written by the next one, so a whole
    step ran synchronously. A temporary copy is mapped instead and dropped (~0.25 ms a read).
    Over several ranks a task copies (Legate's mapper refuses copy operations there: see
    host_data). `keep`: where tasks may still be pending, the list that holds the temporary
    until they have run (see GraphExecutor._drain).
    `direct`: map the store itself, for a store that may never have been written (Legion aborts
    a copy from one; a mapping gives whatever it holds)."""
    # (a bfloat16 store's values come back as float32: numpy has no bfloat16)
    if direct or store.has_scalar_storage:
        return np.array(from_storage(np.asarray(store.get_physical_store())), copy=True)
    tmp = snapshot(store, keep)
    return np.array(from_storage(np.asarray(tmp.get_physical_store())), copy=True)


def snapshot(store: Any, keep: list[Any] | None = None) -> Any:
    """A new store that will hold `store`'s present values (the copy is issued, not waited
    for; over several ranks a task copies: see read). `keep`: as read's."""
    rt = runtime()
    tmp = rt.create_store(store.type, store.shape)
    if machine_info().ranks > 1:
        host_data.copy(rt, store, tmp)
    else:
        rt.issue_copy(tmp, store)
    if keep is not None:
        keep.append(tmp)
    return tmp


def _stores_in(value: Any) -> list[Any]:
    """Every Legate store in `value` (nested tuples, lists and dicts, dataclasses' fields)."""
    out: list[Any] = []
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, LogicalStore):
            out.append(v)
        elif isinstance(v, (tuple, list)):
            todo.extend(v)
        elif isinstance(v, dict):
            todo.extend(v.values())
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            todo.extend(getattr(v, f.name) for f in dataclasses.fields(v))
    return out


def read_all(stores: Sequence[Any], keep: list[Any] | None = None,
             direct: bool = False) -> list[np.ndarray]:
    """[read(s, keep, direct) for s in stores], but over several ranks the stores of each
    element type are gathered into one (host_data.gather) and read with one mapping: mapping a
    store there costs a round trip between the ranks (~80 ms on 2 ranks of this 2-core
    machine)."""
    if machine_info().ranks == 1 or len(stores) < 2:
        return [read(s, keep, direct) for s in stores]
    values: list[np.ndarray | None] = [None] * len(stores)
    by_type: dict[str, list[int]] = {}
    for i, s in enumerate(stores):
        if s.has_scalar_storage:
            values[i] = read(s, keep)
        else:
            by_type.setdefault(str(s.type), []).append(i)
    rt = runtime()
    for idx in by_type.values():
        if len(idx) == 1:
            values[idx[0]] = read(stores[idx[0]], keep, direct)
            continue
        # (mapped itself: no launch uses the gathered store after)
        flat = read(host_data.gather(rt, [stores[i] for i in idx]), direct=True)
        at = 0
        for i in idx:
            shape = tuple(stores[i].shape)
            size = math.prod(shape)
            values[i] = flat[at:at + size].reshape(shape).copy()
            at += size
    return values  # type: ignore[return-value]


def _zero(dt: DataType) -> int | float:
    """The fill value of a zeroed store: bfloat16's stored bits (0 is +0.0) are integers."""
    return 0 if dt.is_integer or dt is DataType.BFLOAT16 else 0.0


def _master(ws: Any) -> Any:
    """A weight spec as the executor stores it: float32 for a half-precision compute type."""
    dt = ws.shape.dtype
    return ws if not dt.is_half else replace(ws, shape=TensorShape(ws.shape.dims, dt.master))


def _feed_signature(feed: Feed) -> tuple[Any, ...]:
    """What a batch's array or staged rows give its store: the shape and element type."""
    if isinstance(feed, StagedRows):
        buffer = feed.staged._buffer
        return (len(feed),) + buffer.shape[1:] + (buffer.dtype.str,)
    return feed.shape + (feed.dtype.str,)


def _batch_of(feeds: Mapping[int, Feed]) -> int:
    sizes = {len(a) for a in feeds.values()}
    if len(sizes) != 1:
        raise ValueError(f"inputs have different numbers of samples: {sorted(sizes)}")
    return sizes.pop()


def feed_dict(inputs: Iterable[int], arrays: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
    return dict(zip(inputs, arrays))
