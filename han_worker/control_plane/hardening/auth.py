"""Connections that must be refused: no credentials and MinIO's default ``minioadmin`` against Redis,
PostgreSQL and S3, for the default users, ``minioadmin`` and our own user names.

Each attempt speaks the service's protocol with exactly the credentials named, nothing more (no password
file, no GSS detour), and is classified refused, accepted or unreachable. Redis's and PostgreSQL's attempts go
over TLS without verifying the server (they send no secret of ours); that each refuses plain text is checked
by its own row. S3's attempts go over HTTPS verified against the control plane's authority (the gateway speaks
nothing else); a plain-HTTP request to its port is a row of its own. The supervisor's ``/metrics`` is knocked
on over HTTPS the same way: no credentials, its user with ``minioadmin``, ``admin/admin``; only 401 passes.
"""

from __future__ import annotations

import base64
import re
import secrets
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import urllib3
from minio.error import S3Error
from psycopg.conninfo import make_conninfo

from han_worker.control_plane.admin_secrets import ARTIFACTS_BUCKET, METRICS_USER, MINIO_DEFAULT_USER
from han_worker.control_plane.hardening.report import FAIL, PASS, Row
from han_worker.control_plane.hardening.state import StateDocuments, field, trusted_authority
from han_worker.selection.checks import s3_client
from han_worker.selection.credentials import S3Credentials
from han_worker.selection.endpoints import ServiceEndpoint
from han_worker.selection.tls import TLSConfigError, s3_ssl_context

MINIO_DEFAULT_PASSWORD = MINIO_DEFAULT_USER  # MinIO's default password is its user name
DEFAULT_BUCKET = ARTIFACTS_BUCKET  # for when the credentials file cannot be read

REFUSED, ACCEPTED, UNREACHABLE = "refused", "accepted", "unreachable"
Outcome = tuple[str, str]  # (REFUSED | ACCEPTED | UNREACHABLE, what the service said)

_PG_REFUSED = (
    "password authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "authentication failed",
    "is not permitted to log in",
)


@dataclass(frozen=True)
class Attempt:
    service: str
    endpoint: str
    credentials: str  # e.g. "no credentials", "minioadmin/minioadmin"
    outcome: str
    detail: str

    def row(self) -> Row:
        target = f"{self.service} {self.endpoint} {self.credentials}"
        if self.outcome == REFUSED:
            return Row("auth", target, PASS, f"refused: {self.detail}")
        if self.outcome == ACCEPTED:
            return Row("auth", target, FAIL, f"ACCEPTED: {self.detail}")
        return Row("auth", target, FAIL, f"cannot verify, no answer: {self.detail}")


def _names(*names: str | None) -> set[str]:
    """The user names that are set (a document may lack one)."""
    return {name for name in names if name}


# -- Redis --------------------------------------------------------------------------------------------


def _resp(*parts: str) -> bytes:
    encoded = [part.encode() for part in parts]
    return f"*{len(encoded)}\r\n".encode() + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in encoded)


def classify_redis_reply(reply: bytes) -> Outcome:
    text = reply.decode(errors="replace").strip()
    first = text.splitlines()[0] if text else "(no reply)"
    if first.startswith("+"):
        return ACCEPTED, first[1:]
    if first.startswith("-"):
        return REFUSED, first[1:]  # NOAUTH, WRONGPASS, NOPERM or any error before authentication
    return UNREACHABLE, f"unexpected reply {first[:60]!r}"


def redis_attempt(host: str, port: int, user: str | None, password: str | None, timeout: float) -> Outcome:
    """Speak RESP over TLS (Valkey is reached through stunnel only): ``PING`` without credentials, else
    ``AUTH [user] password`` then ``PING``. The server is not verified: the attempt sends nothing of ours."""
    command = _resp("PING") if password is None else _resp("AUTH", *([user] if user else []), password)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as plain,
            _UNVERIFIED.wrap_socket(plain, server_hostname=host) as sock,
        ):
            sock.sendall(command)
            reply = sock.recv(4096)
    except OSError as exc:  # ssl.SSLError among them: a server that does not speak TLS
        return UNREACHABLE, str(exc)
    return classify_redis_reply(reply)


def _unverified_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_UNVERIFIED = _unverified_context()


