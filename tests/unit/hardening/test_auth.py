"""How the answers of Redis, PostgreSQL and S3 to an attempt are classified, and the rows they make."""

from __future__ import annotations

import pytest

from han_worker.control_plane.hardening.auth import (
    ACCEPTED,
    REFUSED,
    UNREACHABLE,
    Attempt,
    classify_http_status,
    classify_plain_text,
    classify_plain_text_reply,
    classify_postgres_error,
    classify_redis_reply,
)
from han_worker.control_plane.hardening.report import FAIL, PASS

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
