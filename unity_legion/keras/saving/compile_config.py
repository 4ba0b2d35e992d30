"""A `.keras` file's compile_config (optimizer, loss, metrics) applied to a loaded model.

Keras serializes each object as {"class_name", "config"}; it is rebuilt from the class of the
same name in our optimizers / losses, with Keras-only arguments at a neutral value dropped.
Anything we cannot express raises ConfigError, and load_model then returns the model
uncompiled with a warning rather than compiling it differently from what the file says.
"""

from __future__ import annotations

import inspect
from typing import Any

from unity_legion.keras.saving.serialization import ConfigError

# Keras-only arguments whose saved value changes nothing here
_NEUTRAL_VALUES = {"reduction": "sum_over_batch_size", "ema_momentum": None, "use_ema": False,
                   "ema_overwrite_frequency": None}


def _rebuild(what: str, module: Any, value: Any) -> Any:
    if not isinstance(value, dict):
        return value                      # a name, e.g. "adam" or "mse"
    class_name = value.get("class_name")
    cls = getattr(module, str(class_name), None)
    if not isinstance(cls, type):
        raise ConfigError(f"{what} {class_name!r} is not available here")
    params = inspect.signature(cls.__init__).parameters
    kwargs = {}
    for key, v in (value.get("config") or {}).items():
        if key in params and key != "self":
            kwargs[key] = v
        elif v is None or v is False or key == "ema_momentum" or _NEUTRAL_VALUES.get(key) == v:
            continue
        else:
            raise ConfigError(f"{what} {class_name}: argument {key}={v!r} is not supported here")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise ConfigError(f"{what} {class_name}: {exc}") from None


def _metric(value: Any) -> Any:
    if isinstance(value, list):
        return [_metric(v) for v in value]
    if isinstance(value, dict):   # a metric object: our metrics are known by name
        return (value.get("config") or {}).get("name") or value.get("class_name")
    return value


def compile_from_config(model: Any, config: dict[str, Any]) -> None:
    from unity_legion.keras import losses, optimizers

    for key in ("weighted_metrics",):
        if config.get(key):
            raise ConfigError(f"compile: {key} is not supported here")
    optimizer = _rebuild("optimizer", optimizers, config.get("optimizer") or "rmsprop")
    loss = config.get("loss")
    if isinstance(loss, list):
        loss = [_rebuild("loss", losses, lo) for lo in loss]
    elif isinstance(loss, dict) and "class_name" not in loss:
        raise ConfigError("compile: a dict of losses by output name is not supported here")
    else:
        loss = _rebuild("loss", losses, loss)
    try:
        model.compile(optimizer=optimizer, loss=loss, loss_weights=config.get("loss_weights"),
                      metrics=_metric(config.get("metrics")))
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise ConfigError(f"compile: {exc}") from None