def redis_plain_text_attempt(host: str, port: int, timeout: float) -> Outcome:
    """A hand-typed ``PING`` in plain text: a Redis that answers it (``+PONG``, ``-NOAUTH``) is reachable
    without TLS. stunnel reads it as a broken TLS handshake and closes, or answers a TLS alert (not RESP)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(4096)
    except ConnectionResetError:
        return REFUSED, "connection reset"
    except OSError as exc:
        return UNREACHABLE, str(exc)
    return classify_plain_text_reply(reply)


def classify_plain_text_reply(reply: bytes) -> Outcome:
    """A RESP status or error (``+PONG``, ``-NOAUTH``) means Redis itself read our plain text."""
    if reply[:1] in (b"+", b"-"):
        first = reply.decode(errors="replace").splitlines()[0]
        return ACCEPTED, f"answered {first[:60]!r}"
    return REFUSED, "closed without a reply" if not reply else f"no RESP reply ({len(reply)} bytes, not RESP)"


def redis_plain_text_row(state: StateDocuments, timeout: float) -> Row:
    host, port = state.services["redis"]
    result, detail = redis_plain_text_attempt(host, port, timeout)
    target = f"redis {host}:{port} plain text PING"
    if result == REFUSED:
        return Row("auth", target, PASS, f"refused: {detail} (TLS only)")
    if result == UNREACHABLE:
        return Row("auth", target, FAIL, f"cannot verify, no answer: {detail}")
    return Row("auth", target, FAIL, f"ACCEPTS plain text: {detail}")


def _redis_attempts(state: StateDocuments, timeout: float) -> Iterator[Attempt]:
    host, port = state.services["redis"]
    endpoint = f"{host}:{port}"
    known = _names(
        field(state.secrets_doc, "redis", "admin_user"), field(state.credentials_doc, "redis", "user")
    )
    users: set[str | None] = {None, "default", MINIO_DEFAULT_USER, *known}
    yield Attempt("redis", endpoint, "no credentials", *redis_attempt(host, port, None, None, timeout))
    for user in sorted(users, key=lambda name: name or ""):
        label = f"{user or '(AUTH password only)'}/{MINIO_DEFAULT_PASSWORD}"
        yield Attempt(
            "redis", endpoint, label, *redis_attempt(host, port, user, MINIO_DEFAULT_PASSWORD, timeout)
        )


# -- PostgreSQL ---------------------------------------------------------------------------------------


def classify_postgres_error(message: str) -> Outcome:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    first = first.rpartition(" failed: ")[2].replace("FATAL:  ", "")  # libpq's "connection to ... failed: "
    lowered = message.lower()
    if any(marker in lowered for marker in _PG_REFUSED):
        return REFUSED, first
    if "database" in lowered and "does not exist" in lowered:
        return ACCEPTED, f"authenticated, then: {first}"
    return UNREACHABLE, first


def postgres_attempt(host: str, port: int, user: str, password: str | None, timeout: float) -> Outcome:
    """This user, this password or none, over TLS that does not check the server (we send nothing of ours)."""
    return postgres_session(host, port, user, password, {"sslmode": "require", "connect_timeout": timeout})


def postgres_session(
    host: str, port: int, user: str, password: str | None, options: dict[str, str | float]
) -> Outcome:
    # No password file and no GSS detour: the attempt is exactly "this user, this password or none".
    conninfo = make_conninfo(
        host=host, port=port, user=user, dbname="postgres", passfile="/dev/null/none", gssencmode="disable",
        sslmode=str(options["sslmode"]), connect_timeout=max(1, round(float(options["connect_timeout"]))),
    )  # fmt: skip
    if password is not None:
        conninfo = make_conninfo(conninfo, password=password)
    try:
        with psycopg.connect(conninfo):
            return ACCEPTED, f"logged in as {user}"
    except psycopg.Error as exc:
        return classify_postgres_error(str(exc))


def classify_plain_text(target: str, outcome: Outcome) -> Row:
    """The plain-text attempt's row: the server must refuse the session before asking for a password."""
    result, detail = outcome
    if result == REFUSED and "no encryption" in detail:
        return Row("auth", target, PASS, f"refused before authentication: {detail}")
    if result == UNREACHABLE:
        return Row("auth", target, FAIL, f"cannot verify, no answer: {detail}")
    return Row("auth", target, FAIL, f"ACCEPTS plain text (reached authentication): {detail}")


def postgres_plain_text_row(state: StateDocuments, timeout: float) -> Row:
    """Plain text (``sslmode=disable``) on the published TCP address, as the worker's user with a random
    password (nothing secret crosses the wire): only a session that reaches authentication is reported."""
    host, port = state.services["postgres"]
    user = field(state.credentials_doc, "postgres", "user") or "postgres"
    options: dict[str, str | float] = {"sslmode": "disable", "connect_timeout": timeout}
    outcome = postgres_session(host, port, user, secrets.token_urlsafe(24), options)
    return classify_plain_text(f"postgres {host}:{port} plain text as {user}", outcome)


def _postgres_attempts(state: StateDocuments, timeout: float) -> Iterator[Attempt]:
    host, port = state.services["postgres"]
    endpoint = f"{host}:{port}"
    users = {"postgres", MINIO_DEFAULT_USER} | _names(
        field(state.secrets_doc, "postgres", "superuser"), field(state.credentials_doc, "postgres", "user")
    )
    for user in sorted(users):
        for password in (None, MINIO_DEFAULT_PASSWORD):
            label = f"{user}/{'no password' if password is None else password}"
            yield Attempt("postgres", endpoint, label, *postgres_attempt(host, port, user, password, timeout))


