"""Kernels the executor itself needs between operators (gradient accumulation, partial sums)."""

from __future__ import annotations

import numpy as np

from .base import Arg, InOut, In, Launch, Ref, SAMPLE, kernel


@kernel
def accumulate(total: InOut, part: In) -> None:
    np.add(total, part, out=total)


def accumulate_launch(total: Ref, part: Ref, rank: int) -> Launch:
    """total += part, both split by samples (gradients of a tensor with several consumers)."""
    return Launch(accumulate, {"total": Arg(total, (SAMPLE,) + (None,) * (rank - 1)),
                               "part": Arg(part, (SAMPLE,) + (None,) * (rank - 1))})


# The launch axis of a partial-sum combine: the leading dim of the store the sums land in.
PARTIAL_ROWS = "partial_rows"
# On one rank the executor adds a whole store's sum over several points as partial sums (one
# piece per point, added by one more launch before any reader) from this many elements on;
# smaller sums (batch statistics) stay Legion ADD reductions, whose reduction instances cost
# little at that size, without the extra launch (a task of its own between adders and readers)
PARTIAL_SUMS_MIN = 4096


@kernel
def add_partials(total: InOut, partials: InOut) -> None:
    """total += the partial sums stacked in `partials` (one per launch point of the launch that
    made them, along its leading dims), which are zeroed for the next contributions."""
    lead = partials.shape[:partials.ndim - total.ndim]
    # (np.ndindex costs ~10 us to make: a kernel of a few small adds spent most of its time there)
    for idx in (range(lead[0]) if len(lead) == 1 else np.ndindex(*lead)):
        np.add(total, partials[idx], out=total)
    partials[...] = 0


def add_partials_launch(total: Ref, partials: Ref, rank: int, grid_dims: int) -> Launch:
    """total += sum of partials (one per point of a `grid_dims`-dim launch grid, stacked ahead
    of total's dims), both split by total's leading dim: each point combines its rows."""
    rows = (PARTIAL_ROWS,) + (None,) * (rank - 1)
    return Launch(add_partials, {"total": Arg(total, rows),
                                 "partials": Arg(partials, (None,) * grid_dims + rows)})
