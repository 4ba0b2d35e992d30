"""Kernels the executor itself needs between operators (gradient accumulation)."""

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
