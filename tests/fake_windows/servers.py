"""FAKE WinRM endpoints on 127.0.0.30, one per way a WinRM connection fails, and one that works.

:func:`running_fakes` starts them on free ports and yields :class:`FakeWindowsHost` records: the inventory
variables that point Ansible at each fake, and the kind of failure the role's preflight should report.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.fake_windows.certs import write_fake_self_signed_cert
from tests.fake_windows.wsman import FakeWsmanHandler

FAKE_WINDOWS_ADDRESS = "127.0.0.30"
FAKE_USER = "fake-windows-user"
# Not a secret: the only password the FAKE WS-Management listener accepts.
FAKE_PASSWORD = "fake-windows-password-for-tests-only"


@dataclass(frozen=True)
class FakeWindowsHost:
    """One inventory host pointing at a fake; ``expected`` is the preflight's verdict (winrm_error kind)."""

    name: str
    port: int
    expected: str
    scheme: str = "http"
    transport: str = "basic"
    password: str = FAKE_PASSWORD
    address: str = FAKE_WINDOWS_ADDRESS
    extra: dict[str, object] = field(default_factory=dict)

    def inventory_vars(self) -> dict[str, object]:
        return {
            "ansible_host": self.address,
            "ansible_port": self.port,
            "ansible_connection": "winrm",
            "ansible_winrm_scheme": self.scheme,
            "ansible_winrm_transport": self.transport,
            "ansible_winrm_server_cert_validation": "validate",
            "ansible_user": FAKE_USER,
            "ansible_password": self.password,
            "ansible_winrm_operation_timeout_sec": 2,
            "ansible_winrm_read_timeout_sec": 4,
            **self.extra,
        }


class FakeNotWinrmHandler(BaseHTTPRequestHandler):
    """A web server that is not WinRM (a wrong port, a proxy): 404 for /wsman."""

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        self.send_error(404, "FAKE web server: no WinRM here")


class FakeGarbageHandler(socketserver.BaseRequestHandler):
    """Answers any request with bytes that are not HTTP, then hangs up."""

    def handle(self) -> None:
        with contextlib.suppress(OSError):
            self.request.recv(65536)
            self.request.sendall(b"FAKE-NOT-HTTP garbage \x00\x01\x02\r\n")


class FakeSilentHandler(socketserver.BaseRequestHandler):
    """Accepts the connection and never answers (a firewall that swallows the request, a hung service)."""

    def handle(self) -> None:
        with contextlib.suppress(OSError):
            self.request.settimeout(30)
            while self.request.recv(65536):
                pass


class _Threading(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _ThreadingHTTP(ThreadingHTTPServer):
    daemon_threads = True


def _wsman_server(tls_dir: Path | None = None) -> ThreadingHTTPServer:
    server = _ThreadingHTTP((FAKE_WINDOWS_ADDRESS, 0), FakeWsmanHandler)
    server.fake_user, server.fake_password, server.fake_stdin = FAKE_USER, FAKE_PASSWORD, {}  # type: ignore[attr-defined]
    if tls_dir is not None:
        cert, key = write_fake_self_signed_cert(tls_dir, FAKE_WINDOWS_ADDRESS)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


@contextlib.contextmanager
def _closed_port() -> Iterator[int]:
    """A port that refuses connections: bound (so nobody else takes it) but not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((FAKE_WINDOWS_ADDRESS, 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextlib.contextmanager
def _dropping_port() -> Iterator[int]:
    """A port whose accept queue is full, so that new connections are dropped (as a firewall that drops)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((FAKE_WINDOWS_ADDRESS, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _filler in range(3)]
    try:
        for filler in fillers:
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((FAKE_WINDOWS_ADDRESS, port))
        yield port
    finally:
        for sock in (*fillers, listener):
            sock.close()


@contextlib.contextmanager
def running_fakes(tls_dir: Path) -> Iterator[dict[str, FakeWindowsHost]]:
    """Start every fake; yield the inventory hosts by name; stop them all on exit."""
    servers: list[socketserver.BaseServer] = [
        _wsman_server(),
        _wsman_server(tls_dir),
        _ThreadingHTTP((FAKE_WINDOWS_ADDRESS, 0), FakeNotWinrmHandler),
        _Threading((FAKE_WINDOWS_ADDRESS, 0), FakeGarbageHandler),
        _Threading((FAKE_WINDOWS_ADDRESS, 0), FakeSilentHandler),
    ]
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    wsman, wsman_tls, not_winrm, garbage, silent = (server.server_address[1] for server in servers)  # type: ignore[attr-defined]
    try:
        with _closed_port() as closed, _dropping_port() as dropped:
            hosts = [
                FakeWindowsHost("fake-windows-ok", wsman, "ok"),
                FakeWindowsHost("fake-windows-closed-port", closed, "unreachable"),
                FakeWindowsHost("fake-windows-dropped", dropped, "unreachable"),
                FakeWindowsHost(
                    "fake-windows-unresolvable", 5985, "unreachable", address="fake-windows.invalid"
                ),
                FakeWindowsHost("fake-windows-silent", silent, "unreachable"),
                FakeWindowsHost(
                    "fake-windows-wrong-password", wsman, "authentication", password="wrong-fake-password"
                ),
                FakeWindowsHost("fake-windows-ntlm-on-basic-only", wsman, "authentication", transport="ntlm"),
                FakeWindowsHost("fake-windows-not-winrm", not_winrm, "transport"),
                FakeWindowsHost("fake-windows-garbage", garbage, "transport"),
                FakeWindowsHost("fake-windows-https-to-http", wsman, "transport", scheme="https"),
                FakeWindowsHost("fake-windows-http-to-https", wsman_tls, "transport"),
                FakeWindowsHost("fake-windows-self-signed", wsman_tls, "certificate", scheme="https"),
            ]
            yield {host.name: host for host in hosts}
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
