"""Running a compiled plan (unity_legion/strategy/plan.py) whose graph a strategy's substitutions
rewrote.

The user sees the model's own weights (by its WeightKeys); the executor runs the rewritten graph,
whose weights the plan's `WeightTranslation` makes from the model's (and reads back).
`RewrittenExecutor` wraps a GraphExecutor of the rewritten graph behind the interface the trainer
uses, keyed by the model's tensors and weights. `executor_for(plan, values)` builds the executor a
plan needs: a GraphExecutor of the model's graph, or a RewrittenExecutor.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from unity_legion.strategy.plan import CompiledPlan, Piece, WeightKey, WeightTranslation

__all__ = ["CompiledPlan", "Piece", "RewrittenExecutor", "WeightKey", "WeightTranslation",
           "executor_for"]


def executor_for(plan: CompiledPlan, values: Mapping[WeightKey, np.ndarray]) -> Any:
    """The executor that runs `plan`, starting from the model's weights `values` (by the model's
    keys), with the plan's configurations and frozen weights."""
    if plan.translation is None:
        from unity_legion.executor.executor import GraphExecutor

        return GraphExecutor.from_plan(plan, values)
    return RewrittenExecutor(plan, values)


class RewrittenExecutor:
    """A GraphExecutor of the rewritten graph, with the interface the trainer uses, keyed by the
    model's input tensors and weights (outputs in the model's order)."""

    def __init__(self, plan: CompiledPlan, values: Mapping[WeightKey, np.ndarray]) -> None:
        from unity_legion.executor.executor import GraphExecutor

        translation = plan.translation
        if translation is None:
            raise ValueError("RewrittenExecutor: the plan does not rewrite the model's graph; "
                             "run it with GraphExecutor.from_plan")
        self.translation = translation
        self.substitutions = plan.substitutions
        self.inner = GraphExecutor(plan.graph, plan.outputs)
        self.machine = self.inner.machine
        self.frozen: frozenset[WeightKey] = frozenset()
        self._tensor_map = translation.rewrite.tensor_map
        self._base = {k: np.array(values[k], copy=True) for k in translation.partial if k in values}
        for key, arr in translation.to_rewritten(values).items():
            self.inner.set_weight(key, arr)
        self.set_plan(plan.configs, plan.pipeline)
        if plan.frozen:
            self.set_frozen(plan.frozen)

    # ------------------------------------------------------------------ weights
    def get_weight(self, key: WeightKey) -> np.ndarray:
        from unity_legion.executor.executor import read

        cache: dict[WeightKey, np.ndarray] = {}

        def get(k: WeightKey) -> np.ndarray:
            if k not in cache:
                cache[k] = read(self.inner.weights[k])
            return cache[k]

        return self.translation.to_model(key, get, self._base.get(key))

    def set_weights(self, values: Mapping[WeightKey, np.ndarray]) -> None:
        """Set model weights (already checked by the model): every rewritten weight that holds
        a part of one is made again from the model's current weights; all are computed before
        any is written."""
        t = self.translation
        # sorted, never set order: reading and creating stores are Legate operations, and every
        # rank must issue them in the same order (a set's order follows the process' hash seed)
        affected = sorted({p.new for k in values for p in t.by_old.get(k, [])})
        needed = sorted({o for n in affected for o in t.by_new[n]})
        current = {k: (values[k] if k in values else self.get_weight(k)) for k in needed}
        new = t.to_rewritten(current, affected)
        for k in values:
            if k in self._base:
                self._base[k] = np.array(values[k], copy=True)
        for k, arr in new.items():
            self.inner.set_weight(k, arr)

    def set_weight(self, key: WeightKey, value: np.ndarray) -> None:
        self.set_weights({key: value})

    def set_frozen(self, keys: Iterable[WeightKey]) -> None:
        keys = frozenset(keys)
        self.inner.set_frozen(self.translation.frozen_keys(keys))
        self.frozen = keys

    # ------------------------------------------------------------------ running
    def set_plan(self, plan: Mapping[int, Any], pipeline: Any = None) -> None:
        """By node id of the rewritten graph (`Strategy.plan`); `pipeline`: its stages name
        the rewritten graph's operators."""
        self.inner.set_plan(plan, pipeline)

    def reset_optimizer_state(self) -> None:
        self.inner.reset_optimizer_state()

    # The optimizer's slots are elementwise per weight, so they translate between the model's
    # weights and the rewritten graph's as the weights do (the parts of a model weight the
    # rewritten graph does not hold are never trained: their slots are zeros).
    def slot_values(self) -> dict[tuple[WeightKey, str], np.ndarray]:
        """The optimizer's state by the model's weights: per (weight, slot name)."""
        inner = self.inner.slot_values()
        t = self.translation
        out: dict[tuple[WeightKey, str], np.ndarray] = {}
        for s in sorted({name for _k, name in inner}):
            for key in sorted(t.by_old):
                if not all((p.new, s) in inner for p in t.by_old[key]):
                    continue   # a frozen weight: no slots
                spec = {w.name: w for w in t.graph.nodes[key[0]].weights}[key[1]]
                base = np.zeros(spec.shape.dims, spec.shape.dtype.numpy)
                out[(key, s)] = t.to_model(key, lambda k, s=s: inner[(k, s)], base)
        return out

    def set_slot_values(self, names: Sequence[str],
                        values: Mapping[tuple[WeightKey, str], np.ndarray]) -> None:
        """Replace the optimizer's state from values by the model's weights."""
        t = self.translation
        new: dict[tuple[WeightKey, str], np.ndarray] = {}
        for s in names:
            mine = {k: v for (k, name), v in values.items() if name == s}
            keys = sorted(n for n, olds in t.by_new.items() if olds <= mine.keys())
            new.update({(k, s): arr for k, arr in t.to_rewritten(mine, keys).items()})
        self.inner.set_slot_values(names, new)

    @property
    def random_state(self) -> dict[str, Any]:
        return self.inner.random_state

    @random_state.setter
    def random_state(self, state: Mapping[str, Any]) -> None:
        self.inner.random_state = state

    def upload(self, arr: np.ndarray, copy: bool = True) -> Any:
        return self.inner.upload(arr, copy=copy)

    def _feeds(self, feeds: Mapping[int, Any]) -> dict[int, Any]:
        return {self._tensor_map[t]: v for t, v in feeds.items()}

    def train_step(self, feeds: Mapping[int, Any], targets: Sequence[Any], objective: Any,
                   rule: Any, lr: float, step: int, loss_scale: float | None = None) -> Any:
        return self.inner.train_step(self._feeds(feeds), targets, objective, rule, lr, step,
                                     loss_scale)

    def evaluate_step(self, feeds: Mapping[int, Any], targets: Sequence[Any], objective: Any
                      ) -> Any:
        return self.inner.evaluate_step(self._feeds(feeds), targets, objective)

    def train_steps(self, batches: Sequence[tuple[Mapping[int, Any], Sequence[Any]]],
                    objective: Any, rule: Any, lrs: Sequence[float], first_step: int) -> Any:
        return self.inner.train_steps([(self._feeds(f), t) for f, t in batches], objective,
                                      rule, lrs, first_step)

    def evaluate_steps(self, batches: Sequence[tuple[Mapping[int, Any], Sequence[Any]]],
                       objective: Any) -> Any:
        return self.inner.evaluate_steps([(self._feeds(f), t) for f, t in batches], objective)

    def predict_step(self, feeds: Mapping[int, Any]) -> list[np.ndarray]:
        return self.inner.predict_step(self._feeds(feeds))

    def predict_steps(self, batches: Sequence[Mapping[int, Any]]) -> list[list[np.ndarray]]:
        return self.inner.predict_steps([self._feeds(f) for f in batches])
