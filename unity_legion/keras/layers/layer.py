"""The Layer base: a layer turns its input tensors' shapes into an operator of the graph."""

from __future__ import annotations

import contextlib
import itertools
import weakref
import re
from typing import Any, Iterator, Sequence

from unity_legion.keras.layers import tracing
from unity_legion.operators.base import Operator, OperatorError
from unity_legion.types import DataType, TensorShape

_counters: dict[str, itertools.count] = {}


def _snake(name: str) -> str:
    """Keras' automatic layer names: "MaxPooling2D" -> "max_pooling2d", "Conv2D" -> "conv2d"
    (an underscore where a lower-case letter meets a capital, or before a capitalised word)."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z0-9])(?=[A-Z][a-z])", "_", name).lower()


def unique_name(prefix: str) -> str:
    counter = _counters.setdefault(prefix, itertools.count())
    n = next(counter)
    return prefix if n == 0 else f"{prefix}_{n}"


class KerasTensor(tracing.SymbolicOperators):
    """A symbolic tensor: its shape (batch dim None) and the layer call that produced it.
    Python operators on it are keras.ops calls (tracing.SymbolicOperators)."""

    _batch_free = False   # a weight or constant broadcast over the batch (tracing.py)
    _inner: "KerasTensor | None" = None   # what a subclassed layer's output stands for

    def __init__(self, shape: TensorShape, layer: "Layer | None", inputs: Sequence["KerasTensor"],
                 index: int = 0, name: str = "") -> None:
        self.tensor_shape = shape
        self.layer = layer
        self.inputs = tuple(inputs)
        self.index = index
        self.name = name

    @property
    def shape(self) -> tuple[int | None, ...]:
        return self.tensor_shape.dims[1:] if self._batch_free else self.tensor_shape.dims

    @property
    def dtype(self) -> str:
        return self.tensor_shape.dtype.value

    def __repr__(self) -> str:
        return f"<KerasTensor shape={self.shape}, dtype={self.dtype}, name={self.name}>"


class Layer:
    """Base layer. Subclasses implement `make_op(input_shapes)` and, if they have weights,
    list them in `weight_names` in Keras' get_weights order."""

    weight_names: tuple[str, ...] = ()
    num_inputs: int | None = 1   # None: a list of inputs (merge layers)

    def __init__(self, name: str | None = None, trainable: bool = True, dtype: Any = None,
                 **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unknown argument(s) "
                            f"{', '.join(repr(k) for k in kwargs)}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{type(self).__name__}: name must be a string, got {name!r}")
        self.name = name or unique_name(_snake(type(self).__name__))
        self.trainable = trainable
        from unity_legion.keras import mixed_precision
        # Keras 3: a layer's dtype policy is fixed when it is made (the global one by default)
        self.dtype_policy = (mixed_precision.get(dtype) if dtype is not None
                             else mixed_precision.global_policy())
        self.dtype = DataType.of(self.dtype_policy.variable_dtype)   # Keras: layer.dtype
        self.op: Operator | None = None
        self.input_shapes: list[TensorShape] | None = None
        self.outputs: list[KerasTensor] = []
        self._model_ref: Any = None  # weak: the Model whose graph holds this layer's node
        self._node_id: int | None = None

    # --- dtypes (keras.mixed_precision) -------------------------------------------------------
    @property
    def compute_dtype(self) -> str:
        return self.dtype_policy.compute_dtype

    @property
    def variable_dtype(self) -> str:
        return self.dtype_policy.variable_dtype

    # Layers Keras 3 runs in float32 under a half policy (BatchNormalization and
    # LayerNormalization upcast their inputs: "prone to overflow"), casting the result back.
    float32_inside: bool = False

    def op_dtype(self) -> DataType:
        """The dtype this layer's operator computes in: its floating inputs are cast to it."""
        dt = DataType.of(self.compute_dtype)
        return DataType.FLOAT32 if self.float32_inside and dt.is_half else dt

    # --- what subclasses define ---------------------------------------------------------------
    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "trainable": self.trainable}

    # --- calling ------------------------------------------------------------------------------
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if tracing.is_composite(cls):   # a subclass with call(): traced (tracing.py)
            tracing.install_composite(cls)

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        return tracing.layer_call(self, inputs, args, kwargs)

    def build(self, input_shape: Any) -> None:
        """Keras' hook where a subclassed layer makes its weights (add_weight) once its input
        shape is known; run once, before its first call() is traced. Built-in layers get
        theirs from their operator."""

    def _call_leaf(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """One node of this layer's operator over symbolic `inputs`."""
        if args or kwargs:
            raise TypeError(f"layer {self.name!r}: unexpected call arguments "
                            f"{list(args) + list(kwargs)}")
        many = isinstance(inputs, (list, tuple))
        tensors = list(inputs) if many else [inputs]
        if self.num_inputs == 1 and many:
            if len(tensors) != 1:
                raise ValueError(f"layer {self.name!r} takes one input, got {len(tensors)}")
        if self.num_inputs is None and not many:
            raise ValueError(f"layer {self.name!r} takes a list of inputs")
        for t in tensors:
            if not isinstance(t, KerasTensor):
                raise TypeError(f"layer {self.name!r}: inputs must be symbolic tensors from "
                                f"keras.Input or another layer, got {type(t).__name__}; "
                                f"use model.predict() to run a model on data")
        if self.op is not None:
            raise ValueError(f"layer {self.name!r} is already used in a model; calling one layer "
                             f"twice (shared weights) is not supported")
        shapes = [t.tensor_shape for t in tensors]
        try:
            op = self.make_op(shapes)
            outs = op.infer_outputs(shapes)
        except OperatorError as exc:
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}): {exc}") from None
        self.op, self.input_shapes = op, shapes
        self.outputs = [KerasTensor(s, self, tensors, i, f"{self.name}/out{i}") for i, s in enumerate(outs)]
        return self.outputs[0] if len(self.outputs) == 1 else list(self.outputs)

    # --- weights ------------------------------------------------------------------------------
    @property
    def built(self) -> bool:
        return self.op is not None

    @property
    def _model(self) -> Any:
        return self._model_ref() if self._model_ref is not None else None

    @_model.setter
    def _model(self, model: Any) -> None:
        # Weak, so a model and its layers form no reference cycle: a model is freed (with its
        # Legate stores) as soon as the user drops it, never by a garbage collection that could
        # happen to run inside a task.
        self._model_ref = weakref.ref(model) if model is not None else None

    def _require_model(self) -> Any:
        if self._model is None:
            raise ValueError(f"layer {self.name!r} is not part of a built model yet")
        return self._model

    def get_weights(self) -> list[Any]:
        if not self.weight_names:
            return []
        model = self._require_model()
        return [model._get_weight((self._node_id, n)) for n in self._present_weights()]

    def set_weights(self, weights: Sequence[Any]) -> None:
        names = self._present_weights()
        if len(weights) != len(names):
            raise ValueError(f"layer {self.name!r} has {len(names)} weight(s) {names}, "
                             f"got {len(weights)} array(s)")
        model = self._require_model()
        model._set_weights({(self._node_id, n): v for n, v in zip(names, weights)})

    def _present_weights(self) -> list[str]:
        assert self.op is not None and self.input_shapes is not None
        have = {ws.name for ws in self.op.weights(self.input_shapes)}
        return [n for n in self.weight_names if n in have]

    def _weight_keys(self) -> list[tuple[int, str]]:
        """The model's keys of this layer's weights, in get_weights() order."""
        if self.op is None or self._node_id is None:
            return []
        return [(self._node_id, n) for n in self._present_weights()]

    def _frozen_keys(self) -> list[tuple[int, str]]:
        """The keys fit() leaves alone: all of them once `trainable` is False."""
        return [] if self.trainable else self._weight_keys()

    def count_params(self) -> int:
        if self.op is None or self.input_shapes is None:
            return 0
        return sum(ws.shape.num_elements() for ws in self.op.weights(self.input_shapes))

    # --- configs (what .keras files hold) ------------------------------------------------------
    # get_config keys Keras' own class lacks: a .keras config leaves them out while they are
    # None, so real Keras reads the file whenever the layer uses only Keras' features.
    keras_extras: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Layer":
        """The layer get_config() describes (a plain dict: initializers and dtypes by name)."""
        return cls(**config)

    def _keras_call_args(self, inputs: Sequence[KerasTensor]) -> tuple[list[Any], dict[str, Any]]:
        """How Keras records this layer's call in a config: positional and keyword tensors."""
        return ([inputs[0]] if self.num_inputs == 1 else [list(inputs)]), {}

    def _keras_build_config(self) -> dict[str, Any]:
        shapes = [list(s.dims) for s in self.input_shapes or []]
        return {"input_shape": shapes[0] if self.num_inputs == 1 and shapes else shapes}

    # --- weights as Keras variables ---------------------------------------------------------
    # Where each weight sits in Keras' files and paths: weight name -> (sublayer attribute in
    # a weights file, "" for the layer itself; the sublayer's name in variable paths; Keras'
    # variable name). A layer whose Keras twin keeps weights in sublayers overrides both.
    keras_weightless_sublayers: dict[str, str] = {}

    def _keras_weight_places(self) -> dict[str, tuple[str, str, str]]:
        return {n: ("", "", n) for n in self.weight_names}

    def _variables(self) -> list[Any]:
        from unity_legion.keras.variables import Variable
        if not self.built or not self.weight_names:
            return []
        self._require_model()
        return [Variable(self, n) for n in self._present_weights()]

    @property
    def weights(self) -> list[Any]:
        """The layer's variables in get_weights() order (empty before the model is built)."""
        return self._variables()

    @property
    def trainable_weights(self) -> list[Any]:
        return [v for v in self._variables() if v.trainable]

    @property
    def non_trainable_weights(self) -> list[Any]:
        return [v for v in self._variables() if not v.trainable]

    @property
    def variables(self) -> list[Any]:
        return self._variables()

    def __getattr__(self, attr: str) -> Any:
        # Only reached when normal lookup fails: `layer.kernel`, `layer.gamma`, ... as variables.
        if not attr.startswith("_") and attr in type(self).weight_names:
            if not self.built or self._model is None:
                raise AttributeError(f"layer {self.name!r} has no {attr!r} yet: it is created "
                                     f"when the layer is built into a model")
            if attr not in self._present_weights():
                raise AttributeError(f"layer {self.name!r} has no {attr!r} (disabled by its "
                                     f"arguments, e.g. use_bias=False)")
            from unity_legion.keras.variables import Variable
            return Variable(self, attr)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")

    @property
    def output(self) -> KerasTensor:
        if len(self.outputs) != 1:
            raise AttributeError(f"layer {self.name!r} has {len(self.outputs)} outputs")
        return self.outputs[0]

    @property
    def output_shape(self) -> Any:
        shapes = [o.shape for o in self.outputs]
        return shapes[0] if len(shapes) == 1 else shapes

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name}>"


def check_positive_int(layer: str, arg: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{layer}: {arg} must be a positive integer, got {value!r}")
    return value


@contextlib.contextmanager
def op_errors(layer: str) -> Iterator[None]:
    """Re-raise an operator's argument error (OperatorError) as Keras' ValueError, named by the
    layer: "<layer>: <the operator's message>"."""
    try:
        yield
    except OperatorError as exc:
        raise ValueError(f"{layer}: {exc}") from None
