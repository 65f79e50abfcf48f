"""Every port the control plane listens on, knocked on the way another user of the node would: no
password, no key, no certificate. A port that answers any of these usefully fails the check.

- plain HTTP ``GET /``: answered if the status is 2xx or 3xx (a filer listing, a master's topology);
- TLS without a client certificate (any server certificate accepted, as an intruder would), then
  ``GET /``: answered if the handshake completes and the status is 2xx or 3xx;
- HTTP/2 in clear text, as gRPC speaks it: answered if the server replies to the connection preface with
  its SETTINGS frame (SeaweedFS's gRPC ports did, and served anyone);
- Redis's inline ``PING``: answered if it says ``+PONG`` (a Redis that needs no password).

PostgreSQL, Redis and S3 with default or missing credentials are tried in their own protocol by
:mod:`~han_worker.control_plane.hardening.auth`.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from han_worker.control_plane.hardening.listen import Listener
from han_worker.control_plane.hardening.report import FAIL, PASS, Row

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS
H2_SETTINGS = 4
# A listener on every interface is knocked on through the loopback.
_LOOPBACK_FOR_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1", "*": "127.0.0.1"}  # noqa: S104


@dataclass(frozen=True)
class Knock:
    request: str
    answered: bool
    detail: str


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def http_get(host: str, port: int, timeout: float, *, tls: bool) -> Knock:
    """``GET /``, in clear or over TLS without a client certificate."""
    request = "TLS without a client certificate, GET /" if tls else "HTTP GET /"
    try:
        connection: http.client.HTTPConnection
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # an intruder takes whatever certificate it is shown
            connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            connection.request("GET", "/")
            status = connection.getresponse().status
        finally:
            connection.close()
    except (OSError, http.client.HTTPException) as exc:
        return Knock(request, False, _refusal(exc))
    return Knock(request, 200 <= status < 400, f"HTTP {status}")


def h2c_preface(host: str, port: int, timeout: float) -> Knock:
    """HTTP/2 in clear text (gRPC without TLS): does the server answer the preface with SETTINGS?"""
    request = "HTTP/2 (gRPC) in clear text"
    try:
        with _connect(host, port, timeout) as connection:
            connection.sendall(H2_PREFACE)
            header = connection.recv(9)
    except OSError as exc:
        return Knock(request, False, _refusal(exc))
    if _is_settings_frame(header):
        return Knock(request, True, "answered with its SETTINGS frame")
    return Knock(request, False, "no HTTP/2 answer" if header else "closed")


def _is_settings_frame(header: bytes) -> bool:
    """A frame header (RFC 9113 4.1) of a SETTINGS frame on stream 0 with a whole number of settings."""
    if len(header) != 9:
        return False
    length = int.from_bytes(header[:3], "big")
    return header[3] == H2_SETTINGS and header[4] in (0, 1) and header[5:] == bytes(4) and length % 6 == 0


def redis_ping(host: str, port: int, timeout: float) -> Knock:
    request = "Redis PING without AUTH"
    try:
        with _connect(host, port, timeout) as connection:
            connection.sendall(b"PING\r\n")
            reply = connection.recv(64)
    except OSError as exc:
        return Knock(request, False, _refusal(exc))
    if reply.startswith(b"+PONG"):
        return Knock(request, True, "+PONG")
    return Knock(request, False, reply.decode("ascii", "replace").strip()[:40] or "closed")


def _refusal(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS refused ({exc.reason or exc})"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return str(exc.strerror if isinstance(exc, OSError) and exc.strerror else exc) or type(exc).__name__


Probe = Callable[[str, int, float], Knock]
KNOCKS: tuple[Probe, ...] = (
    lambda host, port, timeout: http_get(host, port, timeout, tls=False),
    lambda host, port, timeout: http_get(host, port, timeout, tls=True),
    h2c_preface,
    redis_ping,
)


def knock(host: str, port: int, timeout: float, knocks: Sequence[Probe] = KNOCKS) -> list[Knock]:
    return [probe(host, port, timeout) for probe in knocks]


def open_port_rows(listeners: Sequence[Listener], timeout: float) -> list[Row]:
    """One row per TCP listener: PASS when every knock was refused, FAIL naming what answered."""
    rows = []
    for listener in sorted(listeners, key=lambda item: (item.port, item.address)):
        if listener.protocol != "tcp":
            continue
        host = _LOOPBACK_FOR_ANY.get(listener.address, listener.address)
        knocks = knock(host, listener.port, timeout)
        target = f"tcp {listener.endpoint} ({listener.who})"
        answered = [item for item in knocks if item.answered]
        if answered:
            detail = "; ".join(f"{item.request}: {item.detail}" for item in answered)
            rows.append(Row("open", target, FAIL, f"answers without credentials: {detail}"))
        else:
            detail = "; ".join(f"{item.request}: {item.detail}" for item in knocks)
            rows.append(Row("open", target, PASS, f"refused without credentials ({detail})"))
    return rows
