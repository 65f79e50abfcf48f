"""What another user of the node gets from the control plane's ports without its secrets.

Run as that user (``nobody``) by tests/integration/test_isolation.py, with the test venv's Python:

    python nobody_probe.py TARGETS_JSON

TARGETS_JSON: {"internal": [[host, port], ...], "redis": [host, port], "postgres": [host, port],
"postgres_socket": "/path/.s.PGSQL.<port>", "valkey_socket": "/path/valkey.sock", "bucket": "han-artifacts"}.
Prints one JSON list of {"target", "request", "answered", "detail"}: ``answered`` true means the port served the
request.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
from typing import Any

from han_worker.control_plane.hardening.open_ports import h2c_preface, redis_ping

TIMEOUT = 3.0
# What SeaweedFS's master, volume server and filer served anyone before they required a client certificate.
HTTP_REQUESTS = (
    ("GET", "/dir/status"),  # master: the topology
    ("GET", "/dir/assign"),  # master: a file id to write
    ("GET", "/status"),  # volume server
    ("GET", "/buckets/"),  # filer: the buckets
    ("POST", "/buckets/{bucket}/nobody-was-here.txt"),  # filer: write into the lab's bucket
    ("DELETE", "/buckets/{bucket}/isolation/kept.txt"),  # filer: delete a lab object (the test puts it there)
    ("GET", "/1,01637037d6"),  # volume: read by file id
    ("POST", "/1,01637037d6"),  # volume: write by file id
)


def http_request(host: str, port: int, method: str, path: str, *, tls: bool) -> tuple[bool, str]:
    try:
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=TIMEOUT, context=context
            )
        else:
            connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
        body = b"written by nobody" if method == "POST" else None
        connection.request(method, path, body=body)
        status = connection.getresponse().status
        connection.close()
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return 200 <= status < 400, f"HTTP {status}"


def redis_auth_default(host: str, port: int) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as connection:
            connection.sendall(b"AUTH default nopass\r\n")
            reply = connection.recv(128).decode("ascii", "replace").strip()
    except OSError as exc:
        return False, str(exc)
    return reply.startswith("+OK"), reply


def valkey_socket_ping(path: str) -> tuple[bool, str]:
    """A plain PING on Valkey's unix socket: any RESP reply (+PONG, -NOAUTH) means we reached it."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(TIMEOUT)
            connection.connect(path)
            connection.sendall(b"PING\r\n")
            reply = connection.recv(128).decode("ascii", "replace").strip()
    except OSError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return reply[:1] in ("+", "-"), reply


def postgres_startup(address: Any) -> tuple[bool, str]:
    """A startup packet as user han_worker without a password: an 'R' auth-ok (0) would mean it let us in."""
    user, database = b"han_worker", b"han"
    body = b"\x00\x03\x00\x00user\x00" + user + b"\x00database\x00" + database + b"\x00\x00"
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as connection:
            connection.settimeout(TIMEOUT)
            connection.connect(address if isinstance(address, str) else tuple(address))
            connection.sendall((len(body) + 4).to_bytes(4, "big") + body)
            reply = connection.recv(64)
    except OSError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if reply[:1] == b"R" and reply[5:9] == b"\x00\x00\x00\x00":
        return True, "authentication ok without a password"
    return False, reply[:1].decode("ascii", "replace") + " (asked for a password or refused)"


def main() -> int:
    targets = json.loads(sys.argv[1])
    results: list[dict[str, object]] = []

    def note(target: str, request: str, outcome: tuple[bool, str]) -> None:
        results.append({"target": target, "request": request, "answered": outcome[0], "detail": outcome[1]})

    for host, port in targets["internal"]:
        target = f"{host}:{port}"
        for method, template in HTTP_REQUESTS:
            path = template.format(bucket=targets["bucket"])
            note(target, f"{method} {path}", http_request(host, port, method, path, tls=False))
            note(target, f"{method} {path} over TLS", http_request(host, port, method, path, tls=True))
        knock = h2c_preface(host, port, TIMEOUT)
        note(target, knock.request, (knock.answered, knock.detail))
    redis_host, redis_port = targets["redis"]
    knock = redis_ping(redis_host, redis_port, TIMEOUT)
    note(f"{redis_host}:{redis_port}", knock.request, (knock.answered, knock.detail))
    note(f"{redis_host}:{redis_port}", "AUTH default", redis_auth_default(redis_host, redis_port))
    note("valkey socket", "PING", valkey_socket_ping(targets["valkey_socket"]))
    note("postgres tcp", "startup as han_worker", postgres_startup(targets["postgres"]))
    note("postgres socket", "startup as han_worker", postgres_startup(targets["postgres_socket"]))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
