"""Knocking on a port without credentials, against real servers on the loopback."""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from han_worker.control_plane.hardening.listen import Listener
from han_worker.control_plane.hardening.open_ports import H2_PREFACE, open_port_rows
from han_worker.control_plane.hardening.report import FAIL, PASS
from han_worker.control_plane.pki import Authority, write_private_file

TIMEOUT = 2.0


def handler_answering(status: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"topology: volume 1 on 127.0.0.1")

        def log_message(self, *_args: object) -> None:
            return

    return Handler


def serve(server: socketserver.BaseServer) -> Iterator[int]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]  # type: ignore[misc]
    server.shutdown()
    server.server_close()


def tls_context(tmp_path: Path, *, require_client_certificate: bool) -> ssl.SSLContext:
    authority = Authority("test authority")
    issued = authority.issue("server", ["localhost"], ["127.0.0.1"])
    write_private_file(tmp_path / "server.crt", issued.cert_pem)
    write_private_file(tmp_path / "server.key", issued.key_pem)
    write_private_file(tmp_path / "ca.crt", authority.cert_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    if require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(tmp_path / "ca.crt")
    return context


def http_server(status: int, context: ssl.SSLContext | None = None) -> HTTPServer:
    server = HTTPServer(("127.0.0.1", 0), handler_answering(status))
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


class Replying(socketserver.BaseRequestHandler):
    reply = b""

    def handle(self) -> None:
        self.request.settimeout(TIMEOUT)
        try:
            self.request.recv(len(H2_PREFACE))
        except OSError:
            return
        self.request.sendall(self.reply)


def replying(reply: bytes) -> socketserver.TCPServer:
    handler = type("Handler", (Replying,), {"reply": reply})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    return server


def row_for(port: int) -> tuple[str, str]:
    (row,) = open_port_rows([Listener("tcp", "127.0.0.1", port, (1,), ("weed",))], TIMEOUT)
    assert row.target == f"tcp 127.0.0.1:{port} (weed)"
    return row.result, row.detail


Make = Callable[[Path], socketserver.BaseServer]


@pytest.mark.parametrize(
    ("make", "result", "said"),
    [
        (lambda _tmp: http_server(200), FAIL, "HTTP GET /: HTTP 200"),
        (lambda _tmp: http_server(403), PASS, "HTTP GET /: HTTP 403"),
        (lambda tmp: http_server(200, tls_context(tmp, require_client_certificate=False)), FAIL,
         "TLS without a client certificate, GET /: HTTP 200"),
        (lambda tmp: http_server(200, tls_context(tmp, require_client_certificate=True)), PASS, "TLS refused"),
        (lambda _tmp: replying(bytes([0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100])), FAIL,
         "HTTP/2 (gRPC) in clear text: answered with its SETTINGS frame"),
        (lambda _tmp: replying(b"+PONG\r\n"), FAIL, "Redis PING without AUTH: +PONG"),
        (lambda _tmp: replying(b"-NOAUTH Authentication required.\r\n"), PASS, "NOAUTH"),
    ],
    ids=["http-open", "http-forbidden", "tls-open", "tls-client-cert", "h2c", "redis-open", "redis-auth"],
)  # fmt: skip
def test_a_port_that_serves_anyone_fails_and_one_that_refuses_passes(
    make: Make, result: str, said: str, tmp_path: Path
) -> None:
    for port in serve(make(tmp_path)):
        assert row_for(port)[0] == result
        assert said in row_for(port)[1]


def test_a_closed_port_is_refused_and_udp_is_not_knocked_on() -> None:
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()
    assert row_for(port)[0] == PASS
    assert open_port_rows([Listener("udp", "127.0.0.1", port, (1,), ("x",))], TIMEOUT) == []
