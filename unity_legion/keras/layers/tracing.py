"""Subclassed layers and models: their `call()` traced once into the computation graph.

A Layer subclass that defines `call` (a "composite") is no operator itself. Calling it on
symbolic tensors runs its `build` (once) and then `call` on those tensors; every layer call,
keras.ops function and Python operator inside adds nodes (existing layers' operators, or the
operators of operators/broadcast.py, unary.py, reduce.py, slice.py, convert.py, source.py) to the
graph the model builds, so the search and every strategy see them like any other node. The
composite returns proxies: KerasTensors whose layer is the composite and whose `_inner` is the
traced tensor, so a model lists the composite as one layer, in Keras' order, while its graph
holds the traced nodes (Model._build_graph follows `_inner`).

Every graph tensor carries the batch as dim 0. A tensor without one (a weight made by
`add_weight`, keras.ops.arange) enters the graph broadcast over the batch (operators/source.py)
and is marked batch-free: its visible shape leaves that dim out, and keras.ops maps its axes.

What cannot be traced (Python control flow on tensor values, numpy on a symbolic tensor, an op
we lack) raises TracingError at model construction, naming the layer, the op and what to use.
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from unity_legion.operators.base import Operator
from unity_legion.types import DataType


class TracingError(ValueError):
    """A subclassed layer's call() does something that cannot become graph operators."""


class UnsupportedOpError(TracingError, AttributeError):
    """A keras.ops function this API does not have (an AttributeError too, so hasattr works)."""


@dataclass
class _Frame:
    owner: Any                       # the composite layer or subclassed model being traced
    batch_ref: Any                   # a batch-carrying KerasTensor of this call (for sources)
    params: dict[int, Any] = field(default_factory=dict)   # id(variable) -> its graph tensor


_FRAMES: list[_Frame] = []


def current_owner_name() -> str:
    """How an error names where it happened: the innermost layer being traced."""
    if not _FRAMES:
        return "functional model construction"
    owner = _FRAMES[-1].owner
    return f"layer {owner.name!r} ({type(owner).__name__})"


def fail(op: str, why: str, instead: str) -> TracingError:
    return TracingError(f"{current_owner_name()}: {op} cannot be traced into the graph: {why}. "
                        f"Use {instead} instead.")


def batch_ref() -> Any:
    for frame in reversed(_FRAMES):
        if frame.batch_ref is not None:
            return frame.batch_ref
    return None


def is_composite(layer_or_class: Any) -> bool:
    cls = layer_or_class if isinstance(layer_or_class, type) else type(layer_or_class)
    return callable(getattr(cls, "call", None))


# ---------------------------------------------------------------------------------------------
# Python operators on symbolic tensors and on variables (a mixin of KerasTensor and Variable)
# ---------------------------------------------------------------------------------------------

