"""Probing a control plane's services: every check in parallel under one deadline.

A check connects to one service and returns a detail for the report, or raises. The TCP check is
here; the authenticated ones (which need client libraries) are in :mod:`han_worker.selection.checks`.
Standard library only.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from han_worker.selection.endpoints import Endpoints, ServiceEndpoint

log = logging.getLogger(__name__)

# A check connects to one service within the given seconds and returns a detail for the report; it
# raises on failure. Authenticated checks (Redis PING as the ACL user, SELECT 1, S3 health) live in
# modules that may import client libraries and are passed to probe_all() the same way.
Check = Callable[[ServiceEndpoint, float], str]


@dataclass(frozen=True)
class ProbeResult:
    service: str
    host: str
    port: int
    ok: bool
    detail: str
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {
            "service": self.service,
            "host": self.host,
            "port": self.port,
            "ok": self.ok,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }

    def __str__(self) -> str:
        address = ServiceEndpoint(self.host, self.port).address
        return f"{self.service} {address}: {'ok' if self.ok else 'FAILED'} ({self.detail})"


@dataclass(frozen=True)
class ProbeReport:
    results: tuple[ProbeResult, ...] = field(default_factory=tuple)

    @property
    def healthy(self) -> bool:
        return bool(self.results) and all(result.ok for result in self.results)

    @property
    def failures(self) -> tuple[ProbeResult, ...]:
        return tuple(result for result in self.results if not result.ok)


def tcp_connect_check(service: ServiceEndpoint, timeout: float) -> str:
    with socket.create_connection((service.host, service.port), timeout=timeout):
        return "TCP connect ok"


class CheckFailed(RuntimeError):
    """Raised by a check whose message is already the whole story (no exception type is shown)."""


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, CheckFailed):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _run_check(
    name: str, service: ServiceEndpoint, check: Check, timeout: float, slot: list[ProbeResult]
) -> None:
    started = time.monotonic()
    try:
        ok, detail = True, check(service, timeout)
    except Exception as exc:  # a check reports any failure, e.g. a client library's own errors
        ok, detail = False, _describe_failure(exc)
    slot.append(ProbeResult(name, service.host, service.port, ok, detail, time.monotonic() - started))


def probe_all(endpoints: Endpoints, checks: Mapping[str, Check], timeout: float) -> ProbeReport:
    """Run each service's check in parallel under one overall deadline of ``timeout`` seconds.

    Services without a check are not probed. A check still running at the deadline is reported as
    timed out and left behind in a daemon thread: an unreachable host costs one timeout, not one
    per service, and a hung DNS lookup cannot hold the worker.
    """
    if not timeout > 0:
        raise ValueError(f"probe timeout must be > 0 seconds, not {timeout}")
    deadline = time.monotonic() + timeout
    running = []
    for name, service in endpoints.services.items():
        if name in checks:
            slot: list[ProbeResult] = []
            thread = threading.Thread(
                target=_run_check,
                args=(name, service, checks[name], timeout, slot),
                name=f"probe-{name}",
                daemon=True,
            )
            thread.start()
            running.append((name, service, thread, slot))
    results = []
    for name, service, thread, slot in running:
        thread.join(max(0.0, deadline - time.monotonic()))
        # Read the slot once: a result that lands after this line is ignored.
        outcome = list(slot)
        timed_out = ProbeResult(
            name, service.host, service.port, False, f"timed out after {timeout:g}s", timeout
        )
        results.append(outcome[0] if outcome else timed_out)
    return ProbeReport(tuple(results))


def tcp_probe(endpoints: Endpoints, *, timeout: float) -> ProbeReport:
    """Open (and close) a TCP connection to every service, in parallel, within ``timeout``."""
    return probe_all(endpoints, dict.fromkeys(endpoints.services, tcp_connect_check), timeout)
