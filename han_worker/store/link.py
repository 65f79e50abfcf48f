"""Open clients to one chosen control plane: the ledger, the queues and the object store.

:func:`open_link` connects the choice :mod:`han_worker.selection.resolver` made; the errors here are
what a control plane that went away raises (the job is not at fault, its result is kept for later).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import redis
import urllib3
from minio import Minio
from minio.error import S3Error
from redis.backoff import NoBackoff
from redis.retry import Retry

from han_worker.selection.checks import s3_client
from han_worker.selection.credentials import Credentials
from han_worker.selection.endpoints import ServiceEndpoint
from han_worker.selection.redis_tls import tls_redis
from han_worker.selection.resolver import Choice
from han_worker.selection.tls import TLSConfigError, postgres_tls
from han_worker.store.artifacts import ArtifactStore
from han_worker.store.ledger import Connection, Ledger
from han_worker.store.queues import Queues

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
# Any failure a service can answer with, its refusals included.
SERVICE_ERRORS: tuple[type[Exception], ...] = (
    *CONTROL_PLANE_ERRORS,
    redis.RedisError,
    psycopg.Error,
    S3Error,
)


class ConnectError(RuntimeError):
    """A control plane cannot be used; the message names the service. ``permanent``: wrong credentials."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def describe(exc: BaseException) -> str:
    """One line for a log or an error message: client libraries' messages can span many."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
    endpoint: ServiceEndpoint, credentials: Credentials, timeout: float, name: str, origin: str
) -> Callable[[], Connection]:
    tls = postgres_tls(credentials.tls_ca_cert, origin)

    def connect() -> Connection:
        return psycopg.connect(
            tls,
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


def redis_client(
    endpoint: ServiceEndpoint, credentials: Credentials, timeout: float, origin: str = "the credentials file"
) -> redis.Redis:
    """The worker's Redis client: TLS, the server verified against the authority in ``credentials``."""
    return tls_redis(
        endpoint.host,
        endpoint.port,
        credentials.tls_ca_cert,
        origin,
        username=credentials.redis.user,
        password=credentials.redis.password,
        decode_responses=True,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 1),  # once, at once: a pooled connection may predate a Redis restart
    )


def _s3_client(endpoint: ServiceEndpoint, credentials: Credentials, timeout: float, origin: str) -> Minio:
    """HTTPS to the gateway, verified against the authority in these credentials: a link is opened with the
    credentials file as it is now, so a new authority there reaches S3 as it reaches PostgreSQL."""
    try:
        return s3_client(
            endpoint, credentials.s3, ca_cert=credentials.tls_ca_cert, origin=origin, timeout=timeout
        )
    except TLSConfigError as exc:
        raise ConnectError(f"s3 {endpoint.address}: {exc}", permanent=True) from exc


def open_link(choice: Choice, *, timeout: float, name: str, block_seconds: float = 0.0) -> Link:
    """Connect to ``choice``: the ledger (migrated), Redis (PING) and the object store (lazily)."""
    services, credentials = choice.endpoints.services, choice.credentials
    origin = f"the credentials of {choice.source}"
    connect = _postgres_connector(services["postgres"], credentials, timeout, name, origin)
    ledger, beat_ledger = Ledger(connect), Ledger(connect)
    queues = Queues(redis_client(services["redis"], credentials, timeout + block_seconds, origin))
    s3 = _s3_client(services["s3"], credentials, timeout, origin)
    link = Link(choice, ledger, beat_ledger, queues, ArtifactStore(s3, credentials.s3.bucket))
    for service, check in (("postgres", ledger.migrate), ("redis", queues.client.ping)):
        try:
            check()
        except SERVICE_ERRORS as exc:
            link.close()
            detail = describe(exc)
            permanent = isinstance(exc, redis.AuthenticationError) or "authentication failed" in detail
            raise ConnectError(
                f"{service} {services[service].address} of {choice.source}: {detail}", permanent=permanent
            ) from exc
    return link
