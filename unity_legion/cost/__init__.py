"""Cost model, machine model and simulator. Pure Python: never imports legate."""

from unity_legion.cost.machine import (PRESETS, DeviceSpec, LinkSpec, MachineError, MachineModel,
                                       machine_from, preset)
from unity_legion.cost.op_cost import AnalyticCost, CostModel, OpCost
from unity_legion.cost.simulator import SimResult, SimulationError, Simulator

__all__ = ["AnalyticCost", "CostModel", "DeviceSpec", "LinkSpec", "MachineError", "MachineModel",
           "OpCost", "PRESETS", "SimResult", "SimulationError", "Simulator", "machine_from",
           "preset"]
