"""The Layer base: a layer turns its input tensors' shapes into an operator of the graph."""

from __future__ import annotations

import itertools
import weakref
import re
from typing import Any, Sequence

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


class KerasTensor:
    """A symbolic tensor: its shape (batch dim None) and the layer call that produced it."""

    def __init__(self, shape: TensorShape, layer: "Layer | None", inputs: Sequence["KerasTensor"],
                 index: int = 0, name: str = "") -> None:
        self.tensor_shape = shape
        self.layer = layer
        self.inputs = tuple(inputs)
        self.index = index
        self.name = name

    @property
    def shape(self) -> tuple[int | None, ...]:
        return self.tensor_shape.dims

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
        self.dtype = DataType.of(dtype) if dtype is not None else DataType.FLOAT32
        self.op: Operator | None = None
        self.input_shapes: list[TensorShape] | None = None
        self.outputs: list[KerasTensor] = []
        self._model_ref: Any = None  # weak: the Model whose graph holds this layer's node
        self._node_id: int | None = None

    # --- what subclasses define ---------------------------------------------------------------
    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "trainable": self.trainable}

    # --- calling ------------------------------------------------------------------------------
    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
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

    def count_params(self) -> int:
        if self.op is None or self.input_shapes is None:
            return 0
        return sum(ws.shape.num_elements() for ws in self.op.weights(self.input_shapes))

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
