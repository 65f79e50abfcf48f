"""Authenticated health checks: Redis PING, PostgreSQL ``SELECT 1`` and an S3 bucket probe.

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

from han_worker.selection.credentials import Credentials
from han_worker.selection.endpoints import Endpoints, ServiceEndpoint
from han_worker.selection.probes import Check, CheckFailed, ProbeReport, probe_all
from han_worker.selection.redis_tls import tls_redis
from han_worker.selection.tls import TLSConfigError, postgres_tls

log = logging.getLogger(__name__)


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


def s3_check(access_key: str, secret_key: str, bucket: str) -> Check:
    def check(service: ServiceEndpoint, timeout: float) -> str:
        client = s3_client(service, access_key, secret_key, timeout=timeout)
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


def s3_client(service: ServiceEndpoint, access_key: str, secret_key: str, *, timeout: float) -> Minio:
    """An S3 client that gives up after ``timeout`` seconds instead of retrying for minutes."""
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
        retries=urllib3.Retry(total=0),
    )
    return Minio(
        service.address, access_key=access_key, secret_key=secret_key, secure=False, http_client=http
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
        "s3": s3_check(credentials.s3.access_key, credentials.s3.secret_key, credentials.s3.bucket),
    }


def authenticated_probe(checks: Mapping[str, Check], timeout: float) -> Callable[[Endpoints], ProbeReport]:
    """A probe for :func:`han_worker.selection.policy.select`: every check in parallel, one deadline."""

    def probe(endpoints: Endpoints) -> ProbeReport:
        return probe_all(endpoints, checks, timeout)

    return probe


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
