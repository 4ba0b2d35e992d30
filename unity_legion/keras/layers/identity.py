"""keras.layers.Identity: returns its input unchanged (an identity node in the graph)."""

from __future__ import annotations

from typing import Sequence

from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.base import Operator
from unity_legion.operators.permute import Identity as IdentityOp
from unity_legion.types import TensorShape


class Identity(Layer):
    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return IdentityOp()
