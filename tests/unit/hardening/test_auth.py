"""How the answers of Redis, PostgreSQL and S3 to an attempt are classified, and the rows they make."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from han_worker.control_plane.admin_secrets import generate_secrets
from han_worker.control_plane.hardening.auth import (
    ACCEPTED,
    REFUSED,
    UNREACHABLE,
    Attempt,
    classify_http_status,
    classify_plain_http_reply,
    classify_plain_text,
    classify_plain_text_reply,
    classify_postgres_error,
    classify_redis_reply,
    s3_plain_http_row,
)
from han_worker.control_plane.hardening.report import FAIL, PASS
from han_worker.control_plane.hardening.state import StateDocuments, trusted_authority
from han_worker.control_plane.layout import Layout
from han_worker.selection.tls import ca_fingerprint, ca_fingerprints

# -- connection outcomes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (b"-NOAUTH Authentication required.\r\n", REFUSED),
        (b"-WRONGPASS invalid username-password pair or user is disabled.\r\n", REFUSED),
        (b"+PONG\r\n", ACCEPTED),
        (b"+OK\r\n", ACCEPTED),
        (b"", UNREACHABLE),
        (b"HTTP/1.1 400 Bad Request\r\n", UNREACHABLE),
    ],
)
def test_classify_redis_reply(reply: bytes, outcome: str) -> None:
    assert classify_redis_reply(reply)[0] == outcome


@pytest.mark.parametrize(
    ("message", "outcome"),
    [
        (
            'connection to server at "127.0.0.10", port 5432 failed: fe_sendauth: no password supplied',
            REFUSED,
        ),
        ('... failed: FATAL:  password authentication failed for user "postgres"', REFUSED),
        ('FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "x", database "postgres"', REFUSED),
        ('FATAL:  database "postgres" does not exist', ACCEPTED),
        ('connection to server at "127.0.0.10", port 1 failed: Connection refused', UNREACHABLE),
        ("timeout expired", UNREACHABLE),
    ],
)
def test_classify_postgres_error(message: str, outcome: str) -> None:
    result, detail = classify_postgres_error(message)
    assert result == outcome
    assert "connection to server" not in detail
    assert "FATAL" not in detail


@pytest.mark.parametrize(
    ("status", "outcome"), [(200, ACCEPTED), (204, ACCEPTED), (403, REFUSED), (401, REFUSED)]
)
def test_classify_http_status(status: int, outcome: str) -> None:
    assert classify_http_status(status)[0] == outcome


def test_attempt_rows() -> None:
    refused = Attempt("redis", "h:1", "no credentials", REFUSED, "NOAUTH").row()
    accepted = Attempt("s3", "h:2", "anonymous list buckets", ACCEPTED, "HTTP 200").row()
    silent = Attempt("postgres", "h:3", "postgres/no password", UNREACHABLE, "Connection refused").row()
    assert (refused.result, accepted.result, silent.result) == (PASS, FAIL, FAIL)
    assert accepted.detail == "ACCEPTED: HTTP 200"
    assert accepted.target == "s3 h:2 anonymous list buckets"
    assert silent.detail.startswith("cannot verify")


@pytest.mark.parametrize(
    ("outcome", "result"),
    [
        ((REFUSED, 'no pg_hba.conf entry for host "127.0.0.1", user "w", database "postgres", no encryption'),
         PASS),
        # Plain text reached the password check: a host or hostnossl line admits it.
        ((REFUSED, 'password authentication failed for user "w"'), FAIL),
        ((ACCEPTED, "logged in as w"), FAIL),
        ((UNREACHABLE, "connection refused"), FAIL),
    ],
)  # fmt: skip
def test_the_plain_text_row_passes_only_when_refused_before_authentication(
    outcome: tuple[str, str], result: str
) -> None:
    row = classify_plain_text("postgres 127.0.0.10:5432 plain text as w", outcome)
    assert row.result == result
    assert row.target == "postgres 127.0.0.10:5432 plain text as w"


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (b"+PONG\r\n", ACCEPTED),  # a Redis without a password, in plain text
        (b"-NOAUTH Authentication required.\r\n", ACCEPTED),  # Redis itself read our plain text
        (b"", REFUSED),  # stunnel closed the broken handshake
        (b"\x15\x03\x01\x00\x02\x02\x46", REFUSED),  # a TLS alert, not RESP
    ],
)
def test_a_plain_text_ping_counts_as_answered_only_when_redis_replies(reply: bytes, outcome: str) -> None:
    assert classify_plain_text_reply(reply)[0] == outcome


# -- S3: HTTPS only ------------------------------------------------------------------------------------

GO_REFUSAL = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
S3_DENIAL = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nServer: SeaweedFS 8000GB 4.48\r\n\r\n"
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code></Error>'
)
REDIRECT = b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://127.0.0.10:9000/han-artifacts\r\n\r\n"


@pytest.mark.parametrize(
    ("reply", "outcome", "detail"),
    [
        (GO_REFUSAL, REFUSED, "the HTTPS server's fixed refusal"),
        (b"", REFUSED, "closed without an answer"),
        (b"\x15\x03\x01\x00\x02\x02\x46", REFUSED, "no HTTP answer"),  # a TLS alert
        (S3_DENIAL, ACCEPTED, "answered plain HTTP: HTTP/1.1 403 Forbidden"),
        (REDIRECT, ACCEPTED, "redirect to https://127.0.0.10:9000/han-artifacts"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n<Error>", ACCEPTED, "HTTP/1.1 400 Bad Request"),
    ],
)
def test_classify_plain_http_reply(reply: bytes, outcome: str, detail: str) -> None:
    got = classify_plain_http_reply(reply)
    assert got[0] == outcome
    assert detail in got[1]


@contextlib.contextmanager
def serve_once(reply: bytes) -> Iterator[int]:
    """A listener on the loopback that reads one request, answers ``reply`` and closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        connection, _address = listener.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(reply)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield port
    listener.close()
    thread.join(5)


