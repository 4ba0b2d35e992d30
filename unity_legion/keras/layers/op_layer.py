"""The graph node of one operator made by keras.ops or a Python operator on symbolic tensors.

It is a Layer (so the model builds, names, weighs and parallelises it as any other), but not a
Keras layer: like Keras' operations it is left out of `model.layers`. Its only possible weight is
a Parameter's (`Layer.add_weight`, see keras/layers/tracing.py).
"""

from __future__ import annotations

from typing import Sequence

from unity_legion.keras.layers.layer import Layer, unique_name
from unity_legion.operators.base import Operator
from unity_legion.operators.source import Parameter
from unity_legion.types import TensorShape


class OpLayer(Layer):
    num_inputs = None   # called with the list of the operator's inputs

    def __init__(self, op: Operator, name: str) -> None:
        super().__init__(name=unique_name(name))
        self._fixed_op = op
        # a Parameter's weight does not depend on its input's shape
        self.weight_names = (tuple(ws.name for ws in op.weights([TensorShape((None,))]))
                             if isinstance(op, Parameter) else ())

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return self._fixed_op
