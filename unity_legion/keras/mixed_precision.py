"""keras.mixed_precision: dtype policies and dynamic loss scaling, as Keras 3 has them.

A policy names the dtype a layer computes in and the dtype its weights are kept in. Under
"mixed_bfloat16" / "mixed_float16" a layer casts its floating inputs to the half type and
computes in it; its weights, their gradients and the optimizer's state stay float32 (the
executor keeps the master copy and rounds it for the operator each step), and losses are
computed in float32. As in Keras 3 (checked against keras 3.15, torch backend):
BatchNormalization and LayerNormalization compute in float32 and cast their output to the
compute dtype; every other layer, Softmax included, outputs the compute dtype; a layer given
`dtype="float32"` (a model's last layer, often) computes in float32.

How half values are stored and computed: operators/precision.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unity_legion.keras.optimizers import Optimizer
from unity_legion.types import DataType

# policy name -> (compute dtype, variable dtype)
_POLICIES = {"float32": ("float32", "float32"), "float64": ("float64", "float64"),
             "float16": ("float16", "float16"), "bfloat16": ("bfloat16", "bfloat16"),
             "mixed_float16": ("float16", "float32"), "mixed_bfloat16": ("bfloat16", "float32")}


@dataclass(frozen=True)
class DTypePolicy:
    """A dtype policy: `name` is one of float32, float64, float16, bfloat16, mixed_float16,
    mixed_bfloat16."""

    name: str = "float32"

    def __post_init__(self) -> None:
        if isinstance(self.name, str) and self.name not in _POLICIES and \
                self.name in DataType._value2member_map_:
            return   # a plain dtype ("int32"): compute and variables in it, as Keras allows
        if not isinstance(self.name, str) or self.name not in _POLICIES:
            raise ValueError(f"unknown dtype policy {self.name!r}; known: "
                             f"{', '.join(sorted(_POLICIES))}")

    @property
    def compute_dtype(self) -> str:
        return _POLICIES.get(self.name, (self.name,))[0]

    @property
    def variable_dtype(self) -> str:
        return _POLICIES.get(self.name, (self.name, self.name))[1]

    @property
    def is_mixed(self) -> bool:
        return self.compute_dtype != self.variable_dtype

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f'<DTypePolicy "{self.name}">'


Policy = DTypePolicy   # Keras 3 exports both names

_global = DTypePolicy("float32")


def get(identifier: Any) -> DTypePolicy:
    """A policy from a policy, its name, a plain dtype name or a Keras config dict."""
    if isinstance(identifier, DTypePolicy):
        return identifier
    if isinstance(identifier, dict):   # {"class_name": "DTypePolicy", "config": {"name": ...}}
        identifier = identifier.get("config", identifier).get("name")
    name = getattr(identifier, "value", identifier)   # a DataType
    if not isinstance(name, str):
        name = getattr(identifier, "name", str(identifier))   # a numpy dtype
    return DTypePolicy(name)


def set_global_policy(policy: Any) -> None:
    """The policy of layers made from now on (None: float32). Only floating policies, as in
    Keras."""
    global _global
    _global = DTypePolicy("float32") if policy is None else get(policy)


def global_policy() -> DTypePolicy:
    return _global


# Keras 3's other names for the same two
set_dtype_policy = set_global_policy
dtype_policy = global_policy


class LossScaleOptimizer(Optimizer):
    """Dynamic loss scaling around an optimizer, as Keras 3's: the loss is multiplied by
    `scale` (initially `initial_scale`) before the backward pass and the gradients divided by
    it; a step whose gradients are not all finite changes no weight, halves the scale and does
    not count; after `dynamic_growth_steps` finite steps in a row the scale doubles.
    `model.compile` wraps the optimizer in one under the "mixed_float16" policy (Keras'
    `auto_scale_loss=True`). The finiteness check runs in the step's tasks (no host wait);
    the host reads one flag with the loss at the end of the step."""

    def __init__(self, inner_optimizer: Any, initial_scale: float = 2.0 ** 15,
                 dynamic_growth_steps: int = 2000, name: str | None = None,
                 **kwargs: Any) -> None:
        if not kwargs.pop("dynamic", True):
            raise ValueError("LossScaleOptimizer no longer supports `dynamic=False`. Instead, "
                             "simply set `loss_scale_factor` directly on the `inner_optimizer`.")
        if kwargs:
            raise ValueError(f"LossScaleOptimizer does not support arguments: "
                             f"`{'`, `'.join(kwargs)}`.")
        from unity_legion.keras import optimizers
        inner = optimizers.get(inner_optimizer)
        if isinstance(inner, LossScaleOptimizer):
            raise ValueError("LossScaleOptimizer: the inner optimizer is a LossScaleOptimizer "
                             "already")
        if not (isinstance(initial_scale, (int, float)) and initial_scale > 0):
            raise ValueError(f"LossScaleOptimizer: initial_scale must be a positive number, got "
                             f"{initial_scale!r}")
        if isinstance(dynamic_growth_steps, bool) or not isinstance(dynamic_growth_steps, int) \
                or dynamic_growth_steps < 1:
            raise ValueError(f"LossScaleOptimizer: dynamic_growth_steps must be a positive "
                             f"integer, got {dynamic_growth_steps!r}")
        self.inner_optimizer = inner
        self.initial_scale = float(initial_scale)
        self.dynamic_growth_steps = dynamic_growth_steps
        self.name = name or "loss_scale_optimizer"
        self.scale = float(initial_scale)
        self.step_counter = 0   # finite steps since the scale last changed

    # the inner optimizer's learning rate, step count and rule are the ones that train
    @property
    def iterations(self) -> int:   # type: ignore[override]
        return self.inner_optimizer.iterations

    @iterations.setter
    def iterations(self, value: int) -> None:
        if hasattr(self, "inner_optimizer"):
            self.inner_optimizer.iterations = value

    @property
    def learning_rate(self) -> float:   # type: ignore[override]
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        self.inner_optimizer.learning_rate = value

    @property
    def _learning_rate(self) -> Any:   # type: ignore[override]
        return self.inner_optimizer._learning_rate

    @property
    def weight_decay(self) -> float:   # type: ignore[override]
        return self.inner_optimizer.weight_decay

    @property
    def dynamic_scale(self) -> float:
        """Keras' name of the current scale."""
        return self.scale

    def rule(self) -> Any:
        return self.inner_optimizer.rule()

    def after_step(self, finite: bool) -> None:
        """Keras' update of the scale after a step whose gradients were (not) all finite."""
        if not finite:
            self.scale *= 0.5
            self.step_counter = 0
        elif self.step_counter == self.dynamic_growth_steps - 1:
            self.scale *= 2.0
            self.step_counter = 0
        else:
            self.step_counter += 1

    def get_state(self) -> dict[str, Any]:
        state = self.inner_optimizer.get_state()
        return state | {"loss_scale": self.scale, "loss_scale_steps": self.step_counter}

    def set_state(self, state: dict[str, Any]) -> None:
        inner = {k: v for k, v in state.items() if k not in ("loss_scale", "loss_scale_steps")}
        self.inner_optimizer.set_state(inner)
        self.scale = float(state.get("loss_scale", self.initial_scale))
        self.step_counter = int(state.get("loss_scale_steps", 0))

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "initial_scale": self.initial_scale,
                "dynamic_growth_steps": self.dynamic_growth_steps,
                "inner_optimizer": self.inner_optimizer.get_config()}


__all__ = ["DTypePolicy", "LossScaleOptimizer", "Policy", "dtype_policy", "global_policy",
           "set_dtype_policy", "set_global_policy"]
