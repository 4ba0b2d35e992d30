"""Small computation graphs several tests plan and price (imported by name, as op_check is)."""

from __future__ import annotations

from unity_legion.operators.attention import MultiHeadAttention
from unity_legion.operators.linear import Linear
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.types import TensorShape


def self_attention(seq: int, width: int, heads: int, classes: int) -> ComputationGraph:
    """x -> dense -> self-attention reading the dense's output as query and value -> dense: two
    edges from one producer into one consumer."""
    g = ComputationGraph()
    x = g.add_input(TensorShape((None, seq, width)), "x")
    (h,) = g.add_node(Linear(width), [x], "embed")
    (a,) = g.add_node(MultiHeadAttention(num_heads=heads, key_dim=width // heads), [h, h],
                      "attention")
    g.add_node(Linear(classes), [a], "head")
    return g