# -- S3 -----------------------------------------------------------------------------------------------


def classify_http_status(status: int) -> Outcome:
    if 200 <= status < 300:
        return ACCEPTED, f"HTTP {status}"
    if status in (401, 403):
        return REFUSED, f"HTTP {status}"
    return REFUSED, f"HTTP {status} (no access granted)"


def s3_anonymous_attempt(host: str, port: int, path: str, context: ssl.SSLContext, timeout: float) -> Outcome:
    """``GET path`` over HTTPS without a signature, the server verified with ``context``."""
    url = f"https://{host}:{port}{path}" if ":" not in host else f"https://[{host}]:{port}{path}"
    request = urllib.request.Request(url, method="GET")  # noqa: S310 (https to our own endpoint)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            return classify_http_status(int(response.status))
    except urllib.error.HTTPError as exc:
        body = exc.read(2000).decode(errors="replace")
        code = re.search(r"<Code>([^<]+)</Code>", body)
        outcome, detail = classify_http_status(exc.code)
        return outcome, f"{detail} {code.group(1)}" if code else detail
    except (urllib.error.URLError, OSError) as exc:
        return UNREACHABLE, str(exc)


def s3_signed_attempt(
    endpoint: tuple[str, int], keys: tuple[str, str], bucket: str, authority: tuple[str, str], timeout: float
) -> Outcome:
    """List ``bucket`` signed with ``keys`` (access key, secret key), over HTTPS verified against
    ``authority`` (its certificate, and where it came from)."""
    (host, port), (access_key, secret_key) = endpoint, keys
    try:
        client = s3_client(
            ServiceEndpoint(host, port), S3Credentials(access_key, secret_key, bucket),
            ca_cert=authority[0], origin=authority[1], timeout=timeout,
        )  # fmt: skip
        next(iter(client.list_objects(bucket)), None)
    except S3Error as exc:
        return REFUSED, str(exc.code)
    except urllib3.exceptions.HTTPError as exc:
        return UNREACHABLE, type(exc).__name__
    except TLSConfigError as exc:
        return UNREACHABLE, str(exc)
    return ACCEPTED, f"listed bucket {bucket}"


def _s3_attempts(state: StateDocuments, timeout: float) -> Iterator[Attempt]:
    host, port = state.services["s3"]
    endpoint = f"{host}:{port}"
    bucket = field(state.credentials_doc, "s3", "bucket") or DEFAULT_BUCKET
    authority = trusted_authority(state)
    context: ssl.SSLContext | None = None
    no_context = ""  # why there is no context: every anonymous attempt then cannot be made
    try:
        context = s3_ssl_context(*authority)
    except TLSConfigError as exc:
        no_context = str(exc)
    for path, label in (
        ("/", "anonymous list buckets"),
        (f"/{bucket}?list-type=2", f"anonymous list {bucket}"),
        (f"/{bucket}/.han-ready-probe", f"anonymous GET {bucket}/object"),
    ):
        outcome = (
            (UNREACHABLE, no_context)
            if context is None
            else s3_anonymous_attempt(host, port, path, context, timeout)
        )
        yield Attempt("s3", endpoint, label, *outcome)
    keys = (MINIO_DEFAULT_USER, MINIO_DEFAULT_PASSWORD)
    label = f"signed {MINIO_DEFAULT_USER}/{MINIO_DEFAULT_PASSWORD} list {bucket}"
    yield Attempt("s3", endpoint, label, *s3_signed_attempt((host, port), keys, bucket, authority, timeout))


# Go's HTTPS servers (weed's S3 gateway among them) answer a plain-HTTP request with this fixed reply and
# close: no S3 response, no redirect, nothing of the service.
GO_TLS_REFUSAL = b"Client sent an HTTP request to an HTTPS server"


