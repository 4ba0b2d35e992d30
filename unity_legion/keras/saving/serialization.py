"""Model and layer configs in Keras 3's JSON form (what `.keras` files hold as config.json).

Writing: each layer's own get_config(), with tuples as lists and the dtype added, wrapped as
Keras wraps it (module, class_name, config, build_config, inbound_nodes). Reading: a layer class
from the registry by name; a Keras config's serialized objects (DTypePolicy, initializers) turned
into the plain values our constructors take, and Keras-only arguments left at their neutral
value (None, False, ...) dropped, while one set to anything else is refused by name.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from unity_legion.keras.saving.registry import layer_class


class ConfigError(ValueError):
    """A config that cannot be turned into a model here; the message names the layer and key."""


# ------------------------------------------------------------------ values
def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "item") and callable(value.item):   # numpy scalars
        return value.item()
    return value


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _plain(key: str, value: Any) -> Any:
    """A Keras-serialized object in a layer config, as the plain value our layers take."""
    if not (isinstance(value, dict) and "class_name" in value):
        return value
    cls, cfg = value["class_name"], value.get("config") or {}
    if cls in ("DTypePolicy", "FloatDTypePolicy"):
        return cfg.get("name")
    if key.endswith("initializer"):
        # the initializer's kind; its seed and arguments only matter for fresh weights, and a
        # loaded model's weights come from the file
        return _snake_case(cls)
    raise ConfigError(f"argument {key!r}: the serialized object {cls!r} is not supported")


def _accepted(cls: type) -> set[str] | None:
    """Keyword arguments the constructor takes, along its base classes' **kwargs chain."""
    from unity_legion.keras.layers.layer import Layer

    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        # the base Layer refuses unknown keywords itself: its **kwargs take nothing more
        if klass is Layer or not any(p.kind == p.VAR_KEYWORD for p in params):
            return names - {"self"}
    return None   # takes anything


def _neutral(value: Any) -> bool:
    return value is None or value is False or value == {} or value == []


# Keras-only arguments whose value (default, or with no effect here) is dropped when reading.
_IGNORABLE = {"renorm_momentum", "renorm_clipping", "ema_momentum", "quantization_config",
              "activity_regularizer", "use_gate", "sliding_window"}


def layer_from_config(class_name: str, config: dict[str, Any],
                      custom_objects: dict[str, Any] | None = None) -> Any:
    cls = layer_class(class_name, custom_objects)
    name = config.get("name", class_name)
    plain = {k: _wrap(name, class_name, k, _plain, v) for k, v in config.items()}
    accepted = _accepted(cls)
    if accepted is not None:
        for key in [k for k in plain if k not in accepted]:
            if _neutral(plain[key]) or key in _IGNORABLE:
                del plain[key]
            else:
                raise ConfigError(f"layer {name!r} ({class_name}): argument {key}={plain[key]!r} "
                                  f"is not supported here")
    try:
        return cls.from_config(plain)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"layer {name!r} ({class_name}): cannot be created from its config: "
                          f"{exc}") from None


def _wrap(name: str, class_name: str, key: str, fn: Any, value: Any) -> Any:
    try:
        return fn(key, value)
    except ConfigError as exc:
        raise ConfigError(f"layer {name!r} ({class_name}): {exc}") from None


def layer_config(layer: Any) -> dict[str, Any]:
    cfg = {k: v for k, v in layer.get_config().items()
           if not (k in layer.keras_extras and v is None)}
    cfg.setdefault("dtype", layer.dtype.value)
    return _jsonable(cfg)


# ------------------------------------------------------------------ tensors and layers
def _tensor(t: Any) -> dict[str, Any]:
    producer = t.name if t.layer is None else t.layer.name
    return {"class_name": "__keras_tensor__",
            "config": {"shape": list(t.shape), "dtype": t.dtype,
                       "keras_history": [producer, 0, t.index]}}


def _input_layer(t: Any) -> dict[str, Any]:
    return {"module": "keras.layers", "class_name": "InputLayer",
            "config": {"batch_shape": list(t.shape), "dtype": t.dtype, "sparse": False,
                       "ragged": False, "name": t.name, "optional": False},
            "registered_name": None, "name": t.name, "inbound_nodes": []}


def _layer_entry(layer: Any, with_nodes: bool) -> dict[str, Any]:
    entry = {"module": "keras.layers", "class_name": type(layer).__name__,
             "config": layer_config(layer), "registered_name": None}
    if layer.input_shapes is not None:
        entry["build_config"] = _jsonable(layer._keras_build_config())
    if with_nodes:
        ins = list(layer.outputs[0].inputs)
        args, kwargs = layer._keras_call_args(ins)
        entry["name"] = layer.name
        entry["inbound_nodes"] = [{
            "args": [[_tensor(t) for t in a] if isinstance(a, list) else _tensor(a) for a in args],
            "kwargs": {k: _tensor(t) for k, t in kwargs.items()}}]
    return entry


