"""`han-control-plane run` as the cluster account, with real PostgreSQL, Redis (Valkey) and SeaweedFS S3.

Runs in direct launch mode on the Pegasus node's private address of the testbed (127.0.0.10).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import urllib3
from cryptography import x509
from minio import Minio
from minio.error import S3Error
from psycopg.conninfo import make_conninfo
from redis.backoff import NoBackoff
from redis.retry import Retry

from han_worker.control_plane.admin_secrets import generate_secrets
from han_worker.control_plane.hardening.auth import (
    REFUSED,
    UNREACHABLE,
    authentication_rows,
    postgres_plain_text_row,
    redis_plain_text_attempt,
    redis_plain_text_row,
    s3_plain_http_row,
)
from han_worker.control_plane.hardening.config import pg_hba_rows, redis_config_rows
from han_worker.control_plane.hardening.report import FAIL, PASS
from han_worker.control_plane.hardening.state import StateDocuments
from han_worker.control_plane.layout import Layout, pick_free_ports
from han_worker.control_plane.pki import Authority
from han_worker.control_plane.services import SEAWEED_INTERNAL_ADDRESS, SeaweedS3Service, valkey_socket
from han_worker.selection.checks import ProbeFailure, postgres_check, redis_check, s3_check, s3_client
from han_worker.selection.credentials import S3Credentials, parse_credentials
from han_worker.selection.endpoints import ServiceEndpoint, parse_endpoints
from han_worker.selection.redis_tls import PinnedSSLConnection, tls_redis
from han_worker.selection.tls import (
    TLSConfigError,
    ca_fingerprint,
    pinned_context,
    postgres_tls,
    s3_ssl_context,
)
from han_worker.store.artifacts import ArtifactStore, input_key
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    ADDRESS,
    RunningControlPlane,
    child_pids,
    reload_postgres,
    start_control_plane,
    worker_s3,
)

# Only services this module starts itself: `make test` runs it beside the tests that share the testbed.
pytestmark = pytest.mark.self_contained


@pytest.fixture(scope="module")
def control_plane(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[RunningControlPlane]:
    running = start_control_plane(unprivileged_env, workdir / "cp")
    yield running
    running.stop()


def listening_addresses(pids: set[int]) -> set[str]:
    output = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in output.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            found.add(line.split()[3].rsplit(":", 1)[0])
    return found


def test_publishes_endpoints_that_readers_accept(
    control_plane: RunningControlPlane, unprivileged_env: UnprivilegedEnv
):
    document = control_plane.endpoints
    parsed = parse_endpoints(document, "endpoints.json")
    assert parsed.source == "pegasus"
    assert parsed.epoch == 1
    assert parsed.slurm_job_id is None  # direct launch mode
    assert {service.host for service in parsed.services.values()} == {ADDRESS}
    # The real reader, as the owner of the file: exit 0 and the same endpoints.
    result = subprocess.run(
        unprivileged_env.argv(
            "han-worker",
            "endpoints",
            "--mode",
            "pegasus",
            "--json",
            "--endpoints-file",
            str(control_plane.state_dir / "endpoints.json"),
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    selection = json.loads(result.stdout)
    assert selection["source"] == "pegasus"
    assert selection["endpoints"]["services"] == document["services"]
    # credentials.json beside the endpoints file: the probes authenticate as the worker.
    details = {probe["service"]: probe["detail"] for probe in selection["probes"]}
    assert details == {
        "postgres": "SELECT 1 as han_worker on han ok",
        "redis": "PING as han_worker ok",
        "s3": "bucket han-artifacts reachable as " + control_plane.credentials["s3"]["access_key"],
    }


def test_pegasus_mode_with_a_wrong_password_exits_2_naming_the_service(
    control_plane: RunningControlPlane, unprivileged_env: UnprivilegedEnv
):
    wrong = control_plane.credentials
    wrong["redis"]["password"] = "a-wrong-password-of-some-length"
    wrong_file = control_plane.state_dir.parent / "wrong-credentials.json"
    wrong_file.write_text(json.dumps(wrong))
    shutil.chown(wrong_file, unprivileged_env.user, unprivileged_env.user)
    wrong_file.chmod(0o600)
    result = subprocess.run(
        unprivileged_env.argv(
            "han-worker", "endpoints", "--mode", "pegasus",
            "--endpoints-file", str(control_plane.state_dir / "endpoints.json"),
            "--credentials-file", str(wrong_file),
        ),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"unhealthy: redis {ADDRESS}:" in result.stderr
    assert "authentication failed for user han_worker" in result.stderr
    assert "Traceback" not in result.stderr
    assert "a-wrong-password" not in result.stderr


def test_secrets_files_are_private(control_plane: RunningControlPlane):
    assert stat.S_IMODE(control_plane.state_dir.stat().st_mode) == 0o700
    for name in ("secrets.json", "credentials.json", "endpoints.json"):
        path = control_plane.state_dir / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        assert path.stat().st_uid != 0, f"{name} must belong to the cluster account"


def test_credentials_file_holds_only_the_workers_share(control_plane: RunningControlPlane):
    credentials = parse_credentials(control_plane.credentials, "credentials.json")
    secrets = control_plane.secrets
    assert credentials.postgres.user == secrets["postgres"]["user"] != secrets["postgres"]["superuser"]
    text = json.dumps(control_plane.credentials)
    for admin_secret in (
        secrets["postgres"]["superuser_password"],
        secrets["redis"]["admin_password"],
        secrets["s3"]["root_secret_key"],
    ):
        assert admin_secret not in text


def test_services_listen_only_on_the_private_address(control_plane: RunningControlPlane):
    addresses = listening_addresses(child_pids(control_plane.process.pid))
    # SeaweedFS adds listeners on 127.0.0.1 (node-local) beside the address it is given; nothing else.
    assert ADDRESS in addresses
    assert addresses <= {ADDRESS, "127.0.0.1"}, addresses


def test_no_secret_in_any_process_argv(control_plane: RunningControlPlane):
    secrets = control_plane.secrets
    passwords = [
        value
        for service in ("postgres", "redis", "s3")
        for key, value in secrets[service].items()
        if "password" in key or "secret" in key
    ]
    assert len(passwords) == 6
    for pid in {control_plane.process.pid, *child_pids(control_plane.process.pid)}:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert not [password for password in passwords if password in cmdline], f"secret in argv of {pid}"


def test_worker_credentials_pass_the_authenticated_probes(control_plane: RunningControlPlane):
    credentials = parse_credentials(control_plane.credentials, "credentials.json")
    assert "SELECT 1" in postgres_check(
        credentials.postgres.user, credentials.postgres.password, credentials.postgres.database,
        credentials.tls_ca_cert, "credentials.json",
    )(control_plane.service("postgres"), 5)  # fmt: skip
    assert "PING" in redis_check(
        credentials.redis.user, credentials.redis.password, credentials.tls_ca_cert, "credentials.json"
    )(control_plane.service("redis"), 5)
    assert "reachable" in s3_check(
        credentials.s3.access_key, credentials.s3.secret_key, credentials.s3.bucket,
        credentials.tls_ca_cert, "credentials.json",
    )(control_plane.service("s3"), 5)  # fmt: skip


@pytest.mark.parametrize("service", ["postgres", "redis", "s3"])
def test_wrong_credentials_are_refused_with_a_clear_message(control_plane: RunningControlPlane, service: str):
    credentials = parse_credentials(control_plane.credentials, "credentials.json")
    wrong = "not-the-password-at-all"
    check = {
        "postgres": postgres_check(
            credentials.postgres.user, wrong, credentials.postgres.database, credentials.tls_ca_cert, "c"
        ),
        "redis": redis_check(credentials.redis.user, wrong, credentials.tls_ca_cert, "c"),
        "s3": s3_check(credentials.s3.access_key, wrong, credentials.s3.bucket, credentials.tls_ca_cert, "c"),
    }[service]
    with pytest.raises(ProbeFailure) as failure:
        check(control_plane.service(service), 5)
    message = str(failure.value)
    assert message.startswith(f"{service} {ADDRESS}:")
    assert wrong not in message
    assert {
        "postgres": "password authentication failed",
        "redis": "authentication failed",
        "s3": "SignatureDoesNotMatch",
    }[service] in message


def test_anonymous_clients_are_refused(control_plane: RunningControlPlane):
    endpoint = control_plane.service("redis")
    with pytest.raises(redis.AuthenticationError):
        tls_redis(endpoint.host, endpoint.port, control_plane.worker_credentials().tls_ca_cert, "c").ping()
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(
            host=ADDRESS, port=control_plane.service("postgres").port, user="postgres", connect_timeout=5,
            sslmode="require", gssencmode="disable",
        )  # fmt: skip


def worker_session(
    control_plane: RunningControlPlane, tls: str, **options: Any
) -> psycopg.Connection[tuple[Any, ...]]:
    """A session of the worker's role with its valid password, with these TLS settings."""
    credentials = parse_credentials(control_plane.credentials, "credentials.json")
    conninfo = make_conninfo(tls, **{"host": ADDRESS, **options})
    return psycopg.connect(
        conninfo, port=control_plane.service("postgres").port, user=credentials.postgres.user,
        password=credentials.postgres.password, dbname=credentials.postgres.database, connect_timeout=5,
    )  # fmt: skip


