"""Progress on stderr while a command works through a batch: a bar on a terminal, a plain line every few
seconds otherwise (a log, a Slurm job's output), so that stdout keeps only the answer a script reads."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

PLAIN_INTERVAL_SECONDS = 5.0


class Ticker:
    """``update(text, done, total)`` as often as there is news; shown as a bar on a terminal, else as a line
    at most every ``interval`` seconds and once more at the end (the last news)."""

    def __init__(self, interval: float = PLAIN_INTERVAL_SECONDS, terminal: bool | None = None) -> None:
        self._terminal = sys.stderr.isatty() if terminal is None else terminal
        self._interval = interval
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._last_line: float | None = None  # not 0: the monotonic clock starts at boot, maybe a minute ago
        self._pending: str | None = None

    def __enter__(self) -> Ticker:
        if self._terminal:
            self._bar = _bar()
            self._bar.start()
            self._task = self._bar.add_task("", total=None)
        return self

    def update(self, text: str, done: int, total: int, line: str | None = None) -> None:
        """``text`` beside the bar; off a terminal ``line`` (default: ``text: done/total``)."""
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=text, completed=done, total=total)
            return
        self._pending = f"{text}: {done}/{total}" if line is None else line
        now = time.monotonic()
        if self._last_line is None or now - self._last_line >= self._interval:
            self._flush(now)

    def _flush(self, now: float) -> None:
        if self._pending is not None:
            print(self._pending, file=sys.stderr, flush=True)
            self._pending, self._last_line = None, now

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
        else:
            self._flush(time.monotonic())


def _bar() -> Progress:
    # Imported here: rich takes ~0.04 s to import, which a submission off a terminal (a script, a Slurm job)
    # would pay for a bar it never shows.
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True),
    )  # fmt: skip
