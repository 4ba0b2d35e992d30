"""Placement of launches on Legate processors (the only place that turns machine views into
processors). A machine view itself is plain data: `unity_legion.types.MachineView`.

`placement` imports legate, so it is not imported here: importing the package stays pure.
"""
