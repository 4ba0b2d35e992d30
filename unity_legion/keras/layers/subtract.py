"""keras.layers.Subtract: inputs[0] - inputs[1] for a list of exactly 2 tensors of one shape."""

from __future__ import annotations

from typing import Sequence

from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.base import Operator
from unity_legion.operators.elementwise import Subtract as SubtractOp
from unity_legion.types import TensorShape


class Subtract(Layer):
    num_inputs = None  # a list of inputs

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return SubtractOp()
