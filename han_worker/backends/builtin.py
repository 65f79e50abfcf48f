"""Backends that need nothing but Python: for tests, drills and benchmarks (queue ``noop``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from han_worker.backends.base import LINUX, MACOS, WINDOWS, JobContext, JobFailed, JobResult

EVERYWHERE = frozenset({LINUX, WINDOWS, MACOS})


@dataclass(frozen=True)
class NoopBackend:
    """Does nothing and succeeds: measures the system's own cost per job. Its summary says when it started
    (``started``, seconds since the epoch on the worker's clock), so that a benchmark can time a job from
    its submission to its start as a user would see it, as it does RQ's and Celery's tasks."""

    name: str = "noop"
    queue: str = "noop"
    platforms: frozenset[str] = EVERYWHERE

    def run(self, context: JobContext) -> JobResult:
        return JobResult(summary={"ok": True, "started": time.time()})


MAX_OUTPUT_BYTES = 64 << 20


def _padded(line: bytes, size: object) -> bytes:
    """``line``, then filler up to ``size`` bytes (``params.output_bytes``; None: the line alone)."""
    if size is None:
        return line
    if isinstance(size, bool) or not isinstance(size, int) or not len(line) <= size <= MAX_OUTPUT_BYTES:
        bounds = f"from {len(line)} to {MAX_OUTPUT_BYTES}"
        raise JobFailed(f"param 'output_bytes' must be a whole number {bounds}, not {size!r}")
    return line + b"." * (size - len(line))


@dataclass(frozen=True)
class SleepBackend:
    """Sleeps ``params.seconds`` (default 1), waking early when asked to stop (a drain, a cancel, a timeout);
    writes one output. ``params.heed_stop`` false: it does not wake, as a hung backend would not.
    ``params.output_bytes``: the output's size (its line, then filler), up to :data:`MAX_OUTPUT_BYTES`, so a
    test can have an output too large for the ledger (han_worker.store.artifacts)."""

    name: str = "sleep"
    queue: str = "noop"
    platforms: frozenset[str] = EVERYWHERE

    def run(self, context: JobContext) -> JobResult:
        seconds = context.params.get("seconds", 1)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= 86400:
            raise JobFailed(f"param 'seconds' must be a number from 0 to 86400, not {seconds!r}")
        heed_stop = context.params.get("heed_stop", True)
        if not isinstance(heed_stop, bool):
            raise JobFailed(f"param 'heed_stop' must be true or false, not {heed_stop!r}")
        # checked before it sleeps
        content = _padded(f"{seconds}\n".encode(), context.params.get("output_bytes"))
        deadline = time.monotonic() + float(seconds)
        while time.monotonic() < deadline:
            if heed_stop and context.should_stop():
                raise InterruptedError("asked to stop")
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        output = context.workdir / "slept.txt"
        output.write_bytes(content)
        return JobResult(summary={"slept": seconds}, outputs={"slept.txt": output})


@dataclass(frozen=True)
class FailBackend:
    """Always fails with ``params.message``: how a bad input is recorded."""

    name: str = "fail"
    queue: str = "noop"
    platforms: frozenset[str] = EVERYWHERE

    def run(self, context: JobContext) -> JobResult:
        raise JobFailed(str(context.params.get("message", "failed on purpose")))
