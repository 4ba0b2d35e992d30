"""Multi-layer perceptrons: a plain classifier MLP (the demo's model)."""

from __future__ import annotations

from typing import Sequence

from unity_legion import keras


def mlp(input_dim: int = 64, hidden: Sequence[int] = (256, 128), classes: int = 10,
        activation: str = "relu", dropout: float = 0.0, name: str = "mlp") -> keras.Model:
    """Dense layers with `activation`, optional dropout after each, and a softmax classifier."""
    inputs = keras.Input(shape=(input_dim,), name=f"{name}_input")
    x = inputs
    for i, width in enumerate(hidden):
        x = keras.layers.Dense(width, activation=activation, name=f"{name}_dense_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{name}_dropout_{i}")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name=f"{name}_classifier")(x)
    return keras.Model(inputs, outputs, name=name)