@pytest.fixture
def state(tmp_path: Path) -> StateDocuments:
    return StateDocuments(Layout(tmp_path), None, None, None, {}, {})


@pytest.mark.parametrize(
    ("reply", "result", "detail"),
    [
        (GO_REFUSAL, PASS, "refused: the HTTPS server's fixed refusal"),
        (S3_DENIAL, FAIL, "ACCEPTS plain HTTP: answered plain HTTP: HTTP/1.1 403 Forbidden"),
        (REDIRECT, FAIL, "redirect to https://"),
    ],
)
def test_the_plain_http_row_fails_when_the_s3_port_answers_plain_http(
    state: StateDocuments, reply: bytes, result: str, detail: str
) -> None:
    with serve_once(reply) as port:
        state.services["s3"] = ("127.0.0.1", port)
        row = s3_plain_http_row(state, timeout=5)
        assert row.target == f"s3 127.0.0.1:{port} plain HTTP GET /han-artifacts"
        assert row.result == result
        assert detail in row.detail


def test_the_plain_http_row_cannot_pass_without_an_answer(state: StateDocuments) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    state.services["s3"] = ("127.0.0.1", port)  # nothing listens there now
    row = s3_plain_http_row(state, timeout=2)
    assert (row.result, row.detail.startswith("cannot verify")) == (FAIL, True)


def test_the_checks_trust_the_secrets_authority_and_the_published_ones(tmp_path: Path) -> None:
    secrets = generate_secrets()
    published = secrets.worker_credentials().to_dict()
    both = StateDocuments(Layout(tmp_path), None, secrets.to_dict(), published, {}, {})
    assert trusted_authority(both) == (secrets.tls_ca_cert, "secrets.json and credentials.json")
    workers_only = StateDocuments(Layout(tmp_path), None, None, published, {}, {})
    assert trusted_authority(workers_only) == (secrets.tls_ca_cert, "credentials.json")
    assert trusted_authority(StateDocuments(Layout(tmp_path), None, None, None, {}, {}))[0] == ""
    # Mid-rotation: the secrets hold the new authority, the workers' file both; the servers show the old one's.
    rotated = secrets.rotated()
    mid_rotation = rotated.worker_credentials(also_trusted=secrets.tls_ca_cert).to_dict()
    documents = StateDocuments(Layout(tmp_path), None, rotated.to_dict(), mid_rotation, {}, {})
    assert ca_fingerprints(trusted_authority(documents)[0]) == [
        ca_fingerprint(rotated.tls_ca_cert),
        ca_fingerprint(secrets.tls_ca_cert),
    ]
