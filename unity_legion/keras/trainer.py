"""compile / fit / evaluate / predict: Keras 3's training API over the Legate executor."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Sequence

import numpy as np

from unity_legion.keras import callbacks as cbs
from unity_legion.keras import data as data_utils
from unity_legion.keras import losses as losses_mod
from unity_legion.keras import metrics as metrics_mod
from unity_legion.keras import optimizers as optimizers_mod
from unity_legion.keras.progress import EpochProgress, resolve_verbose
from unity_legion.keras.seed import global_seed
from unity_legion.operators.base import OperatorError
from unity_legion.operators.precision import as_bfloat16
from unity_legion.types import DataType


_ANY = object()  # _ensure_executor: whichever executor the model has


def job_model(m: Any) -> tuple[Any, Any]:
    """The machine model and operator cost model that plan and price this job (`m`:
    runtime.MachineInfo): its GPUs' figures, or on CPUs the figures and kernel efficiencies
    `profiling.calibrate` measured for this machine and rank count when they are cached
    (`train.py --calibrate` measures them), else the local preset's defaults. Every rank takes
    rank 0's (the ranks must plan alike)."""
    from unity_legion.cost.op_cost import AnalyticCost
    from unity_legion.search.plan import running_machine

    cal = None
    if m.preferred_kind != "gpu":
        from unity_legion.profiling import local_calibration

        cal = local_calibration(measure=False)
    machine = running_machine(m.ranks, m.processors, m.preferred_kind, m.device_memory,
                              m.gpu_name, cal.machine if cal is not None else None)
    used = cal is not None and machine is cal.machine
    return machine, cal.analytic() if used else AnalyticCost()


