"""rich progress bars (with ETA) for the long loops outside the Trainer; quiet where nobody looks.

A bar shows on an interactive terminal only: under CI (``CI`` set), when stderr is not a TTY
(a log file, a SLURM job, a pipe), or with ``PIPPO_PROGRESS=0`` the loops run silently, so logs
hold lines rather than thousands of carriage-return redraws. ``PIPPO_PROGRESS=1`` forces bars on.

Hugging Face Hub transfers draw through the same display: huggingface_hub's own tqdm bars are
always silenced, and :func:`hub_progress` hands it a tqdm class whose bars are lines of ours.
"""

from __future__ import annotations

import io
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
        DownloadColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class CountColumn(ProgressColumn):
        """``3/10`` for items; ``1.2/4.0 MB`` for a task added with ``unit="B"`` (transfers)."""

        def __init__(self) -> None:
            super().__init__()
            self._items, self._bytes = MofNCompleteColumn(), DownloadColumn()

        def render(self, task: Any) -> Any:
            column = self._bytes if task.fields.get("unit") == "B" else self._items
            return column.render(task)

    return (
        TextColumn("{task.description}"),
        BarColumn(),
        CountColumn(),
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
def _display() -> Iterator[tuple[Any, bool]]:
    """(the rich display, whether it is nested): the one in use, which a nested bar joins as
    one more line (rich allows one live display at a time: the sampler's steps inside
    pippo-eval's batches), else a new one."""
    global _active
    if _active is not None:
        yield _active, True
        return
    from rich.progress import Progress

    with Progress(*_columns(), transient=False) as progress:
        _active = progress
        try:
            yield progress, False
        finally:
            _active = None


@contextmanager
def progress_bar(
    description: str, total: float | None, enabled: bool | None = None, unit: str | None = None
) -> Iterator[_Bar | _Silent]:
    """A bar to ``advance()`` by hand (for loops that are not one iterable: hooks, callbacks).

    ``enabled`` None: :func:`progress_enabled` decides. ``unit="B"``: counts shown as bytes.
    """
    if not (progress_enabled() if enabled is None else enabled):
        yield _Silent()
        return
    with _display() as (progress, nested):
        task = progress.add_task(description, total=total, unit=unit)
        try:
            yield _Bar(progress, task)
        finally:
            if nested:  # the outer bar's line stays; an inner one goes when done
                progress.remove_task(task)


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
    """Silence huggingface_hub's own (tqdm) bars: its transfers draw through
    :func:`hub_progress`, in our display and under our rules, or not at all."""
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    except ImportError:  # the hub extra is not installed: there are no bars to silence
        return
    if not are_progress_bars_disabled():
        disable_progress_bars()


@contextmanager
def hub_progress(description: str, enabled: bool | None = None) -> Iterator[type | None]:
    """A tqdm class for huggingface_hub's ``tqdm_class=`` (``snapshot_download``): its bars
    become lines ``<description>: files`` and ``<description>: bytes`` of our display once they
    move, with an ETA. None where bars are off (theirs are silenced either way)."""
    quiet_hub_bars()
    if not (progress_enabled() if enabled is None else enabled):
        yield None
        return
    with _display() as (progress, _):
        yield _rich_tqdm(progress, description)


def _rich_tqdm(progress: Any, description: str) -> type:
    from tqdm.std import tqdm as std_tqdm

    #: huggingface_hub opens two byte bars per download (network and disk: the same bytes
    #: over plain HTTP); one line of bytes is shown, the first one opened
    byte_bars: list[object] = []

    class RichTqdm(std_tqdm):  # type: ignore[misc]
        """tqdm's counting and tqdm's API, rich's drawing: display() updates a task."""

        monitor_interval = 0  # no tqdm monitor thread: nothing of tqdm's is drawn

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)  # huggingface_hub's group name, unknown to plain tqdm
            kwargs["file"] = io.StringIO()  # tqdm's own text goes nowhere
            kwargs["disable"] = False
            self._task: Any = None
            if kwargs.get("unit") == "B":  # before tqdm's __init__, which already displays
                byte_bars.append(self)
            super().__init__(*args, **kwargs)

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            is_bytes = self.unit == "B"
            if is_bytes and byte_bars and byte_bars[0] is not self:
                return True
            if self._task is None:
                if not self.n:  # shown once it moves: a snapshot already cached draws nothing
                    return True
                label = f"{description}: {'bytes' if is_bytes else 'files'}"
                self._task = progress.add_task(label, total=self.total, unit=self.unit)
            progress.update(self._task, completed=self.n, total=self.total)
            return True

    return RichTqdm
