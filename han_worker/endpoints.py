"""Where the control plane is: the endpoints file, probes, and the choice between Pegasus and the Mac.

One implementation used twice: by the Ansible lookup ``han.infra.control_plane`` on the controller
(so a play fails before it submits a worker that cannot work) and by every worker at run time (so it
fails over while it runs). Hence standard library only.

Modes, as the runbook defines them: ``pegasus`` requires a valid Pegasus endpoints file and fails
with the reason; ``mac`` always uses the Mac's LAN endpoints; ``auto`` tries Pegasus, then the Mac.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType

from han_worker.trusted_files import (
    FieldReader,
    StrPath,
    TrustedFileError,
    read_trusted_json,
    write_private_json,
)

log = logging.getLogger(__name__)

SCHEMA = 1
MODES = ("auto", "pegasus", "mac")
REQUIRED_SERVICES = ("postgres", "redis", "s3")
OPTIONAL_SERVICES = ("api",)
DEFAULT_MAC_PORTS: Mapping[str, int] = MappingProxyType({"postgres": 5432, "redis": 6379, "s3": 9000})
_SLURM_JOB_ID = re.compile(r"[0-9]+")


class EndpointsError(ValueError):
    """Endpoints cannot be used; the message names the file (or origin), the field and the problem."""


class EndpointsGone(EndpointsError):
    """The document itself says its control plane is gone: marked stale by its supervisor, or expired."""


class SelectionError(EndpointsError):
    """Mode ``pegasus`` was asked for and the Pegasus control plane is not usable."""


@dataclass(frozen=True)
class ServiceEndpoint:
    host: str
    port: int

    @property
    def address(self) -> str:
        """``host:port``, with IPv6 literals bracketed."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def to_dict(self) -> dict[str, object]:
        return {"host": self.host, "port": self.port}


@dataclass(frozen=True)
class Endpoints:
    schema: int
    source: str
    epoch: int
    slurm_job_id: str | None
    node: str
    started_at: datetime
    expires_at: datetime | None
    stale: bool
    services: Mapping[str, ServiceEndpoint]

    def __post_init__(self) -> None:
        # frozen only stops rebinding the attribute; a read-only view stops editing the dict in place.
        object.__setattr__(self, "services", MappingProxyType(dict(self.services)))

    def to_dict(self) -> dict[str, object]:
        return {
            "schema": self.schema,
            "source": self.source,
            "epoch": self.epoch,
            "slurm_job_id": self.slurm_job_id,
            "node": self.node,
            "started_at": format_time(self.started_at),
            "expires_at": None if self.expires_at is None else format_time(self.expires_at),
            "stale": self.stale,
            "services": {name: service.to_dict() for name, service in self.services.items()},
        }


def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _parse_time(fields: FieldReader, key: str) -> datetime:
    text = fields.string(key)
    # datetime.fromisoformat() reads a trailing Z only from Python 3.11 on.
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        fields.fail(key, f": {text!r} is not an ISO-8601 time")
    if moment.utcoffset() != timedelta(0):
        fields.fail(key, f": {text!r} must be UTC (end in Z or +00:00)")
    return moment


def _parse_services(fields: FieldReader) -> dict[str, ServiceEndpoint]:
    services = fields.child("services")
    known = REQUIRED_SERVICES + OPTIONAL_SERVICES
    unknown = sorted(set(services.data) - set(known))
    if unknown:
        fields.fail("services", f" names unknown service(s) {', '.join(unknown)} (known: {', '.join(known)})")
    parsed = {}
    for name in known:
        if name in REQUIRED_SERVICES or name in services.data:
            service = services.child(name)
            parsed[name] = ServiceEndpoint(service.string("host"), service.integer("port", 1, 65535))
    return parsed