class SymbolicOperators:
    """`+ - * / @ **`, unary -, comparisons and `[...]` as keras.ops calls; what a symbolic
    tensor cannot do (bool(), numpy, iteration) raises TracingError naming the alternative."""

    __array_priority__ = 100   # numpy scalars on the left defer to our reflected operators

    def __add__(self, o: Any) -> Any: return _ops().add(self, o)
    def __radd__(self, o: Any) -> Any: return _ops().add(o, self)
    def __sub__(self, o: Any) -> Any: return _ops().subtract(self, o)
    def __rsub__(self, o: Any) -> Any: return _ops().subtract(o, self)
    def __mul__(self, o: Any) -> Any: return _ops().multiply(self, o)
    def __rmul__(self, o: Any) -> Any: return _ops().multiply(o, self)
    def __truediv__(self, o: Any) -> Any: return _ops().divide(self, o)
    def __rtruediv__(self, o: Any) -> Any: return _ops().divide(o, self)
    def __matmul__(self, o: Any) -> Any: return _ops().matmul(self, o)
    def __rmatmul__(self, o: Any) -> Any: return _ops().matmul(o, self)
    def __pow__(self, o: Any) -> Any: return _ops().power(self, o)
    def __neg__(self) -> Any: return _ops().negative(self)
    def __pos__(self) -> Any: return self
    def __abs__(self) -> Any: return _ops().abs(self)
    def __gt__(self, o: Any) -> Any: return _ops().greater(self, o)
    def __ge__(self, o: Any) -> Any: return _ops().greater_equal(self, o)
    def __lt__(self, o: Any) -> Any: return _ops().less(self, o)
    def __le__(self, o: Any) -> Any: return _ops().less_equal(self, o)

    def __getitem__(self, index: Any) -> Any:
        return _ops().slice_tensor(self, index)

    def __bool__(self) -> bool:
        raise fail("bool() of a symbolic tensor (Python `if`, `while`, `and`/`or` on tensor "
                   "values)", "its value is only known when the model runs",
                   "keras.ops.where(condition, x1, x2) to choose values element by element")

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise fail("numpy on a symbolic tensor (np.asarray, np.mean, ...)",
                   "its value is only known when the model runs",
                   "the keras.ops function of the same name (keras.ops.mean, ...)")

    def numpy(self) -> np.ndarray:
        raise fail(".numpy() of a symbolic tensor", "its value is only known when the model runs",
                   "model.predict() to get values")

    def __iter__(self) -> Any:
        raise fail("iterating over a symbolic tensor", "a Python loop over tensor values cannot "
                   "be recorded", "keras.ops functions over whole axes (sum, mean, slicing x[:, i])")

    def __float__(self) -> float:
        raise fail("float() of a symbolic tensor", "its value is only known when the model runs",
                   "keras.ops functions")

    def __int__(self) -> int:
        raise fail("int() of a symbolic tensor", "its value is only known when the model runs",
                   "keras.ops.shape(x) for sizes, keras.ops functions for values")

    __index__ = __int__


def _ops() -> Any:
    from unity_legion.keras import ops
    return ops


# ---------------------------------------------------------------------------------------------
# Layers that hold one operator made by keras.ops, and variables made by add_weight
# ---------------------------------------------------------------------------------------------

def _layer_base() -> Any:
    from unity_legion.keras.layers.layer import Layer
    return Layer


def op_layer(op: Operator, name: str) -> Any:
    """A graph node of one operator (not listed in model.layers, as Keras' operations)."""
    from unity_legion.keras.layers.op_layer import OpLayer
    return OpLayer(op, name)


def is_op_layer(layer: Any) -> bool:
    from unity_legion.keras.layers.op_layer import OpLayer
    return isinstance(layer, OpLayer)


def apply(op: Operator, name: str, inputs: Sequence[Any]) -> Any:
    """`op` as a new node over `inputs` (KerasTensors); batch-free when every input is."""
    out = op_layer(op, name)(list(inputs))
    free = all(getattr(t, "_batch_free", False) for t in inputs)
    for t in (out if isinstance(out, list) else [out]):
        t._batch_free = free
    return out


class LayerVariable(SymbolicOperators):
    """A weight made by `Layer.add_weight`: a Parameter node of the graph once the layer's call
    uses it; its value lives in the model, as every weight's."""

    def __init__(self, owner: Any, name: str, shape: tuple[int, ...], initializer: str,
                 trainable: bool, dtype: Any, autocast: bool = True) -> None:
        self._owner = owner
        self.name = name
        self._shape = shape
        self.initializer = initializer
        self._trainable = trainable
        self._dtype = dtype
        # Keras' add_weight(autocast=...): read in a call() under a mixed policy, the variable
        # is cast to the compute dtype (see tensor_of_variable)
        self._autocast = bool(autocast)
        self._param_layer: Any = None

    shape = property(lambda self: self._shape)
    dtype = property(lambda self: self._dtype.value)
    ndim = property(lambda self: len(self._shape))
    path = property(lambda self: f"{self._owner.name}/{self.name}")

    @property
    def trainable(self) -> bool:
        return self._trainable and bool(self._owner.trainable)

    def _key(self) -> tuple[int, str]:
        layer = self._param_layer
        if layer is None or layer._model is None:
            raise ValueError(f"variable {self.path!r} has no value yet: it gets one when a model "
                             f"that calls layer {self._owner.name!r} is built")
        return (layer._node_id, "value")

    def numpy(self) -> np.ndarray:   # type: ignore[override]
        return self._param_layer._model._get_weight(self._key())

    @property
    def value(self) -> np.ndarray:
        return self.numpy()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.numpy(), dtype=dtype)

    def assign(self, value: Any) -> "LayerVariable":
        key = self._key()
        self._param_layer._model._set_weights({key: np.asarray(value)})
        return self

    def __repr__(self) -> str:
        return f"<Variable path={self.path}, shape={self.shape}, dtype={self.dtype}>"