def test_postgres_sessions_are_tls_verified_against_the_control_planes_authority(
    control_plane: RunningControlPlane,
):
    credentials = parse_credentials(control_plane.credentials, "credentials.json")
    with worker_session(control_plane, postgres_tls(credentials.tls_ca_cert, "credentials.json")) as session:
        row = session.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None
    assert row[0] is True
    assert row[1] in ("TLSv1.2", "TLSv1.3")
    assert control_plane.endpoints["tls_ca_sha256"] == ca_fingerprint(credentials.tls_ca_cert)


def test_postgres_refuses_plain_text_even_with_the_right_password(control_plane: RunningControlPlane):
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba.conf entry .* no encryption"):
        worker_session(control_plane, "sslmode=disable gssencmode=disable")


def test_a_client_verifying_against_another_authority_is_refused(control_plane: RunningControlPlane):
    other = Authority("another control plane's CA").cert_pem.decode()
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        worker_session(control_plane, postgres_tls(other, "another credentials.json"))


def test_a_client_dialling_a_name_the_certificate_does_not_hold_is_refused(
    control_plane: RunningControlPlane,
):
    credentials = parse_credentials(control_plane.credentials, "credentials.json")
    tls = postgres_tls(credentials.tls_ca_cert, "credentials.json")
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        worker_session(control_plane, tls, hostaddr=ADDRESS, host="impostor.example")


