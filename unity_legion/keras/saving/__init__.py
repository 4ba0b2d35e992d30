"""Keras 3's file formats: weights files (`*.weights.h5`, weights_h5.py) and whole models
(`*.keras`, keras_zip.py), with the configs they hold (serialization.py). The functions take a
built model, so callbacks and other code can call them directly."""

from __future__ import annotations

from typing import Callable

from unity_legion.keras.saving.atomic import write_atomically
from unity_legion.keras.saving.keras_zip import ModelFileError, load_model, save_model
from unity_legion.keras.saving.registry import register_layer
from unity_legion.keras.saving.serialization import ConfigError
from unity_legion.keras.saving.weights_h5 import WeightsFileError


def register_keras_serializable(package: str = "Custom", name: str | None = None
                                ) -> Callable[[type], type]:
    """Keras' decorator: the class (a layer or a subclassed model) becomes loadable from
    `.keras` configs by its name, and by "package>name" as Keras records it."""
    def register(cls: type) -> type:
        register_layer(cls, name or cls.__name__, package)
        return cls
    return register


__all__ = ["ConfigError", "ModelFileError", "WeightsFileError", "load_model",
           "register_keras_serializable", "register_layer", "save_model", "write_atomically"]