def tensor_of_variable(v: LayerVariable) -> Any:
    """The graph tensor of `v` in this trace: one Parameter node per variable, made on first
    use (a second use reads the same tensor, so gradients add up), cast to the dtype of the
    autocast scope the call runs in, as Keras 3 reads a variable (float32 master, half
    copy per use; the gradient goes back through the cast to the float32 weight)."""
    return _autocast(v, _parameter_of(v))


def _autocast_dtype() -> DataType | None:
    """The dtype variables read in the current call() are cast to, as Keras 3's Layer.__call__
    sets its AutocastScope: a layer whose compute and variable dtypes differ (a mixed policy)
    opens one of its compute dtype; a layer called inside one replaces it by its own compute
    dtype, or clears it if it does not autocast or does not compute in floats. None: none."""
    scope: DataType | None = None
    for frame in _FRAMES:
        owner = frame.owner
        compute = getattr(owner, "compute_dtype", None)
        if compute is None:   # (a subclassed Model has no dtype policy here: no change)
            continue
        dt = DataType.of(compute)
        if scope is not None:
            if not getattr(owner, "autocast", True) or not dt.is_float:
                scope = None
            elif scope is not dt:
                scope = dt
        elif compute != owner.variable_dtype:
            scope = dt
    return scope


def _autocast(v: LayerVariable, t: Any) -> Any:
    scope = _autocast_dtype()
    if scope is None or not v._autocast or not v._dtype.is_float:
        return t
    return _cast_floats(t, scope)


def _parameter_of(v: LayerVariable) -> Any:
    """`v`'s Parameter tensor in this trace (made on first use), as stored: its own dtype."""
    from unity_legion.operators.source import Parameter
    if not _FRAMES or batch_ref() is None:
        raise fail(f"using variable {v.path!r} outside a layer's call()",
                   "a weight only enters the graph through the call that uses it",
                   "the variable inside the layer's call()")
    for frame in _FRAMES:
        if id(v) in frame.params:
            return frame.params[id(v)]
    if v._param_layer is not None:
        raise fail(f"variable {v.path!r} in a second call of layer {v._owner.name!r}",
                   "shared layers (one layer called twice) are not supported",
                   "a separate layer per call")
    op = Parameter(v.shape, v.initializer, (), v._trainable, v._dtype)
    t = apply(op, "parameter", [batch_ref()])
    t._batch_free = True
    v._param_layer = t.layer
    _FRAMES[-1].params[id(v)] = t
    return t


# ---------------------------------------------------------------------------------------------
# Calling a layer: the hook of Layer.__call__
# ---------------------------------------------------------------------------------------------

def _flat(obj: Any) -> list[Any]:
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _flat(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _flat(o)]
    return [obj]


def _symbolic(layer: Any, inputs: Any) -> list[Any]:
    from unity_legion.keras.layers.layer import KerasTensor
    tensors = []
    for t in _flat(inputs):
        if isinstance(t, LayerVariable):
            t = tensor_of_variable(t)
        if not isinstance(t, KerasTensor):
            raise TypeError(f"layer {layer.name!r}: inputs must be symbolic tensors from "
                            f"keras.Input or another layer, got {type(t).__name__}; "
                            f"use model.predict() to run a model on data")
        tensors.append(t)
    return tensors


def _resolve_variables(obj: Any) -> Any:
    if isinstance(obj, LayerVariable):
        return tensor_of_variable(obj)
    if isinstance(obj, list):
        return [_resolve_variables(o) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve_variables(o) for o in obj)
    return obj