def test_harden_checks_plain_text_row_passes_on_a_tls_only_postgres(control_plane: RunningControlPlane):
    state = StateDocuments.read(Layout(control_plane.state_dir))
    row = postgres_plain_text_row(state, timeout=5)
    assert row.result == PASS, row
    assert "no encryption" in row.detail


def test_harden_checks_plain_text_row_fails_on_a_postgres_weakened_to_accept_it(
    control_plane: RunningControlPlane,
):
    data_dir = control_plane.state_dir / "data" / "postgres"
    hba = data_dir / "pg_hba.conf"
    original = hba.read_text()
    state = StateDocuments.read(Layout(control_plane.state_dir))
    try:
        hba.write_text(original + "host all all 127.0.0.0/8 scram-sha-256\n")
        reload_postgres(data_dir)
        row = postgres_plain_text_row(state, timeout=5)
        assert row.result == FAIL, row
        assert "ACCEPTS plain text" in row.detail
        assert "password authentication failed" in row.detail
        assert [r.result for r in pg_hba_rows(state)] == [FAIL]
    finally:
        hba.write_text(original)
        reload_postgres(data_dir)
    assert postgres_plain_text_row(state, timeout=5).result == PASS


# -- Redis: Valkey on a unix socket, stunnel's TLS on the published port ---------------------------------


def service_pids(control_plane: RunningControlPlane, program: str) -> set[int]:
    """The supervisor's children whose executable's name starts with ``program``."""
    found = set()
    for pid in child_pids(control_plane.process.pid):
        try:
            if Path(os.readlink(f"/proc/{pid}/exe")).name.startswith(program):
                found.add(pid)
        except OSError:
            continue
    return found


def tcp_listeners(pids: set[int]) -> list[str]:
    output = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [line for line in output.splitlines() if any(f"pid={pid}," in line for pid in pids)]


