"""Keras 3-style layers, one per file."""

from unity_legion.keras.layers.activation import Activation
from unity_legion.keras.layers.add import Add
from unity_legion.keras.layers.concatenate import Concatenate
from unity_legion.keras.layers.dense import Dense
from unity_legion.keras.layers.dropout import Dropout
from unity_legion.keras.layers.embedding import Embedding
from unity_legion.keras.layers.flatten import Flatten
from unity_legion.keras.layers.input_layer import Input
from unity_legion.keras.layers.layer import KerasTensor, Layer
from unity_legion.keras.layers.multiply import Multiply
from unity_legion.keras.layers.reshape import Reshape
from unity_legion.keras.layers.subtract import Subtract

__all__ = ["Activation", "Add", "Concatenate", "Dense", "Dropout", "Embedding", "Flatten", "Input",
           "KerasTensor", "Layer", "Multiply", "Reshape", "Subtract"]
