"""keras.layers.Add: adds a list of at least 2 tensors of the same shape, elementwise."""

from __future__ import annotations

from typing import Sequence

from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.base import Operator
from unity_legion.operators.elementwise import Add as AddOp
from unity_legion.types import TensorShape


class Add(Layer):
    num_inputs = None  # a list of inputs

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return AddOp()
