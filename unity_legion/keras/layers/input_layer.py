"""keras.Input and keras.layers.InputLayer: a symbolic input tensor (the batch dimension is
left unknown) and the weightless layer that stands behind it.

The graph's input is the tensor (InputSpec); the InputLayer is only what Keras 3 shows of it:
a functional model lists one per input in `model.layers` (a Sequential does not), so layer
counts, `get_layer(index=...)` and files agree with Keras. It has no operator and no weights.
"""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion.keras.layers.layer import KerasTensor, Layer, unique_name
from unity_legion.types import DataType, TensorShape


class InputSpec(KerasTensor):
    """The tensor returned by `Input`: a graph input rather than a layer's output."""

    _input_layer: "InputLayer | None" = None   # made on first use (input_layer_of)


def _spec(dims: tuple[int | None, ...], batch_size: int | None, dtype: Any,
          name: str | None) -> InputSpec:
    for d in dims:
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d <= 0):
            raise ValueError(f"Input: shape {dims} must contain positive integers or None")
    dt = DataType.of(dtype) if dtype is not None else DataType.FLOAT32
    return InputSpec(TensorShape((batch_size,) + dims, dt), None, (), 0,
                     name or unique_name("input_layer"))


def Input(shape: Sequence[int | None] | int = None, batch_size: int | None = None,
          dtype: Any = None, name: str | None = None, **kwargs: Any) -> KerasTensor:
    if kwargs:
        raise TypeError(f"Input: unknown argument(s) {', '.join(repr(k) for k in kwargs)}")
    if shape is None:
        raise ValueError("Input: shape is required, e.g. Input(shape=(784,))")
    if isinstance(shape, int):
        shape = (shape,)
    return _spec(tuple(shape), batch_size, dtype, name)


class InputLayer(Layer):
    """keras.layers.InputLayer(shape=... | batch_shape=..., batch_size, dtype, name). Its
    `output` is the input tensor (`keras.Input` makes one of these behind its tensor)."""

    num_inputs = 0

    def __init__(self, shape: Sequence[int | None] | int | None = None,
                 batch_size: int | None = None, dtype: Any = None, sparse: bool | None = None,
                 ragged: bool | None = None, batch_shape: Sequence[int | None] | None = None,
                 input_tensor: Any = None, optional: bool = False, name: str | None = None,
                 **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(f"InputLayer: unknown argument(s) "
                            f"{', '.join(repr(k) for k in kwargs)}")
        for arg, value in (("sparse", sparse), ("ragged", ragged), ("optional", optional)):
            if value:
                raise NotImplementedError(f"InputLayer: {arg}=True inputs are not supported")
        if input_tensor is not None:
            raise NotImplementedError("InputLayer: input_tensor is not supported; use "
                                      "keras.Input(shape=...) for a new input")
        if (shape is None) == (batch_shape is None):
            raise ValueError("InputLayer: give exactly one of shape (without the batch "
                             "dimension) or batch_shape (with it)")
        if batch_shape is not None:
            full = tuple(batch_shape)
            if not full:
                raise ValueError("InputLayer: batch_shape must include the batch dimension")
            if batch_size is not None and full[0] not in (None, batch_size):
                raise ValueError(f"InputLayer: batch_size={batch_size} contradicts "
                                 f"batch_shape={full}")
            dims, batch = full[1:], full[0] if full[0] is not None else batch_size
        else:
            dims, batch = ((shape,) if isinstance(shape, int) else tuple(shape)), batch_size
        self._attach(_spec(dims, batch, dtype, name))

    @classmethod
    def _behind(cls, spec: InputSpec) -> "InputLayer":
        """The InputLayer of a tensor made by keras.Input."""
        layer = cls.__new__(cls)
        layer._attach(spec)
        return layer

    def _attach(self, spec: InputSpec) -> None:
        # the tensor's own name: an automatic one already came from the "input_layer" counter
        Layer.__init__(self, name=spec.name, dtype=spec.tensor_shape.dtype)
        self._input_spec = spec
        self.outputs = [spec]
        spec._input_layer = self

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"InputLayer {self.name!r} is not called on tensors; use its `output` "
                        f"(or keras.Input) as a model's input")

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Any:
        raise TypeError(f"InputLayer {self.name!r} has no operator: the graph's input stands "
                        f"for it")

    @property
    def built(self) -> bool:   # as Keras': an input is built from the start
        return True

    @property
    def output(self) -> InputSpec:
        return self._input_spec

    @property
    def batch_shape(self) -> tuple[int | None, ...]:
        return self._input_spec.shape

    @property
    def output_shape(self) -> tuple[int | None, ...]:
        return self._input_spec.shape

    def _present_weights(self) -> list[str]:
        return []

    def count_params(self) -> int:
        return 0

    def get_config(self) -> dict[str, Any]:
        return {"batch_shape": self.batch_shape, "dtype": self.dtype.value, "sparse": False,
                "ragged": False, "name": self.name, "optional": False}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "InputLayer":
        return cls(**config)


def input_layer_of(spec: InputSpec) -> InputLayer:
    """The InputLayer behind a keras.Input tensor (made once, then kept with the tensor)."""
    if spec._input_layer is None:
        InputLayer._behind(spec)
    assert spec._input_layer is not None
    return spec._input_layer
