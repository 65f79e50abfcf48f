"""The control plane's ``/metrics``: Prometheus's text format over HTTPS, behind HTTP basic auth.

The figures are han_worker.observe's snapshot, taken afresh at each scrape from the ledger and the worker
registry (as ``han-worker top`` takes it), so they cover every worker wherever it runs and survive a restart.

It listens on the control plane's private address only, with a certificate its own authority issues for
that address (as the other services' are). Every request without the right user and password, whatever its
path or method, is answered 401 and nothing else; the password is one of the admin secrets (secrets.json),
re-read when that file changes, so that a rotation's new one works at once and its old one stops working when
the rotation retires it.

It serves from threads of its own, never from the supervisor's loop: a thread per connection (at most
MAX_CONNECTIONS, each with a socket timeout), and one snapshot at a time (the others wait SCRAPE_WAIT_S, then
get 503), so neither a slow client nor a burst of scrapes costs more than one snapshot's queries at a time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from han_worker.control_plane.admin_secrets import (
    ControlPlaneSecrets,
    SecretsError,
    load_secrets,
    trusted_authorities,
)
from han_worker.control_plane.layout import Layout
from han_worker.observe.exposition import exposition
from han_worker.observe.snapshot import take_snapshot
from han_worker.private_files import write_private_text
from han_worker.selection.endpoints import Endpoints
from han_worker.store.link import SERVICE_ERRORS, ConnectError, Link, describe

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
MAX_CONNECTIONS = 16  # more at once are closed unanswered
CONNECTION_TIMEOUT_S = 10.0  # a client this slow to send (or to finish its TLS handshake) is dropped
SCRAPE_WAIT_S = 10.0  # how long a scrape waits for the one before it
SUCCESSORS_TTL_S = 30.0  # Slurm is asked for the successors at most this often, however often Prometheus asks
REALM = "han control plane metrics"

LinkFactory = Callable[[], Link]
SuccessorCount = Callable[[Endpoints], "int | None"]
# What a scrape raises when the control plane's services do not answer (it is answered 503).
SCRAPE_ERRORS: tuple[type[Exception], ...] = (ConnectError, *SERVICE_ERRORS)


FileStamp = tuple["tuple[int, int] | None", ...]


def file_stamp(paths: Sequence[Path]) -> FileStamp:
    """What tells whether files changed: each one's modification time and size (None: absent)."""
    stamps: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            status = path.stat()
        except FileNotFoundError:
            stamps.append(None)
        else:
            stamps.append((status.st_mtime_ns, status.st_size))
    return tuple(stamps)


