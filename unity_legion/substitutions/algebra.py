"""The algebra of chains of parallel ops, as rewrite rules over adjacent pairs.

Every parallel op keeps the logical tensor (sums of partials included); what a chain changes is
the parallel shape. A rule replaces a pair by an equivalent shorter or cheaper sequence: same
output shape, and valid on every input the pair is valid on. `simplify` applies them to a
fixpoint. Note Replicate(k) then Reduce(k) is NOT an identity: our copies and partial sums are
different replica dims (Replicate adds copies; Reduce sums existing partials), so the pair only
commutes (reducing first moves less data). Read FlexFlow's way, where a Reduction sums the
copies a Replicate made, the pair multiplies the tensor by k (see parallel_ref.reduce_copies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from unity_legion.pcg.parallel_ops import FusedParallelOp, ParallelOp


@dataclass(frozen=True)
class ChainRule:
    """`first` then `second` (op types) where `when` holds becomes `build(first, second)`."""

    name: str
    first: str
    second: str
    when: str
    build: str


WHEN: dict[str, Callable[[ParallelOp, ParallelOp], bool]] = {
    "always": lambda a, b: True,
    "same_dim": lambda a, b: a.dim == b.dim,
    "same_dim_and_degree": lambda a, b: a.dim == b.dim and a.degree == b.degree,
    "same_dim_first_multiple": lambda a, b: a.dim == b.dim and a.degree != b.degree
    and a.degree % b.degree == 0,
    "same_dim_second_multiple": lambda a, b: a.dim == b.dim and a.degree != b.degree
    and b.degree % a.degree == 0,
}

BUILD: dict[str, Callable[[ParallelOp, ParallelOp], tuple[ParallelOp, ...]]] = {
    "nothing": lambda a, b: (),
    "merge_degrees": lambda a, b: (type(a)(a.dim, a.degree * b.degree),)
    if hasattr(a, "dim") else (type(a)(a.degree * b.degree),),
    "first_rest": lambda a, b: (type(a)(a.dim, a.degree // b.degree),),
    "second_rest": lambda a, b: (type(b)(b.dim, b.degree // a.degree),),
    "swap": lambda a, b: (b, a),
}

CHAIN_RULES: tuple[ChainRule, ...] = (
    ChainRule("partition_combine_cancel", "partition", "combine", "same_dim_and_degree", "nothing"),
    ChainRule("combine_partition_cancel", "combine", "partition", "same_dim_and_degree", "nothing"),
    ChainRule("partition_partition_fuse", "partition", "partition", "same_dim", "merge_degrees"),
    ChainRule("combine_combine_fuse", "combine", "combine", "same_dim", "merge_degrees"),
    ChainRule("replicate_replicate_fuse", "replicate", "replicate", "always", "merge_degrees"),
    ChainRule("reduce_reduce_fuse", "reduce", "reduce", "always", "merge_degrees"),
    # a partial undo: partition(d, 6) then combine(d, 2) is partition(d, 3), and so on
    ChainRule("partition_combine_partial", "partition", "combine", "same_dim_first_multiple",
              "first_rest"),
    ChainRule("partition_combine_overshoot", "partition", "combine", "same_dim_second_multiple",
              "second_rest"),
    ChainRule("combine_partition_partial", "combine", "partition", "same_dim_first_multiple",
              "first_rest"),
    ChainRule("combine_partition_overshoot", "combine", "partition", "same_dim_second_multiple",
              "second_rest"),
    # not a cancellation (see the module note): sum the partials before copying them
    ChainRule("replicate_reduce_commute", "replicate", "reduce", "always", "swap"),
)


def _flatten(chain: Sequence[ParallelOp]) -> list[ParallelOp]:
    out: list[ParallelOp] = []
    for op in chain:
        out.extend(op.ops if isinstance(op, FusedParallelOp) else [op])
    return out


def rewrite_once(chain: Sequence[ParallelOp], rules: Sequence[ChainRule] = CHAIN_RULES
                 ) -> tuple[list[ParallelOp], str] | None:
    """The chain after the first rule that applies at the leftmost position, and its name."""
    ops = _flatten(chain)
    for i in range(len(ops) - 1):
        a, b = ops[i], ops[i + 1]
        for r in rules:
            if a.op_type == r.first and b.op_type == r.second and WHEN[r.when](a, b):
                return ops[:i] + list(BUILD[r.build](a, b)) + ops[i + 2:], r.name
    return None


def simplify(chain: Sequence[ParallelOp], rules: Sequence[ChainRule] = CHAIN_RULES
             ) -> tuple[ParallelOp, ...]:
    """Apply the chain rules until none applies (each step shortens the chain or moves a Reduce
    left, so this ends)."""
    ops = _flatten(chain)
    for _ in range(4 * len(ops) * len(ops) + 4):
        step = rewrite_once(ops, rules)
        if step is None:
            return tuple(ops)
        ops = step[0]
    raise RuntimeError(f"simplify did not reach a fixpoint on {ops}")  # a rule set bug
