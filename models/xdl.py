"""XDL as in the Unity evaluation (FlexFlow's examples/cpp/XDL defaults).

Inputs: one (batch, bag_size) integer input per embedding table. Each is looked up in its own
table with its bag summed (Embedding with combiner="sum"), the table vectors are concatenated and
go through an MLP: Dense layers without bias, ReLU except the last, which is a sigmoid. Trained with
mean squared error against (batch, mlp[-1]) targets, as the example does.

Full size (the default): 4 tables of 1,000,000 x 64, concatenation (batch, 256), MLP 256-256-256-2 in
FlexFlow's notation, whose first number is the nominal input width: Dense 256, Dense 256, Dense 2.
"""

from __future__ import annotations

from typing import Sequence

from unity_legion import keras
from unity_legion.models.dlrm import embedding_bags


def xdl(tables: int = 4, rows: int | Sequence[int] = 1_000_000, embedding_dim: int = 64,
        bag_size: int = 1, mlp: Sequence[int] = (256, 256, 2), name: str = "xdl") -> keras.Model:
    """Inputs [sparse_0, ..., sparse_{tables-1}]; output (batch, mlp[-1]) in (0, 1)."""
    if not mlp:
        raise ValueError("xdl: the MLP needs at least one layer")
    sparse, vectors = embedding_bags(rows, tables, embedding_dim, bag_size, name)
    x = (keras.layers.Concatenate(axis=-1, name=f"{name}_concat")(vectors) if len(vectors) > 1
         else vectors[0])
    for i, units in enumerate(mlp):
        last = i + 1 == len(mlp)
        x = keras.layers.Dense(units, activation="sigmoid" if last else "relu", use_bias=False,
                               name=f"{name}_mlp_{i}")(x)
    return keras.Model(sparse, x, name=name)