def s3_plain_http_attempt(host: str, port: int, path: str, timeout: float) -> Outcome:
    """A plain-HTTP ``GET path`` on the S3 port (nothing secret in it): REFUSED when the server closes
    without an HTTP answer or with Go's fixed HTTPS refusal, ACCEPTED on any other HTTP answer."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            reply = _read_some(sock, 4096)
    except ConnectionResetError:
        return REFUSED, "connection reset without an answer"
    except OSError as exc:
        return UNREACHABLE, str(exc)
    return classify_plain_http_reply(reply)


def _read_some(sock: socket.socket, limit: int) -> bytes:
    reply = b""
    while len(reply) < limit:
        chunk = sock.recv(limit - len(reply))
        if not chunk:
            break
        reply += chunk
    return reply


def classify_plain_http_reply(reply: bytes) -> Outcome:
    if not reply:
        return REFUSED, "closed without an answer"
    status_line = reply.split(b"\r\n", 1)[0].decode("ascii", "replace")[:60]
    if not reply.startswith(b"HTTP/"):
        return REFUSED, f"no HTTP answer ({status_line!r})"
    if b" 400 " in reply.split(b"\r\n", 1)[0] and GO_TLS_REFUSAL in reply:
        return REFUSED, "the HTTPS server's fixed refusal (HTTP 400: an HTTP request to an HTTPS server)"
    location = re.search(rb"(?im)^location:\s*(\S+)", reply)
    where = f", redirect to {location.group(1).decode('ascii', 'replace')[:80]}" if location else ""
    return ACCEPTED, f"answered plain HTTP: {status_line}{where}"


def s3_plain_http_row(state: StateDocuments, timeout: float) -> Row:
    """The S3 port must speak HTTPS only: a plain-HTTP request gets no S3 answer and no redirect."""
    host, port = state.services["s3"]
    bucket = field(state.credentials_doc, "s3", "bucket") or DEFAULT_BUCKET
    target = f"s3 {host}:{port} plain HTTP GET /{bucket}"
    result, detail = s3_plain_http_attempt(host, port, f"/{bucket}?list-type=2", timeout)
    if result == REFUSED:
        return Row("auth", target, PASS, f"refused: {detail}")
    if result == UNREACHABLE:
        return Row("auth", target, FAIL, f"cannot verify, no answer: {detail}")
    return Row("auth", target, FAIL, f"ACCEPTS plain HTTP: {detail}")


# -- /metrics --------------------------------------------------------------------------------------------


def metrics_attempt(
    host: str, port: int, login: tuple[str, str] | None, context: ssl.SSLContext, timeout: float
) -> Outcome:
    """``GET /metrics`` over HTTPS (the server verified with ``context``), with HTTP basic auth ``login``
    (user, password) or none: the supervisor's answer is 401 to anything but its own password."""
    url = f"https://{host}:{port}/metrics" if ":" not in host else f"https://[{host}]:{port}/metrics"
    headers = {}
    if login is not None:
        token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    request = urllib.request.Request(url, headers=headers, method="GET")  # noqa: S310 (https, our own endpoint)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            return classify_http_status(int(response.status))
    except urllib.error.HTTPError as exc:
        return classify_http_status(exc.code)
    except (urllib.error.URLError, OSError) as exc:
        return UNREACHABLE, str(exc)


def _metrics_attempts(state: StateDocuments, timeout: float) -> Iterator[Attempt]:
    host, port = state.services["metrics"]
    endpoint = f"{host}:{port}"
    try:
        context: ssl.SSLContext | None = s3_ssl_context(*trusted_authority(state))
        no_context = ""
    except TLSConfigError as exc:
        context, no_context = None, str(exc)
    user = field(state.secrets_doc, "metrics", "user") or METRICS_USER
    for login, label in (
        (None, "no credentials"),
        ((user, MINIO_DEFAULT_PASSWORD), f"{user}/{MINIO_DEFAULT_PASSWORD}"),
        (("admin", "admin"), "admin/admin"),
    ):
        outcome = (
            (UNREACHABLE, no_context)
            if context is None
            else metrics_attempt(host, port, login, context, timeout)
        )
        yield Attempt("metrics", endpoint, label, *outcome)


# -- the section ----------------------------------------------------------------------------------------


_ATTEMPTS: tuple[tuple[str, Callable[[StateDocuments, float], Iterator[Attempt]]], ...] = (
    ("redis", _redis_attempts),
    ("postgres", _postgres_attempts),
    ("s3", _s3_attempts),
    ("metrics", _metrics_attempts),
)
# Served by control planes of this version on; one started before has none to knock on (not a failure).
_OPTIONAL = frozenset({"metrics"})


def authentication_rows(state: StateDocuments, timeout: float) -> list[Row]:
    """Every attempt's row, Redis, PostgreSQL then S3, and a failure for a service with no endpoint."""
    rows = [
        attempt.row()
        for service, attempts_of in _ATTEMPTS
        if service in state.services
        for attempt in attempts_of(state, timeout)
    ]
    if "redis" in state.services:
        rows.append(redis_plain_text_row(state, timeout))
    if "postgres" in state.services:
        rows.append(postgres_plain_text_row(state, timeout))
    if "s3" in state.services:
        rows.append(s3_plain_http_row(state, timeout))
    missing = sorted({service for service, _attempts in _ATTEMPTS} - _OPTIONAL - state.services.keys())
    if missing:
        detail = f"no endpoint to test for {', '.join(missing)}"
        rows.append(Row("auth", str(state.layout.root), FAIL, detail))
    return rows