def parse_endpoints(data: Mapping[str, object], origin: str) -> Endpoints:
    """Validate one decoded endpoints document; unknown top-level keys are ignored (newer writers)."""
    fields = FieldReader(data, origin, EndpointsError)
    schema = fields.integer("schema")
    if schema != SCHEMA:
        raise EndpointsError(f"{origin}: unknown schema {schema} (this worker reads schema {SCHEMA})")
    job_id = fields.optional_string("slurm_job_id")
    if job_id is not None and not _SLURM_JOB_ID.fullmatch(job_id):
        fields.fail("slurm_job_id", f": {job_id!r} is not a Slurm job id (digits only)")
    started_at = _parse_time(fields, "started_at")
    expires_at = None if fields.raw("expires_at") is None else _parse_time(fields, "expires_at")
    if expires_at is not None and expires_at <= started_at:
        fields.fail("expires_at", f": {format_time(expires_at)} is not after started_at")
    return Endpoints(
        schema=schema,
        source=fields.string("source"),
        epoch=fields.integer("epoch", minimum=1),
        slurm_job_id=job_id,
        node=fields.string("node"),
        started_at=started_at,
        expires_at=expires_at,
        stale=fields.boolean("stale", default=False),
        services=_parse_services(fields),
    )


def check_usable(endpoints: Endpoints, origin: str, *, now: datetime | None = None) -> None:
    """Refuse endpoints whose supervisor has stopped (stale) or whose walltime is over (expired)."""
    if endpoints.stale:
        raise EndpointsGone(f"{origin}: marked stale (its control plane was shut down)")
    now = _utc_now() if now is None else now
    if now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, not {now!r}")
    if endpoints.expires_at is not None and endpoints.expires_at <= now:
        expired = format_time(endpoints.expires_at)
        raise EndpointsGone(f"{origin}: expired at {expired} (now {format_time(now)})")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def load_endpoints_file(path: StrPath, *, now: datetime | None = None) -> Endpoints:
    """Trust-check, read and parse ``path``; refuse it when stale or expired."""
    try:
        data = read_trusted_json(path)
    except TrustedFileError as exc:
        # One exception type for callers of this module; the trust error stays as __cause__.
        raise EndpointsError(str(exc)) from exc
    endpoints = parse_endpoints(data, str(path))
    check_usable(endpoints, str(path), now=now)
    return endpoints


def write_endpoints_file(path: StrPath, endpoints: Endpoints) -> None:
    """Publish atomically, mode 0600 in a 0700 directory: readers see the old file or the new one."""
    document = endpoints.to_dict()
    parse_endpoints(document, str(path))  # never publish what readers would refuse
    write_private_json(path, document)
    log.debug("wrote %s (epoch %d)", path, endpoints.epoch)


def mac_endpoints(host: str, ports: Mapping[str, int] | None = None) -> Endpoints:
    """The Mac's control plane on its LAN address: a synthetic document, epoch 0, no job, no expiry."""
    if not host.strip():
        raise EndpointsError("Mac endpoints: field 'host' must not be empty")
    merged = {**DEFAULT_MAC_PORTS, **(ports or {})}
    fields = FieldReader(merged, f"Mac endpoints for {host}", EndpointsError, prefix="ports.")
    known = REQUIRED_SERVICES + OPTIONAL_SERVICES
    services = {}
    for name in merged:
        if name not in known:
            fields.fail(name, f" is not a known service ({', '.join(known)})")
        services[name] = ServiceEndpoint(host, fields.integer(name, 1, 65535))
    return Endpoints(
        schema=SCHEMA,
        source="mac",
        epoch=0,
        slurm_job_id=None,
        node=host,
        started_at=_utc_now(),
        expires_at=None,
        stale=False,
        services=services,
    )


# -- probes -------------------------------------------------------------------------------------

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


# -- selection ----------------------------------------------------------------------------------

Probe = Callable[[Endpoints], ProbeReport]


