"""What went wrong with the control plane: crashes counted per service, and the reason it is down.

The reason goes into the state directory (``failure.json``) so that ``han-control-plane status`` can say
why nothing runs, long after the supervisor's log scrolled by; a supervisor that publishes removes it.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

from han_worker.control_plane.layout import Layout
from han_worker.fields import FieldReader
from han_worker.private_files import TrustedFileError, read_trusted_json, write_private_json

log = logging.getLogger(__name__)

# A service that crashes this often is not healed by restarting it: stop, and say why.
CRASH_LIMIT = 3
CRASH_WINDOW_S = 300.0


class FailureRecordError(ValueError):
    """failure.json cannot be read; the message names the file and the field."""


@dataclass
class CrashHistory:
    """Crash times per service, the last ``window`` seconds of them."""

    limit: int = CRASH_LIMIT
    window: float = CRASH_WINDOW_S
    times: dict[str, deque[float]] = field(default_factory=dict)

    def record(self, service: str, now: float) -> int:
        """Count a crash of ``service`` at ``now`` (monotonic seconds); the crashes within the window."""
        recent = self.times.setdefault(service, deque())
        recent.append(now)
        while recent and recent[0] < now - self.window:
            recent.popleft()
        return len(recent)

    def too_many(self, count: int) -> bool:
        return count >= self.limit


@dataclass(frozen=True)
class Failure:
    """Why the control plane is down: ``phase`` is ``start`` (it never published) or ``running``."""

    phase: str
    reason: str
    at: str

    def describe(self) -> str:
        when = "could not start" if self.phase == "start" else "stopped"
        return f"{when} at {self.at}: {self.reason}"


def record_failure(layout: Layout, phase: str, reason: str) -> None:
    at = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    try:
        write_private_json(layout.failure_file, {"phase": phase, "reason": reason, "at": at})
    except OSError as exc:  # the reason is in the log as well; a full disk must not hide the first error
        log.warning("cannot record the failure in %s: %s", layout.failure_file, exc)


def read_failure(layout: Layout) -> Failure | None:
    """The recorded failure, or None when there is none (a broken file is one: FailureRecordError)."""
    if not layout.failure_file.exists():
        return None
    try:
        document = read_trusted_json(layout.failure_file)
    except TrustedFileError as exc:
        raise FailureRecordError(str(exc)) from exc
    fields = FieldReader(document, str(layout.failure_file), FailureRecordError)
    return Failure(fields.string("phase"), fields.string("reason"), fields.string("at"))


def clear_failure(layout: Layout) -> None:
    layout.failure_file.unlink(missing_ok=True)
