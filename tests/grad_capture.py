"""An update rule for tests that records each weight's gradient instead of applying it.

The executor's update kernels consume the weight gradients (they zero them for the next step's
ADD reductions), so a test that wants the gradients of a whole train_step (loss included) runs
the step with this rule: each weight's gradient is copied into the slot "captured" (read back with
`captured_grads`), the weight is left as it is, and the gradient is zeroed as every rule must.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from unity_legion.operators.base import Arg, InOut, Launch, kernel
from unity_legion.operators.optimizers import GRAD, ROWS, UpdateRule, slot


@kernel
def capture_grad(grad: InOut, captured: InOut) -> None:
    captured[...] = grad
    grad[...] = 0


@dataclass(frozen=True)
class CaptureGrads(UpdateRule):
    slots: ClassVar[tuple[str, ...]] = ("captured",)

    def launch(self, rank: int, lr: float, step: int, split=None) -> Launch:
        if split is None:
            split = (ROWS,) + (None,) * (rank - 1) if rank else ()
        return Launch(capture_grad, {"grad": Arg(GRAD, split),
                                     "captured": Arg(slot("captured"), split)})


def captured_grads(ex: Any) -> dict[tuple[int, str], np.ndarray]:
    """Weight key -> the gradient the last train_step with CaptureGrads computed."""
    state = ex.optimizer_state()
    return {key: state[f"{ex.graph.nodes[key[0]].name}/{key[1]}/captured"]
            for key, _ in ex.weight_specs() if ex.trainable(key, _)}
