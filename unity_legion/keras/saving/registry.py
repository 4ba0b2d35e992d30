"""Layer and model classes by name, for configs: every layer class `keras.layers` exports, plus
any a user registers (or passes as custom_objects), so a new layer or a subclassed model works
in `.keras` files once it defines get_config (and its constructor accepts that config).

A class registered with Keras' decorator is known by "package>Name" (what Keras writes as a
config's registered_name) and by its bare class name (what older files and custom_objects use).
"""

from __future__ import annotations

from typing import Any

_REGISTERED: dict[str, type] = {}
_NAME_OF: dict[type, str] = {}   # class -> the registered_name files carry for it


def register_layer(cls: type, name: str | None = None, package: str | None = None) -> type:
    """Make `cls` loadable from configs under `name` (default: its class name), and under
    "package>name" when a package is given."""
    bare = name or cls.__name__
    _REGISTERED[bare] = cls
    if package:
        _REGISTERED[f"{package}>{bare}"] = cls
    _NAME_OF[cls] = f"{package}>{bare}" if package else bare
    return cls


def registered_name(cls: type) -> str:
    """The name a config records for `cls` (its class name when it is not registered)."""
    return _NAME_OF.get(cls, cls.__name__)


def custom_class(class_name: str, registered: str | None,
                 custom_objects: dict[str, Any] | None) -> type | None:
    """A user's class by its registered name or class name, or None."""
    for key in (registered, class_name):
        if key and custom_objects and key in custom_objects:
            return custom_objects[key]
    for key in (registered, class_name):
        if key and key in _REGISTERED:
            return _REGISTERED[key]
    return None


def layer_class(class_name: str, custom_objects: dict[str, Any] | None = None) -> type:
    from unity_legion.keras import layers
    from unity_legion.keras.layers.layer import Layer

    if custom_objects and class_name in custom_objects:
        return custom_objects[class_name]
    if class_name in _REGISTERED:
        return _REGISTERED[class_name]
    found = getattr(layers, class_name, None)
    if isinstance(found, type) and issubclass(found, Layer) and found is not Layer:
        return found
    known = sorted(n for n in dir(layers) if isinstance(getattr(layers, n), type)
                   and issubclass(getattr(layers, n), Layer) and n != "Layer")
    raise ValueError(f"unknown layer class {class_name!r}: it is neither a layer of "
                     f"unity_legion.keras.layers ({', '.join(known)}) nor registered; pass "
                     f"custom_objects={{{class_name!r}: TheClass}} or call "
                     f"keras.saving.register_keras_serializable")