def test_valkey_has_no_tcp_listener_and_stunnel_holds_the_published_port(control_plane: RunningControlPlane):
    valkey, stunnel = service_pids(control_plane, "valkey"), service_pids(control_plane, "stunnel")
    assert valkey, child_pids(control_plane.process.pid)
    assert stunnel, child_pids(control_plane.process.pid)
    assert tcp_listeners(valkey) == []
    published = control_plane.service("redis")
    assert [line.split()[3] for line in tcp_listeners(stunnel)] == [f"{published.host}:{published.port}"]
    socket_path = valkey_socket(Layout(control_plane.state_dir))
    assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o700


def test_the_worker_reaches_redis_over_tls_with_its_own_user(control_plane: RunningControlPlane):
    client = control_plane.redis_worker(decode_responses=True)
    try:
        assert client.acl_whoami() == control_plane.worker_credentials().redis.user
        client.set("han:tls-probe", "1")
        assert client.get("han:tls-probe") == "1"
        connection = client.connection_pool.get_connection()
        try:
            assert isinstance(connection, PinnedSSLConnection)
            assert connection._sock is not None
            assert connection._sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[attr-defined]
        finally:
            client.connection_pool.release(connection)
    finally:
        client.close()


def test_redis_refuses_plain_text_on_the_published_port(control_plane: RunningControlPlane):
    published = control_plane.service("redis")
    result, detail = redis_plain_text_attempt(published.host, published.port, timeout=5)
    assert result == REFUSED, detail
    state = StateDocuments.read(Layout(control_plane.state_dir))
    assert redis_plain_text_row(state, timeout=5).result == PASS
    credentials = control_plane.worker_credentials()
    with pytest.raises(redis.ConnectionError):  # the right password, in plain text: cut off
        redis.Redis(
            published.host, published.port, username=credentials.redis.user,
            password=credentials.redis.password, socket_timeout=5, retry=Retry(NoBackoff(), 0),
        ).ping()  # fmt: skip


def test_a_redis_client_without_our_authority_is_refused(control_plane: RunningControlPlane):
    """redis-py's own SSL client (the system's trust store, no CA of ours), and ours with another CA."""
    published, credentials = control_plane.service("redis"), control_plane.worker_credentials()
    options = {"username": credentials.redis.user, "password": credentials.redis.password,
               "socket_timeout": 5, "retry": Retry(NoBackoff(), 0)}  # fmt: skip
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis.Redis(published.host, published.port, ssl=True, **options).ping()  # type: ignore[arg-type]
    other = Authority("another control plane's CA").cert_pem.decode()
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        tls_redis(published.host, published.port, other, "another credentials.json", **options).ping()
    with pytest.raises(TLSConfigError, match="Redis is reached over TLS only"):
        tls_redis(published.host, published.port, "", "an old credentials.json", **options)


def test_a_redis_client_dialling_a_name_the_certificate_does_not_hold_is_refused(
    control_plane: RunningControlPlane,
):
    published, ca_pem = control_plane.service("redis"), control_plane.worker_credentials().tls_ca_cert
    with (
        socket.create_connection((published.host, published.port), timeout=5) as plain,
        pytest.raises(ssl.SSLCertVerificationError, match="match"),
    ):
        pinned_context(ca_pem).wrap_socket(plain, server_hostname="impostor.example")
    with socket.create_connection((published.host, published.port), timeout=5) as plain:
        pinned_context(ca_pem).wrap_socket(plain, server_hostname=published.host).close()


def test_harden_check_fails_on_a_valkey_weakened_to_listen_in_plain_text(control_plane: RunningControlPlane):
    layout = Layout(control_plane.state_dir)
    state = StateDocuments.read(layout)
    target = f"redis {ADDRESS}:{control_plane.service('redis').port}"
    assert {row.target: row.result for row in redis_config_rows(state, timeout=5)}[f"{target} port"] == PASS
    admin = control_plane.redis_admin()
    (plain_port,) = pick_free_ports(ADDRESS, 1)
    try:
        admin.config_set("bind", ADDRESS)
        admin.config_set("port", plain_port)
        rows = {row.target: row for row in redis_config_rows(state, timeout=5)}
        assert rows[f"{target} port"].result == FAIL, rows
        assert f"listens on TCP port {plain_port}" in rows[f"{target} port"].detail
        weakened = replace(state, services={**state.services, "redis": (ADDRESS, plain_port)})
        row = redis_plain_text_row(weakened, timeout=5)
        assert row.result == FAIL, row
        assert "ACCEPTS plain text" in row.detail
        assert "NOAUTH" in row.detail
    finally:
        admin.config_set("port", 0)
        admin.close()
    assert redis_plain_text_attempt(ADDRESS, plain_port, timeout=2)[0] == UNREACHABLE


