"""DLRM as in the Unity evaluation (FlexFlow's examples/cpp/DLRM defaults).

Inputs: `dense` (batch, dense_features) floats, then one (batch, bag_size) integer input per
embedding table. The dense features go through the bottom MLP; every sparse input is looked up in
its own table and its bag summed (Embedding with combiner="sum": with bag_size 1 this is a plain
lookup, with more it is a multi-hot "embedding bag"). The interaction is a concatenation of the
bottom MLP's output and the table vectors (FlexFlow's example implements only "cat"; the dot
interaction of Facebook's DLRM is not used), followed by the top MLP. Every Dense has no bias, as
in the example; ReLU everywhere except the last top layer, which is a sigmoid. Trained with mean
squared error against (batch, top[-1]) targets, as the example does.

Full size (the default): 4 tables of 1,000,000 x 64, bottom MLP 4-64-64 (Dense 64, Dense 64), the
concatenation (batch, 64 + 4 * 64), top MLP 64-64-2 in FlexFlow's notation, whose first number is
the nominal input width: Dense 64 then Dense 2. FlexFlow stores the tables in half precision;
they are float32 here.
"""

from __future__ import annotations

from typing import Sequence

from unity_legion import keras


def table_rows(rows: int | Sequence[int], tables: int) -> list[int]:
    """One row count per table: `rows` given once for all tables, or one per table."""
    if isinstance(rows, int):
        return [rows] * tables
    rows = list(rows)
    if len(rows) != tables:
        raise ValueError(f"{len(rows)} table sizes given for {tables} tables")
    return rows


def embedding_bags(rows: int | Sequence[int], tables: int, embedding_dim: int, bag_size: int,
                   name: str) -> tuple[list[keras.KerasTensor], list[keras.KerasTensor]]:
    """One (batch, bag_size) integer input per table and its summed embedding vector (the sparse
    side of DLRM and XDL): the inputs and the vectors."""
    sparse, vectors = [], []
    for t, n in enumerate(table_rows(rows, tables)):
        ids = keras.Input(shape=(bag_size,), dtype="int64", name=f"{name}_sparse_{t}")
        vectors.append(keras.layers.Embedding(n, embedding_dim, combiner="sum",
                                              name=f"{name}_table_{t}")(ids))
        sparse.append(ids)
    return sparse, vectors


def dlrm(tables: int = 4, rows: int | Sequence[int] = 1_000_000, embedding_dim: int = 64,
         bag_size: int = 1, dense_features: int = 4, bottom: Sequence[int] = (64, 64),
         top: Sequence[int] = (64, 2), name: str = "dlrm") -> keras.Model:
    """Inputs [dense, sparse_0, ..., sparse_{tables-1}]; output (batch, top[-1]) in (0, 1)."""
    if not top or not bottom:
        raise ValueError("dlrm: the bottom and top MLPs need at least one layer each")
    dense = keras.Input(shape=(dense_features,), name=f"{name}_dense")
    x = dense
    for i, units in enumerate(bottom):
        x = keras.layers.Dense(units, activation="relu", use_bias=False,
                               name=f"{name}_bottom_{i}")(x)
    sparse, vectors = embedding_bags(rows, tables, embedding_dim, bag_size, name)
    x = keras.layers.Concatenate(axis=-1, name=f"{name}_interaction")([x] + vectors)
    for i, units in enumerate(top):
        last = i + 1 == len(top)
        x = keras.layers.Dense(units, activation="sigmoid" if last else "relu", use_bias=False,
                               name=f"{name}_top_{i}")(x)
    return keras.Model([dense] + sparse, x, name=name)
