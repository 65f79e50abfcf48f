"""The control plane's /metrics over real HTTPS on the loopback: basic auth against the secrets file (401 and
nothing else without the right credentials, whatever the path or method), the rotation's two generations, the
endpoints document's ``metrics`` entry and the file_sd target. The figures' reading from a real ledger and
registry, and a real Prometheus scraping them, are tested in tests/integration/test_metrics.py."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import stat
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from han_worker.control_plane.admin_secrets import (
    SecretsError,
    ensure_secrets,
    generate_secrets,
    load_secrets,
    parse_secrets,
)
from han_worker.control_plane.hardening.auth import ACCEPTED, REFUSED, Attempt, metrics_attempt
from han_worker.control_plane.hardening.report import PASS
from han_worker.control_plane.layout import Layout
from han_worker.control_plane.metrics_server import (
    AcceptedPasswords,
    CachedSuccessors,
    MetricsServer,
    Scrapes,
    ServerCertificate,
    publish_prometheus_files,
)
from han_worker.control_plane.services import write_server_certificate
from han_worker.control_plane.supervisor import metrics_targets
from han_worker.private_files import write_private_json
from han_worker.selection.endpoints import Endpoints, ServiceEndpoint, parse_endpoints

ADDRESS = "127.0.0.1"
EXPOSITION = "# HELP han_up A test figure.\n# TYPE han_up gauge\nhan_up 1.0\n"


class FixedScrapes(Scrapes):
    """A scrape that answers a fixed text: this module tests the HTTP side, not the snapshot."""

    def __init__(self) -> None:
        super().__init__(self._no_link)
        self.count = 0

    def _no_link(self) -> object:
        raise AssertionError("no link in this test")

    def exposition(self) -> str | None:
        self.count += 1
        return EXPOSITION


@pytest.fixture
def state(tmp_path: Path) -> Path:
    secrets = generate_secrets()
    write_private_json(tmp_path / "secrets.json", secrets.to_dict())
    return tmp_path


@pytest.fixture
def served(state: Path) -> Iterator[tuple[MetricsServer, ssl.SSLContext]]:
    secrets = load_secrets(state / "secrets.json")
    cert, key = write_server_certificate(secrets.authority(), "han control plane metrics", ADDRESS, state)
    passwords = AcceptedPasswords(state / "secrets.json", state / "secrets.previous.json")
    server = MetricsServer(ADDRESS, 0, ServerCertificate(cert, key), passwords, FixedScrapes())
    server.start()
    client_tls = ssl.create_default_context(cadata=secrets.tls_ca_cert)
    yield server, client_tls
    server.stop()


def request(
    served: tuple[MetricsServer, ssl.SSLContext], path: str = "/metrics", method: str = "GET",
    auth: tuple[str, str] | None = None, header: str | None = None,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    server, tls = served
    connection = http.client.HTTPSConnection(ADDRESS, server.port, context=tls, timeout=10)
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    if header is not None:
        headers["Authorization"] = header
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def credentials(state: Path) -> tuple[str, str]:
    secrets = load_secrets(state / "secrets.json")
    return secrets.metrics_user, secrets.metrics_password


def test_the_right_credentials_get_the_exposition(
    served: tuple[MetricsServer, ssl.SSLContext], state: Path
) -> None:
    status, headers, body = request(served, auth=credentials(state))
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    assert body.decode() == EXPOSITION
    assert "Python" not in headers["Server"]


@pytest.mark.parametrize(
    "case",
    [
        ("/metrics", "GET", None, None),
        ("/metrics", "GET", ("han_metrics", "not-the-password-at-all"), None),
        ("/metrics", "GET", ("someone", "<password>"), None),
        ("/metrics", "GET", ("han_metrics", ""), None),
        ("/metrics", "GET", None, "Bearer abc"),
        ("/metrics", "GET", None, "Basic !!!not-base64"),
        ("/metrics", "GET", None, "Basic " + base64.b64encode(b"no-colon").decode()),
        ("/", "GET", None, None),
        ("/other", "HEAD", None, None),
        ("/metrics", "POST", None, None),
        ("/metrics", "DELETE", None, None),
        ("/metrics", "BREW", None, None),
    ],
)
def test_anything_without_the_right_credentials_is_401_and_nothing_else(
    served: tuple[MetricsServer, ssl.SSLContext],
    state: Path,
    case: tuple[str, str, tuple[str, str] | None, str | None],
) -> None:
    path, method, auth, header = case
    if auth is not None and auth[1] == "<password>":
        auth = (auth[0], credentials(state)[1])  # the right password under another user name
    status, headers, body = request(served, path, method, auth, header)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic realm=")
    assert b"han_" not in body
    assert served[0].scrapes.count == 0  # type: ignore[attr-defined]


def test_authenticated_other_paths_and_methods_get_no_figures(
    served: tuple[MetricsServer, ssl.SSLContext], state: Path
) -> None:
    assert request(served, "/", auth=credentials(state))[0] == 404
    assert request(served, "/metrics", "POST", auth=credentials(state))[0] == 405
    assert served[0].scrapes.count == 0  # type: ignore[attr-defined]


def test_plain_http_gets_no_answer(served: tuple[MetricsServer, ssl.SSLContext]) -> None:
    connection = http.client.HTTPConnection(ADDRESS, served[0].port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            connection.getresponse().read()
    finally:
        connection.close()


def test_mid_rotation_both_generations_work_and_the_old_one_stops_when_retired(
    served: tuple[MetricsServer, ssl.SSLContext], state: Path
) -> None:
    old = load_secrets(state / "secrets.json")
    new = old.rotated()
    assert new.metrics_password != old.metrics_password
    write_private_json(state / "secrets.previous.json", old.to_dict())
    write_private_json(state / "secrets.json", new.to_dict())
    assert request(served, auth=(old.metrics_user, old.metrics_password))[0] == 200
    assert request(served, auth=(new.metrics_user, new.metrics_password))[0] == 200
    (state / "secrets.previous.json").unlink()
    assert request(served, auth=(old.metrics_user, old.metrics_password))[0] == 401
    assert request(served, auth=(new.metrics_user, new.metrics_password))[0] == 200


def test_a_secrets_file_from_before_metrics_gets_a_password_once(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    document = generate_secrets().to_dict()
    del document["metrics"]
    write_private_json(path, document)
    assert load_secrets(path).metrics_password == ""
    upgraded, created = ensure_secrets(path)
    assert not created
    assert len(upgraded.metrics_password) >= 16
    assert ensure_secrets(path)[0] == upgraded  # kept, not made again
    passwords = AcceptedPasswords(path, tmp_path / "absent.json")
    assert passwords.pairs() == ((b"han_metrics", upgraded.metrics_password.encode()),)


def test_an_empty_password_is_never_accepted(tmp_path: Path) -> None:
    document = generate_secrets().to_dict()
    del document["metrics"]
    write_private_json(tmp_path / "secrets.json", document)
    passwords = AcceptedPasswords(tmp_path / "secrets.json", tmp_path / "none.json")
    assert passwords.pairs() == ()
    empty = "Basic " + base64.b64encode(b"han_metrics:").decode()
    assert not passwords.check(empty)


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"user": "han_metrics", "password": "short"}, "at least 16"),
        ({"user": "han_metrics", "password": "changeme"}, "well-known default"),
        ({"user": "Bad User", "password": "x" * 20}, "must start with a letter"),
        ({"password": "x" * 20}, "'metrics.user' is missing"),
    ],
)
def test_a_bad_metrics_section_is_refused_with_its_field(section: dict[str, str], problem: str) -> None:
    document = generate_secrets().to_dict()
    document["metrics"] = section
    with pytest.raises(SecretsError, match=problem):
        parse_secrets(document, "secrets.json")


def endpoints(metrics: ServiceEndpoint | None) -> Endpoints:
    return Endpoints(
        schema=1, source="pegasus", epoch=12, slurm_job_id="77", node="c1",
        started_at=datetime(2026, 12, 6, 16, 0, tzinfo=timezone.utc), expires_at=None, stale=False,
        services={name: ServiceEndpoint("10.1.0.5", port) for name, port in
                  (("postgres", 5001), ("redis", 5002), ("s3", 5003))},
        metrics=metrics,
    )  # fmt: skip


def test_the_endpoints_document_names_metrics_beside_the_services_not_among_them() -> None:
    document = endpoints(ServiceEndpoint("10.1.0.5", 5004)).to_dict()
    assert document["metrics"] == {"host": "10.1.0.5", "port": 5004}
    assert set(document["services"]) == {"postgres", "redis", "s3"}  # type: ignore[arg-type]
    parsed = parse_endpoints(json.loads(json.dumps(document)), "endpoints.json")
    assert parsed.metrics == ServiceEndpoint("10.1.0.5", 5004)
    del document["metrics"]  # a supervisor before /metrics
    assert parse_endpoints(document, "endpoints.json").metrics is None


@pytest.mark.parametrize(
    ("metrics", "problem"),
    [({"host": "0.0.0.0", "port": 1}, "'metrics.host'"), ({"host": "h", "port": 0}, "'metrics.port'"),
     ("h:1", "'metrics' must be an object")],
)  # fmt: skip
def test_a_bad_metrics_entry_is_refused_with_its_field(metrics: object, problem: str) -> None:
    document = endpoints(None).to_dict()
    document["metrics"] = metrics
    with pytest.raises(ValueError, match=problem):
        parse_endpoints(document, "endpoints.json")


def test_the_file_sd_target_is_host_port_labelled_with_source_and_epoch() -> None:
    assert metrics_targets(endpoints(ServiceEndpoint("10.1.0.5", 5004))) == [
        {"targets": ["10.1.0.5:5004"], "labels": {"source": "pegasus", "epoch": "12"}}
    ]
    assert metrics_targets(replace(endpoints(ServiceEndpoint("::1", 9)), source="mac")) == [
        {"targets": ["[::1]:9"], "labels": {"source": "mac", "epoch": "12"}}
    ]


def test_slurm_is_asked_for_successors_at_most_every_ttl() -> None:
    asked: list[float] = []

    def count(_endpoints: Endpoints) -> int:
        asked.append(time.monotonic())
        return len(asked)

    cached = CachedSuccessors(count)
    plane = endpoints(None)
    assert [cached(plane) for _call in range(5)] == [1] * 5
    assert len(asked) == 1


def test_a_new_certificate_in_its_files_is_served_at_the_next_connection(
    served: tuple[MetricsServer, ssl.SSLContext], state: Path
) -> None:
    old = load_secrets(state / "secrets.json")
    new = old.rotated()  # a new authority, as a rotation's retire phase switches to
    write_server_certificate(new.authority(), "han control plane metrics", ADDRESS, state)
    trusting_new = ssl.create_default_context(cadata=new.tls_ca_cert)
    assert request((served[0], trusting_new), auth=credentials(state))[0] == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        request(served, auth=credentials(state))  # the old authority's clients no longer trust it


def test_the_files_for_prometheus_are_written_once_and_name_both_authorities_mid_rotation(
    tmp_path: Path,
) -> None:
    layout = Layout(tmp_path)
    old = generate_secrets()
    assert publish_prometheus_files(layout, old, None) == ["metrics-password", "metrics-ca.pem"]
    assert publish_prometheus_files(layout, old, None) == []
    new = old.rotated()
    assert publish_prometheus_files(layout, new, old) == ["metrics-password", "metrics-ca.pem"]
    assert layout.metrics_password_file.read_text() == new.metrics_password
    assert layout.metrics_ca_file.read_text().count("BEGIN CERTIFICATE") == 2
    assert stat.S_IMODE(layout.metrics_password_file.stat().st_mode) == 0o600


def test_harden_checks_knock_is_refused_and_the_right_password_would_be_accepted(
    served: tuple[MetricsServer, ssl.SSLContext], state: Path
) -> None:
    """harden-check's /metrics attempts against the real server: refused without credentials and with a
    default password; the same request with the right password is accepted, so the check can fail."""
    server, tls = served
    for login in (None, ("han_metrics", "minioadmin"), ("admin", "admin")):
        assert metrics_attempt(ADDRESS, server.port, login, tls, 5) == (REFUSED, "HTTP 401")
    assert metrics_attempt(ADDRESS, server.port, credentials(state), tls, 5)[0] == ACCEPTED
    row = Attempt("metrics", f"{ADDRESS}:{server.port}", "no credentials", REFUSED, "HTTP 401").row()
    assert (row.result, row.detail) == (PASS, "refused: HTTP 401")