# ------------------------------------------------------------------ models
def model_config(model: Any) -> dict[str, Any]:
    """The whole model as Keras 3 serializes it (`{"module", "class_name", "config", ...}`)."""
    from unity_legion.keras.layers import tracing
    from unity_legion.keras.models.sequential import Sequential

    if tracing.is_composite(model):
        raise ConfigError(f"model {model.name!r} ({type(model).__name__}) is a subclassed "
                          f"keras.Model: its config cannot be written yet; save its weights "
                          f"with save_weights('....weights.h5') and rebuild it in code")
    if isinstance(model, Sequential):
        inp = model._input
        layers = [_layer_entry(l, False) for l in model.layers]
        config = {"name": model.name, "trainable": model.trainable, "layers": layers}
        out = {"module": "keras", "class_name": "Sequential", "config": config,
               "registered_name": None}
        if inp is not None:   # a Sequential not built yet has no input shape to record
            first = _input_layer(inp)
            del first["name"], first["inbound_nodes"]
            layers.insert(0, first)
            config["build_input_shape"] = list(inp.shape)
            out["build_config"] = {"input_shape": list(inp.shape)}
        return out
    model._require_built()
    members = model._keras_order
    layers = [_layer_entry(m, True) if hasattr(m, "make_op") else _input_layer(m) for m in members]

    def refs(ts: list[Any], many: bool) -> Any:
        triples = [[t.name if t.layer is None else t.layer.name, 0, t.index] for t in ts]
        return triples if many else triples[0]

    return {"module": "keras.src.models.functional", "class_name": "Functional",
            "config": {"name": model.name, "trainable": model.trainable, "layers": layers,
                       "input_layers": refs(model.inputs, model._multi_input),
                       "output_layers": refs(model.outputs, model._multi_output)},
            "registered_name": "Functional", "build_config": {"input_shape": None}}


def model_from_config(config: dict[str, Any], custom_objects: dict[str, Any] | None = None) -> Any:
    from unity_legion.keras.layers.input_layer import Input
    from unity_legion.keras.models.model import Model
    from unity_legion.keras.models.sequential import Sequential

    kind = config.get("class_name")
    inner = config.get("config")
    if kind not in ("Sequential", "Functional", "Model") or not isinstance(inner, dict) \
            or not isinstance(inner.get("layers"), list):
        raise ConfigError(f"not a Sequential or functional model config (class_name {kind!r}); "
                          f"subclassed models cannot be rebuilt from a config")

    def make_input(cfg: dict[str, Any]) -> Any:
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        if not shape:
            raise ConfigError(f"InputLayer {cfg.get('name')!r} has no batch_shape")
        if cfg.get("sparse") or cfg.get("ragged"):
            raise ConfigError(f"InputLayer {cfg.get('name')!r}: sparse/ragged inputs are not "
                              f"supported")
        dtype = _plain("dtype", cfg.get("dtype"))
        return Input(shape=tuple(shape[1:]), batch_size=shape[0], dtype=dtype,
                     name=cfg.get("name"))

    if kind == "Sequential":
        items: list[Any] = []
        for entry in inner["layers"]:
            if entry.get("class_name") == "InputLayer":
                items.append(make_input(entry["config"]))
            else:
                items.append(layer_from_config(entry["class_name"], entry["config"],
                                               custom_objects))
        model = Sequential(items, name=inner.get("name"))
        if not model.built and inner.get("build_input_shape"):
            model.build(tuple(inner["build_input_shape"]))
        return model

    produced: dict[str, list[Any]] = {}
    pending = list(inner["layers"])
    while pending:   # Keras lists deepest first (a topological order); tolerate any order
        progress = False
        for entry in list(pending):
            cfg = entry.get("config", {})
            name = entry.get("name") or cfg.get("name")
            if entry.get("class_name") == "InputLayer":
                produced[name] = [make_input(cfg)]
            else:
                nodes = entry.get("inbound_nodes") or []
                if len(nodes) != 1:
                    raise ConfigError(f"layer {name!r}: called {len(nodes)} times in the "
                                      f"config; only layers called exactly once are supported")
                if not _ready(nodes[0], produced):
                    continue
                layer = layer_from_config(entry["class_name"], cfg, custom_objects)
                args, kwargs = _call_args(nodes[0], produced, name)
                out = layer(*args, **kwargs)
                produced[name] = out if isinstance(out, list) else [out]
            pending.remove(entry)
            progress = True
        if not progress:
            raise ConfigError(f"layers {[e.get('name') for e in pending]} read tensors no layer "
                              f"in the config produces")

    def resolve(refs: Any) -> Any:
        if refs and isinstance(refs[0], str):
            return _lookup(refs, produced)
        return [_lookup(r, produced) for r in refs]

    return Model(resolve(inner["input_layers"]), resolve(inner["output_layers"]),
                 name=inner.get("name"))


def _lookup(ref: list[Any], produced: dict[str, list[Any]]) -> Any:
    name, _, index = ref
    if name not in produced or index >= len(produced[name]):
        raise ConfigError(f"the config refers to output {index} of {name!r}, which it lacks")
    return produced[name][index]


def _history(value: Any) -> list[Any] | None:
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        return value["config"]["keras_history"]
    return None


def _ready(node: dict[str, Any], produced: dict[str, list[Any]]) -> bool:
    refs = []
    for a in list(node.get("args", [])) + list(node.get("kwargs", {}).values()):
        refs += [h for h in map(_history, a if isinstance(a, list) else [a]) if h]
    return all(h[0] in produced for h in refs)


# call arguments Keras records that change nothing here (fit/predict decide `training`)
_CALL_NEUTRAL = {"mask", "training"}


def _call_args(node: dict[str, Any], produced: dict[str, list[Any]], name: str
               ) -> tuple[list[Any], dict[str, Any]]:
    def value(a: Any) -> Any:
        if isinstance(a, list):
            return [value(x) for x in a]
        h = _history(a)
        return _lookup(h, produced) if h else a

    args = [value(a) for a in node.get("args", [])]
    kwargs = {}
    for k, v in (node.get("kwargs") or {}).items():
        if k in _CALL_NEUTRAL and _history(v) is None:
            continue
        if v is None:
            continue
        kwargs[k] = value(v)
    return args, kwargs
