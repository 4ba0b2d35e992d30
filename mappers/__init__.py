"""Machine views and their placement on Legate processors (the only place that does that)."""

from unity_legion.mappers.machine_view import MachineView

__all__ = ["MachineView"]
