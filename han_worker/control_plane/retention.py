"""The retention the control plane applies by itself: ``han-worker purge`` run by the supervisor.

With ``--retention-days N`` (the role's ``control_plane_retention_days``), a thread of the supervisor purges
the jobs finished more than N days ago, first a few minutes after the start (the services and the workers
come first), then every hour. It never holds up the supervisor's health loop, and a run that fails (the
ledger or the object store gone for a moment) is logged and tried again at the next tick: a purge is
crash-safe, and the next one finishes what an interrupted one journaled (han_worker.store.retention).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from han_worker.store import retention
from han_worker.store.link import SERVICE_ERRORS, ConnectError, Link, describe

log = logging.getLogger(__name__)

INTERVAL_S = 3600.0
FIRST_RUN_AFTER_S = 300.0  # at most; sooner when the interval is shorter
MAX_DAYS = retention.MAX_DURATION.days
STOP_WAIT_S = 30.0  # how long a stop waits for a purge in flight to finish its chunk
_UNREACHABLE: tuple[type[Exception], ...] = (ConnectError, *SERVICE_ERRORS)


class RetentionLoop:
    """Purge every ``interval`` seconds in a thread of its own, each time through a fresh ``connect()``."""

    def __init__(self, days: int, connect: Callable[[], Link], interval: float = INTERVAL_S) -> None:
        if not 1 <= days <= MAX_DAYS:
            raise ValueError(f"retention days must be from 1 to {MAX_DAYS} (got {days})")
        self.older_than = timedelta(days=days)
        self.interval = interval
        self._connect = connect
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0  # purges that completed (for tests and logs)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="han-retention", daemon=True)
        self._thread.start()
        log.info(
            "retention: jobs finished more than %d day(s) ago are purged every %gs, first in %gs",
            self.older_than.days, self.interval, min(FIRST_RUN_AFTER_S, self.interval),
        )  # fmt: skip

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_WAIT_S)
            self._thread = None

    def _loop(self) -> None:
        pause = min(FIRST_RUN_AFTER_S, self.interval)
        while not self._stopping.wait(pause):
            try:
                self.run_once()
            except Exception:  # a bug must not end retention for the life of the control plane
                log.exception("retention: the purge failed; next try in %gs", self.interval)
            pause = self.interval

    def run_once(self) -> retention.PurgeReport | None:
        """One purge, logged in one line; None (logged) when a service failed: the next tick tries again."""
        try:
            link = self._connect()
        except _UNREACHABLE as exc:
            log.warning("retention: the control plane's services cannot be reached (%s); next try in %gs",
                        describe(exc), self.interval)  # fmt: skip
            return None
        try:
            cutoff = retention.cutoff_of(link.ledger, self.older_than)
            report = retention.purge(link.ledger, link.artifacts, cutoff, self._stopping.is_set)
        except SERVICE_ERRORS as exc:
            log.warning("retention: the purge stopped (%s); the next one, in %gs, finishes it",
                        describe(exc), self.interval)  # fmt: skip
            return None
        finally:
            link.close()
        self.runs += 1
        log.info("retention: %s", retention.format_report(report))
        return report
