from unity_legion.keras.models.model import Model
from unity_legion.keras.models.sequential import Sequential

__all__ = ["Model", "Sequential"]
