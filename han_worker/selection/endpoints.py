"""The endpoints file: where a control plane's services listen, as its supervisor published it.

Schema 1, JSON, written by tmp-file + rename, mode 0600 in a 0700 directory; readers refuse a file
that another user owns or could write. Standard library only: the Ansible lookup plugin imports it.

The control plane's ``/metrics`` endpoint is a top-level ``metrics`` object (host, port), not an entry of
``services``: readers before it refuse a service they do not know, and ignore a top-level key they do not
know.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import MappingProxyType

from han_worker.fields import INT4_MAX, FieldReader, shown
from han_worker.private_files import StrPath, TrustedFileError, read_trusted_json, write_private_json

log = logging.getLogger(__name__)

SCHEMA = 1
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
REQUIRED_SERVICES = ("postgres", "redis", "s3")
OPTIONAL_SERVICES = ("api",)
DEFAULT_MAC_PORTS: Mapping[str, int] = MappingProxyType({"postgres": 5432, "redis": 6379, "s3": 9000})
_SLURM_JOB_ID = re.compile(r"[0-9]{1,10}")  # Slurm job ids are 32-bit
_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class EndpointsError(ValueError):
    """Endpoints cannot be used; the message names the file (or origin), the field and the problem."""


class EndpointsGone(EndpointsError):
    """The document itself says its control plane is gone: marked stale by its supervisor, or expired."""


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
    # SHA-256 of the certificate authority the services' certificates come from (lowercase hex), so that a
    # reader can tell that a credentials file (which carries that authority) belongs to this control plane;
    # None in a document from before TLS and in the Mac's synthetic one.
    tls_ca_sha256: str | None = None
    # Where the control plane serves /metrics (HTTPS, basic auth); None from a supervisor before it, and in
    # the Mac's synthetic document.
    metrics: ServiceEndpoint | None = None

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
            **({"tls_ca_sha256": self.tls_ca_sha256} if self.tls_ca_sha256 else {}),
            **({"metrics": self.metrics.to_dict()} if self.metrics is not None else {}),
        }


def check_host(host: str) -> str:
    """``host`` if a worker can connect to it: an IP literal or a host name; EndpointsError says why not.

    Refused: the unspecified (``0.0.0.0``, ``::``) and multicast addresses, which name no server; IPv6
    zone ids (``fe80::1%eth0``), whose text after ``%`` is free-form (newlines, ``$(...)``); and the
    legacy forms that C's inet_aton reads as IPv4 but that look like names (``127.1``, ``0x7f.1``, ``0``).
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not _is_host_name(host):
            raise EndpointsError(f"{shown(host)} is neither an IP address nor a host name") from None
        return host
    if "%" in host:
        raise EndpointsError(f"{shown(host)}: an IPv6 zone id (%...) is not accepted")
    if address.is_unspecified or address.is_multicast:
        what = "unspecified (it means every local interface)" if address.is_unspecified else "multicast"
        raise EndpointsError(f"{host!r} is {what}, not the address of a server")
    return host


def _is_host_name(host: str) -> bool:
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if len(host) > 253 or not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels):
        return False
    try:
        socket.inet_aton(host)
    except OSError:
        return True
    return False  # a legacy IPv4 form: resolvers would read "0" as 0.0.0.0


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
    return {
        name: _endpoint(services.child(name))
        for name in known
        if name in REQUIRED_SERVICES or name in services.data
    }


def _endpoint(service: FieldReader) -> ServiceEndpoint:
    host = service.string("host")
    try:
        check_host(host)
    except EndpointsError as exc:
        service.fail("host", f": {exc}")
    return ServiceEndpoint(host, service.integer("port", 1, 65535))


def parse_endpoints(data: Mapping[str, object], origin: str) -> Endpoints:
    """Validate one decoded endpoints document; unknown top-level keys are ignored (newer writers)."""
    fields = FieldReader(data, origin, EndpointsError)
    schema = fields.integer("schema")
    if schema != SCHEMA:
        raise EndpointsError(f"{origin}: unknown schema {schema} (this worker reads schema {SCHEMA})")
    job_id = fields.optional_string("slurm_job_id")
    if job_id is not None and not _SLURM_JOB_ID.fullmatch(job_id):
        fields.fail("slurm_job_id", f": {shown(job_id)} is not a Slurm job id (1-10 digits)")
    started_at = _parse_time(fields, "started_at")
    expires_at = None if fields.raw("expires_at") is None else _parse_time(fields, "expires_at")
    if expires_at is not None and expires_at <= started_at:
        fields.fail("expires_at", f": {format_time(expires_at)} is not after started_at")
    return Endpoints(
        schema=schema,
        source=fields.string("source"),
        epoch=fields.integer("epoch", 1, INT4_MAX),  # the ledger's control_plane_epoch is an integer
        slurm_job_id=job_id,
        node=fields.string("node"),
        started_at=started_at,
        expires_at=expires_at,
        stale=fields.boolean("stale", default=False),
        services=_parse_services(fields),
        tls_ca_sha256=_ca_sha256(fields),
        metrics=_endpoint(fields.child("metrics")) if fields.data.get("metrics") is not None else None,
    )


def _ca_sha256(fields: FieldReader) -> str | None:
    value = fields.optional_string("tls_ca_sha256") if "tls_ca_sha256" in fields.data else None
    if value is not None and not _SHA256_HEX.fullmatch(value):
        fields.fail("tls_ca_sha256", f": {shown(value)} is not a SHA-256 digest (64 lowercase hex digits)")
    return value


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
    try:
        check_host(host)
    except EndpointsError as exc:
        raise EndpointsError(f"Mac endpoints: field 'host': {exc}") from None
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
