"""What fit/evaluate/predict print: a rich progress bar per epoch (verbose=1) or one line (2).
Only rank 0 of a multi-rank job prints."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def resolve_verbose(verbose: Any) -> int:
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    if verbose not in (0, 1, 2, True, False):
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
    return int(verbose)


def format_logs(logs: dict[str, float]) -> str:
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())


class EpochProgress:
    """A context manager showing one epoch's (or one evaluation's) batches."""

    def __init__(self, verbose: int, rank: int, title: str, steps: int) -> None:
        self.show = verbose > 0 and rank == 0
        self.bar = verbose == 1 and self.show
        self.title = title
        self.steps = steps
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> "EpochProgress":
        if self.bar:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(),
                                      TextColumn("{task.fields[logs]}"),
                                      console=Console(file=sys.stdout), transient=False)
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=self.steps, logs="")
        elif self.show and self.title:
            print(self.title, flush=True)
        return self

    def update(self, step: int, logs: dict[str, float]) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, logs=format_logs(logs))

    def finish(self, logs: dict[str, float], seconds: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=self.steps, logs=format_logs(logs))
        elif self.show:
            print(f"{self.steps}/{self.steps} - {seconds:.1f}s - {format_logs(logs)}", flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
