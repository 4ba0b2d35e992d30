"""A machine view: which devices an operator's launch points run on. Pure Python."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MachineView:
    """Devices of one kind, `start` plus a strided grid: point (i0, i1, ...) of a launch runs on
    device start + sum(i_k * stride_k). Devices are numbered over all ranks (rank-major)."""

    device_type: str = "cpu"            # "cpu" or "gpu"
    start: int = 0
    dims: tuple[int, ...] = (1,)        # launch points per view dimension
    strides: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        if self.device_type not in ("cpu", "gpu"):
            raise ValueError(f"machine view: device type must be 'cpu' or 'gpu', got {self.device_type!r}")
        if len(self.dims) != len(self.strides):
            raise ValueError(f"machine view: dims {self.dims} and strides {self.strides} differ in length")
        if self.start < 0 or any(d <= 0 for d in self.dims) or any(s <= 0 for s in self.strides):
            raise ValueError(f"machine view: start must be >= 0, dims and strides > 0; got {self}")

    @classmethod
    def contiguous(cls, device_type: str, start: int, count: int) -> "MachineView":
        return cls(device_type, start, (count,), (1,))

    @property
    def num_points(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    def devices(self) -> list[int]:
        """Device indices of every point, in row-major point order."""
        out = [self.start]
        for d, s in zip(self.dims, self.strides):
            out = [base + i * s for base in out for i in range(d)]
        return out

    def point_devices(self, points: int) -> list[int]:
        """The device each of a launch's `points` points (row-major) runs on: point i on
        devices()[i]; more points than devices share them in blocks (point i on
        devices()[i * n // points]), as Legate spreads a launch over a processor range."""
        devs = self.devices()
        n = len(devs)
        if points <= n:
            return devs[:points]
        return [devs[i * n // points] for i in range(points)]

    def span(self) -> tuple[int, int]:
        """The [lo, hi) device range this view touches."""
        devs = self.devices()
        return min(devs), max(devs) + 1

    def label(self) -> str:
        """How tables show the view: `cpu[0:4]` for a range of devices, else its devices in
        point order, `cpu{0,2}` (a strided or 2-D view is no range)."""
        devs = self.devices()
        if devs == list(range(devs[0], devs[0] + len(devs))):
            return f"{self.device_type}[{devs[0]}:{devs[0] + len(devs)}]"
        return f"{self.device_type}{{{','.join(map(str, devs))}}}"

    def check_fits(self, available: int, what: str = "machine view") -> None:
        lo, hi = self.span()
        if hi > available:
            raise ValueError(f"{what}: uses {self.device_type} devices [{lo}, {hi}) but the machine "
                             f"has {available}")
