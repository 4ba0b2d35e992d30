"""Place launches on processors: a machine view becomes a Legate scope over a processor range."""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

from legate.core import Scope, TaskTarget, get_legate_runtime

from unity_legion.types import MachineView

_TARGET = {"cpu": TaskTarget.CPU, "gpu": TaskTarget.GPU}


@functools.cache
def _processors(device_type: str, lo: int, hi: int) -> Any:
    machine = get_legate_runtime().get_machine().only(_TARGET[device_type])
    MachineView(device_type, lo, (hi - lo,), (1,)).check_fits(machine.count(_TARGET[device_type]))
    return machine[lo:hi]


@contextlib.contextmanager
def placed(view: MachineView) -> Iterator[None]:
    """Launches inside run only on the processors of `view`'s contiguous span.

    Legate spreads a launch's points in blocks over the scope's processors, so a contiguous view
    whose size equals the launch's point count puts point i on device start + i. A view that is
    no contiguous range (strided, 2-D in another order) has no such scope: the executor issues
    its launches a point (or a run of consecutive devices) at a time, each placed on the view
    of its own devices (`MachineView.point_devices`).
    """
    lo, hi = view.span()
    with Scope(machine=_processors(view.device_type, lo, hi)):
        yield
