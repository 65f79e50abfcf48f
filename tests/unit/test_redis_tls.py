"""Redis over TLS: the pinned client context (only our authority, never the system's store), the override of
redis-py's private method it relies on, Valkey's and stunnel's configuration, and finding stunnel.

The handshakes run against a TLS server of Python's ``ssl`` (a handshake, not Redis: no Redis is faked)."""

from __future__ import annotations

import inspect
import os
import socket
import ssl
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography import x509
from redis.backoff import NoBackoff
from redis.retry import Retry

from han_worker.control_plane.admin_secrets import generate_secrets
from han_worker.control_plane.binaries import BinaryNotFound, find_stunnel
from han_worker.control_plane.pki import Authority, write_private_file
from han_worker.control_plane.services import RedisService, StunnelService, stunnel_config
from han_worker.selection.redis_tls import PinnedSSLConnection, tls_redis
from han_worker.selection.tls import TLSConfigError, pinned_context

# -- redis-py: the private method we override ------------------------------------------------------------


def test_redis_py_is_the_version_whose_private_method_we_override() -> None:
    """PinnedSSLConnection overrides SSLConnection._wrap_socket_with_ssl (redis-py 8.1): a new redis-py must
    be checked (the handshake tests below) before the pin in pyproject.toml moves."""
    assert redis.__version__.startswith("8.1."), redis.__version__
    assert "_wrap_socket_with_ssl" in inspect.getsource(redis.SSLConnection._connect)
    parameters = list(inspect.signature(redis.SSLConnection._wrap_socket_with_ssl).parameters)
    assert parameters == ["self", "sock"]


def test_the_pinned_context_trusts_our_authority_only() -> None:
    ca_pem = Authority("ours").cert_pem.decode()
    context = pinned_context(ca_pem)
    assert context is pinned_context(ca_pem)  # built once per authority
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert [item["subject"] for item in context.get_ca_certs()] == [((("commonName", "ours"),),)]
    assert pinned_context(Authority("another").cert_pem.decode()) is not context


def test_a_client_without_an_authority_is_refused_before_it_dials() -> None:
    with pytest.raises(TLSConfigError, match=r"credentials\.json: no certificate authority .* Redis is"):
        tls_redis("127.0.0.1", 1, "", "credentials.json")


def test_the_pinned_connection_refuses_settings_that_would_not_verify() -> None:
    ca_pem = Authority("ours").cert_pem.decode()
    for options in ({"ssl_cert_reqs": "none"}, {"ssl_check_hostname": False}, {"ssl_ca_data": None}):
        connection = PinnedSSLConnection(
            host="127.0.0.1", port=1, **{"ssl_ca_data": ca_pem, "ssl_cert_reqs": "required", **options}
        )
        with socket.socket() as sock, pytest.raises(redis.RedisError, match="PinnedSSLConnection needs"):
            connection._wrap_socket_with_ssl(sock)


class HandshakeServer:
    """Accepts TLS connections on 127.0.0.1 with a certificate and records each handshake's outcome."""

    def __init__(self, directory: Path, cert_pem: bytes, key_pem: bytes) -> None:
        cert, key = directory / "server.crt", directory / "server.key"
        write_private_file(cert, cert_pem)
        write_private_file(key, key_pem)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.outcomes: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _address = self.listener.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(client, server_side=True):
                    self.outcomes.append("handshake completed")
            except (ssl.SSLError, OSError) as exc:
                self.outcomes.append(type(exc).__name__)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(), which close() alone does not
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def authorities() -> tuple[Authority, Authority]:
    return Authority("our control plane"), Authority("a public CA of the system's store")


def _server(tmp_path: Path, authority: Authority, name: str) -> Iterator[HandshakeServer]:
    issued = authority.issue("redis", [], [name])
    server = HandshakeServer(tmp_path, issued.cert_pem, issued.key_pem)
    yield server
    server.close()