def layer_call(layer: Any, inputs: Any, args: tuple, kwargs: dict) -> Any:
    """Layer.__call__: trace a composite, or add one layer's node (honouring `training`)."""
    if is_composite(layer):
        return _trace_composite(layer, inputs, args, kwargs)
    training = kwargs.pop("training", None)
    inputs = _resolve_variables(inputs)
    tensors = _symbolic(layer, inputs)
    from unity_legion.keras.layers.batch_normalization import BatchNormalization
    from unity_legion.keras.layers.dropout import Dropout
    if training is False and isinstance(layer, Dropout):
        return inputs   # Keras' Dropout(training=False) is the identity
    if training is not None and isinstance(layer, (Dropout, BatchNormalization)):
        # the graph is traced once; fit() runs it in training mode, predict() in inference
        raise fail(f"layer {layer.name!r} ({type(layer).__name__}) called with "
                   f"training={training!r}", "a mode fixed at call time is not supported "
                   "(fit() trains, predict() infers)",
                   "training=None (or pass on the training argument of call())"
                   if training is True else "training=None; for frozen statistics set "
                   "layer.trainable = False")
    free = [bool(getattr(t, "_batch_free", False)) for t in tensors]
    if any(free) and not all(free) and not is_op_layer(layer):
        raise fail(f"layer {layer.name!r} ({type(layer).__name__}) on a mix of batched and "
                   f"batch-free tensors", "the layer expects its inputs to share the batch",
                   "keras.ops (add, multiply, ...) to combine a weight or constant with a batch")
    autocast = not is_op_layer(layer)
    if autocast:   # Keras casts a layer's floating inputs to the dtype it computes in
        inputs = _cast_floats(inputs, layer.op_dtype())
    out = layer._call_leaf(inputs, *args, **kwargs)
    if autocast:   # ... and its outputs are in its policy's compute dtype
        out = _cast_floats(out, DataType.of(layer.compute_dtype))
    if all(free) and tensors:
        for t in (out if isinstance(out, list) else [out]):
            t._batch_free = True
    return out


def _cast_floats(tensors: Any, dtype: Any) -> Any:
    """`tensors` (one or a list) with every floating one of another dtype cast to `dtype`
    (a keras.ops.cast node each); others as they are. Under a float32 policy a model of
    float32 tensors gets no node."""
    from unity_legion.keras import ops
    from unity_legion.keras.layers.layer import KerasTensor

    def one(t: Any) -> Any:
        # only where a half type is involved (mixed precision): float32/float64 mixes keep
        # their operator's "different dtypes" error, as before policies existed
        src = t.tensor_shape.dtype if isinstance(t, KerasTensor) else None
        if src is not None and src.is_float and src is not dtype and dtype.is_float \
                and (src.is_half or dtype.is_half):
            # one cast per tensor and dtype: layers that share an input still share it after
            # the cast (what the search's merging substitutions look for)
            casts = t.__dict__.setdefault("_casts", {})
            if dtype not in casts:
                casts[dtype] = ops.cast(t, dtype)
                casts[dtype]._batch_free = getattr(t, "_batch_free", False)
            return casts[dtype]
        return t

    if isinstance(tensors, (list, tuple)):
        return type(tensors)(one(t) for t in tensors)
    return one(tensors)


def _cast_tree(obj: Any, dtype: DataType) -> Any:
    """_cast_floats over a nested structure of tensors (lists, tuples, dicts)."""
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast_tree(o, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: _cast_tree(o, dtype) for k, o in obj.items()}
    return _cast_floats(obj, dtype)


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _shape_arg(tensors: list[Any], inputs: Any) -> Any:
    shapes = [t.shape for t in tensors]
    return shapes[0] if not isinstance(inputs, (list, tuple, dict)) else shapes


