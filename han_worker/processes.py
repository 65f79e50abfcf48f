"""Whether a process recorded earlier still runs: its pid and its start time, so that a reused pid does not
count. The control plane's ownership record (control_plane/ownership.py) and the worker's scratch
directories (worker/scratch.py) are judged with it."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# /proc/<pid>/stat after the ")" that ends the command name: state is field 3, starttime field 22.
STATE_INDEX, START_TIME_INDEX = 0, 19


@dataclass(frozen=True)
class ProcessMark:
    """One process as recorded: its pid and its start time (clock ticks after boot; None off Linux)."""

    pid: int
    start_time: int | None


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` if it runs now (a zombie does not), else None; None too off Linux."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    if len(fields) <= START_TIME_INDEX or fields[STATE_INDEX] in ("Z", "X"):
        return None
    return int(fields[START_TIME_INDEX])


def mark_of(pid: int) -> ProcessMark:
    return ProcessMark(pid, process_start_time(pid))


def is_running(mark: ProcessMark) -> bool:
    """``mark``'s process still runs: the same pid with the same start time, not a zombie.

    Without /proc (macOS), a pid that exists counts as running: a reused pid then keeps the files, which is
    the safe side."""
    if Path("/proc/self/stat").exists():
        return mark.start_time is not None and process_start_time(mark.pid) == mark.start_time
    try:
        os.kill(mark.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent(stop_signal: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to send the child ``stop_signal`` if its parent dies without stopping
    it (SIGKILL); None off Linux. Linux sends it when the thread that started the child ends: start children
    from the main thread."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def set_parent_death_signal() -> None:
        libc.prctl(pr_set_pdeathsig, stop_signal)

    return set_parent_death_signal
