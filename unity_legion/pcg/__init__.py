"""Computation graphs and (later) parallel computation graphs. Pure Python: never imports legate.

`tensor` is imported eagerly; the graph lazily, because operators (which the graph uses) import
`unity_legion.pcg.tensor` themselves.
"""

from typing import Any

from unity_legion.pcg.tensor import DataType, TensorShape

__all__ = ["ComputationGraph", "DataType", "GraphError", "Node", "Tensor", "TensorShape"]


def __getattr__(name: str) -> Any:
    if name in ("ComputationGraph", "GraphError", "Node", "Tensor"):
        from unity_legion.pcg import graph

        return getattr(graph, name)
    raise AttributeError(f"module 'unity_legion.pcg' has no attribute {name!r}")
