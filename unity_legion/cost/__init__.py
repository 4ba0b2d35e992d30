"""Cost model, machine model and simulator. Pure Python: never imports legate (measuring and
calibrating import the executor inside the functions that run something)."""

from unity_legion.cost.machine import (PRESETS, DeviceSpec, LinkSpec, MachineError, MachineModel,
                                       RuntimeSpec, machine_from, preset)
from unity_legion.cost.measure import MeasuredCost, Measurement
from unity_legion.cost.op_cost import AnalyticCost, CostModel, OpCost
from unity_legion.cost.simulator import SimResult, SimulationError, Simulator

__all__ = ["AnalyticCost", "CostModel", "DeviceSpec", "LinkSpec", "MachineError", "MachineModel",
           "MeasuredCost", "Measurement", "OpCost", "PRESETS", "RuntimeSpec", "SimResult",
           "SimulationError", "Simulator", "machine_from", "preset"]