def test_harden_check_fails_when_valkeys_socket_directory_is_opened(control_plane: RunningControlPlane):
    layout = Layout(control_plane.state_dir)
    state, directory = StateDocuments.read(layout), valkey_socket(layout).parent
    owner = directory.stat().st_uid  # the cluster user's (the test runs as root)
    rows = [row for row in redis_config_rows(state, 5, owner) if row.target == str(directory)]
    assert [row.result for row in rows] == [PASS]
    try:
        directory.chmod(0o755)
        rows = [row for row in redis_config_rows(state, 5, owner) if row.target == str(directory)]
        assert [row.result for row in rows] == [FAIL]
        assert "0755" in rows[0].detail
    finally:
        directory.chmod(0o700)


# -- S3: HTTPS only ------------------------------------------------------------------------------------


def plain_http_get(host: str, port: int, path: str) -> bytes:
    """A plain-HTTP request on a raw socket and everything the server sends before it closes."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    return reply


def test_s3_refuses_plain_http_on_its_published_port(control_plane: RunningControlPlane):
    s3 = control_plane.service("s3")
    bucket = control_plane.worker_credentials().s3.bucket
    # weed also binds the S3 port on 127.0.0.1 when it is bound elsewhere: that copy must be HTTPS too.
    for host in (s3.host, "127.0.0.1"):
        reply = plain_http_get(host, s3.port, f"/{bucket}?list-type=2")
        assert reply == b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
    state = StateDocuments.read(Layout(control_plane.state_dir))
    row = s3_plain_http_row(state, timeout=5)
    assert row.result == PASS, row
    assert "fixed refusal" in row.detail
    s3_rows = [row for row in authentication_rows(state, timeout=5) if row.target.startswith("s3 ")]
    assert len(s3_rows) == 5
    assert all(row.result == PASS for row in s3_rows), s3_rows  # the anonymous attempts went over HTTPS


def test_s3_serves_the_control_planes_certificate_over_tls_1_2_or_newer(control_plane: RunningControlPlane):
    s3, credentials = control_plane.service("s3"), control_plane.worker_credentials()
    context = s3_ssl_context(credentials.tls_ca_cert, "credentials.json")
    with (
        socket.create_connection((s3.host, s3.port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname=s3.host) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        served = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
    served.verify_directly_issued_by(x509.load_pem_x509_certificate(credentials.tls_ca_cert.encode()))
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == [ADDRESS]


@pytest.mark.parametrize("trust", ["the system's store", "another authority"])
def test_an_s3_client_that_does_not_trust_our_authority_is_refused(
    control_plane: RunningControlPlane, trust: str
):
    s3, credentials = control_plane.service("s3"), control_plane.worker_credentials()
    if trust == "another authority":
        other = Authority("another control plane's CA").cert_pem.decode()
        client = s3_client(s3, credentials.s3, ca_cert=other, origin="another credentials.json", timeout=5)
    else:
        http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", retries=urllib3.Retry(0), timeout=5)
        client = Minio(
            s3.address, access_key=credentials.s3.access_key, secret_key=credentials.s3.secret_key,
            secure=True, http_client=http,
        )  # fmt: skip
    with pytest.raises(urllib3.exceptions.MaxRetryError, match="certificate verify failed"):
        client.bucket_exists(credentials.s3.bucket)


def test_an_s3_client_dialling_a_name_the_certificate_does_not_hold_is_refused(
    control_plane: RunningControlPlane,
):
    s3, credentials = control_plane.service("s3"), control_plane.worker_credentials()
    http = urllib3.PoolManager(
        cert_reqs="CERT_REQUIRED", ssl_context=s3_ssl_context(credentials.tls_ca_cert, "credentials.json"),
        server_hostname="impostor.example", retries=urllib3.Retry(0), timeout=5,
    )  # fmt: skip
    with pytest.raises(urllib3.exceptions.MaxRetryError, match=r"Hostname mismatch|doesn't match"):
        http.request("GET", f"https://{s3.address}/")


def test_the_workers_key_reaches_only_the_artifacts_bucket_over_https(control_plane: RunningControlPlane):
    credentials = control_plane.worker_credentials()
    root_keys = control_plane.secrets["s3"]
    root = s3_client(
        control_plane.service("s3"),
        S3Credentials(root_keys["root_access_key"], root_keys["root_secret_key"], root_keys["bucket"]),
        ca_cert=credentials.tls_ca_cert, origin="secrets.json", timeout=5,
    )  # fmt: skip
    if not root.bucket_exists("another-bucket"):
        root.make_bucket("another-bucket")
    root.put_object("another-bucket", "private.txt", io.BytesIO(b"not the workers'"), 16)
    worker = worker_s3(control_plane, credentials)
    for attempt in (
        lambda: next(iter(worker.list_objects("another-bucket")), None),
        lambda: worker.get_object("another-bucket", "private.txt"),
        lambda: worker.put_object("another-bucket", "w.txt", io.BytesIO(b"w"), 1),
    ):
        with pytest.raises(S3Error) as denied:
            attempt()
        assert denied.value.code == "AccessDenied"
    assert worker.bucket_exists(credentials.s3.bucket)


def test_a_pose_input_and_its_results_make_the_round_trip_over_https(
    control_plane: RunningControlPlane, tmp_path: Path
):
    credentials = control_plane.worker_credentials()
    store = ArtifactStore(worker_s3(control_plane, credentials), credentials.s3.bucket)
    photo, result = tmp_path / "photo.jpg", tmp_path / "keypoints.json"
    photo.write_bytes(os.urandom(2 * 1024 * 1024))
    result.write_text(json.dumps({"keypoints": [[1, 2, 0.9]]}))
    uploaded = store.upload(input_key("job-s3-tls", "photo.jpg"), photo)
    downloaded = store.download_inputs({"photo.jpg": uploaded.to_dict()}, tmp_path / "inputs")
    assert downloaded["photo.jpg"].read_bytes() == photo.read_bytes()
    outputs = store.upload_outputs("job-s3-tls", 1, {"keypoints.json": result})
    back = store.download(outputs["keypoints.json"], tmp_path / "back.json")
    assert back.read_text() == result.read_text()


@pytest.fixture
def plain_http_weed(unprivileged_env: UnprivilegedEnv, tmp_path: Path) -> Iterator[ServiceEndpoint]:
    """A real weed, S3 gateway and all, started the way the control plane starts it but without the TLS
    flags: an S3 port weakened on purpose to answer plain HTTP."""
    ports = pick_free_ports(ADDRESS, 8, also_free_on=[SEAWEED_INTERNAL_ADDRESS])
    weed = SeaweedS3Service(
        "s3", ADDRESS, ports[0], tmp_path / "weed.log", server=unprivileged_env.bin_dir / "weed",
        data_dir=tmp_path / "weed", secrets=generate_secrets(), internal_ports=tuple(ports[1:]),
    )  # fmt: skip
    weed.prepare()
    argv = [arg for arg in weed.argv if not arg.startswith(("-s3.cert.file=", "-s3.key.file="))]
    with weed.log_file.open("w") as log:
        process = subprocess.Popen(argv, cwd=weed.cwd, env=weed.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield weed.endpoint
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_harden_checks_plain_http_row_fails_on_an_s3_port_that_answers_plain_http(
    control_plane: RunningControlPlane, plain_http_weed: ServiceEndpoint
):
    state = StateDocuments.read(Layout(control_plane.state_dir))
    state.services["s3"] = (plain_http_weed.host, plain_http_weed.port)
    deadline = time.monotonic() + 60
    row = s3_plain_http_row(state, timeout=5)
    while row.detail.startswith("cannot verify") and time.monotonic() < deadline:  # weed is starting
        time.sleep(0.5)
        row = s3_plain_http_row(state, timeout=5)
    assert row.result == FAIL, row
    bucket = control_plane.worker_credentials().s3.bucket
    assert row.target == f"s3 {plain_http_weed.address} plain HTTP GET /{bucket}"
    assert "ACCEPTS plain HTTP: answered plain HTTP: HTTP/1.1 403 Forbidden" in row.detail


def test_the_worker_has_least_privilege(control_plane: RunningControlPlane):
    credentials = parse_credentials(control_plane.credentials, "credentials.json")
    client = control_plane.redis_worker()
    client.set("han:probe", "1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("other:probe", "1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushall()
    s3 = worker_s3(control_plane, credentials)
    with pytest.raises(S3Error) as denied:
        s3.make_bucket("someone-elses-bucket")
    assert denied.value.code == "AccessDenied"


def test_a_second_supervisor_on_the_same_state_dir_refuses(
    control_plane: RunningControlPlane, unprivileged_env: UnprivilegedEnv
):
    argv = unprivileged_env.argv(
        "han-control-plane", "run", "--state-dir", str(control_plane.state_dir), "--bind", ADDRESS
    )
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "another han-control-plane is running on this state directory" in result.stderr
    assert control_plane.endpoints["stale"] is False, "the loser must not touch the winner's file"


def test_sigterm_stops_it_and_the_next_start_keeps_the_data(unprivileged_env: UnprivilegedEnv, workdir: Path):
    first = start_control_plane(unprivileged_env, workdir / "restart")
    credentials = parse_credentials(first.credentials, "credentials.json")
    postgres = first.service("postgres")
    dsn = {
        "user": credentials.postgres.user,
        "password": credentials.postgres.password,
        "dbname": credentials.postgres.database,
        "host": ADDRESS,
    }
    tls = postgres_tls(credentials.tls_ca_cert, "credentials.json")
    with psycopg.connect(tls, port=postgres.port, **dsn) as connection:
        connection.execute("CREATE TABLE kept (value text)")
        connection.execute("INSERT INTO kept VALUES ('before restart')")
    first.redis_worker().set("han:kept", "before restart")
    client = worker_s3(first, credentials)
    client.put_object(credentials.s3.bucket, "kept.txt", io.BytesIO(b"before restart"), 14)
    children = child_pids(first.process.pid)

    assert first.stop() == 0
    assert first.endpoints["stale"] is True
    assert "database system is shut down" in (first.state_dir / "logs" / "postgres.log").read_text()
    assert "DB saved on disk" in (first.state_dir / "logs" / "redis.log").read_text()
    # SeaweedFS would wait out its filer's 15 s gRPC timeout: it is killed after its short grace, and the
    # next start finds its object (below).
    assert "s3: killing it 3s after its stop signal, as planned" in first.output()
    assert all(not Path(f"/proc/{pid}/exe").exists() for pid in children), "a service outlived its supervisor"

    second = start_control_plane(unprivileged_env, workdir / "restart")
    try:
        assert second.endpoints["epoch"] == 2
        credentials = parse_credentials(second.credentials, "credentials.json")
        # The authority is kept across starts: the first start's credentials still verify the server.
        assert credentials.tls_ca_cert == parse_credentials(first.credentials, "credentials.json").tls_ca_cert
        with psycopg.connect(tls, port=second.service("postgres").port, **dsn) as connection:
            assert connection.execute("SELECT value FROM kept").fetchall() == [("before restart",)]
        assert second.redis_worker().get("han:kept") == b"before restart"
        client = worker_s3(second, credentials)
        assert client.get_object(credentials.s3.bucket, "kept.txt").read() == b"before restart"
    finally:
        assert second.stop() == 0
    # PostgreSQL was shut down cleanly the first time: the second start needed no recovery.
    assert (
        "database system was not properly shut down"
        not in (second.state_dir / "logs" / "postgres.log").read_text()
    )


def test_harden_check_knocks_on_metrics_and_is_refused(control_plane: RunningControlPlane) -> None:
    """/metrics is among what harden-check tries without the right password: 401 to each attempt."""
    state = StateDocuments.read(Layout(control_plane.state_dir))
    rows = [row for row in authentication_rows(state, timeout=5) if row.target.startswith("metrics ")]
    assert [row.target.split(" ", 2)[2] for row in rows] == [
        "no credentials",
        "han_metrics/minioadmin",
        "admin/admin",
    ]
    assert all((row.result, row.detail) == (PASS, "refused: HTTP 401") for row in rows), rows
