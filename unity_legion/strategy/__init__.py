"""Strategies: a parallel configuration and machine view per operator. Pure Python."""

from unity_legion.strategy.config import OpConfig

__all__ = ["OpConfig"]
