from unity_legion.keras.models.model import Model
from unity_legion.keras.models.sequential import Sequential


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):  # noqa: A002
    """keras.models.load_model: a model from a `.keras` file (see keras.saving)."""
    from unity_legion.keras.saving import load_model as load
    return load(filepath, custom_objects, compile, safe_mode)


__all__ = ["Model", "Sequential", "load_model"]