class Trainer:
    """The training half of keras.Model; the model half provides the graph and weights."""

    def __init__(self) -> None:
        self.compiled = False
        self.optimizer: optimizers_mod.Optimizer | None = None
        self.stop_training = False
        # fit's training steps issued together before their losses are read (compile's)
        self.steps_per_execution = 1
        self.history: cbs.History | None = None
        self._objective: Any = None
        self._pending_compile: Any = None  # compile() arguments waiting for the model's build
        # compile()'s loss, loss_weights and metrics as the user gave them: what a .keras file
        # records as its compile_config (saving/compile_config.py)
        self._compile_args: dict[str, Any] | None = None
        self._strategy: Any = None         # the Strategy the executor runs (set by compile)
        self._plan: Any = None             # that strategy compiled for the model (CompiledPlan)
        self.search_result: Any = None     # the last search compile() ran (SearchResult)
        # where fit is, for a callback that saves or resumes a run (BackupAndRestore)
        self._resume_at: tuple[int, int, dict[str, Any]] | None = None
        self._shuffle_rng: np.random.Generator | None = None
        self._epoch_rng_state: dict[str, Any] | None = None
        self._epoch_totals: _Running | None = None

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, loss_weights: Any = None,
                metrics: Any = None, strategy: Any = None, **kwargs: Any) -> None:
        """Keras' compile, plus `strategy`: how to parallelise the model. Default "search": Unity's
        search (graph substitutions and machine mapping, unity_legion.search) plans it for the
        running job's processors; `search=` takes its options (a SearchOptions or a dict of its
        fields, plus "batch_size": the batch to plan for, default 32). Or a
        unity_legion.strategy.Strategy, a builtin's name ("data_parallel", "megatron",
        "table_parallel", "expert") or the path of a strategy JSON file. It is validated against
        the model and the running machine here, before anything runs: a bad one raises
        StrategyError and leaves the model as it was. `steps_per_execution` (Keras'): fit and
        evaluate issue that many steps before they read the losses back, once."""
        unsupported = {"weighted_metrics", "run_eagerly", "jit_compile"}
        for k in kwargs:
            if k not in unsupported and k not in ("search", "auto_scale_loss", "steps_per_execution"):
                raise TypeError(f"compile: unknown argument {k!r}")
        steps_per_execution = _check_steps_per_execution(kwargs.get("steps_per_execution", 1))
        _search_request(kwargs.get("search"), 1)  # bad options fail before anything changes
        if not _flatten(loss):
            raise ValueError("compile: a loss is required for training (e.g. "
                             "loss='sparse_categorical_crossentropy')")
        _check_strategy_type(strategy)
        if not self._can_build_now():
            # A Sequential without an input shape builds on its first data (as in Keras); the
            # names are checked now, everything else once the model is built.
            specs = [losses_mod.get(lo).spec for lo in _flatten(loss)]
            for m in _flatten(metrics):
                metrics_mod.get(m, specs[0])
            self.optimizer = optimizers_mod.get(optimizer)
            self._pending_compile = (self.optimizer, loss, loss_weights, metrics, strategy, kwargs)
            self._compile_args = {"loss": loss, "loss_weights": loss_weights, "metrics": metrics}
            self.steps_per_execution = steps_per_execution
            self.compiled = True
            return
        self._pending_compile = None
        graph = self._require_built_for_compile()
        n_out = len(self._output_ids)
        loss_list = self._per_output(loss, "loss")
        loss_objs = [losses_mod.get(lo) for lo in loss_list]
        if loss_weights is None:
            weights = (1.0,) * n_out
        else:
            weights = tuple(float(v) for v in self._per_output(loss_weights, "loss_weights"))
        metric_lists = self._metric_lists(metrics, n_out)
        specs = [lo.spec for lo in loss_objs]
        for t, spec in zip(self._output_ids, specs):
            pred = graph.tensors[t].shape
            try:
                spec.check(pred, spec.target_shape(pred))
            except OperatorError as exc:
                raise ValueError(f"compile: loss {spec.name!r} does not fit output {pred}: {exc}") from None
        metric_objs = tuple(tuple(self._output_metric(metrics_mod.get(m, spec), name, n_out)
                                  for m in ms)
                            for ms, spec, name in zip(metric_lists, specs, self.output_names))
        resolved = self._resolve_strategy(strategy, kwargs.get("search"),
                                          optimizers_mod.get(optimizer),
                                          steps_per_execution)  # fails first
        from unity_legion.executor.executor import Objective
        from unity_legion.runtime import machine_info

        # resolved once into the plan the executor runs: validated against this machine, the
        # substitutions replayed (a rewrite whose weights cannot train is refused here)
        m = machine_info()
        plan = resolved.compile(graph, None, {"cpu": m.cpus, "gpu": m.gpus},
                                frozen=self._frozen_weight_keys())
        self.optimizer = self._scaled(optimizers_mod.get(optimizer), kwargs.get("auto_scale_loss"))
        self._objective = Objective(tuple(specs), metric_objs, weights)
        self._ensure_executor(plan)
        self._strategy = resolved
        self._plan = plan
        self._executor.reset_optimizer_state()
        self._compile_args = {"loss": loss, "loss_weights": loss_weights, "metrics": metrics}
        self.steps_per_execution = steps_per_execution
        self.compiled = True

    def _scaled(self, optimizer: Any, auto_scale_loss: Any) -> Any:
        """Keras 3's compile: under the "mixed_float16" policy (the model's) the optimizer is
        wrapped in a LossScaleOptimizer unless auto_scale_loss=False."""
        from unity_legion.keras import mixed_precision
        policy = getattr(self, "dtype_policy", None) or mixed_precision.global_policy()
        if policy.name == "mixed_float16" and auto_scale_loss is not False and \
                not isinstance(optimizer, mixed_precision.LossScaleOptimizer):
            return mixed_precision.LossScaleOptimizer(optimizer)
        return optimizer

    def _train_step(self, *args: Any) -> Any:
        """The executor's train_step, with the loss scale of a LossScaleOptimizer (which then
        learns whether the step's gradients were finite)."""
        result = self._executor.train_step(*args, **self._loss_scale_args())
        self._after_scaled_step(result)
        return result

    def _steps_per_group(self) -> int:
        """How many of fit's steps are issued before their losses are read (compile's
        steps_per_execution; one under loss scaling, whose scale follows every step)."""
        from unity_legion.keras.mixed_precision import LossScaleOptimizer
        if isinstance(self.optimizer, LossScaleOptimizer):
            return 1
        return self.steps_per_execution

    def _train_steps(self, batches: list[tuple[dict[int, Any], list[Any]]]) -> list[Any]:
        """fit's steps on `batches` (feeds, targets), issued together and read back once; each
        step's learning rate is the optimizer's at its step number (a schedule's too)."""
        opt = self.optimizer
        if len(batches) == 1:
            return [self._train_step(*batches[0], self._objective, opt.rule(),
                                     opt.learning_rate, opt.iterations + 1)]
        return self._executor.train_steps(batches, self._objective, opt.rule(),
                                          [opt.learning_rate_at(opt.iterations + i)
                                           for i in range(len(batches))], opt.iterations + 1)

    def _loss_scale_args(self) -> dict[str, float]:
        """train_step's keyword for the optimizer's loss scale ({} without loss scaling). Every
        path that runs a training step (fit, train_on_batch, profile_step) passes it: without
        it a mixed_float16 step's small gradients underflow float16."""
        from unity_legion.keras.mixed_precision import LossScaleOptimizer
        opt = self.optimizer
        return {"loss_scale": opt.scale} if isinstance(opt, LossScaleOptimizer) else {}

    def _after_scaled_step(self, result: Any) -> None:
        """A LossScaleOptimizer learns whether the step's gradients were finite (a step whose
        loss was not finite changed nothing and does not count)."""
        from unity_legion.keras.mixed_precision import LossScaleOptimizer
        opt = self.optimizer
        if isinstance(opt, LossScaleOptimizer) and np.all(np.isfinite(result.loss)):
            opt.after_step(result.grads_finite)

    @property
    def strategy(self) -> Any:
        """The Strategy compile() chose (None before compile); `model.strategy.save(path)`."""
        return self._strategy

    def _resolve_strategy(self, strategy: Any, search: Any = None, optimizer: Any = None,
                          steps_per_execution: int = 1) -> Any:
        from unity_legion.runtime import machine_info
        from unity_legion.strategy.builtin import BUILTINS, by_name
        from unity_legion.strategy.strategy import Strategy, StrategyError

        m = machine_info()
        if strategy is None:
            strategy = "search"
        if not isinstance(strategy, Strategy):
            text = os.fspath(strategy)
            if text == "search":
                from unity_legion.search.unity import search as unity_search

                opts, batch = _search_request(search, m.ranks)
                if optimizer is not None and not (isinstance(search, dict) and
                                                   "optimizer_slots" in search):
                    # the optimizer's state per weight counts in memory and update time
                    opts = dataclasses.replace(opts,
                                               optimizer_slots=len(optimizer.rule().slots))
                if not (isinstance(search, dict) and "steps_per_read" in search):
                    # fit's steps read back once per steps_per_execution
                    opts = dataclasses.replace(opts, steps_per_read=steps_per_execution)
                target, cost = job_model(m)
                self.search_result = unity_search(self, batch, target, cost, options=opts)
                strategy = self.search_result.strategy
            elif text in BUILTINS:
                strategy = by_name(text, self, m.processors, m.preferred_kind)
            elif os.path.exists(text):
                strategy = Strategy.load(text)
            else:
                raise StrategyError(f"compile: strategy {text!r} is neither a builtin "
                                    f"({', '.join(BUILTINS)}) nor an existing strategy file")
        return strategy   # validated by Strategy.compile

    def _require_built_for_compile(self) -> Any:
        return self._require_built()  # type: ignore[attr-defined]

    def _can_build_now(self) -> bool:
        return True

    def _build_on_data(self, x: Any) -> None:
        """Build a model that has no input shape yet from its first data (Sequential does)."""

    def _build_from_data(self, x: Any) -> None:
        if not self.built:  # type: ignore[attr-defined]
            self._build_on_data(x)
        if self._pending_compile is not None and self.built:  # type: ignore[attr-defined]
            optimizer, loss, loss_weights, metrics, strategy, kwargs = self._pending_compile
            self.compiled = False
            self.compile(optimizer, loss, loss_weights, metrics, strategy, **kwargs)

    def _per_output(self, value: Any, what: str) -> list[Any]:
        n = len(self._output_ids)
        if isinstance(value, dict):
            names = self.output_names  # type: ignore[attr-defined]
            unknown = [k for k in value if k not in names]
            if unknown:
                raise ValueError(f"compile: {what} names unknown outputs {unknown}; outputs: {names}")
            return [value[n_] for n_ in names]
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise ValueError(f"compile: {what} has {len(value)} entries for {n} output(s)")
            return list(value)
        return [value] * n

    def _metric_lists(self, metrics: Any, n_out: int) -> list[list[Any]]:
        if metrics is None:
            return [[] for _ in range(n_out)]
        if isinstance(metrics, (str,)) or not isinstance(metrics, (list, tuple, dict)):
            metrics = [metrics]
        if isinstance(metrics, dict):
            return [list(m) if isinstance(m, (list, tuple)) else [m] for m in self._per_output(metrics, "metrics")]
        if n_out > 1 and metrics and all(isinstance(m, (list, tuple)) for m in metrics):
            return [list(m) for m in self._per_output(list(metrics), "metrics")]
        return [list(metrics) for _ in range(n_out)]

    @staticmethod
    def _output_metric(metric: Any, output: str, n_out: int) -> Any:
        """A multi-output model reports each output's metrics as "<output>_<metric>" (Keras 3)."""
        return dataclasses.replace(metric, name=f"{output}_{metric.name}") if n_out > 1 else metric

    def _ensure_executor(self, plan: Any = _ANY) -> None:
        """An executor for a compiled plan (strategy/plan.py: the model's graph, or the graph a
        strategy's substitutions make); none given: keep the current one, or run the model's
        graph without a plan. An executor of the same graph is kept and takes the plan's
        configurations; a new one starts from the model's current weights (read from the
        executor it replaces)."""
        current = self._executor
        if current is not None:
            if plan is _ANY:
                return
            if getattr(current, "substitutions", None) == (
                    None if plan.translation is None else plan.substitutions):
                current.set_plan(plan.configs, plan.pipeline)
                return
        from unity_legion.executor.executor import GraphExecutor
        from unity_legion.executor.rewritten import executor_for

        graph = self._require_built()  # type: ignore[attr-defined]
        values = {k: self._get_weight(k) for k in self._weight_keys()}  # type: ignore[attr-defined]
        if plan is _ANY:
            executor = GraphExecutor(graph, graph.outputs)
            for key, value in values.items():
                executor.set_weight(key, value)
        else:
            executor = executor_for(plan, values)
        self._executor = executor
        self._host_weights.clear()

    def _write_weights(self, values: dict[Any, np.ndarray]) -> None:
        """Checked weights (by the model's keys) into the executor."""
        if hasattr(self._executor, "set_weights"):
            self._executor.set_weights(values)   # a rewritten graph's: all at once
        else:
            for key, arr in values.items():
                self._executor.set_weight(key, arr)

    def _frozen_weight_keys(self) -> list[Any]:
        from unity_legion.keras.layers.tracing import frozen_keys_of
        return [k for layer in self.layers  # type: ignore[attr-defined]
                for k in frozen_keys_of(layer)]

    def _sync_frozen(self) -> None:
        frozen = self._frozen_weight_keys()
        if frozenset(frozen) != self._executor.frozen:
            self._executor.set_frozen(frozen)

    def _optimizer_variables(self) -> dict[str, np.ndarray]:
        """The optimizer's per-weight state by name ("<weight file name>/<slot>", the names of
        the weights file), independent of the strategy the executor runs."""
        by_key = {key: name for name, key in self._weight_names().items()}  # type: ignore[attr-defined]
        if self._executor is None:
            return {}
        return {f"{by_key[key]}/{s}": arr for (key, s), arr in self._executor.slot_values().items()
                if key in by_key}

    def _set_optimizer_variables(self, values: dict[str, np.ndarray]) -> None:
        """Back to `_optimizer_variables`' state (before the next step), for this compile's
        optimizer; a name the model does not have is an error and changes nothing."""
        self._require_compiled("_set_optimizer_variables")
        self._ensure_executor()
        names = self._weight_names()  # type: ignore[attr-defined]
        slots = tuple(self.optimizer.rule().slots)
        keyed = {}
        for full, arr in values.items():
            weight, _, s = full.rpartition("/")
            if weight not in names or s not in slots:
                raise ValueError(f"optimizer state {full!r}: the model has no such weight or the "
                                 f"optimizer no such slot (slots: {slots})")
            keyed[(names[weight], s)] = arr
        self._executor.set_slot_values(slots, keyed)

    # ------------------------------------------------------------------ data
    def _input_shapes(self) -> list[Any]:
        graph = self._require_built()  # type: ignore[attr-defined]
        return [graph.tensors[t].shape for t in self._input_ids]

    def _prepare_x(self, x: Any) -> list[np.ndarray]:
        if x is None:
            raise ValueError("x is required")
        names = self.input_names  # type: ignore[attr-defined]
        xs = data_utils.check_features(data_utils.as_list(x, names, "input"), self._input_shapes(), names)
        graph = self._graph  # type: ignore[attr-defined]
        for t, arr in zip(self._input_ids, xs):
            for node in graph.consumers(t):
                for i, u in enumerate(node.inputs):
                    if u == t:
                        try:
                            node.op.check_input_values(i, arr)
                        except OperatorError as exc:
                            raise ValueError(f"input {graph.tensors[t].name!r} to layer "
                                             f"{node.name!r}: {exc}") from None
        return xs

    def _prepare_y(self, y: Any) -> list[np.ndarray]:
        if y is None:
            raise ValueError("y is required for training and evaluation")
        names = self.output_names  # type: ignore[attr-defined]
        ys = data_utils.as_list(y, names, "target")
        graph = self._graph  # type: ignore[attr-defined]
        out = []
        for t, arr, spec, name in zip(self._output_ids, ys, self._objective.losses, names):
            try:
                out.append(spec.prepare_target(graph.tensors[t].shape, arr))
            except OperatorError as exc:
                raise ValueError(f"targets for output {name!r} of shape {arr.shape}: {exc}") from None
        return out

    def _require_compiled(self, what: str) -> None:
        if not self.compiled:
            raise RuntimeError(f"You must call compile() before {what}()")

    def _rank(self) -> int:
        return self._executor.machine.rank

    # ------------------------------------------------------------------ fit
    def fit(self, x: Any = None, y: Any = None, batch_size: int | None = None, epochs: int = 1,
            verbose: Any = "auto", callbacks: Sequence[cbs.Callback] | None = None,
            validation_split: float = 0.0, validation_data: Any = None, shuffle: bool = True,
            class_weight: Any = None, sample_weight: Any = None, initial_epoch: int = 0,
            steps_per_epoch: int | None = None, validation_steps: int | None = None,
            validation_batch_size: int | None = None, validation_freq: int = 1) -> cbs.History:
        self._require_compiled("fit")
        if class_weight is not None or sample_weight is not None:
            raise NotImplementedError("fit: class_weight and sample_weight are not supported yet")
        if steps_per_epoch is not None or validation_steps is not None:
            raise NotImplementedError("fit: steps_per_epoch/validation_steps are not supported "
                                      "for array data")
        batch_size = data_utils.check_batch_size(batch_size)
        val_batch = (batch_size if validation_batch_size is None
                     else data_utils.check_batch_size(validation_batch_size))
        verbose = resolve_verbose(verbose)
        if not isinstance(epochs, int) or epochs < 0 or not isinstance(initial_epoch, int) \
                or initial_epoch < 0:
            raise ValueError(f"epochs and initial_epoch must be non-negative integers, got "
                             f"{epochs!r}, {initial_epoch!r}")
        if isinstance(validation_freq, bool) or not isinstance(validation_freq, int) \
                or validation_freq <= 0:
            raise ValueError(f"validation_freq must be a positive integer, got {validation_freq!r}")
        self._build_from_data(x)
        xs, ys = self._prepare_x(x), self._prepare_y(y)
        data_utils.check_lengths(xs, ys)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (list, tuple)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be a tuple (x_val, y_val)")
            vx, vy = self._prepare_x(validation_data[0]), self._prepare_y(validation_data[1])
            data_utils.check_lengths(vx, vy)
            val = (vx, vy)
        elif validation_split:
            xs, ys, vx, vy = data_utils.split_validation(xs, ys, validation_split)
            val = (vx, vy)
        self._sync_frozen()
        n = len(xs[0])
        steps = -(-n // batch_size)
        self.history = cbs.History()
        callback_list = cbs.CallbackList(list(callbacks or []) + [self.history], self,
                                         {"epochs": epochs, "steps": steps, "verbose": verbose})
        # One shuffle stream per fit, identical on every rank.
        rng = self._shuffle_rng = np.random.default_rng([global_seed(), 1, initial_epoch])
        self.stop_training = False
        # a callback resuming a run (BackupAndRestore) sets where it goes on: (epoch, steps of
        # it done, that epoch's running sums); it restores the shuffling stream itself
        self._resume_at = None
        callback_list.on_train_begin({})
        first_step, resumed = 0, None
        if self._resume_at is not None:
            initial_epoch, first_step, resumed = self._resume_at
        logs: dict[str, float] = {}
        for epoch in range(initial_epoch, epochs):
            self._epoch_rng_state = rng.bit_generator.state   # this epoch's order comes from it
            callback_list.on_epoch_begin(epoch, {})
            order = rng.permutation(n) if shuffle else None
            t0 = time.perf_counter()
            totals = self._epoch_totals = _Running.of(resumed)
            skip, first_step, resumed = first_step, 0, None
            staged_x, staged_y = self._stage(xs, order), self._stage(ys, order)
            with EpochProgress(verbose, self._rank(), f"Epoch {epoch + 1}/{epochs}", steps) as bar:
                group = self._steps_per_group()
                for first in range(skip, steps, group):   # (steps before `skip` were done)
                    last = min(first + group, steps) - 1
                    callback_list.on_train_batch_begin(first, {})
                    results = self._train_steps(
                        self._batches(staged_x, staged_y, first, last, batch_size, n))
                    for result in results:
                        if result.applied:
                            self.optimizer.iterations += 1
                        totals.add(result)
                    # (a step of the group that did not apply shows, as a lone step's does:
                    # TerminateOnNaN sees it)
                    applied = all(r.applied for r in results)
                    batch_logs = totals.logs() if applied else {"loss": float("nan")}
                    bar.update(last + 1, batch_logs)
                    callback_list.on_train_batch_end(last, batch_logs)
                    if self.stop_training:
                        break
                logs = totals.logs()
                if val is not None and (epoch + 1) % validation_freq == 0 and not self.stop_training:
                    callback_list.on_test_begin({})
                    val_logs = self._evaluate_arrays(val[0], val[1], val_batch, callback_list)
                    callback_list.on_test_end(val_logs)
                    logs.update({f"val_{k}": v for k, v in val_logs.items()})
                bar.finish(logs, time.perf_counter() - t0)
            callback_list.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        callback_list.on_train_end(logs)
        return self.history

    # ------------------------------------------------------------------ evaluate / predict
    def _batches(self, staged_x: list[Any], staged_y: list[Any], first: int, last: int,
                 batch_size: int, n: int) -> list[tuple[dict[int, Any], list[Any]]]:
        """(feeds, targets) of batches first..last of `n` staged samples."""
        return [({t: s.rows(at, at + batch_size) for t, s in zip(self._input_ids, staged_x)},
                 [s.rows(at, at + batch_size) for s in staged_y])
                for at in range(first * batch_size, min((last + 1) * batch_size, n), batch_size)]

    def _stage(self, arrays: list[np.ndarray], order: np.ndarray | None) -> list[Any]:
        """Each array (permuted by `order`) uploaded once; steps read row ranges of it."""
        if order is None:
            return [self._executor.upload(a) for a in arrays]
        return [self._executor.upload(a[order], copy=False) for a in arrays]

    def _evaluate_arrays(self, xs: list[np.ndarray], ys: list[np.ndarray], batch_size: int,
                         callback_list: Any = None) -> dict[str, float]:
        totals = _Running()
        staged_x, staged_y = self._stage(xs, None), self._stage(ys, None)
        n = len(xs[0])
        steps, group = -(-n // batch_size), self.steps_per_execution
        for first in range(0, steps, group):   # (read back once per group, as fit's steps)
            last = min(first + group, steps) - 1
            if callback_list:
                callback_list.on_test_batch_begin(first, {})
            batches = self._batches(staged_x, staged_y, first, last, batch_size, n)
            for result in self._executor.evaluate_steps(batches, self._objective):
                totals.add(result)
            if callback_list:
                callback_list.on_test_batch_end(last, totals.logs())
        return totals.logs()

    def evaluate(self, x: Any = None, y: Any = None, batch_size: int | None = None,
                 verbose: Any = "auto", sample_weight: Any = None, steps: int | None = None,
                 callbacks: Sequence[cbs.Callback] | None = None, return_dict: bool = False
                 ) -> Any:
        self._require_compiled("evaluate")
        if sample_weight is not None or steps is not None:
            raise NotImplementedError("evaluate: sample_weight and steps are not supported yet")
        batch_size = data_utils.check_batch_size(batch_size)
        verbose = resolve_verbose(verbose)
        self._build_from_data(x)
        xs, ys = self._prepare_x(x), self._prepare_y(y)
        data_utils.check_lengths(xs, ys)
        callback_list = cbs.CallbackList(callbacks, self, {"verbose": verbose})
        callback_list.on_test_begin({})
        t0 = time.perf_counter()
        steps_n = -(-len(xs[0]) // batch_size)
        with EpochProgress(verbose, self._rank(), "", steps_n) as bar:
            logs = self._evaluate_arrays(xs, ys, batch_size, callback_list)
            bar.finish(logs, time.perf_counter() - t0)
        callback_list.on_test_end(logs)
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def profile_step(self, x: Any = None, y: Any = None, batch_size: int | None = None,
                     path: str | None = None, verbose: bool = True) -> Any:
        """Run ONE real training step (on the first `batch_size` samples, default 32; it
        updates the weights like train_on_batch) with profiling on, after two unprofiled
        warm-up steps (that train too: the first makes the step's stores, the second is
        recorded, so the profiled step is re-issued from that recording as training's steps
        are: executor/replay.py), and return its unity_legion.executor.profile.StepProfile: per operator
        its kernel, host-issuing and waiting time, next to the simulator's figures for the same
        plan on this job's machine model (`job_model`: on CPUs this machine's cached
        calibration, else the "local" preset's defaults). verbose: print the
        table; `path`: also draw each processor's timeline, measured above simulated."""
        from unity_legion.executor.profile import profile_train_step

        self._require_compiled("profile_step")
        xs, ys = self._prepare_x(x), self._prepare_y(y)
        data_utils.check_lengths(xs, ys)
        batch = min(data_utils.check_batch_size(batch_size), len(xs[0]))
        xs, ys = [a[:batch] for a in xs], [a[:batch] for a in ys]
        self._sync_frozen()
        feeds = dict(zip(self._input_ids, xs))
        prof = None
        for profiled in (False, False, True):
            args = (feeds, ys, self._objective, self.optimizer.rule(),
                    self.optimizer.learning_rate, self.optimizer.iterations + 1)
            if profiled:
                prof = profile_train_step(self._executor, *args, **self._loss_scale_args())
                result = prof.result
                self._after_scaled_step(result)
            else:
                result = self._train_step(*args)
            if result.applied:
                self.optimizer.iterations += 1
        assert prof is not None
        self._simulate_profile(prof, batch)
        if verbose and self._rank() == 0:
            print(prof.table())
        if path is not None and self._rank() == 0:
            prof.draw(path)
        return prof

    def _simulate_profile(self, prof: Any, batch: int) -> None:
        """The simulator's step for the plan the executor runs, into `prof`."""
        from unity_legion.cost.simulator import Simulator
        from unity_legion.runtime import machine_info

        machine, cost = job_model(machine_info())
        if machine.device.kind == "cpu":
            # the plan's operators measured on this job's processors (cached on disk, as the
            # cost cache keeps them): job_model's roofline prices a small kernel at its
            # arithmetic, where a CNN's kernels take several times that here (ResNeXt's serial
            # step at bench_simulator's size: 8.4 ms predicted so, 21.9 ms run)
            from unity_legion.profiling import measured_cost

            cost = measured_cost()
        graph = self._plan.graph
        pcg = self._strategy.pcg(self.graph, batch)
        slots = len(self.optimizer.rule().slots)
        metrics = max((len(ms) for ms in self._objective.metrics), default=0)
        steady = Simulator(machine, cost, optimizer_slots=slots,
                           metrics=metrics).simulate_pcg(graph, pcg)
        one = Simulator(machine, cost, optimizer_slots=slots, metrics=metrics, steps=1)
        one.trace = True
        traced = one.simulate_pcg(graph, pcg)
        prof.sim_tasks = list(traced.tasks)
        prof.sim_step = steady.step_time
        prof.sim_span = max((t[2] for t in traced.tasks), default=0.0)

    def train_on_batch(self, x: Any = None, y: Any = None, return_dict: bool = False) -> Any:
        """One optimizer step on exactly this batch; returns the loss (and metrics)."""
        self._require_compiled("train_on_batch")
        xs, ys = self._prepare_x(x), self._prepare_y(y)
        data_utils.check_lengths(xs, ys)
        self._sync_frozen()
        result = self._train_step(dict(zip(self._input_ids, xs)), ys, self._objective,
                                  self.optimizer.rule(), self.optimizer.learning_rate,
                                  self.optimizer.iterations + 1)
        if result.applied:
            self.optimizer.iterations += 1
        logs = _Running()
        logs.add(result)
        out = logs.logs() if result.applied else {"loss": float("nan")}
        return out if return_dict else (list(out.values()) if len(out) > 1 else out["loss"])

    def predict(self, x: Any, batch_size: int | None = None, verbose: Any = "auto",
                steps: int | None = None, callbacks: Sequence[cbs.Callback] | None = None) -> Any:
        if steps is not None:
            raise NotImplementedError("predict: steps is not supported for array data")
        batch_size = data_utils.check_batch_size(batch_size)
        verbose = resolve_verbose(verbose)
        self._build_from_data(x)
        self._require_built()  # type: ignore[attr-defined]
        xs = self._prepare_x(x)
        data_utils.check_lengths(xs, None)
        self._ensure_executor()
        self._sync_frozen()
        callback_list = cbs.CallbackList(callbacks, self, {"verbose": verbose})
        callback_list.on_predict_begin({})
        chunks: list[list[np.ndarray]] = []
        t0 = time.perf_counter()
        steps_n = -(-len(xs[0]) // batch_size)
        with EpochProgress(verbose, self._rank(), "", steps_n) as bar:
            staged = self._stage(xs, None)
            group = self.steps_per_execution
            for first in range(0, steps_n, group):   # (read back once per group, as fit's)
                last = min(first + group, steps_n) - 1
                callback_list.on_predict_batch_begin(first, {})
                chunks += self._executor.predict_steps(
                    [{t: s.rows(i * batch_size, (i + 1) * batch_size)
                      for t, s in zip(self._input_ids, staged)} for i in range(first, last + 1)])
                bar.update(last + 1, {})
                callback_list.on_predict_batch_end(last, {})
            bar.finish({}, time.perf_counter() - t0)
        callback_list.on_predict_end({})
        outs = [np.concatenate([c[k] for c in chunks]) for k in range(len(self._output_ids))]
        # a bfloat16 output comes back as Keras 3 returns it: ml_dtypes bfloat16 (the executor
        # reads bfloat16 stores as float32 holding bfloat16 values: numpy has no bfloat16)
        tensors = self.graph.tensors  # type: ignore[attr-defined]
        outs = [as_bfloat16(o) if tensors[t].shape.dtype is DataType.BFLOAT16 else o
                for o, t in zip(outs, self._output_ids)]
        return outs if self._multi_output else outs[0]  # type: ignore[attr-defined]


def _search_request(search: Any, ranks: int) -> tuple[Any, int]:
    """(SearchOptions, batch) from compile's `search=` argument. Searches made for training
    keep to rewrites whose weights map back to the model's (trainable_only)."""
    import dataclasses

    from unity_legion.search.plan import options

    batch = 32
    if isinstance(search, dict) and "batch_size" in search:
        search = dict(search)
        batch = search.pop("batch_size")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"compile: search batch_size must be a positive integer, got "
                             f"{batch!r}")
    opts = dataclasses.replace(options(search, ranks), trainable_only=True)
    return opts, batch


def _check_steps_per_execution(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"compile: steps_per_execution must be a positive integer (the training "
                         f"steps issued before their losses are read back), got {value!r}")
    return value


def _check_strategy_type(strategy: Any) -> None:
    from unity_legion.strategy.strategy import Strategy

    if strategy is not None and not isinstance(strategy, (Strategy, str, os.PathLike)):
        raise TypeError(f"compile: strategy must be a Strategy, a builtin's name or a file path, "
                        f"got {type(strategy).__name__}")


def _flatten(value: Any) -> list[Any]:
    """The leaves of a (nested) list, tuple or dict of compile() arguments."""
    if value is None:
        return []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in _flatten(v)]
    return [value]


class _Running:
    """Sample-weighted running means of the loss and metrics over an epoch."""

    def __init__(self) -> None:
        self.n = 0
        self.sums: dict[str, float] = {}

    @classmethod
    def of(cls, state: dict[str, Any] | None) -> "_Running":
        """From `state()` (None: empty)."""
        running = cls()
        if state is not None:
            running.n = int(state["n"])
            running.sums = {k: float(v) for k, v in state["sums"].items()}
        return running

    def state(self) -> dict[str, Any]:
        return {"n": self.n, "sums": dict(self.sums)}

    def add(self, result: Any) -> None:
        if not result.applied and result.loss.size and not np.all(np.isfinite(result.loss)):
            return  # a skipped step does not enter the epoch's averages
        self.n += result.batch
        self.sums["loss"] = self.sums.get("loss", 0.0) + float(result.loss.sum())
        for k, v in result.metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.sum())

    def logs(self) -> dict[str, float]:
        if not self.n:
            return {"loss": float("nan")}
        return {k: v / self.n for k, v in self.sums.items()}
