"""From a worker configuration to a chosen, connected control plane.

:class:`Selector` wraps :func:`han_worker.endpoints.select` with the configured files and each control
plane's own credentials (the authenticated probes of :mod:`han_worker.probes`); :func:`open_link`
connects the ledger, the queues and the object store of the choice. ``run``, ``submit``, ``wait`` and
``status`` all go through here, so they agree on which control plane is meant.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
import redis
import urllib3
from minio.error import S3Error
from redis.backoff import NoBackoff
from redis.retry import Retry

from han_worker.artifacts import ArtifactStore
from han_worker.credentials import Credentials, CredentialsError, load_credentials_file
from han_worker.endpoints import (
    Endpoints,
    EndpointsError,
    ProbeReport,
    ProbeResult,
    SelectionError,
    ServiceEndpoint,
    load_endpoints_file,
    mac_endpoints,
    probe_all,
    select,
)
from han_worker.ledger import Connection, Ledger
from han_worker.probes import s3_client, worker_checks
from han_worker.queues import Queues
from han_worker.worker_config import WorkerConfig, WorkerConfigError

log = logging.getLogger(__name__)

# What a control plane that went away raises: the job is not at fault, the result is kept for later.
CONTROL_PLANE_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)
_CONNECT_ERRORS: tuple[type[Exception], ...] = (
    *CONTROL_PLANE_ERRORS,
    redis.RedisError,
    psycopg.Error,
    S3Error,
)
_SOURCES = ("pegasus", "mac")
_SETTLE_POLL_SECONDS = 0.05
# Probe details that mean "these credentials are wrong": retrying with them will not help.
_AUTH_FAILURES = ("authentication failed", "SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied")


class ConnectError(RuntimeError):
    """A control plane cannot be used; the message names the service. ``permanent``: wrong credentials."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def describe(exc: BaseException) -> str:
    """One line for a log or an error message: client libraries' messages can span many."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def refused_credentials(text: str) -> bool:
    """Whether a service's message says it refused the credentials (not that it was unreachable)."""
    return any(marker in text for marker in _AUTH_FAILURES)


def authentication_failures(results: Sequence[ProbeResult]) -> list[ProbeResult]:
    return [result for result in results if not result.ok and refused_credentials(result.detail)]


@dataclass(frozen=True)
class Choice:
    """A selected control plane with the credentials that go with it."""

    source: str
    endpoints: Endpoints
    credentials: Credentials
    reason: str
    probes: tuple[ProbeResult, ...] = ()

    @property
    def epoch(self) -> int:
        return self.endpoints.epoch

    def describe(self) -> str:
        services = ", ".join(f"{name} {svc.address}" for name, svc in self.endpoints.services.items())
        return f"{self.source} (epoch {self.epoch}: {services})"


