"""A `.keras` file's compile_config (optimizer, loss, metrics): written from a compiled
model as Keras 3 writes it, and applied to a loaded model.

Keras serializes each object as {"module", "class_name", "config", "registered_name"} (a loss
function as class "function" with its name as config); it is rebuilt from the class of the
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
                   "ema_overwrite_frequency": None, "label_smoothing": 0.0, "axis": -1,
                   "dtype": "float32"}

# Keras' optimizer arguments we do not have, at the value that means "off" (written so that
# Keras reads back exactly the optimizer it would have built itself)
_KERAS_OPTIMIZER_BASE = {"clipnorm": None, "global_clipnorm": None, "clipvalue": None,
                         "use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None,
                         "loss_scale_factor": None, "gradient_accumulation_steps": None}
# each optimizer's own arguments, in Keras' order, with the attribute holding it here (a
# constant: an argument we only support at Keras' default)
_OPTIMIZER_ARGS: dict[str, tuple[tuple[str, Any], ...]] = {
    "SGD": (("momentum", "momentum"), ("nesterov", "nesterov")),
    "Adam": (("beta_1", "beta_1"), ("beta_2", "beta_2"), ("epsilon", "epsilon"),
             ("amsgrad", False)),
    "AdamW": (("beta_1", "beta_1"), ("beta_2", "beta_2"), ("epsilon", "epsilon"),
              ("amsgrad", False)),
    "RMSprop": (("rho", "rho"), ("momentum", 0.0), ("epsilon", "epsilon"), ("centered", False)),
}


def _serialized(module: str, class_name: str, config: Any) -> dict[str, Any]:
    return {"module": module, "class_name": class_name, "config": config,
            "registered_name": None}


def optimizer_config(opt: Any) -> dict[str, Any]:
    """An optimizer as Keras 3 serializes it. A loss-scaling wrapper (mixed precision) is
    written as the optimizer it wraps: compile() wraps it again under the same policy."""
    opt = getattr(opt, "inner_optimizer", opt)
    kind = type(opt).__name__
    if kind not in _OPTIMIZER_ARGS:
        raise ConfigError(f"optimizer {kind}: Keras has no optimizer of this name to write")
    if callable(opt._learning_rate):
        raise ConfigError(f"optimizer {kind}: a learning-rate schedule given as a Python "
                          f"function cannot be written to a file")
    config: dict[str, Any] = {"name": opt.name, "learning_rate": float(opt.learning_rate),
                              "weight_decay": opt.weight_decay or None,
                              **_KERAS_OPTIMIZER_BASE}
    for key, attr in _OPTIMIZER_ARGS[kind]:
        config[key] = getattr(opt, attr) if isinstance(attr, str) else attr
    return {**_serialized("keras.optimizers", kind, config), "registered_name": kind}


# our loss classes' Keras configs beyond name and reduction
_LOSS_EXTRAS = {"SparseCategoricalCrossentropy": {"ignore_class": None},
                "CategoricalCrossentropy": {"label_smoothing": 0.0, "axis": -1}}


def _loss_config(loss: Any) -> Any:
    from unity_legion.keras import losses

    if isinstance(loss, str) or loss is None:
        return loss
    if isinstance(loss, (list, tuple)):
        return [_loss_config(lo) for lo in loss]
    if isinstance(loss, dict):
        return {k: _loss_config(v) for k, v in loss.items()}
    if isinstance(loss, type) and issubclass(loss, losses.Loss):
        loss = loss()
    if isinstance(loss, losses.Loss):
        kind = type(loss).__name__
        config: dict[str, Any] = {"name": loss.name, "reduction": "sum_over_batch_size"}
        if hasattr(loss.spec, "from_logits"):
            config["from_logits"] = bool(loss.spec.from_logits)
        config.update(_LOSS_EXTRAS.get(kind, {}))
        return _serialized("keras.losses", kind, config)
    name = getattr(loss, "__name__", None)
    if callable(loss) and name and getattr(losses, name, None) is loss:   # a loss function
        return {"module": "builtins", "class_name": "function", "config": name,
                "registered_name": "function"}
    raise ConfigError(f"loss {loss!r} cannot be written to a file")


def _metrics_config(metrics: Any) -> Any:
    if metrics is None or isinstance(metrics, str):
        return metrics
    if isinstance(metrics, (list, tuple)):
        return [_metrics_config(m) for m in metrics]
    if isinstance(metrics, dict):
        return {k: _metrics_config(v) for k, v in metrics.items()}
    name = getattr(metrics, "name", None)   # a metric object: Keras knows ours by their names
    if isinstance(name, str):
        return name
    raise ConfigError(f"metric {metrics!r} cannot be written to a file")


def compile_config(model: Any) -> dict[str, Any] | None:
    """What Keras 3 writes as config.json's compile_config (None: not compiled)."""
    args = getattr(model, "_compile_args", None)
    if not getattr(model, "compiled", False) or args is None or model.optimizer is None:
        return None
    loss_weights = args["loss_weights"]
    if isinstance(loss_weights, (list, tuple)):
        loss_weights = [float(w) for w in loss_weights]
    elif isinstance(loss_weights, dict):
        loss_weights = {k: float(w) for k, w in loss_weights.items()}
    return {"optimizer": optimizer_config(model.optimizer), "loss": _loss_config(args["loss"]),
            "loss_weights": loss_weights, "metrics": _metrics_config(args["metrics"]),
            "weighted_metrics": None, "run_eagerly": False,
            "steps_per_execution": int(getattr(model, "steps_per_execution", 1)),
            "jit_compile": False}


def _rebuild(what: str, module: Any, value: Any) -> Any:
    if not isinstance(value, dict):
        return value                      # a name, e.g. "adam" or "mse"
    class_name = value.get("class_name")
    if class_name == "function" and isinstance(value.get("config"), str):
        return value["config"]            # a loss function, by its name
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
    from unity_legion.keras import metrics
    from unity_legion.keras.saving.serialization import _snake_case

    if isinstance(value, list):
        return [_metric(v) for v in value]
    if isinstance(value, dict) and "class_name" in value:
        config = value.get("config")
        if value["class_name"] == "function" and isinstance(config, str):
            return config
        # a metric object: its kind from its class, reported under its own name
        kind = _snake_case(str(value["class_name"]))
        name = (config or {}).get("name") if isinstance(config, dict) else None
        try:
            return metrics.named(kind, name or kind)
        except ValueError as exc:
            raise ConfigError(f"metric {value['class_name']}: {exc}") from None
    if isinstance(value, dict):
        raise ConfigError("compile: a dict of metrics by output name is not supported here")
    return value


def _steps_per_execution(value: Any) -> int:
    """A file's steps_per_execution (Keras may write "auto": one step, as Keras' default)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return value if ok else 1


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
                      metrics=_metric(config.get("metrics")),
                      steps_per_execution=_steps_per_execution(config.get("steps_per_execution")))
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise ConfigError(f"compile: {exc}") from None
