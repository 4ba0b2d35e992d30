"""Profiling: what runs things to measure them, above the executor (through its public profiling
API) and below the user's API. `measure`: an operator's real tasks timed (`measure_op`), offered
to the cost model as `LocalMeasurer` (`measured_cost()`); `calibrate`: the local machine's
figures (`local_machine`, `local_calibration`, `measure_cores`). The cost model
(`unity_legion.cost`) only reads what these measure: whoever builds a measuring cost model hands
it a measurer.

Its layer: above the executor (it is one of its clients, through the public API only, and the
executor never needs it), below the user's API (a trainer or a script may hand its measurer to
the search).

Importing this package starts nothing: the executor (and legate) are imported by the functions
that run something."""

from unity_legion.profiling.calibrate import local_calibration, local_machine, measure_cores
from unity_legion.profiling.measure import LocalMeasurer, job_fingerprint, measure_op, measured_cost

# (the submodules keep their names: `calibrate.calibrate` runs every probe)
__all__ = ["LocalMeasurer", "job_fingerprint", "local_calibration", "local_machine",
           "measure_cores", "measure_op", "measured_cost"]
