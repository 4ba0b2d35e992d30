"""keras.layers.Embedding: integer indices (batch, ...) -> vectors (batch, ..., output_dim).

combiner="sum" or "mean" (not in Keras 3; TF 1's embedding_lookup_sparse and torch's
EmbeddingBag have it) makes it a bag lookup: the last input axis holds a bag of indices whose
vectors are summed or averaged, (batch, ..., bag) -> (batch, ..., output_dim), as DLRM's
multi-hot sparse features need.

Indices outside [0, input_dim) are reported before training launches anything (the operator's
check_input_values). Regularizers, constraints, masking and LoRA are not supported: passing
them raises a clear error rather than silently ignoring them.
"""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion import initializers
from unity_legion.keras.layers.layer import Layer, check_positive_int
from unity_legion.operators.base import Operator
from unity_legion.operators.embedding import COMBINERS
from unity_legion.operators.embedding import Embedding as EmbeddingOp
from unity_legion.types import TensorShape


class Embedding(Layer):
    weight_names = ("embeddings",)
    keras_extras = ("combiner",)   # ours only: left out of .keras configs while None

    def __init__(self, input_dim: int, output_dim: int, embeddings_initializer: str = "uniform",
                 embeddings_regularizer: Any = None, embeddings_constraint: Any = None,
                 mask_zero: bool = False, lora_rank: int | None = None,
                 combiner: str | None = None, **kwargs: Any) -> None:
        kwargs.pop("input_length", None)  # deprecated in Keras 3 and ignored there too
        super().__init__(**kwargs)
        self.input_dim = check_positive_int("Embedding", "input_dim", input_dim)
        self.output_dim = check_positive_int("Embedding", "output_dim", output_dim)
        self.embeddings_initializer = initializers.check(embeddings_initializer)
        if combiner not in COMBINERS:
            raise ValueError(f"Embedding: combiner must be one of {COMBINERS}, got {combiner!r}")
        self.combiner = combiner
        unsupported = {"embeddings_regularizer": embeddings_regularizer,
                       "embeddings_constraint": embeddings_constraint,
                       "mask_zero": mask_zero, "lora_rank": lora_rank}
        for arg, value in unsupported.items():
            if value:
                raise ValueError(f"Embedding: {arg}={value!r} is not supported")

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        return EmbeddingOp(self.input_dim, self.output_dim, self.embeddings_initializer, self.dtype,
                           self.combiner)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"input_dim": self.input_dim, "output_dim": self.output_dim,
                                       "embeddings_initializer": self.embeddings_initializer,
                                       "combiner": self.combiner}
