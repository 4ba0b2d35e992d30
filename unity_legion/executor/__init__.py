"""Lowering of graphs to Legate task launches: the only package that launches tasks."""
