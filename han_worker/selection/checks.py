"""Authenticated health checks: Redis PING, PostgreSQL ``SELECT 1`` and an S3 bucket probe (HTTPS).

They plug into :func:`han_worker.selection.probes.probe_all` (which runs them in parallel under one deadline)
after the TCP layer: an open port only says something listens; these say that *our* service answers
to *our* credentials. Every failure is a :class:`ProbeFailure` whose message names the service, the
address and what went wrong, never a password and never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import psycopg
import redis
import urllib3
from minio import Minio
from minio.error import S3Error
from redis.backoff import NoBackoff
from redis.retry import Retry

from han_worker.selection.credentials import Credentials, S3Credentials
from han_worker.selection.endpoints import Endpoints, ServiceEndpoint
from han_worker.selection.probes import Check, CheckFailed, ProbeReport, probe_all
from han_worker.selection.redis_tls import tls_redis
from han_worker.selection.tls import TLSConfigError, postgres_tls, s3_ssl_context

log = logging.getLogger(__name__)

S3_CONNECTIONS = 16  # kept per host by an S3 client: a batch transfers 8 at a time


class ProbeFailure(CheckFailed):
    """A service did not answer an authenticated probe; the message says which and why."""


def redis_check(user: str, password: str, ca_cert: str, origin: str) -> Check:
    """``PING`` as ``user`` over TLS, the server verified against ``ca_cert`` (from ``origin``)."""

    def check(service: ServiceEndpoint, timeout: float) -> str:
        try:
            client = tls_redis(
                service.host,
                service.port,
                ca_cert,
                origin,
                username=user,
                password=password,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # redis-py retries failed connections (a wrong password among them) three times by default;
                # a probe reports at once and leaves retrying to its caller.
                retry=Retry(NoBackoff(), 0),
            )
        except TLSConfigError as exc:
            raise ProbeFailure(f"redis {service.address}: {exc}") from exc
        try:
            client.ping()
        except redis.AuthenticationError as exc:
            raise ProbeFailure(f"redis {service.address}: authentication failed for user {user}") from exc
        except redis.RedisError as exc:
            raise ProbeFailure(f"redis {service.address}: {exc}") from exc
        finally:
            client.close()
        return f"PING as {user} ok"

    return check


def postgres_check(user: str, password: str, database: str, ca_cert: str, origin: str) -> Check:
    """``SELECT 1`` over TLS, the server verified against ``ca_cert`` (``origin``: where it came from)."""

    def check(service: ServiceEndpoint, timeout: float) -> str:
        try:
            tls = postgres_tls(ca_cert, origin)
        except TLSConfigError as exc:
            raise ProbeFailure(f"postgres {service.address}: {exc}") from exc
        try:
            with psycopg.connect(
                tls,
                host=service.host,
                port=service.port,
                user=user,
                password=password,
                dbname=database,
                connect_timeout=max(1, round(timeout)),
            ) as connection:
                connection.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            raise ProbeFailure(f"postgres {service.address}: {_first_line(exc)}") from exc
        return f"SELECT 1 as {user} on {database} ok"

    return check


def s3_check(access_key: str, secret_key: str, bucket: str, ca_cert: str, origin: str) -> Check:
    """The bucket exists and these keys reach it, over HTTPS verified against ``ca_cert``."""

    def check(service: ServiceEndpoint, timeout: float) -> str:
        try:
            keys = S3Credentials(access_key, secret_key, bucket)
            client = s3_client(service, keys, ca_cert=ca_cert, origin=origin, timeout=timeout)
        except TLSConfigError as exc:
            raise ProbeFailure(f"s3 {service.address}: {exc}") from exc
        try:
            exists = client.bucket_exists(bucket)
        except S3Error as exc:
            raise ProbeFailure(
                f"s3 {service.address}: {exc.code} for key {access_key}: {exc.message}"
            ) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ProbeFailure(f"s3 {service.address}: {type(exc).__name__}: {exc}") from exc
        if not exists:
            raise ProbeFailure(f"s3 {service.address}: bucket {bucket} does not exist")
        return f"bucket {bucket} reachable as {access_key}"

    return check


def s3_client(
    service: ServiceEndpoint, keys: S3Credentials, *, ca_cert: str, origin: str, timeout: float
) -> Minio:
    """The one way to an S3 gateway, with ``keys``: HTTPS, the server verified against the control plane's
    authority ``ca_cert`` only (``origin``: where it came from, for the message when it is missing), and a
    client that gives up after ``timeout`` seconds instead of retrying for minutes.

    Raises :class:`~han_worker.selection.tls.TLSConfigError` without an authority: never plain HTTP, never
    verification off."""
    http = urllib3.PoolManager(
        # Connections kept per host: a batch uploads and fetches 8 at a time; with urllib3's default of 1,
        # every transfer beyond the first paid a TLS handshake and its connection was thrown away.
        maxsize=S3_CONNECTIONS,
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
        retries=urllib3.Retry(total=0),
        cert_reqs="CERT_REQUIRED",
        ssl_context=s3_ssl_context(ca_cert, origin),
    )
    return Minio(
        service.address, access_key=keys.access_key, secret_key=keys.secret_key, secure=True, http_client=http
    )


def worker_checks(credentials: Credentials, origin: str = "the credentials file") -> dict[str, Check]:
    """The checks a worker runs: each service with the worker's own (least-privilege) credentials."""
    return {
        "postgres": postgres_check(
            credentials.postgres.user,
            credentials.postgres.password,
            credentials.postgres.database,
            credentials.tls_ca_cert,
            origin,
        ),
        "redis": redis_check(
            credentials.redis.user, credentials.redis.password, credentials.tls_ca_cert, origin
        ),
        "s3": s3_check(
            credentials.s3.access_key,
            credentials.s3.secret_key,
            credentials.s3.bucket,
            credentials.tls_ca_cert,
            origin,
        ),
    }


def authenticated_probe(checks: Mapping[str, Check], timeout: float) -> Callable[[Endpoints], ProbeReport]:
    """A probe for :func:`han_worker.selection.policy.select`: every check in parallel, one deadline."""

    def probe(endpoints: Endpoints) -> ProbeReport:
        return probe_all(endpoints, checks, timeout)

    return probe


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
