"""The model zoo: one function per model, each returning a unity_legion.keras.Model."""

from unity_legion.models.mlp import mlp

__all__ = ["mlp"]
