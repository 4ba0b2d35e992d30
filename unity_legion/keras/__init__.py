"""A Keras 3-style API whose models train through unity_legion on Legate."""

from unity_legion.keras import callbacks, layers, losses, metrics, mixed_precision, ops, optimizers, utils
from unity_legion.keras.layers import Input, KerasTensor, Layer
from unity_legion.keras.models import Model, Sequential
from unity_legion.keras import saving
from unity_legion.keras.variables import Variable

__all__ = ["Input", "KerasTensor", "Layer", "Model", "Sequential", "callbacks", "layers", "losses",
           "metrics", "mixed_precision", "ops", "optimizers", "saving", "utils", "Variable"]
