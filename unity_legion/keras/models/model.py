"""keras.Model (functional): the layer graph, its ComputationGraph, and its weights."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

import numpy as np

from unity_legion import initializers
from unity_legion.keras.layers import tracing
from unity_legion.keras.layers.input_layer import InputSpec, input_layer_of
from unity_legion.keras.layers.layer import KerasTensor, Layer, _snake, unique_name
from unity_legion.keras.seed import global_seed
from unity_legion.keras.trainer import Trainer
from unity_legion.pcg.graph import ComputationGraph

WeightKey = tuple[int, str]


def keras_layer_order(inputs: Sequence[KerasTensor], outputs: Sequence[KerasTensor]
                      ) -> tuple[list[Layer], list[Layer | KerasTensor]]:
    """The layers between inputs and outputs in Keras 3's order, without and with the inputs
    (which stand for Keras' InputLayers). Keras sorts by depth, the longest path to an output,
    deepest first, and breaks ties by the order a depth-first walk from the outputs (each
    layer's inputs in call order) first meets them."""
    index: dict[int, int] = {}
    members: dict[int, Layer | KerasTensor] = {}
    parents: dict[int, list[int]] = {}
    post: list[int] = []
    input_ids = {id(t) for t in inputs}

    def visit(t: KerasTensor) -> None:
        member: Layer | KerasTensor = t if (t.layer is None or id(t) in input_ids) else t.layer
        k = id(member)
        if k in members:
            return
        index[k] = len(index)
        members[k] = member
        parents[k] = []
        if isinstance(member, Layer):
            for p in t.inputs:
                visit(p)
                parents[k].append(id(p if (p.layer is None or id(p) in input_ids) else p.layer))
        post.append(k)

    for t in outputs:
        visit(t)
    depth: dict[int, int] = {}
    for k in reversed(post):   # every consumer before its producers
        d = depth.setdefault(k, 0)
        for p in parents[k]:
            depth[p] = max(depth.get(p, 0), d + 1)
    for t in inputs:   # an input no output reads: listed too, first at depth 0 (as Keras)
        if id(t) not in members:
            members[id(t)], index[id(t)], depth[id(t)] = t, -1, 0
    order = sorted(members, key=lambda k: (-depth[k], index[k]))   # stable: inputs' order
    with_inputs = [members[k] for k in order]
    return [m for m in with_inputs if isinstance(m, Layer)], with_inputs


class Model(Trainer):
    def __init__(self, inputs: Any = None, outputs: Any = None, name: str | None = None,
                 trainable: bool = True, dtype: Any = None, **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(f"Model: unknown argument(s) {', '.join(repr(k) for k in kwargs)}")
        if dtype is not None and str(getattr(dtype, "name", dtype)) != "float32":
            raise NotImplementedError(f"Model: dtype={dtype!r} is not supported; models compute "
                                      f"in float32 (set dtypes on layers instead)")
        super().__init__()
        self._trainable = bool(trainable)   # applied to the layers once the graph is built
        self.name = name or unique_name(_snake(type(self).__name__) if tracing.is_composite(self)
                                        else "functional")
        self._graph: ComputationGraph | None = None
        if inputs is not None or outputs is not None:
            self._build_graph(inputs, outputs)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if tracing.is_composite(cls):   # a subclassed model: call() traced (tracing.py)
            tracing.install_model(cls)

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """On symbolic tensors: a subclassed model builds itself (a Sequential inside a
        subclassed layer applies its layers); on data: build if needed, then predict."""
        return tracing.model_call(self, inputs, args, kwargs)

    # ------------------------------------------------------------------ graph
    def _build_graph(self, inputs: Any, outputs: Any) -> None:
        ins = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        outs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        if isinstance(inputs, dict) or isinstance(outputs, dict):
            raise NotImplementedError("Model: dict inputs/outputs are not supported; use lists")
        for t in ins:
            if not isinstance(t, InputSpec):
                raise TypeError(f"Model: inputs must come from keras.Input, got {t!r}")
        for t in outs:
            if not isinstance(t, KerasTensor):
                raise TypeError(f"Model: outputs must be symbolic tensors, got {t!r}")
        self._multi_input = isinstance(inputs, (list, tuple))
        self._multi_output = isinstance(outputs, (list, tuple))
        graph = ComputationGraph()
        ids: dict[int, int] = {}          # id(KerasTensor) -> graph tensor id
        for t in ins:
            ids[id(t)] = graph.add_input(t.tensor_shape, t.name)
        order: list[Layer] = []
        seen: set[int] = set()

        def visit(t: KerasTensor) -> None:
            inner = tracing.inner_of(t)
            if inner is not None and id(t) not in ids:   # a subclassed layer's output:
                visit(inner)                             # the graph holds what it traced
                ids[id(t)] = ids[id(inner)]
                return
            if id(t) in ids or t.layer is None:
                if id(t) not in ids:
                    raise ValueError(f"Model: output depends on the input {t.name!r}, which is not "
                                     f"among the model's inputs")
                return
            if id(t.layer) in seen:
                return
            for parent in t.inputs:
                visit(parent)
            seen.add(id(t.layer))
            order.append(t.layer)
            assert t.layer.op is not None
            out_ids = graph.add_node(t.layer.op, [ids[id(p)] for p in t.inputs], t.layer.name)
            for kt, tid in zip(t.layer.outputs, out_ids):
                ids[id(kt)] = tid

        for t in outs:
            visit(t)
        self._graph = graph
        self._layers, self._keras_order = keras_layer_order(ins, outs)
        self._keras_inputs, self._keras_outputs = ins, outs
        self._input_ids = [ids[id(t)] for t in ins]
        self._output_ids = [ids[id(t)] for t in outs]
        graph.set_outputs(self._output_ids)
        for layer in order:
            if layer._model is not None and layer._model is not self:
                raise ValueError(f"layer {layer.name!r} already belongs to model "
                                 f"{layer._model.name!r}; layers cannot be shared between models")
            layer._model = self
            layer._node_id = graph.nodes[[n.name for n in graph.nodes].index(layer.name)].id
        tracing.adopt(self)
        self._host_weights: dict[WeightKey, np.ndarray] = {}
        self._executor = None
        if not self.trainable:   # Model(..., trainable=False), e.g. from a config
            self.trainable = False

    @property
    def trainable(self) -> bool:
        return getattr(self, "_trainable", True)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        """As in Keras, setting it sets every layer's `trainable` (the next fit() honours it)."""
        self._trainable = bool(value)
        for layer in self.layers:
            layer.trainable = bool(value)

    @property
    def built(self) -> bool:
        return self._graph is not None

    def _require_built(self) -> ComputationGraph:
        if self._graph is None:
            raise ValueError(f"model {self.name!r} has not been built yet: give it an Input, or "
                             f"call fit() / build(input_shape) first")
        return self._graph

    @property
    def layers(self) -> list[Layer]:
        """In Keras 3's order (hence get_weights' order): by depth from the outputs, deepest
        first, ties in the order a walk from the outputs meets them. As in Keras 3, a
        functional model lists an InputLayer (no weights) for each of its inputs, at its
        depth."""
        return [input_layer_of(m) if isinstance(m, InputSpec) else m
                for m in self._keras_members_in_order()]

    def _keras_members_in_order(self) -> list[Layer | KerasTensor]:
        listed = {id(layer) for layer in getattr(self, "_layers", [])}   # no keras.ops nodes
        return [m for m in getattr(self, "_keras_order", [])
                if isinstance(m, KerasTensor) or id(m) in listed]

    def _keras_members(self) -> list[tuple[str, str, Layer | None]]:
        """What Keras saves for each member of `layers`, InputLayers included, in its order:
        (class name in snake case, name, layer or None for an InputLayer)."""
        return [("input_layer", m.name, None) if isinstance(m, KerasTensor)
                else (_snake(type(m).__name__), m.name, m)
                for m in self._keras_members_in_order()]

    @property
    def inputs(self) -> list[KerasTensor]:
        self._require_built()
        return list(self._keras_inputs)

    @property
    def outputs(self) -> list[KerasTensor]:
        self._require_built()
        return list(self._keras_outputs)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """Each output's layer name; an output of a layer with several outputs also gets its
        index (``split_1``), so that losses and metrics of sibling outputs stay apart."""
        names = []
        for t in self.outputs:
            if t.layer is None:
                names.append(t.name)
            elif len(t.layer.outputs) > 1:
                names.append(f"{t.layer.name}_{t.index}")
            else:
                names.append(t.layer.name)
        return names

    @property
    def input_shape(self) -> Any:
        shapes = [t.shape for t in self.inputs]
        return shapes if self._multi_input else shapes[0]

    @property
    def output_shape(self) -> Any:
        shapes = [t.shape for t in self.outputs]
        return shapes if self._multi_output else shapes[0]

    @property
    def graph(self) -> ComputationGraph:
        return self._require_built()

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        if (name is None) == (index is None):
            raise ValueError("get_layer: provide exactly one of name or index")
        if index is not None:
            if not -len(self.layers) <= index < len(self.layers):
                raise ValueError(f"get_layer: index {index} is out of range; the model has "
                                 f"{len(self.layers)} layers")
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r}; layers: {[l.name for l in self.layers]}")

    # ------------------------------------------------------------------ weights
    def _weight_keys(self) -> list[WeightKey]:
        if self._graph is None:  # not built yet: no weights (as Keras)
            return []
        keys = []
        for layer in self.layers:
            keys += tracing.weight_keys_of(layer)
        return keys

    def _spec(self, key: WeightKey) -> Any:
        node = self._require_built().nodes[key[0]]
        return {ws.name: ws for ws in node.weights}[key[1]]

    def _initial_value(self, key: WeightKey) -> np.ndarray:
        spec = self._spec(key)
        index = [ws.name for ws in self._graph.nodes[key[0]].weights].index(key[1])
        rng = np.random.default_rng([global_seed(), key[0], index])
        return initializers.initialize(spec.initializer, spec.shape.dims, spec.shape.dtype.numpy,
                                       rng, **dict(spec.init_args))

    def _get_weight(self, key: WeightKey) -> np.ndarray:
        if self._executor is not None:
            return self._executor.get_weight(key)
        if key not in self._host_weights:
            self._host_weights[key] = self._initial_value(key)
        return self._host_weights[key].copy()

    def _set_weights(self, values: dict[WeightKey, Any]) -> None:
        """Check every array first, then write: a bad array changes nothing."""
        checked = {}
        for key, v in values.items():
            spec = self._spec(key)
            arr = np.asarray(v)
            where = f"{self._graph.nodes[key[0]].name}/{key[1]}"
            if arr.shape != spec.shape.dims:
                raise ValueError(f"weight {where}: expected shape {spec.shape.dims}, got {arr.shape}")
            if arr.dtype.kind not in "biuf":
                raise ValueError(f"weight {where}: expected numbers, got dtype {arr.dtype}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"weight {where}: contains NaN or infinite values")
            checked[key] = arr.astype(spec.shape.dtype.numpy)
        if self._executor is not None:
            self._write_weights(checked)
        else:
            self._host_weights.update(checked)

    def get_weights(self) -> list[np.ndarray]:
        return [self._get_weight(k) for k in self._weight_keys()]

    def set_weights(self, weights: Sequence[Any]) -> None:
        keys = self._weight_keys()
        if len(weights) != len(keys):
            raise ValueError(f"set_weights: the model has {len(keys)} weight arrays, got {len(weights)}")
        self._set_weights(dict(zip(keys, weights)))

    def _weight_names(self) -> dict[str, WeightKey]:
        """The weights' names in a weights file: each layer named by its class and its rank among
        the model's layers of that class ("dense/kernel", "dense_1/kernel", ...), as Keras' weights
        files do, so that the same architecture built again (whose layers get new automatic
        names) loads the file."""
        names: dict[str, WeightKey] = {}
        seen: dict[str, int] = {}
        for layer in self.layers:
            base = _snake(type(layer).__name__)
            k = seen[base] = seen.get(base, -1) + 1
            prefix = base if k == 0 else f"{base}_{k}"
            for label, key in tracing.weight_labels(layer):
                names[f"{prefix}/{label}"] = key
        return names

    def save_weights(self, filepath: str, overwrite: bool = True) -> None:
        """Weights to `*.weights.h5` (Keras 3's HDF5 layout, which real Keras 3 loads) or
        `*.weights.npz` (numpy, no pickle); written atomically either way."""
        from unity_legion.keras.saving import weights_h5
        filepath = os.fspath(filepath)
        self._require_built()
        if filepath.endswith(".weights.h5"):
            weights_h5.save(self, filepath, overwrite)
            return
        if not filepath.endswith(".weights.npz"):
            raise ValueError(f"save_weights: the file name must end in '.weights.h5' (Keras 3's "
                             f"format) or '.weights.npz', got {filepath!r}")
        if not overwrite and os.path.exists(filepath):
            raise FileExistsError(f"save_weights: {filepath} exists and overwrite=False")
        arrays = {name: self._get_weight(key) for name, key in self._weight_names().items()}
        folder = os.path.dirname(os.path.abspath(filepath))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp.npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, filepath)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def save(self, filepath: str, overwrite: bool = True) -> None:
        """The whole model to a `.keras` file (Keras 3's zip: config, metadata, weights), which
        real Keras 3 loads; written atomically. No pickle."""
        from unity_legion.keras.saving import save_model
        filepath = os.fspath(filepath)
        if not filepath.endswith(".keras"):
            raise ValueError(f"save: the file name must end in '.keras' (or use save_weights for "
                             f"'.weights.h5'), got {filepath!r}")
        save_model(self, filepath, overwrite)

    def get_config(self) -> dict[str, Any]:
        """Keras 3's config of a Sequential or functional model (layers, their calls, inputs and
        outputs); from_config() rebuilds the model from it, with fresh weights. A subclassed
        model's is the base arguments (name, trainable, dtype): a subclass whose __init__
        takes more extends it, as in Keras (`{**super().get_config(), "units": ...}`)."""
        from unity_legion.keras.saving.serialization import model_config
        if tracing.is_composite(self):
            return {"name": self.name, "trainable": self.trainable, "dtype": "float32"}
        return model_config(self)["config"]

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None
                    ) -> "Model":
        from unity_legion.keras.saving.serialization import model_from_config
        if tracing.is_composite(cls):   # a subclassed model: its constructor's arguments
            return cls._from_own_config(config)
        kind = "Sequential" if "build_input_shape" in config or cls.__name__ == "Sequential" \
            else "Functional"
        return model_from_config({"class_name": kind, "config": config}, custom_objects)

    @classmethod
    def _from_own_config(cls, config: dict[str, Any]) -> "Model":
        """cls(**config); the base arguments (name, trainable, dtype) that an `__init__(self)`
        does not take are set afterwards instead (they never change the architecture)."""
        import inspect
        params = inspect.signature(cls.__init__).parameters
        open_ended = any(p.kind == p.VAR_KEYWORD for p in params.values())
        base = {"name", "trainable", "dtype"}
        kwargs = {k: v for k, v in config.items() if open_ended or k in params or k not in base}
        model = cls(**kwargs)
        if "name" in config and "name" not in kwargs:
            model.name = config["name"]
        if config.get("trainable") is False and "trainable" not in kwargs:
            model.trainable = False
        return model

    def to_json(self, **kwargs: Any) -> str:
        import json

        from unity_legion.keras.saving.serialization import model_config
        return json.dumps(model_config(self), **kwargs)

    def load_weights(self, filepath: str) -> None:
        """Weights from a `*.weights.h5` file (ours or real Keras 3's) or `*.weights.npz`;
        every name and shape is checked before any is set."""
        from unity_legion.keras.saving import weights_h5
        filepath = os.fspath(filepath)
        self._require_built()
        if filepath.endswith(".h5"):
            weights_h5.load(self, filepath)
            return
        if filepath.endswith(".keras"):   # as Keras: the weights inside a whole-model file
            from unity_legion.keras.saving.keras_zip import load_weights_from
            load_weights_from(self, filepath)
            return
        if not filepath.endswith(".npz"):
            raise ValueError(f"load_weights: the file name must end in '.weights.h5' or "
                             f"'.weights.npz', got {filepath!r}")
        try:
            with np.load(filepath, allow_pickle=False) as data:
                stored = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise ValueError(f"load_weights: {filepath} is not a weights file written by "
                             f"save_weights ({exc})") from None
        names = self._weight_names()
        missing = sorted(set(names) - set(stored))
        extra = sorted(set(stored) - set(names))
        if missing or extra:
            raise ValueError(f"load_weights: {filepath} does not match model {self.name!r}: "
                             f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                             f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}")
        for n, key in names.items():
            want = self._spec(key).shape.dims
            if stored[n].shape != want:
                raise ValueError(f"load_weights: {filepath} does not match model {self.name!r}: "
                                 f"weight {n!r} (layer {self._graph.nodes[key[0]].name!r}) has "
                                 f"shape {stored[n].shape} in the file, {want} in the model")
        self._set_weights({names[n]: stored[n] for n in names})

    @property
    def weights(self) -> list[Any]:
        """The layers' variables (`.numpy()`, `.assign()`, ...) in get_weights() order."""
        return [v for layer in self.layers for v in layer.weights]

    @property
    def trainable_weights(self) -> list[Any]:
        return [v for v in self.weights if v.trainable]

    @property
    def non_trainable_weights(self) -> list[Any]:
        return [v for v in self.weights if not v.trainable]

    @property
    def variables(self) -> list[Any]:
        return self.weights

    def count_params(self) -> int:
        self._require_built()
        return sum(layer.count_params() for layer in self.layers)

    # ------------------------------------------------------------------ summary
    def summary(self, print_fn: Any = None) -> None:
        self._require_built()
        out = print_fn or print
        rows = []
        for layer in self.layers:   # InputLayers too where Keras lists them (functional)
            rows.append((f"{layer.name} ({type(layer).__name__})", str(layer.output_shape),
                         f"{layer.count_params():,}"))
        widths = [max(len(r[i]) for r in rows + [("Layer (type)", "Output Shape", "Param #")])
                  for i in range(3)]
        line = "  ".join("-" * w for w in widths)
        out(f'Model: "{self.name}"')
        out(line)
        out("  ".join(h.ljust(w) for h, w in zip(("Layer (type)", "Output Shape", "Param #"), widths)))
        out(line)
        for r in rows:
            out("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        out(line)
        frozen = set(self._frozen_weight_keys())
        trainable = sum(self._spec(k).shape.num_elements() for k in self._weight_keys()
                        if k not in frozen and self._spec(k).trainable)
        total = self.count_params()
        out(f" Total params: {total:,}")
        out(f" Trainable params: {trainable:,}")
        out(f" Non-trainable params: {total - trainable:,}")