def _run_call(owner: Any, inputs: Any, args: tuple, kwargs: dict, tensors: list[Any]) -> Any:
    """build (once) and call of a composite layer or subclassed model, inside a frame."""
    if not owner.__dict__.get("_composite_built", False):
        owner.build(_shape_arg(tensors, inputs))
        owner.__dict__["_composite_built"] = True
    ref = next((t for t in tensors if not getattr(t, "_batch_free", False)), None)
    _FRAMES.append(_Frame(owner, ref))
    try:
        if "training" in kwargs and not _accepts(owner.call, "training"):
            kwargs = {k: v for k, v in kwargs.items() if k != "training"}
        out = owner.call(inputs, *args, **kwargs)
    finally:
        _FRAMES.pop()
    out = _resolve_variables(out)
    from unity_legion.keras.layers.layer import KerasTensor
    for t in _flat(out):
        if not isinstance(t, KerasTensor):
            raise TracingError(f"layer {owner.name!r} ({type(owner).__name__}): call() returned "
                               f"{type(t).__name__}, not a symbolic tensor; return the result of "
                               f"layers or keras.ops")
    return out


def _trace_composite(layer: Any, inputs: Any, args: tuple, kwargs: dict) -> Any:
    from unity_legion.keras.layers.layer import KerasTensor
    if layer.__dict__.get("_traced", False):
        raise ValueError(f"layer {layer.name!r} is already used in a model; calling one layer "
                         f"twice (shared weights) is not supported")
    inputs = _resolve_variables(inputs)
    tensors = _symbolic(layer, inputs)
    if getattr(layer, "compute_dtype", None) is not None and getattr(layer, "autocast", True):
        # Keras 3's Layer.__call__ converts a layer's floating inputs to its compute dtype
        # before call() (a composite too): under mixed_bfloat16 call() sees bfloat16
        inputs = _cast_tree(inputs, DataType.of(layer.compute_dtype))
    out = _run_call(layer, inputs, args, kwargs, tensors)
    layer.__dict__["_traced"] = True

    def proxy(t: Any, i: int) -> Any:
        p = KerasTensor(t.tensor_shape, layer, tensors, i, f"{layer.name}/out{i}")
        p._inner, p._batch_free = t, getattr(t, "_batch_free", False)
        return p

    counter = itertools.count()

    def wrap(o: Any) -> Any:
        if isinstance(o, (list, tuple)):
            return type(o)(wrap(v) for v in o)
        if isinstance(o, dict):
            return {k: wrap(v) for k, v in o.items()}
        return proxy(o, next(counter))

    result = wrap(out)
    layer.outputs = _flat(result)
    layer.input_shapes = [t.tensor_shape for t in tensors]
    return result


# ---------------------------------------------------------------------------------------------
# What a composite layer is, besides its call(): weights, building, tracking its sublayers
# ---------------------------------------------------------------------------------------------

def _tracked(obj: Any) -> list[Any]:
    return obj.__dict__.setdefault("_tracked_layers", [])


def _track(obj: Any, value: Any) -> None:
    from unity_legion.keras.models.model import Model
    Layer = _layer_base()
    for v in (value if isinstance(value, (list, tuple)) else [value]):
        if isinstance(v, (Layer, Model)) and all(v is not t for t in _tracked(obj)):
            _tracked(obj).append(v)


def _own_variables(obj: Any) -> list[LayerVariable]:
    """Trainable first, then the others, each in creation order (Keras' weights order);
    only those the traced call used (the others have no node)."""
    made = obj.__dict__.get("_own_variables", [])
    used = [v for v in made if v._param_layer is not None]
    return [v for v in used if v._trainable] + [v for v in used if not v._trainable]


def weight_keys_of(obj: Any) -> list[tuple[int, str]]:
    """The model keys of a layer's or nested model's weights, in Keras' get_weights order."""
    Layer = _layer_base()
    if isinstance(obj, Layer) and not is_composite(obj):
        return obj._weight_keys()
    keys = [v._key() for v in _own_variables(obj)]
    for sub in (_tracked(obj) if isinstance(obj, Layer) or is_composite(obj) else obj.layers):
        keys += [k for k in weight_keys_of(sub) if k not in keys]
    return keys


def variables_of(obj: Any) -> list[Any]:
    Layer = _layer_base()
    if isinstance(obj, Layer) and not is_composite(obj):
        return list(obj.weights)
    out: list[Any] = list(_own_variables(obj))
    for sub in (_tracked(obj) if isinstance(obj, Layer) or is_composite(obj) else obj.layers):
        out += variables_of(sub)
    return out


