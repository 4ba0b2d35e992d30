"""keras.Variable as a layer hands it out: a named view of one weight of a built model.

The values live in the model (host arrays before compile, the executor's stores after), so a
variable holds no copy: `numpy()` reads the current value and `assign()` writes through the model
with the same checks as `set_weights` (shape, numbers, finite), whatever the executor.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Variable:
    """One weight of a layer: `layer` owns it, `key` is its name among the layer's weights."""

    def __init__(self, layer: Any, key: str) -> None:
        self._layer = layer
        self._key = key

    # --- identity --------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Keras' variable name, e.g. "kernel" (also for MultiHeadAttention's "query/kernel")."""
        return self._place()[2]

    @property
    def path(self) -> str:
        """"<layer>/<name>", with the Keras sublayer in between where Keras has one."""
        _, sub_name, short = self._place()
        return "/".join(p for p in (self._layer.name, sub_name, short) if p)

    def _place(self) -> tuple[str, str, str]:
        return self._layer._keras_weight_places()[self._key]

    def _spec(self) -> Any:
        layer = self._layer
        return layer._require_model()._spec((layer._node_id, self._key))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._spec().shape.dims)

    @property
    def dtype(self) -> str:
        return self._spec().shape.dtype.value

    @property
    def trainable(self) -> bool:
        """False for weights no gradient updates (BatchNormalization's moving statistics) and,
        as in Keras, for every weight of a layer set `trainable = False`."""
        return bool(self._spec().trainable) and bool(self._layer.trainable)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    # --- values ------------------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        layer = self._layer
        return layer._require_model()._get_weight((layer._node_id, self._key))

    @property
    def value(self) -> np.ndarray:
        return self.numpy()

    def assign(self, value: Any) -> "Variable":
        arr = value.numpy() if isinstance(value, Variable) else value
        layer = self._layer
        layer._require_model()._set_weights({(layer._node_id, self._key): arr})
        return self

    def assign_add(self, value: Any) -> "Variable":
        return self.assign(self.numpy() + np.asarray(value))

    def assign_sub(self, value: Any) -> "Variable":
        return self.assign(self.numpy() - np.asarray(value))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    def __eq__(self, other: object) -> bool:
        # Two views of the same weight are the same variable (layer.kernel is made on demand).
        return (isinstance(other, Variable) and other._layer is self._layer
                and other._key == self._key)

    def __hash__(self) -> int:
        return hash((id(self._layer), self._key))

    def __repr__(self) -> str:
        try:
            return f"<Variable path={self.path}, shape={self.shape}, dtype={self.dtype}>"
        except ValueError:
            return f"<Variable path={self.path} (layer not in a built model)>"