class AcceptedPasswords:
    """The (user, password) pairs /metrics accepts: the secrets file's, and while a rotation is in progress
    the previous generation's too. Both files are read again only when one of them changed."""

    def __init__(self, secrets_file: Path, previous_file: Path) -> None:
        self.files = (secrets_file, previous_file)
        self._stamp: FileStamp = ()
        self._pairs: tuple[tuple[bytes, bytes], ...] = ()
        self._lock = threading.Lock()

    def pairs(self) -> tuple[tuple[bytes, bytes], ...]:
        with self._lock:
            stamp = file_stamp(self.files)
            if stamp != self._stamp:
                try:
                    self._pairs = _credential_pairs(
                        [load_secrets(path) for path in self.files if path.exists()]
                    )
                except (SecretsError, OSError) as exc:
                    # keep what was accepted: a half-written file must not lock Prometheus out (or in)
                    log.warning("/metrics: cannot read the secrets again, keeping the last ones: %s", exc)
                else:
                    self._stamp = stamp
            return self._pairs

    def check(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header names an accepted user and password (constant-time compare)."""
        offered = _basic_credentials(header)
        if offered is None:
            return False
        user, password = offered
        matches = [
            hmac.compare_digest(user, known_user) & hmac.compare_digest(password, known_password)
            for known_user, known_password in self.pairs()
        ]
        return any(matches)


def _credential_pairs(generations: Sequence[ControlPlaneSecrets]) -> tuple[tuple[bytes, bytes], ...]:
    # A file from before /metrics has no password: an empty one is never accepted.
    return tuple(
        (secrets.metrics_user.encode(), secrets.metrics_password.encode())
        for secrets in generations
        if secrets.metrics_password
    )


def _basic_credentials(header: str | None) -> tuple[bytes, bytes] | None:
    scheme, _space, encoded = (header or "").strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    return (user, password) if colon else None


class Scrapes:
    """Exposition text from a link to the control plane, one snapshot at a time; the link is kept between
    scrapes and opened again after a service failed it (a restart, a rotation)."""

    def __init__(self, open_link: LinkFactory, successors: SuccessorCount | None = None) -> None:
        self._open_link = open_link
        self._successors = None if successors is None else CachedSuccessors(successors)
        self._link: Link | None = None
        self._lock = threading.Lock()

    def exposition(self) -> str | None:
        """The metrics now; None when another scrape held the control plane for SCRAPE_WAIT_S. Raises
        ConnectError or SERVICE_ERRORS when a service does not answer."""
        if not self._lock.acquire(timeout=SCRAPE_WAIT_S):
            return None
        try:
            if self._link is None:
                self._link = self._open_link()
            try:
                return exposition(take_snapshot(self._link, recent_failures=0, successors=self._successors))
            except SERVICE_ERRORS:
                self._close_link()
                raise
        finally:
            self._lock.release()

    def _close_link(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    def close(self) -> None:
        with self._lock:
            self._close_link()


class CachedSuccessors:
    """The control plane's queued successors, asked of Slurm at most every SUCCESSORS_TTL_S."""

    def __init__(self, count: SuccessorCount) -> None:
        self._count = count
        self._asked_at = -SUCCESSORS_TTL_S
        self._value: int | None = None

    def __call__(self, endpoints: Endpoints) -> int | None:
        now = time.monotonic()
        if now - self._asked_at >= SUCCESSORS_TTL_S:
            self._value, self._asked_at = self._count(endpoints), now
        return self._value


class MetricsHandler(BaseHTTPRequestHandler):
    server: MetricsHTTPServer
    server_version = "han-metrics"
    sys_version = ""  # no Python version in the Server header
    timeout = CONNECTION_TIMEOUT_S
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()  # sets the timeout first: a client that never finishes its handshake is dropped
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_POST(self) -> None:
        self._refuse_method()

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST

    def parse_request(self) -> bool:
        """http.server's parsing; a method it has no ``do_`` for gets 401 (or 405), not its 501 page."""
        if not super().parse_request():
            return False
        if not hasattr(self, f"do_{self.command}"):
            self._refuse_method()
            return False
        return True

    def _refuse_method(self) -> None:
        if self._authorized():
            self._send(405, b"only GET\n", headers={"Allow": "GET, HEAD"})
            self.close_connection = True  # its body, if any, was not read

    def _authorized(self) -> bool:
        if self.server.passwords.check(self.headers.get("Authorization")):
            return True
        self._send(401, b"", headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})
        self.close_connection = True  # a refused client gets one answer per connection
        return False

    def _answer(self, body: bool) -> None:
        if not self._authorized():
            return
        if self.path.split("?", 1)[0] != METRICS_PATH:
            self._send(404, b"not found\n", body=body)
            return
        try:
            text = self.server.scrapes.exposition()
        except SCRAPE_ERRORS as exc:
            log.warning("/metrics: the control plane's services did not answer: %s", describe(exc))
            self._send(503, b"the control plane's services did not answer\n", body=body)
            return
        if text is None:
            self._send(503, b"busy with another scrape\n", body=body)
            return
        self._send(200, text.encode(), body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _send(
        self, status: int, payload: bytes, *, body: bool = True, headers: Mapping[str, str] | None = None
    ) -> None:
        """Answer ``status`` with ``payload`` (its length announced; sent unless ``body`` is False: HEAD)."""
        self.send_response(status)
        announced = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
        announced.update({"Content-Length": str(len(payload)), "Cache-Control": "no-store"})
        for name, value in announced.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("/metrics %s: " + format, self.address_string(), *args)


class MetricsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], tls: ServerCertificate, passwords: AcceptedPasswords, scrapes: Scrapes
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, MetricsHandler, bind_and_activate=False)
        self.passwords, self.scrapes = passwords, scrapes
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        try:
            self.server_bind()
            self.server_activate()
        except OSError:
            self.server_close()
            raise
        # The handshake runs in the connection's own thread (MetricsHandler.setup), not in accept().
        self.certificate = tls
        self.socket = tls.context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def get_request(self) -> tuple[Any, Any]:
        # here, in the serving thread, before accept() makes the connection's TLS object from the context
        self.certificate.reload_if_changed()
        return super().get_request()

    def server_bind(self) -> None:
        # no getfqdn() of the address (http.server's default), which may wait on a resolver
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()[:2]
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that hangs up or fails its handshake is no error of ours (the default prints a traceback)
        log.debug("/metrics: connection from %s ended with an error", client_address, exc_info=True)


def publish_prometheus_files(
    layout: Layout, secrets: ControlPlaneSecrets, previous: ControlPlaneSecrets | None
) -> list[str]:
    """Write what a lab's Prometheus reads beside the credentials (0600): the current /metrics password, and
    the authorities /metrics's certificate may come from (both while a rotation is in progress). Returns the
    names of the files that changed."""
    wanted = {
        layout.metrics_password_file: secrets.metrics_password,
        layout.metrics_ca_file: trusted_authorities(secrets, previous),
    }
    changed = []
    for path, text in wanted.items():
        try:
            unchanged = path.read_text() == text
        except OSError:
            unchanged = False
        if not unchanged:
            write_private_text(path, text)
            changed.append(path.name)
    return changed


class ServerCertificate:
    """/metrics's certificate and key files and the TLS context that serves them, read again when they change
    (a rotation's retire phase issues a certificate of the new authority): new connections get the new one."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.files = (cert_file, key_file)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(cert_file, key_file)
        self._stamp = file_stamp(self.files)

    def reload_if_changed(self) -> None:
        stamp = file_stamp(self.files)
        if stamp == self._stamp:
            return
        try:
            self.context.load_cert_chain(*self.files)
        except (OSError, ssl.SSLError) as exc:  # half written (the key is written first): next time
            log.debug("/metrics: the new certificate cannot be read yet: %s", exc)
            return
        self._stamp = stamp
        log.info("/metrics: serving the certificate in %s now", self.files[0])


class MetricsServer:
    """/metrics on ``address``:``port``, served from a thread of its own until :meth:`stop`."""

    def __init__(
        self, address: str, port: int, tls: ServerCertificate, passwords: AcceptedPasswords, scrapes: Scrapes
    ) -> None:
        self.scrapes = scrapes
        self.http = MetricsHTTPServer((address, port), tls, passwords, scrapes)
        self._thread = threading.Thread(
            target=self.http.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return self.http.server_port

    def start(self) -> None:
        self._thread.start()
        log.info("serving /metrics on %s:%d (HTTPS, basic auth)", self.http.server_name, self.port)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.http.shutdown()
        self.http.server_close()
        self.scrapes.close()