class CompositeMethods:
    """Methods a Layer subclass with call() gets (Layer.__init_subclass__ installs those the
    subclass does not define itself)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            _track(self, value)
        object.__setattr__(self, name, value)

    @property
    def built(self) -> bool:
        return bool(self.__dict__.get("_composite_built", False))

    @built.setter
    def built(self, value: bool) -> None:
        self.__dict__["_composite_built"] = bool(value)

    @property
    def trainable(self) -> bool:
        return bool(self.__dict__.get("_trainable_flag", True))

    @trainable.setter
    def trainable(self, value: bool) -> None:
        """As in Keras, setting it sets every sublayer's `trainable` too."""
        self.__dict__["_trainable_flag"] = bool(value)
        for sub in _tracked(self):
            sub.trainable = bool(value)

    def add_weight(self, shape: Any = None, initializer: Any = "glorot_uniform", dtype: Any = None,
                   trainable: bool = True, name: str | None = None, **kwargs: Any) -> LayerVariable:
        from unity_legion import initializers
        from unity_legion.types import DataType
        bad = sorted(k for k, v in kwargs.items()
                     if k not in ("autocast", "aggregation", "overwrite_with_gradient")
                     and not (k in ("regularizer", "constraint") and v is None))
        if bad:
            raise TypeError(f"layer {self.name!r}: add_weight argument(s) {bad} are not "
                            f"supported")
        dims = () if shape is None else tuple(shape)
        if not dims or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d <= 0
                           for d in dims):
            raise ValueError(f"layer {self.name!r}: add_weight shape must be a non-empty tuple "
                             f"of positive integers, got {shape!r}")
        if initializer is None:
            initializer = "glorot_uniform"
        init = getattr(initializer, "__name__", initializer)
        if not isinstance(init, str):
            init = type(initializer).__name__
        init = initializers.check(_snake_initializer(init))
        made = self.__dict__.setdefault("_own_variables", [])
        label = name if name is not None else ("variable" if not made else f"variable_{len(made)}")
        # Keras: a variable's dtype defaults to the layer's variable dtype (float32 under a
        # mixed policy: the master copy)
        default = DataType.of(getattr(self, "variable_dtype", None) or "float32")
        var = LayerVariable(self, label,
                            tuple(int(d) for d in dims), init, bool(trainable),
                            DataType.of(dtype) if dtype is not None else default,
                            kwargs.get("autocast", True))
        made.append(var)
        return var

    def _weight_keys(self) -> list[tuple[int, str]]:
        return weight_keys_of(self)

    def _frozen_keys(self) -> list[tuple[int, str]]:
        if not self.trainable:
            return weight_keys_of(self)
        keys = [v._key() for v in _own_variables(self) if not v.trainable]
        for sub in _tracked(self):
            keys += frozen_keys_of(sub)
        return keys

    def _variables(self) -> list[Any]:
        return variables_of(self)

    def get_weights(self) -> list[np.ndarray]:
        model = self._require_model()
        return [model._get_weight(k) for k in weight_keys_of(self)]

    def set_weights(self, weights: Sequence[Any]) -> None:
        keys = weight_keys_of(self)
        if len(weights) != len(keys):
            raise ValueError(f"layer {self.name!r} has {len(keys)} weight(s), got "
                             f"{len(weights)} array(s)")
        self._require_model()._set_weights(dict(zip(keys, weights)))

    def count_params(self) -> int:
        if self._model is None:
            return 0
        return sum(self._model._spec(k).shape.num_elements() for k in weight_keys_of(self))


def frozen_keys_of(obj: Any) -> list[tuple[int, str]]:
    """The keys of the weights fit() must leave alone (layers set trainable = False)."""
    if isinstance(obj, _layer_base()) or is_composite(obj):
        return obj._frozen_keys()
    return [k for sub in obj.layers for k in frozen_keys_of(sub)]


_KERAS_INITIALIZERS = {"GlorotUniform": "glorot_uniform", "GlorotNormal": "glorot_normal",
                       "Zeros": "zeros", "Ones": "ones", "RandomNormal": "random_normal",
                       "RandomUniform": "random_uniform", "HeNormal": "he_normal",
                       "HeUniform": "he_uniform", "TruncatedNormal": "truncated_normal"}