@dataclass(frozen=True)
class Selection:
    source: str
    endpoints: Endpoints
    reason: str
    probes: tuple[ProbeResult, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "reason": self.reason,
            "endpoints": self.endpoints.to_dict(),
            "probes": [result.to_dict() for result in self.probes],
        }


def _failures_text(report: ProbeReport) -> str:
    return "; ".join(str(result) for result in report.failures)


def _usable_pegasus(
    pegasus: Endpoints | EndpointsError | None, probe: Probe | None, job_alive: bool | None
) -> Selection:
    if pegasus is None:
        raise SelectionError("no Pegasus endpoints file was read")
    if isinstance(pegasus, EndpointsError):
        raise SelectionError(str(pegasus)) from pegasus
    where = f"Pegasus endpoints (epoch {pegasus.epoch}, node {pegasus.node})"
    try:
        check_usable(pegasus, where)
    except EndpointsError as exc:
        raise SelectionError(str(exc)) from exc
    if job_alive is False:
        raise SelectionError(f"{where}: Slurm job {pegasus.slurm_job_id} is no longer running")
    if probe is None:
        return Selection("pegasus", pegasus, f"{where} are valid (not probed)")
    report = probe(pegasus)
    if not report.healthy:
        raise SelectionError(f"{where}: unhealthy: {_failures_text(report)}")
    return Selection("pegasus", pegasus, f"{where} are valid and healthy", report.results)


def _use_mac(macs: Sequence[Endpoints], probe: Probe | None, why: str) -> Selection:
    if not macs:
        raise SelectionError(f"{why}, but no Mac address was given (set MAC_LAN_IP or pass --mac-host)")
    if probe is None:
        return Selection("mac", macs[0], f"{why}; using the Mac at {macs[0].node} (not probed)")
    reports = [(mac, probe(mac)) for mac in macs]
    for mac, report in reports:
        if report.healthy:
            return Selection("mac", mac, f"{why}; the Mac at {mac.node} is healthy", report.results)
        log.debug("Mac candidate %s unhealthy: %s", mac.node, _failures_text(report))
    mac, report = reports[0]
    # The runbook's mac mode never fails: report the probe and let the worker retry its connections.
    why = f"{why}; using the Mac at {mac.node} although unhealthy: {_failures_text(report)}"
    return Selection("mac", mac, why, report.results)


def select(
    mode: str,
    *,
    pegasus: Endpoints | EndpointsError | None,
    mac: Endpoints | Sequence[Endpoints],
    probe: Probe | None = None,
    job_alive: bool | None = None,
) -> Selection:
    """Choose the control plane for ``mode``; see the module docstring for the modes.

    ``pegasus`` is what load_endpoints_file() returned or raised; ``mac`` one or several candidate
    Mac addresses, the first healthy one wins. ``job_alive`` None means "not known here".
    """
    if mode not in MODES:
        raise EndpointsError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    macs = (mac,) if isinstance(mac, Endpoints) else tuple(mac)
    if mode == "mac":
        return _use_mac(macs, probe, "mode mac always uses the Mac")
    try:
        return _usable_pegasus(pegasus, probe, job_alive)
    except SelectionError as exc:
        if mode == "pegasus":
            raise
        log.debug("Pegasus skipped: %s", exc)
        return _use_mac(macs, probe, f"Pegasus skipped: {exc}")


class FailoverGate:
    """Hysteresis: say "fail over" only after ``threshold`` failed health checks in a row.

    One lost packet must not move every worker to the other control plane and back. After a flip
    the count starts again, so the next flip needs ``threshold`` new failures.
    """

    def __init__(self, threshold: int) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ValueError(f"FailoverGate threshold must be an integer >= 1, not {threshold!r}")
        self.threshold = threshold
        self.failures = 0

    def observe(self, healthy: bool) -> bool:
        """Record one health check; True means switch control plane now."""
        if healthy:
            self.failures = 0
            return False
        self.failures += 1
        if self.failures < self.threshold:
            return False
        self.failures = 0
        return True
