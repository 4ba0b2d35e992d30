"""Optimizers with Keras 3's names and defaults; each yields an update rule the executor runs."""

from __future__ import annotations

import math
from typing import Any, Callable

from unity_legion.operators.optimizers import AdamRule, RMSpropRule, SGDRule, UpdateRule


class Optimizer:
    """Base: a learning rate (a float, or a callable of the step count) and a step counter."""

    def __init__(self, learning_rate: float | Callable[[int], float] = 0.001,
                 weight_decay: float | None = None, name: str | None = None, **kwargs: Any) -> None:
        unsupported = {"clipnorm", "clipvalue", "global_clipnorm", "use_ema",
                       "gradient_accumulation_steps", "loss_scale_factor"}
        for k, v in kwargs.items():
            if k in unsupported:
                if v not in (None, False):
                    raise NotImplementedError(f"{type(self).__name__}: {k} is not supported yet")
            else:
                raise TypeError(f"{type(self).__name__}: unknown argument {k!r}")
        self._check_rate(learning_rate)
        self._learning_rate = learning_rate
        self.weight_decay = float(weight_decay or 0.0)
        if self.weight_decay < 0:
            raise ValueError(f"{type(self).__name__}: weight_decay must be >= 0, got {weight_decay}")
        self.name = name or type(self).__name__.lower()
        self.iterations = 0

    def _check_rate(self, lr: Any) -> None:
        if callable(lr):
            return
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
            raise ValueError(f"{type(self).__name__}: learning_rate must be a non-negative number or "
                             f"a schedule, got {lr!r}")

    @property
    def learning_rate(self) -> float:
        return self.learning_rate_at(self.iterations)

    def learning_rate_at(self, iterations: int) -> float:
        """The learning rate of the step run after `iterations` applied steps."""
        lr = self._learning_rate
        return float(lr(iterations)) if callable(lr) else float(lr)

    @learning_rate.setter
    def learning_rate(self, value: float | Callable[[int], float]) -> None:
        self._check_rate(value)
        self._learning_rate = value

    def rule(self) -> UpdateRule:
        raise NotImplementedError

    def get_state(self) -> dict[str, Any]:
        """The optimizer's own numbers, JSON-able (its per-weight slots live in the executor):
        the step count, and the learning rate where it is a number (a callback may have changed
        it; a schedule is a function of the step count and needs nothing saved)."""
        lr = self._learning_rate
        return {"class": type(self).__name__, "slots": list(self.rule().slots),
                "iterations": int(self.iterations),
                "learning_rate": None if callable(lr) else float(lr)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Back to `get_state`'s numbers; an optimizer of another kind is an error."""
        if state.get("class") != type(self).__name__ or \
                list(state.get("slots", ())) != list(self.rule().slots):
            raise ValueError(f"{type(self).__name__}: the saved optimizer state is of "
                             f"{state.get('class')!r} (slots {state.get('slots')}); this one has "
                             f"slots {list(self.rule().slots)}")
        iterations = state["iterations"]
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"{type(self).__name__}: bad saved step count {iterations!r}")
        lr = state.get("learning_rate")
        if lr is not None and not callable(self._learning_rate):
            self.learning_rate = float(lr)
        self.iterations = iterations

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "learning_rate": self.learning_rate,
                "weight_decay": self.weight_decay}


class SGD(Optimizer):
    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float | None = None, name: str = "SGD", **kwargs: Any) -> None:
        super().__init__(learning_rate, weight_decay, name, **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def rule(self) -> UpdateRule:
        return SGDRule(self.momentum, self.nesterov, self.weight_decay)


class Adam(Optimizer):
    def __init__(self, learning_rate: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, amsgrad: bool = False, weight_decay: float | None = None,
                 name: str = "adam", **kwargs: Any) -> None:
        super().__init__(learning_rate, weight_decay, name, **kwargs)
        if amsgrad:
            raise NotImplementedError("Adam: amsgrad is not supported yet")
        for k, v in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{type(self).__name__}: {k} must be in [0, 1), got {v}")
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def rule(self) -> UpdateRule:
        return AdamRule(self.beta_1, self.beta_2, self.epsilon, self.weight_decay)


class AdamW(Adam):
    def __init__(self, learning_rate: float = 0.001, weight_decay: float = 0.004, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7, amsgrad: bool = False,
                 name: str = "adamw", **kwargs: Any) -> None:
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay, name, **kwargs)


class RMSprop(Optimizer):
    def __init__(self, learning_rate: float = 0.001, rho: float = 0.9, momentum: float = 0.0,
                 epsilon: float = 1e-7, centered: bool = False, weight_decay: float | None = None,
                 name: str = "rmsprop", **kwargs: Any) -> None:
        super().__init__(learning_rate, weight_decay, name, **kwargs)
        if momentum or centered:
            raise NotImplementedError("RMSprop: momentum and centered are not supported yet")
        self.rho, self.epsilon = float(rho), float(epsilon)

    def rule(self) -> UpdateRule:
        return RMSpropRule(self.rho, self.epsilon, self.weight_decay)


_BY_NAME: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get(identifier: Any) -> Optimizer:
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(f"unknown optimizer {identifier!r}; known: {', '.join(sorted(_BY_NAME))} "
                     f"or an Optimizer instance")
