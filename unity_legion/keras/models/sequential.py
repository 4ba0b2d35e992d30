"""keras.Sequential: a stack of single-input layers, built into a functional model."""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion.keras import data as data_utils
from unity_legion.keras.layers import tracing
from unity_legion.keras.layers.input_layer import Input, InputLayer, InputSpec
from unity_legion.keras.layers.layer import Layer, _snake, unique_name
from unity_legion.keras.models.model import Model


class Sequential(Model):
    def __init__(self, layers: Sequence[Any] | None = None, name: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name=name or unique_name("sequential"), **kwargs)
        self._stack: list[Layer] = []
        self._input: InputSpec | None = None
        for item in layers or []:
            self.add(item)

    def add(self, layer: Any) -> None:
        if isinstance(layer, InputLayer):   # as Keras: its tensor, not one of `layers`
            layer = layer.output
        if isinstance(layer, InputSpec):
            if self._stack or self._input is not None:
                raise ValueError("Sequential: an Input can only be the first item")
            self._input = layer
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add: expected a layer, got {layer!r}")
        if layer.num_inputs != 1:
            raise TypeError(f"Sequential: layer {layer.name!r} takes several inputs; use the "
                            f"functional API (keras.Model(inputs, outputs))")
        if any(l.name == layer.name for l in self._stack):
            raise ValueError(f"Sequential: a layer named {layer.name!r} is already in the model")
        self._stack.append(layer)
        if self.built or self._input is not None:
            self._rebuild()

    def pop(self) -> Layer:
        if not self._stack:
            raise TypeError("Sequential.pop: there are no layers in the model")
        layer = self._stack.pop()
        if self.built:
            self._rebuild()
        return layer

    @property
    def layers(self) -> list[Layer]:
        return list(self._stack)

    def _keras_members(self) -> list[tuple[str, str, Layer | None]]:
        # Keras saves a Sequential's layers only, not its InputLayer
        return [(_snake(type(l).__name__), l.name, l) for l in self._stack]

    def build(self, input_shape: Sequence[int | None] | None = None) -> None:
        """Build for inputs of `input_shape` (batch dimension first, may be None)."""
        if input_shape is not None:
            dims = tuple(input_shape)
            self._input = Input(shape=dims[1:], batch_size=dims[0])
        if self._input is None:
            raise ValueError("Sequential.build: no input shape known; add a keras.Input first or "
                             "call build(input_shape)")
        self._rebuild()

    def _rebuild(self) -> None:
        """(Re)create the graph; layers that were already built keep their weights."""
        if self._input is None:
            return
        if self.compiled and self._pending_compile is None:
            raise RuntimeError("Sequential: layers cannot be added or removed after compile()")
        old = {}
        if self.built:
            for layer in self._stack:
                if layer._model is self and layer.built:
                    old[layer.name] = layer.get_weights()
        for layer in self._stack:
            layer.op, layer.outputs, layer._model, layer._node_id = None, [], None, None
            tracing.reset(layer)   # a subclassed layer is traced again
        self._input = Input(shape=self._input.shape[1:], batch_size=self._input.shape[0],
                            dtype=self._input.dtype, name=self._input.name)
        t: Any = self._input
        for layer in self._stack:
            t = layer(t)
        if not self._stack:
            self._graph = None
            return
        self._build_graph(self._input, t)
        for layer in self._stack:
            if layer.name in old:
                try:
                    layer.set_weights(old[layer.name])
                except ValueError:
                    pass  # the layer's input shape changed: it starts from fresh weights

    def _require_built_for_compile(self) -> Any:
        if not self.built:
            self._rebuild()
        return self._require_built()

    def _can_build_now(self) -> bool:
        return self.built or self._input is not None

    def _build_on_data(self, x: Any) -> None:
        """Keras builds a Sequential without an Input from the first data it sees: inputs of
        shape (None,) + x.shape[1:] (float32)."""
        if self._input is not None or not self._stack or x is None:
            return
        arr = data_utils.as_list(x, ["input"], "input")[0]
        if arr.ndim < 2 or arr.dtype.kind not in "biuf":
            raise ValueError(f"Sequential: cannot build the model from input data of shape "
                             f"{arr.shape} and dtype {arr.dtype}; expected numbers of shape "
                             f"(batch, features...)")
        self.build((None,) + arr.shape[1:])
