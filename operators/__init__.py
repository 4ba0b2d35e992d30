"""Operators: one module per family (shape rules, costs, kernels). Importable without legate."""