def _snake_initializer(name: str) -> str:
    return _KERAS_INITIALIZERS.get(name, name)


def install_composite(cls: type) -> None:
    """Give a Layer subclass with call() the CompositeMethods it does not define itself."""
    Layer = _layer_base()
    for name, value in vars(CompositeMethods).items():
        if name.startswith("__") and name != "__setattr__":
            continue
        mine = False
        for k in cls.__mro__:   # the user's classes, up to Layer
            if k is Layer:
                break
            if name in vars(k) and vars(k)[name] is not value:
                mine = True
        if not mine:
            setattr(cls, name, value)


def reset(obj: Any) -> None:
    """Forget a layer's trace (Sequential rebuilds its graph when a layer is added): a
    composite is traced again, with the variables it made and its sublayers, on its next call."""
    from unity_legion.keras.models.model import Model
    if isinstance(obj, Model):
        for layer in obj.layers:
            reset(layer)
        return
    if not is_composite(obj):
        obj.op, obj.outputs, obj._model, obj._node_id = None, [], None, None
        return
    obj.__dict__["_traced"] = False
    obj.outputs, obj._model = [], None
    for v in obj.__dict__.get("_own_variables", []):
        v._param_layer = None
    for sub in _tracked(obj):
        reset(sub)


# ---------------------------------------------------------------------------------------------
# After a model is built: composites learn their model, op layers leave model.layers
# ---------------------------------------------------------------------------------------------

def adopt(model: Any) -> None:
    """Called by Model._build_graph: every composite reached from the model's layers belongs
    to it; operation nodes (keras.ops at top level) are not Keras layers."""
    def visit(obj: Any) -> None:
        Layer = _layer_base()
        if isinstance(obj, Layer) and is_composite(obj):
            obj._model = model
        for sub in (_tracked(obj) if is_composite(obj) else
                    (obj.layers if not isinstance(obj, Layer) else [])):
            visit(sub)

    model._layers = [l for l in model._layers if not is_op_layer(l)]
    if hasattr(model, "_keras_order"):   # what Keras saves: its layers, never operations
        model._keras_order = [m for m in model._keras_order if not is_op_layer(m)]
    for layer in model._layers:
        visit(layer)


def inner_of(t: Any) -> Any:
    """The traced tensor a composite's output stands for (None for other tensors)."""
    return getattr(t, "_inner", None)


def weight_labels(layer: Any) -> list[tuple[str, tuple[int, str]]]:
    """Names of a layer's weights within a .weights.npz file, stable when the same
    architecture is built again: the weight names of a plain layer; a composite's weights by
    their position in its get_weights() order."""
    if not is_composite(layer) and isinstance(layer, _layer_base()):
        return [(n, (layer._node_id, n)) for n in layer._present_weights()] \
            if layer._weight_keys() else []
    return [(str(i), key) for i, key in enumerate(weight_keys_of(layer))]


# ---------------------------------------------------------------------------------------------
# Models called on tensors or data; subclassed models (keras.Model with call())
# ---------------------------------------------------------------------------------------------

def model_call(model: Any, inputs: Any, args: tuple, kwargs: dict) -> Any:
    """Model.__call__. On symbolic tensors inside a layer's call(), a Sequential applies its
    layers; a subclassed model is traced and built on keras.Input tensors. On data, a model is
    built if needed (a subclassed one from the data's shapes) and run (predict)."""
    from unity_legion.keras.layers.layer import KerasTensor
    from unity_legion.keras.models.sequential import Sequential
    flat = _flat(inputs)
    if flat and all(isinstance(t, (KerasTensor, LayerVariable)) for t in flat):
        if is_composite(model):
            if model.built:
                raise ValueError(f"model {model.name!r} is already built; calling it again on "
                                 f"symbolic tensors (shared weights) is not supported")
            return build_subclassed(model, inputs, args, kwargs)
        if isinstance(model, Sequential) and _FRAMES:
            training = kwargs.get("training")
            t = inputs
            for layer in model.layers:
                t = layer(t, training=training) if training is not None else layer(t)
            return t
        raise ValueError(f"model {model.name!r}: calling a built model on symbolic tensors "
                         f"(a model inside another model) is only supported for a Sequential "
                         f"inside a subclassed layer's call(); add its layers directly")
    if args or {k: v for k, v in kwargs.items() if k != "training"}:
        raise TypeError(f"model {model.name!r}: unexpected call arguments "
                        f"{list(args) + list(kwargs)}")
    if not model.built:
        model._build_on_data(inputs)
    return model.predict(inputs, verbose=0)


