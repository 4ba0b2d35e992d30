"""Layer classes by name, for configs: every layer class `keras.layers` exports, plus any a user
registers (or passes as custom_objects), so a new layer works in `.keras` files once it defines
get_config (and its constructor accepts that config)."""

from __future__ import annotations

from typing import Any

_REGISTERED: dict[str, type] = {}


def register_layer(cls: type, name: str | None = None) -> type:
    """Make `cls` loadable from configs under `name` (default: its class name)."""
    _REGISTERED[name or cls.__name__] = cls
    return cls


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
