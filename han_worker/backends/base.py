"""What a backend is: the code that does one kind of job, on the platforms it can run on.

Backends are found by name through the entry-point group ``han_worker.backends`` (see
:mod:`han_worker.backends`), so a lab can add its own in another package. The worker gives a backend a
:class:`JobContext` with the job's parameters and its input files already downloaded, and stores what the
backend returns: the small ``summary`` in the ledger, every file in ``outputs`` in the object store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

LINUX = "linux"
WINDOWS = "windows"
MACOS = "darwin"


class JobFailed(Exception):
    """The job cannot succeed as given (not an image, no person found, a bad parameter).

    The worker records the message as the job's error and does not retry it: a second attempt would
    fail the same way. Any other exception counts as a crash of the attempt and is retried.
    """


@dataclass(frozen=True)
class JobContext:
    job_id: str
    kind: str
    params: Mapping[str, object]
    inputs: Mapping[str, Path]  # input name -> local file, downloaded and hash-checked
    scratch: Path  # where the job's scratch directory goes: see workdir
    log: logging.Logger
    # True once the worker's drain grace period is over, or a later attempt has taken the job over.
    should_stop: Callable[[], bool] = field(default=lambda: False)

    @property
    def workdir(self) -> Path:
        """The job's private scratch directory, empty at the start and removed after the attempt.

        Created when first asked for, inside the worker's own 0700 directory: a job that never asks
        (a no-op, a job that only computes) costs no directory."""
        self.scratch.mkdir(mode=0o700, exist_ok=True)
        return self.scratch


@dataclass(frozen=True)
class JobResult:
    summary: Mapping[str, object]  # small JSON-serialisable result, stored in the ledger
    outputs: Mapping[str, Path] = field(default_factory=dict)  # output name -> file to upload


@runtime_checkable
class Backend(Protocol):
    """One kind of job. ``queue`` names the Redis stream its jobs go to; ``platforms`` the platforms
    (:data:`LINUX`, :data:`WINDOWS`, :data:`MACOS`) on which a worker may run it."""

    name: str
    queue: str
    platforms: frozenset[str]

    def run(self, context: JobContext) -> JobResult: ...


def unavailable_reason(backend: Backend) -> str | None:
    """Why this backend cannot run here (a missing optional dependency), or None when it can.

    A backend may define ``unavailable() -> str | None``; the worker asks at start and refuses to serve
    the backend's queue with that reason, rather than failing every job of that kind one by one.
    """
    check = getattr(backend, "unavailable", None)
    return check() if callable(check) else None


def warm_up(backend: Backend) -> float | None:
    """Let ``backend`` load what its jobs need (a model) now; the seconds it took, or None without a hook.

    A backend may define ``warm() -> None``. The worker calls it in its serving thread, the thread that
    will run the jobs, before it registers and takes its first job, so that no job pays for the load; it
    calls it only for the backends of the queues it serves. An exception means the backend cannot run
    here: the worker does not start.
    """
    warm = getattr(backend, "warm", None)
    if not callable(warm):
        return None
    started = time.monotonic()
    warm()
    return time.monotonic() - started
