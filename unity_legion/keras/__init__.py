"""A Keras 3-style API whose models train through unity_legion on Legate."""

from unity_legion.keras import callbacks, layers, losses, metrics, optimizers, utils
from unity_legion.keras.layers import Input, KerasTensor, Layer
from unity_legion.keras.models import Model, Sequential

__all__ = ["Input", "KerasTensor", "Layer", "Model", "Sequential", "callbacks", "layers", "losses",
           "metrics", "optimizers", "utils"]