class Selector:
    """The runbook's modes over the configured Pegasus files and Mac address."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.mac: Endpoints | None = None
        self.mac_credentials: Credentials | None = None
        if config.mode != "pegasus" and config.mac is not None and config.mac.credentials_file is not None:
            try:
                self.mac = mac_endpoints(config.mac.host, config.mac.ports)
                self.mac_credentials = load_credentials_file(config.mac.credentials_file)
            except (EndpointsError, CredentialsError) as exc:
                raise WorkerConfigError(f"{config.origin}: field 'mac': {exc}") from exc

    def probe(self, endpoints: Endpoints, credentials: Credentials) -> ProbeReport:
        return probe_all(endpoints, worker_checks(credentials), self.config.probe_timeout_seconds)

    def credentials_on_disk(self, source: str) -> Credentials | None:
        """``source``'s credentials file as it is now (a rotation rewrites it); None if unreadable."""
        if source == "pegasus":
            path = self.config.credentials_file
        elif self.config.mac is not None and self.config.mac.credentials_file is not None:
            path = self.config.mac.credentials_file
        else:
            return None
        try:
            return load_credentials_file(path)
        except CredentialsError as exc:  # being replaced, or broken: the next check reads it again
            log.debug("reading %s: %s", path, exc)
            return None

    def _refresh_mac_credentials(self) -> None:
        if self.mac is not None:
            self.mac_credentials = self.credentials_on_disk("mac") or self.mac_credentials

    def load_pegasus(self) -> tuple[Endpoints, Credentials]:
        """The Pegasus endpoints and credentials, both trust-checked; EndpointsError says why not."""
        endpoints = load_endpoints_file(self.config.endpoints_file)
        try:
            credentials = load_credentials_file(self.config.credentials_file)
        except CredentialsError as exc:
            raise EndpointsError(str(exc)) from exc
        return endpoints, credentials

    def choose(self) -> Choice:
        """Select as the mode says; raises SelectionError (mode pegasus) with the reason."""
        self._refresh_mac_credentials()
        pegasus: Endpoints | EndpointsError | None = None
        pegasus_credentials = None
        if self.config.mode != "mac":
            try:
                pegasus, pegasus_credentials = self.load_pegasus()
            except EndpointsError as exc:
                pegasus = exc

        def probe(endpoints: Endpoints) -> ProbeReport:
            credentials = pegasus_credentials if endpoints is pegasus else self.mac_credentials
            assert credentials is not None  # select() probes only endpoints that came with credentials
            return self.probe(endpoints, credentials)

        macs = [] if self.mac is None else [self.mac]
        selection = select(self.config.mode, pegasus=pegasus, mac=macs, probe=probe)
        credentials = pegasus_credentials if selection.endpoints is pegasus else self.mac_credentials
        assert credentials is not None
        return Choice(selection.source, selection.endpoints, credentials, selection.reason, selection.probes)

    def choose_after_refusal(self, settle_seconds: float) -> Choice:
        """choose(); when a service refused the credentials and a credentials file changes within
        ``settle_seconds``, choose again with the new file.

        A rotation sets PostgreSQL's new password an instant before it publishes the file (a role has
        one password), so a client that read the old file in between is refused once."""
        files_before = {source: self.credentials_on_disk(source) for source in _SOURCES}
        try:
            choice = self.choose()
        except SelectionError as exc:
            if not refused_credentials(str(exc)):
                raise
            failure: SelectionError | None = exc
        else:
            # In auto mode a refused Pegasus is skipped for the Mac, and its refusal is in the reason.
            if not authentication_failures(choice.probes) and not refused_credentials(choice.reason):
                return choice
            failure = None
        deadline = time.monotonic() + settle_seconds
        while time.monotonic() < deadline:
            if any(self.credentials_on_disk(source) != files_before[source] for source in _SOURCES):
                log.info("a credentials file changed after a refusal (a rotation): choosing again")
                return self.choose()
            time.sleep(_SETTLE_POLL_SECONDS)
        if failure is not None:
            raise failure
        return choice

    def pegasus_problem(self) -> str | None:
        """Why Pegasus cannot be used right now (file or probe), or None when it is healthy."""
        try:
            endpoints, credentials = self.load_pegasus()
        except EndpointsError as exc:
            return str(exc)
        report = self.probe(endpoints, credentials)
        return None if report.healthy else "; ".join(str(result) for result in report.failures)


@dataclass
class Link:
    """Open clients to one control plane. The heartbeat thread has its own ledger connection."""

    choice: Choice
    ledger: Ledger
    beat_ledger: Ledger
    queues: Queues
    artifacts: ArtifactStore

    @property
    def source(self) -> str:
        return self.choice.source

    def close(self) -> None:
        for closer in (self.ledger.close, self.beat_ledger.close, self.queues.close):
            try:
                closer()
            except Exception as exc:  # closing a dead connection must not stop a failover
                log.debug("closing %s: %s", self.choice.source, describe(exc))


def _postgres_connector(
    endpoint: ServiceEndpoint, credentials: Credentials, timeout: float, name: str
) -> Callable[[], Connection]:
    def connect() -> Connection:
        return psycopg.connect(
            host=endpoint.host,
            port=endpoint.port,
            user=credentials.postgres.user,
            password=credentials.postgres.password,
            dbname=credentials.postgres.database,
            connect_timeout=max(2, math.ceil(timeout)),
            autocommit=True,
            application_name=name[:63],
            # A control plane that vanishes without closing its sockets must not hang a worker forever.
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            tcp_user_timeout=max(10_000, round(timeout * 5000)),
        )

    return connect


def redis_client(endpoint: ServiceEndpoint, credentials: Credentials, timeout: float) -> redis.Redis:
    return redis.Redis(
        host=endpoint.host,
        port=endpoint.port,
        username=credentials.redis.user,
        password=credentials.redis.password,
        decode_responses=True,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 1),  # once, at once: a pooled connection may predate a Redis restart
    )


def open_link(choice: Choice, *, timeout: float, name: str, block_seconds: float = 0.0) -> Link:
    """Connect to ``choice``: the ledger (migrated), Redis (PING) and the object store (lazily)."""
    services, credentials = choice.endpoints.services, choice.credentials
    connect = _postgres_connector(services["postgres"], credentials, timeout, name)
    ledger, beat_ledger = Ledger(connect), Ledger(connect)
    queues = Queues(redis_client(services["redis"], credentials, timeout + block_seconds))
    s3 = s3_client(services["s3"], credentials.s3.access_key, credentials.s3.secret_key, timeout=timeout)
    link = Link(choice, ledger, beat_ledger, queues, ArtifactStore(s3, credentials.s3.bucket))
    for service, check in (("postgres", ledger.migrate), ("redis", queues.client.ping)):
        try:
            check()
        except _CONNECT_ERRORS as exc:
            link.close()
            detail = describe(exc)
            permanent = isinstance(exc, redis.AuthenticationError) or "authentication failed" in detail
            raise ConnectError(
                f"{service} {services[service].address} of {choice.source}: {detail}", permanent=permanent
            ) from exc
    return link
