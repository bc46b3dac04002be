"""rich progress bars (with ETA) for the long loops outside the Trainer; quiet where nobody looks.

A bar shows on an interactive terminal only: under CI (``CI`` set), when stderr is not a TTY
(a log file, a SLURM job, a pipe), or with ``PIPPO_PROGRESS=0`` the loops run silently, so logs
hold lines rather than thousands of carriage-return redraws. ``PIPPO_PROGRESS=1`` forces bars on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_FALSE = {"0", "false", "no", "off", ""}

#: the rich display in use, which nested bars join
_active: Any = None


def progress_enabled(stream: object | None = None) -> bool:
    """Whether progress bars should be drawn: an interactive terminal, not CI (see module doc)."""
    forced = os.environ.get("PIPPO_PROGRESS")
    if forced is not None:
        return forced.strip().lower() not in _FALSE
    if os.environ.get("CI", "").strip().lower() not in _FALSE:
        return False
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _columns() -> tuple:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )


class _Silent:
    """What :func:`progress_bar` yields when bars are off: the same calls, doing nothing."""

    def advance(self, steps: float = 1) -> None:
        pass

    def update_total(self, total: float | None) -> None:
        pass


class _Bar:
    def __init__(self, progress: object, task: int) -> None:
        self._progress, self._task = progress, task

    def advance(self, steps: float = 1) -> None:
        self._progress.advance(self._task, steps)  # type: ignore[attr-defined]

    def update_total(self, total: float | None) -> None:
        self._progress.update(self._task, total=total)  # type: ignore[attr-defined]


@contextmanager
def progress_bar(
    description: str, total: float | None, enabled: bool | None = None
) -> Iterator[_Bar | _Silent]:
    """A bar to ``advance()`` by hand (for loops that are not one iterable: hooks, callbacks).

    ``enabled`` None: :func:`progress_enabled` decides.
    """
    global _active
    if not (progress_enabled() if enabled is None else enabled):
        yield _Silent()
        return
    if _active is not None:
        # nested (the sampler's steps inside pippo-eval's batches): one more line of the same
        # display; rich allows only one live display at a time
        task = _active.add_task(description, total=total)
        try:
            yield _Bar(_active, task)
        finally:
            _active.remove_task(task)
        return
    from rich.progress import Progress

    with Progress(*_columns(), transient=False) as progress:
        _active = progress
        try:
            yield _Bar(progress, progress.add_task(description, total=total))
        finally:
            _active = None


def track(
    items: Iterable[T],
    description: str,
    total: float | None = None,
    enabled: bool | None = None,
) -> Iterator[T]:
    """Iterate ``items`` with a progress bar (see :func:`progress_bar` for when one shows)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(description, total, enabled) as bar:
        for item in items:
            yield item
            bar.advance()


def quiet_hub_bars() -> None:
    """huggingface_hub draws its own (tqdm) transfer bars: silence them where ours are off."""
    if progress_enabled():
        return
    try:
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:  # the hub extra is not installed: there are no bars to silence
        return
    disable_progress_bars()
