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

from unity_legion.keras.saving.registry import custom_class, layer_class, registered_name


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
    cfg.setdefault("dtype", layer.dtype_policy.name)   # "mixed_bfloat16" reads in Keras too
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


def _class_ref(cls: type, builtin_module: str) -> dict[str, Any]:
    """How a config names a class: a built-in by Keras' module; a user's class by its own
    module (None for __main__) and its registered name, which is what Keras looks up in its
    registry and in custom_objects."""
    if cls.__module__.startswith("unity_legion."):
        return {"module": builtin_module, "class_name": cls.__name__, "registered_name": None}
    return {"module": None if cls.__module__ == "__main__" else cls.__module__,
            "class_name": cls.__name__, "registered_name": registered_name(cls)}


def _layer_entry(layer: Any, with_nodes: bool) -> dict[str, Any]:
    ref = _class_ref(type(layer), "keras.layers")
    entry = {"module": ref["module"], "class_name": ref["class_name"],
             "config": layer_config(layer), "registered_name": ref["registered_name"]}
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
        return _subclassed_model_config(model)
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


# ------------------------------------------------------------------ subclassed models
# A subclassed keras.Model is saved as Keras saves one: its class by name, what its
# get_config() returns (the arguments of its constructor), and the input shape to build it
# for; its weights as the attribute layout of weights_h5. Loading finds the class (registered
# with register_keras_serializable, or in custom_objects), calls from_config (default:
# cls(**config)), builds it and loads the weights.

# constructor arguments the base class takes itself: a subclass whose __init__ takes others
# must say how to make it again (get_config), since nothing records them otherwise
_BASE_MODEL_ARGS = {"self", "name", "trainable", "dtype"}


def _check_own_config(cls: type) -> None:
    from unity_legion.keras.models.model import Model

    params = inspect.signature(cls.__init__).parameters.values()
    own = [p.name for p in params if p.name not in _BASE_MODEL_ARGS
           and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    overridden = any("get_config" in vars(k) for k in cls.__mro__ if k is not Model
                     and issubclass(k, Model))
    if own and not overridden:
        raise ConfigError(f"subclassed model {cls.__name__}: its __init__ takes {own}, but it "
                          f"defines no get_config() returning them, so the file could not make "
                          f"the same model again; define get_config() (return "
                          f"{{**super().get_config(), {own[0]!r}: ...}}) or save the weights "
                          f"only with save_weights('....weights.h5')")


def _subclassed_model_config(model: Any) -> dict[str, Any]:
    import json

    cls = type(model)
    if not model.built:
        raise ConfigError(f"subclassed model {model.name!r} ({cls.__name__}) is not built yet: "
                          f"call it on data or build(input_shape) before saving it")
    _check_own_config(cls)
    config = _jsonable(model.get_config())
    if not isinstance(config, dict):
        raise ConfigError(f"{cls.__name__}.get_config() must return a dict, got "
                          f"{type(config).__name__}")
    for key, value in config.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{cls.__name__}.get_config(): {key}={value!r} is not a plain "
                              f"JSON value (numbers, strings, lists, dicts)") from None
    shapes = [list(t.shape) for t in model.inputs]
    build = {"input_shape": shapes if model._multi_input else shapes[0]}
    dtypes = [t.dtype for t in model.inputs]
    if any(d != "float32" for d in dtypes):   # an extra key Keras ignores: the inputs' dtypes
        build["input_dtypes"] = dtypes if model._multi_input else dtypes[0]
    return {**_class_ref(cls, "keras"), "config": config, "build_config": build}


def _shape(value: Any, what: str) -> tuple[int | None, ...]:
    if not isinstance(value, (list, tuple)) or not value or \
            not all(d is None or (isinstance(d, int) and not isinstance(d, bool) and d > 0)
                    for d in value):
        raise ConfigError(f"{what}: {value!r} is not a shape (batch first)")
    return (None,) + tuple(value[1:])   # the batch of the call Keras built on is not a limit


def _subclassed_model_from_config(config: dict[str, Any],
                                  custom_objects: dict[str, Any] | None) -> Any:
    from unity_legion.keras.layers.input_layer import Input
    from unity_legion.keras.models.model import Model

    class_name = config.get("class_name")
    cls = custom_class(str(class_name), config.get("registered_name"), custom_objects)
    if cls is None:
        raise ConfigError(f"unknown model class {class_name!r} (registered name "
                          f"{config.get('registered_name')!r}): decorate it with "
                          f"keras.saving.register_keras_serializable() and import it before "
                          f"loading, or pass custom_objects={{{class_name!r}: TheClass}}")
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise ConfigError(f"{class_name!r} names {cls!r}, which is not a keras.Model subclass")
    inner = dict(config.get("config") or {})
    if "dtype" in inner:
        inner["dtype"] = _plain("dtype", inner["dtype"])
    try:
        model = cls.from_config(inner)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model class {class_name}: cannot be created from its config "
                          f"(keys {sorted(inner)}): {exc}; its get_config() must return the "
                          f"arguments of its __init__, or it must define from_config()") \
            from None
    build = config.get("build_config") or {}
    if "input_shape" not in build:
        raise ConfigError(f"model {inner.get('name', class_name)!r}: the config has no "
                          f"build_config input_shape to build the model for")
    raw = build["input_shape"]
    many = isinstance(raw, list) and bool(raw) and isinstance(raw[0], list)
    shapes = [_shape(s, "build_config input_shape") for s in (raw if many else [raw])]
    dtypes = build.get("input_dtypes") or "float32"
    dtypes = dtypes if isinstance(dtypes, list) else [dtypes] * len(shapes)
    if len(dtypes) != len(shapes):
        raise ConfigError(f"build_config: {len(dtypes)} input dtypes for {len(shapes)} inputs")
    ins = [Input(shape=s[1:], dtype=d) for s, d in zip(shapes, dtypes)]
    try:
        model(ins if many else ins[0])   # traces call() and builds the graph
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {model.name!r} ({class_name}): cannot be built for inputs "
                          f"{shapes}: {exc}") from None
    return model


def model_from_config(config: dict[str, Any], custom_objects: dict[str, Any] | None = None) -> Any:
    from unity_legion.keras.layers.input_layer import Input
    from unity_legion.keras.models.model import Model
    from unity_legion.keras.models.sequential import Sequential

    kind = config.get("class_name")
    inner = config.get("config")
    if kind not in ("Sequential", "Functional", "Model"):
        return _subclassed_model_from_config(config, custom_objects)
    if not isinstance(inner, dict) or not isinstance(inner.get("layers"), list):
        raise ConfigError(f"not a Sequential or functional model config (class_name {kind!r}: "
                          f"it lists no layers)")

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