def _ping(port: int, ca_pem: str) -> str:
    """PING through our client; the server closes after the handshake, so success says 'closed'."""
    client = tls_redis("127.0.0.1", port, ca_pem, "test", socket_timeout=5, retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except redis.ConnectionError as exc:
        return "certificate verify failed" if "certificate verify failed" in str(exc) else "closed"
    finally:
        client.close()
    return "answered"


def test_our_server_passes_the_pinned_handshake(tmp_path: Path, authorities: tuple[Authority, Authority]):
    ours, _public = authorities
    for server in _server(tmp_path, ours, "127.0.0.1"):
        assert _ping(server.port, ours.cert_pem.decode()) == "closed"
        assert server.outcomes == ["handshake completed"]


def test_an_impostor_signed_by_a_ca_of_the_system_store_is_refused(
    tmp_path: Path, authorities: tuple[Authority, Authority], monkeypatch: pytest.MonkeyPatch
):
    """The reason for PinnedSSLConnection: redis-py's own SSL connection trusts the system's store besides
    ssl_ca_certs. SSL_CERT_FILE stands in for the node's store (OpenSSL reads it when a context loads its
    defaults). Should redis-py stop calling the method we override, the pinned client would accept too."""
    ours, public = authorities
    store = tmp_path / "system-store.pem"
    store.write_bytes(public.cert_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(store))
    for server in _server(tmp_path, public, "127.0.0.1"):
        assert _ping(server.port, ours.cert_pem.decode()) == "certificate verify failed"
        ours_file = tmp_path / "ours.pem"
        ours_file.write_bytes(ours.cert_pem)
        unpinned = redis.Redis(
            "127.0.0.1", server.port, ssl=True, ssl_ca_certs=str(ours_file), socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )  # fmt: skip
        with pytest.raises(redis.ConnectionError) as unpinned_error:
            unpinned.ping()
        assert "certificate verify failed" not in str(unpinned_error.value)  # redis-py's own: accepted it


def test_a_certificate_for_another_address_is_refused(
    tmp_path: Path, authorities: tuple[Authority, Authority]
):
    ours, _public = authorities
    for server in _server(tmp_path, ours, "127.0.0.99"):
        assert _ping(server.port, ours.cert_pem.decode()) == "certificate verify failed"


# -- the control plane's side: Valkey on a socket, stunnel in front ----------------------------------------


def test_valkey_listens_on_a_private_unix_socket_only(tmp_path: Path) -> None:
    socket_path = tmp_path / "run" / "valkey.sock"
    service = RedisService(
        "redis", "127.0.0.10", 6390, tmp_path / "redis.log", server=Path("/bin/true"),
        data_dir=tmp_path / "redis", socket_path=socket_path, secrets=generate_secrets(),
    )  # fmt: skip
    service.prepare()
    lines = (tmp_path / "redis" / "redis.conf").read_text().splitlines()
    assert "port 0" in lines
    assert f"unixsocket {socket_path}" in lines
    assert "unixsocketperm 700" in lines
    assert not [line for line in lines if line.startswith(("tls-", "port 6390"))]
    assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
    assert service.ports == ()  # no TCP port of its own: the supervisor records stunnel's
    assert service.published


def test_stunnel_serves_the_published_port_with_a_certificate_from_our_authority(tmp_path: Path) -> None:
    secrets = generate_secrets()
    socket_path = tmp_path / "run" / "valkey.sock"
    service = StunnelService(
        "redis-tls", "127.0.0.10", 6390, tmp_path / "redis-tls.log", server=Path("/usr/bin/stunnel"),
        data_dir=tmp_path / "redis-tls", socket_path=socket_path, secrets=secrets,
    )  # fmt: skip
    service.prepare()
    data = tmp_path / "redis-tls"
    config = data / "stunnel.conf"
    assert service.argv == ["/usr/bin/stunnel", str(config)]
    assert not service.published
    assert service.ports == (6390,)
    assert config.read_text() == stunnel_config(
        "127.0.0.10:6390", socket_path, data / "server.crt", data / "server.key"
    )
    for name in ("stunnel.conf", "server.crt", "server.key"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    cert = x509.load_pem_x509_certificate((data / "server.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.10" in [str(address) for address in names.get_values_for_type(x509.IPAddress)]
    assert cert.issuer == x509.load_pem_x509_certificate(secrets.tls_ca_cert.encode()).subject
    first = (data / "server.crt").read_bytes()
    service.prepare()
    assert (data / "server.crt").read_bytes() != first  # a new certificate at every (re)start


def test_stunnels_configuration_is_plain_tls_in_the_foreground_without_a_pid_file() -> None:
    text = stunnel_config("127.0.0.10:6390", Path("/s/run/valkey.sock"), Path("/c.crt"), Path("/k.key"))
    lines = text.splitlines()
    for line in ("foreground = yes", "pid =", "syslog = no", "accept = 127.0.0.10:6390",
                 "connect = /s/run/valkey.sock", "cert = /c.crt", "key = /k.key", "sslVersionMin = TLSv1.2"):  # fmt: skip
        assert line in lines, line
    assert not [line for line in lines if line.startswith(("protocol", "verify", "client"))]


# -- finding stunnel ----------------------------------------------------------------------------------------


def _program(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_stunnel_is_found_as_stunnel_or_as_debians_stunnel4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "env" / "bin" / "python"))
    debian = _program(tmp_path / "debian", "stunnel4")
    monkeypatch.setenv("PATH", str(debian.parent))
    assert find_stunnel() == debian
    el = _program(tmp_path / "el", "stunnel")
    monkeypatch.setenv("PATH", os.pathsep.join([str(debian.parent), str(el.parent)]))
    assert find_stunnel() == el  # the name every packaging shares first
    conda = _program(tmp_path / "env" / "bin", "stunnel")
    assert find_stunnel() == conda  # the env's own first


def test_a_missing_stunnel_names_the_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "env" / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BinaryNotFound, match=r"stunnel not found: .*stunnel4.*conda-forge: stunnel"):
        find_stunnel()
