"""Cost model, machine model and simulator. Pure Python: never imports legate nor the executor.
What runs operators or the local machine to measure them is `unity_legion.profiling`, above the
executor; `MeasuredCost` reads measurements and asks an injected `OpMeasurer` for new ones."""

from unity_legion.cost.machine import (PRESETS, DeviceSpec, LinkSpec, MachineError, MachineModel,
                                       RuntimeSpec, machine_from, preset)
from unity_legion.cost.measure import MeasuredCost, Measurement, OpMeasurer
from unity_legion.cost.op_cost import AnalyticCost, CostModel, OpCost
from unity_legion.cost.simulator import SimResult, SimulationError, Simulator

__all__ = ["AnalyticCost", "CostModel", "DeviceSpec", "LinkSpec", "MachineError", "MachineModel",
           "MeasuredCost", "Measurement", "OpCost", "OpMeasurer", "PRESETS", "RuntimeSpec",
           "SimResult", "SimulationError", "Simulator", "machine_from", "preset"]
