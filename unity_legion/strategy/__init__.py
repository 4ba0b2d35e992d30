"""Strategies: a parallel configuration and machine view per operator. Pure Python.

A configuration itself (`OpConfig`) is plain data of `unity_legion.types`. `Strategy` (JSON in/out,
validation, explain/draw) and the builtins are loaded on first use, so that importing the
package for `StrategyError` does not load the substitutions and the PCG.
"""

from typing import Any

__all__ = ["BUILTINS", "CompiledPlan", "MachineSpec", "Strategy", "StrategyError", "by_name", "data_parallel",
           "graph_signature", "megatron", "random_strategy", "table_parallel"]

_LAZY = {"MachineSpec": "strategy", "Strategy": "strategy", "StrategyError": "strategy",
         "graph_signature": "strategy", "BUILTINS": "builtin", "by_name": "builtin",
         "data_parallel": "builtin", "megatron": "builtin", "random_strategy": "builtin",
         "table_parallel": "builtin", "CompiledPlan": "plan", "WeightTranslation": "plan"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"unity_legion.strategy.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'unity_legion.strategy' has no attribute {name!r}")
