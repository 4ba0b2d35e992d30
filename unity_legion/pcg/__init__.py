"""Computation graphs and parallel computation graphs. Pure Python: never imports legate.

The graph is built from operators (`unity_legion.operators`); its tensor shapes, parallel shapes
and configurations are the plain data of `unity_legion.types`.
"""

from unity_legion.pcg.graph import ComputationGraph, GraphError, Node, Tensor

__all__ = ["ComputationGraph", "GraphError", "Node", "Tensor"]
