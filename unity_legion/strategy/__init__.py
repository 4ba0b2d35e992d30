"""Strategies: a parallel configuration and machine view per operator. Pure Python.

`Strategy` (JSON in/out, validation, explain/draw) and the builtins are loaded on first use:
`config` is imported by the PCG, which `strategy` itself imports.
"""

from typing import Any

from unity_legion.strategy.config import OpConfig

__all__ = ["BUILTINS", "MachineSpec", "OpConfig", "Strategy", "StrategyError", "by_name",
           "data_parallel", "graph_signature", "megatron", "random_strategy", "table_parallel"]

_LAZY = {"MachineSpec": "strategy", "Strategy": "strategy", "StrategyError": "strategy",
         "graph_signature": "strategy", "BUILTINS": "builtin", "by_name": "builtin",
         "data_parallel": "builtin", "megatron": "builtin", "random_strategy": "builtin",
         "table_parallel": "builtin"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"unity_legion.strategy.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'unity_legion.strategy' has no attribute {name!r}")
