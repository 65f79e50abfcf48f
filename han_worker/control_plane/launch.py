"""Direct launch mode: run the supervisor as a background process, and find, stop or describe it.

The supervisor's lock file is the one source of truth: the process that holds the lock is running,
and it wrote its pid there. Nothing is inferred from process names.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from han_worker.control_plane.incidents import FailureRecordError, read_failure
from han_worker.control_plane.layout import Layout, keeper_pid, running_pid
from han_worker.private_files import TrustedFileError, read_trusted_json
from han_worker.selection.endpoints import EndpointsError, parse_endpoints

log = logging.getLogger(__name__)


class BackgroundError(RuntimeError):
    """The background supervisor did not start or stop as asked; the message says why."""


@dataclass(frozen=True)
class Status:
    running: bool
    pid: int | None
    published: bool
    epoch: int | None
    # Why the last supervisor could not start, or stopped on a crash (incidents.py); None once one published.
    failure: str | None = None
    keeper_pid: int | None = None  # the keeper of `run --restart-crashed`, when one runs


def status(layout: Layout) -> Status:
    pid, keeper = running_pid(layout), keeper_pid(layout)
    failure = _failure(layout)
    try:
        endpoints = parse_endpoints(read_trusted_json(layout.endpoints_file), str(layout.endpoints_file))
    except (EndpointsError, TrustedFileError):
        return Status(pid is not None, pid, published=False, epoch=None, failure=failure, keeper_pid=keeper)
    return Status(
        pid is not None,
        pid,
        published=pid is not None and not endpoints.stale,
        epoch=endpoints.epoch,
        failure=failure,
        keeper_pid=keeper,
    )


def _failure(layout: Layout) -> str | None:
    try:
        failure = read_failure(layout)
    except FailureRecordError as exc:
        return f"the failure record cannot be read: {exc}"
    return None if failure is None else failure.describe()


def start(layout: Layout, run_args: Sequence[str], timeout: float) -> bool:
    """Start ``han-control-plane run`` detached; True if started, False if it was already running.

    Returns once the endpoints are published, so the caller can use them at once.
    """
    if running_pid(layout) is not None or keeper_pid(layout) is not None:
        return False
    layout.make_dirs()
    log_file = layout.log_file("supervisor")
    with open(os.devnull, "rb") as devnull, log_file.open("ab") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "han_worker.control_plane",
                "run",
                "--state-dir",
                str(layout.root),
                *run_args,
            ],
            stdin=devnull,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not in the caller's session: an SSH logout must not stop it
        )
    _wait_published(layout, process, timeout)
    return True


def _wait_published(layout: Layout, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline, launched = time.monotonic() + timeout, time.time()
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            why = f": {_failure(layout)}" if _recorded_since(layout, launched) else ""
            raise BackgroundError(
                f"han-control-plane run exited with code {code}{why}; see {layout.log_file('supervisor')}"
            )
        if status(layout).published:
            return
        time.sleep(0.2)
    raise BackgroundError(
        f"no endpoints published within {timeout:.0f}s; see {layout.log_file('supervisor')}"
    )


def _recorded_since(layout: Layout, launched: float) -> bool:
    """A failure recorded by this run, not one left by an earlier run."""
    try:
        return layout.failure_file.stat().st_mtime >= launched - 1.0  # coarse file system clocks
    except OSError:
        return False


def stop(layout: Layout, timeout: float) -> bool:
    """SIGTERM the keeper if one runs (it passes the signal on and does not restart), else the supervisor,
    and wait until both locks are released; True if either was running."""
    keeper = keeper_pid(layout)
    pid = keeper if keeper is not None else running_pid(layout)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running_pid(layout) is not None or keeper_pid(layout) is not None:
        if time.monotonic() > deadline:
            what = "keeper" if keeper is not None else "supervisor"
            raise BackgroundError(f"the {what} (pid {pid}) did not stop within {timeout:.0f}s")
        time.sleep(0.2)
    return True