def _input_from(array: Any, name: str | None = None) -> Any:
    from unity_legion.keras.layers.input_layer import Input
    arr = np.asarray(array)
    if arr.ndim < 1 or arr.dtype.kind not in "biuf":
        raise ValueError(f"cannot build a model from input data of shape {arr.shape} and dtype "
                         f"{arr.dtype}; expected numbers of shape (batch, ...)")
    dtype = {"f": "float32", "b": "bool"}.get(arr.dtype.kind, "int32")
    return Input(shape=arr.shape[1:], dtype=dtype, name=name)


def build_subclassed(model: Any, inputs: Any, args: tuple = (), kwargs: dict | None = None
                     ) -> Any:
    """Trace a subclassed model's call() on keras.Input tensors and build its graph."""
    from unity_legion.keras.layers.input_layer import InputSpec
    tensors = _flat(inputs)
    for t in tensors:
        if not isinstance(t, InputSpec):
            raise TypeError(f"model {model.name!r}: a subclassed model is built on keras.Input "
                            f"tensors or on data, got {t!r}")
    model.__dict__["_composite_built"] = True   # its build() is this; no weights of its own
    out = _run_call(model, inputs, args, dict(kwargs or {}), tensors)
    model._build_graph(inputs, out)
    return out


def _subclassed_layers(model: Any) -> list[Any]:
    """A subclassed model's layers: its sublayers in assignment order, a nested Sequential or
    functional model's layers in its place."""
    from unity_legion.keras.models.model import Model
    out: list[Any] = []
    for sub in _tracked(model):
        if isinstance(sub, Model) and not is_composite(sub):
            out += list(sub.layers)
        elif isinstance(sub, Model):
            out += _subclassed_layers(sub)
        else:
            out.append(sub)
    return out


class SubclassedModelMethods:
    """What a keras.Model subclass with call() gets (Model.__init_subclass__ installs those
    it does not define itself)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            _track(self, value)
        object.__setattr__(self, name, value)

    @property
    def layers(self) -> list[Any]:
        return _subclassed_layers(self)

    def build(self, input_shape: Any) -> None:
        """Build for inputs of `input_shape` (batch first, may be None), as Keras' build."""
        from unity_legion.keras.layers.input_layer import Input
        if self.built:
            return
        many = isinstance(input_shape, list) or (isinstance(input_shape, tuple) and input_shape
                                                  and isinstance(input_shape[0], (tuple, list)))
        shapes = list(input_shape) if many else [input_shape]
        ins = [Input(shape=tuple(s)[1:], batch_size=tuple(s)[0]) for s in shapes]
        build_subclassed(self, ins if many else ins[0])

    def _can_build_now(self) -> bool:
        return bool(self.built)

    def add_weight(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"model {self.name!r}: add_weight on a keras.Model subclass is not "
                        f"supported; create the weight in a keras.layers.Layer subclass and use "
                        f"that layer in the model")

    def _require_built_for_compile(self) -> Any:
        return self._require_built()

    def _build_on_data(self, x: Any) -> None:
        if self.built or x is None:
            return
        arrays = list(x) if isinstance(x, (list, tuple)) else [x]
        ins = [_input_from(a) for a in arrays]
        build_subclassed(self, ins if isinstance(x, (list, tuple)) else ins[0])


def install_model(cls: type) -> None:
    """Give a keras.Model subclass with call() the SubclassedModelMethods it lacks."""
    from unity_legion.keras.models.model import Model
    for name, value in vars(SubclassedModelMethods).items():
        if name.startswith("__") and name != "__setattr__":
            continue
        mine = False
        for k in cls.__mro__:
            if k is Model:
                break
            if name in vars(k) and vars(k)[name] is not value:
                mine = True
        if not mine:
            setattr(cls, name, value)
