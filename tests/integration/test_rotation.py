"""Credential rotation under load (issue 7): jobs keep flowing, every one succeeds, and afterwards every
old credential is refused while the new ones work. The certificate authority rotates with them (issue 17):
the workers trust both between the phases, and the servers show the new one's certificates after the retire.

A real control plane (PostgreSQL, Valkey, SeaweedFS) and two real workers, as the cluster account; a
thread submits ``sleep`` jobs (each uploads an output to S3) through ``han-worker submit`` the whole
time. ``han-control-plane rotate`` runs in between, then ``rotate --retire``.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from han_worker.config import parse_worker_config
from han_worker.control_plane.admin_secrets import parse_secrets
from han_worker.control_plane.layout import pick_free_ports
from han_worker.private_files import write_private_json
from han_worker.selection.checks import postgres_check, redis_check, s3_check, worker_checks
from han_worker.selection.credentials import Credentials, parse_credentials
from han_worker.selection.endpoints import ServiceEndpoint
from han_worker.selection.policy import SelectionError
from han_worker.selection.probes import CheckFailed
from han_worker.selection.resolver import Selector
from han_worker.selection.tls import ca_fingerprint, ca_fingerprints, postgres_tls
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    WorkerProcess,
    han_worker,
    start_control_plane,
    start_worker,
    wait_for,
    worker_settings,
    write_private_file,
)

# Only services this module starts itself: `make test` runs it beside the tests that share the testbed.
pytestmark = pytest.mark.self_contained

# A loopback address where nothing listens: a Mac that refuses every connection at once.
NOTHING_LISTENS = "127.0.0.67"


def run_control_plane_command(env: UnprivilegedEnv, *args: str) -> tuple[int, str, str]:
    result = subprocess.run(
        env.argv("han-control-plane", *args), capture_output=True, text=True, timeout=180, check=False
    )
    return result.returncode, result.stdout, result.stderr


def rotate(env: UnprivilegedEnv, plane: RunningControlPlane, *args: str) -> dict[str, object]:
    code, out, err = run_control_plane_command(env, "rotate", "--state-dir", str(plane.state_dir), *args)
    assert code == 0, out + err
    return dict(json.loads(out))


def refused(check: object, endpoint: ServiceEndpoint) -> str | None:
    """The refusal's message, or None when the service accepted the credentials."""
    try:
        check(endpoint, 5.0)  # type: ignore[operator]
    except CheckFailed as exc:
        return str(exc)
    return None


def admin_checks(secrets: dict[str, dict[str, str]], trusted: str = "") -> dict[str, object]:
    """The admin users' checks, verifying the servers with ``trusted`` (default: the secrets' authority)."""
    pg, rd, s3 = secrets["postgres"], secrets["redis"], secrets["s3"]
    ca = trusted or secrets["tls"]["ca_cert"]
    return {
        "postgres": postgres_check(pg["superuser"], pg["superuser_password"], "postgres", ca, "secrets.json"),
        "redis": redis_check(rd["admin_user"], rd["admin_password"], ca, "secrets.json"),
        "s3": s3_check(s3["root_access_key"], s3["root_secret_key"], s3["bucket"], ca, "secrets.json"),
    }


def trusting(credentials: Credentials, authority: str) -> Credentials:
    """``credentials`` verifying the servers with ``authority`` only."""
    return replace(credentials, tls_ca_cert=authority)


def assert_servers_show(
    plane: RunningControlPlane, credentials: Credentials, shown: str, not_shown: str
) -> None:
    """Every service's certificate chains to ``shown`` and not to ``not_shown``: a client trusting only the
    latter is refused in its TLS handshake."""
    for name, check in worker_checks(trusting(credentials, shown)).items():
        assert refused(check, plane.service(name)) is None, f"{name} does not show the expected authority"
    for name, check in worker_checks(trusting(credentials, not_shown)).items():
        message = str(refused(check, plane.service(name)))
        assert VERIFY_FAILED.search(message), f"{name} accepted a client of the other authority: {message}"


VERIFY_FAILED = re.compile(r"certificate[ _]verify[ _]failed", re.IGNORECASE)


class Load(threading.Thread):
    """Submits a sleep job every ~0.3 s through the CLI (which reads the credentials file each time)."""

    def __init__(self, env: UnprivilegedEnv, config: Path) -> None:
        super().__init__(daemon=True)
        self.env, self.config = env, config
        self.stop = threading.Event()
        self.jobs: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            result = han_worker(self.env, "submit", "--config", str(self.config), "--kind", "sleep",
                                "--param", "seconds=0.2", timeout=60)  # fmt: skip
            if result.returncode == 0:
                self.jobs.append(result.stdout.strip())
            else:
                self.errors.append(result.stderr.strip()[-500:])
            self.stop.wait(0.3)


@pytest.fixture(scope="module")
def plane(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[RunningControlPlane]:
    running = start_control_plane(unprivileged_env, workdir / "control-plane")
    yield running
    running.shutdown()


@pytest.fixture(scope="module")
def config(unprivileged_env: UnprivilegedEnv, workdir: Path, plane: RunningControlPlane) -> Path:
    settings = worker_settings(plane, workdir / "spool", mode="pegasus", queues=["noop"])
    return write_private_file(unprivileged_env, workdir / "worker.json", json.dumps(settings))


@pytest.fixture(scope="module")
def workers(unprivileged_env: UnprivilegedEnv, config: Path) -> Iterator[list[WorkerProcess]]:
    running = [start_worker(unprivileged_env, config) for _index in range(2)]
    for worker in running:
        wait_for(lambda worker=worker: "serving noop on pegasus" in worker.output(), 60, "a worker to serve")
    yield running
    for worker in running:
        try:
            worker.stop(timeout=20)
        finally:
            worker.kill()


def test_rotation_under_load_loses_no_job_and_old_credentials_are_refused(
    unprivileged_env: UnprivilegedEnv, plane: RunningControlPlane, workers: list[WorkerProcess], config: Path
):
    env = unprivileged_env
    old_credentials: Credentials = plane.worker_credentials()
    old_secrets = plane.secrets
    old_ca = old_secrets["tls"]["ca_cert"]
    services = {name: plane.service(name) for name in ("postgres", "redis", "s3")}
    load = Load(env, config)
    load.start()
    try:
        wait_for(lambda: len(load.jobs) >= 5, 60, "jobs flowing before the rotation")

        begun = rotate(env, plane)
        assert begun["phase"] == "begin"
        assert begun["changed"] is True
        assert begun["generation"] == old_credentials.generation + 1
        new_credentials = plane.worker_credentials()
        assert new_credentials.generation == begun["generation"]
        assert new_credentials.s3.access_key != old_credentials.s3.access_key
        # A new authority, which the workers now trust beside the old one; the servers still show the old.
        new_ca = plane.secrets["tls"]["ca_cert"]
        assert new_ca != old_ca
        assert ca_fingerprints(new_credentials.tls_ca_cert) == [
            ca_fingerprint(new_ca),
            ca_fingerprint(old_ca),
        ]
        assert plane.endpoints["tls_ca_sha256"] == ca_fingerprint(old_ca)
        assert_servers_show(plane, new_credentials, shown=old_ca, not_shown=new_ca)
        # Between the phases: Redis and S3 accept both generations; PostgreSQL has one password per role.
        old_worker = worker_checks(old_credentials)
        assert refused(old_worker["redis"], services["redis"]) is None
        assert refused(old_worker["s3"], services["s3"]) is None
        assert "password authentication failed" in str(refused(old_worker["postgres"], services["postgres"]))
        for worker in workers:
            wait_for(lambda worker=worker: "credentials were rotated (generation 1 -> 2)" in worker.output(),
                     30, "each worker to notice the new credentials")  # fmt: skip

        jobs_at_retire = len(load.jobs)
        retired = rotate(env, plane, "--retire", "--wait-workers", "60")
        assert retired["changed"] is True
        assert "every registered worker uses generation 2" in retired["steps"]  # type: ignore[operator]
        assert "every server shows a certificate of the new authority" in retired["steps"]  # type: ignore[operator]
        wait_for(lambda: len(load.jobs) >= jobs_at_retire + 5, 60, "jobs flowing after the rotation")
    finally:
        load.stop.set()
        load.join(60)
    assert load.errors == []

    # Every job submitted before, during and after the rotation succeeded.
    ledger = plane.ledger()
    wait_for(lambda: all(ledger.status(job) == "succeeded" for job in load.jobs), 120,
             f"all {len(load.jobs)} jobs to succeed")  # fmt: skip
    assert len(load.jobs) >= 10

    # Afterwards: the servers show the new authority only, which alone the workers' file names.
    retired_credentials = plane.worker_credentials()
    assert retired_credentials.tls_ca_cert == new_ca
    assert plane.endpoints["tls_ca_sha256"] == ca_fingerprint(new_ca)
    assert_servers_show(plane, retired_credentials, shown=new_ca, not_shown=old_ca)
    # Every old credential, worker's and admin's, is refused by its service (past the TLS handshake, with
    # the new authority); the new ones work.
    for checks in (worker_checks(trusting(old_credentials, new_ca)), admin_checks(old_secrets, new_ca)):
        for name, check in checks.items():
            message = refused(check, services[name])
            assert message is not None, f"old {name} credentials still accepted"
            assert not VERIFY_FAILED.search(message), message
    for checks in (worker_checks(plane.worker_credentials()), admin_checks(plane.secrets)):
        for name, check in checks.items():
            assert refused(check, services[name]) is None, f"new {name} credentials refused"
    assert not (plane.state_dir / "secrets.previous.json").exists()
    for text in (plane.output(), *(worker.output() for worker in workers)):
        for secret in (old_credentials.redis.password, new_credentials.redis.password,
                       new_credentials.postgres.password, new_credentials.s3.secret_key):  # fmt: skip
            assert secret not in text


def test_a_second_retire_has_nothing_to_do(unprivileged_env: UnprivilegedEnv, plane: RunningControlPlane):
    report = rotate(unprivileged_env, plane, "--retire")
    assert report["changed"] is False
    assert report["steps"] == ["no rotation in progress: nothing to retire"]


def test_rotation_of_a_stopped_control_plane_is_refused_and_changes_nothing(
    unprivileged_env: UnprivilegedEnv, workdir: Path
):
    stopped = start_control_plane(unprivileged_env, workdir / "stopped")
    stopped.stop()
    before = parse_credentials(stopped.credentials, "credentials.json")
    secrets_before = (stopped.state_dir / "secrets.json").read_text()
    code, out, err = run_control_plane_command(
        unprivileged_env, "rotate", "--state-dir", str(stopped.state_dir)
    )
    assert code == 1, out + err
    assert "the control plane is not serving" in err
    assert "start it, then rotate" in err
    assert (stopped.state_dir / "secrets.json").read_text() == secrets_before
    assert parse_credentials(stopped.credentials, "credentials.json") == before


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--timeout", "0"), "argument --timeout: '0' must be a finite number of seconds > 0"),
        (
            ("--retire", "--wait-workers", "-1"),
            "argument --wait-workers: '-1' must be a finite number of seconds >= 0",
        ),
    ],
)
def test_bad_rotate_flags_exit_2_naming_the_flag(
    unprivileged_env: UnprivilegedEnv, workdir: Path, flags: tuple[str, ...], message: str
):
    code, out, err = run_control_plane_command(
        unprivileged_env, "rotate", "--state-dir", str(workdir / "nowhere"), *flags
    )
    assert code == 2, out + err
    assert message in err


def test_a_rotation_interrupted_after_recording_its_secrets_is_finished_by_the_next_start_and_run(
    unprivileged_env: UnprivilegedEnv, workdir: Path
):
    env, state = unprivileged_env, workdir / "interrupted"
    plane = start_control_plane(env, state)
    plane.stop()
    old = parse_secrets(plane.secrets, "secrets.json")
    new = old.rotated()
    # What `rotate` leaves if it dies right after recording the new generation: no service knows it yet.
    write_private_file(env, state / "secrets.previous.json", json.dumps(old.to_dict()))
    write_private_file(env, state / "secrets.json", json.dumps(new.to_dict()))

    plane = start_control_plane(env, state)  # PostgreSQL's superuser still has the old password
    try:
        assert (
            "an interrupted rotation had left the old superuser password; set the new one" in plane.output()
        ), plane.output()[-3000:]
        assert plane.worker_credentials().generation == new.generation
        # Started mid-rotation: the servers show the previous authority, the workers trust both.
        assert ca_fingerprints(plane.worker_credentials().tls_ca_cert) == [
            ca_fingerprint(new.tls_ca_cert),
            ca_fingerprint(old.tls_ca_cert),
        ]
        assert plane.endpoints["tls_ca_sha256"] == ca_fingerprint(old.tls_ca_cert)
        begun = rotate(env, plane)
        assert f"resuming the rotation to generation {new.generation}" in begun["steps"]  # type: ignore[operator]
        retired = rotate(env, plane, "--retire", "--wait-workers", "0")
        assert f"every old credential (generation {old.generation}) is refused" in retired["steps"]  # type: ignore[operator]
        assert "every server shows a certificate of the new authority" in retired["steps"]  # type: ignore[operator]
        assert plane.worker_credentials().tls_ca_cert == new.tls_ca_cert
        assert plane.endpoints["tls_ca_sha256"] == ca_fingerprint(new.tls_ca_cert)
        services = {name: plane.service(name) for name in ("postgres", "redis", "s3")}
        for name, check in admin_checks(plane.secrets).items():
            assert refused(check, services[name]) is None, f"new {name} admin credentials refused"
    finally:
        plane.shutdown()


@pytest.fixture
def role_with_new_password(plane: RunningControlPlane) -> Iterator[tuple[str, str]]:
    """A login role whose password has just changed, as a rotation's ALTER ROLE leaves the worker's."""
    role, password = f"han_refusal_{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    postgres, admin = plane.service("postgres"), plane.secrets["postgres"]

    def run(statement: sql.Composable) -> None:
        with psycopg.connect(postgres_tls(plane.secrets["tls"]["ca_cert"], "secrets.json"),
                             host=postgres.host, port=postgres.port, user=admin["superuser"],
                             password=admin["superuser_password"], dbname="postgres",
                             autocommit=True, connect_timeout=5) as connection:  # fmt: skip
            connection.execute(statement)

    run(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    yield role, password
    run(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_client_refused_just_before_a_rotation_publishes_its_file_reads_the_new_one(
    plane: RunningControlPlane, role_with_new_password: tuple[str, str], tmp_path: Path
):
    """Between a rotation's ALTER ROLE and its rewrite of credentials.json, a client holding the old file
    is refused by PostgreSQL (one password per role); it must wait for the file, not fail the submit."""
    role, new_password = role_with_new_password
    endpoints_file = shutil.copy(plane.state_dir / "endpoints.json", tmp_path / "endpoints.json")
    credentials_file = tmp_path / "credentials.json"

    def publish(password: str) -> None:
        document = plane.credentials
        document["postgres"] = {**document["postgres"], "user": role, "password": password}  # type: ignore[dict-item]
        write_private_json(credentials_file, document)

    publish("the-previous-generation-password")
    settings = worker_settings(plane, tmp_path / "spool", mode="pegasus")
    settings["pegasus"] = {"endpoints_file": str(endpoints_file), "credentials_file": str(credentials_file)}
    selector = Selector(parse_worker_config(settings, "test config"))

    # Without the file changing, the refusal stands: after the wait, with PostgreSQL's own message.
    started = time.monotonic()
    with pytest.raises(SelectionError, match="password authentication failed"):
        selector.choose_after_refusal(settle_seconds=0.5)
    assert time.monotonic() - started >= 0.5

    # The rotation publishes the new file 0.3 s after the refusal: the client chooses again with it.
    threading.Timer(0.3, publish, args=(new_password,)).start()
    choice = selector.choose_after_refusal(settle_seconds=5)
    assert choice.credentials.postgres.password == new_password
    assert [result for result in choice.probes if not result.ok] == []

    # In auto mode (the default) the refused Pegasus would be skipped for the Mac: the job would go there.
    publish("the-previous-generation-password")
    mac_ports = dict(zip(("postgres", "redis", "s3"), pick_free_ports(NOTHING_LISTENS, 3), strict=True))
    settings |= {"mode": "auto",
                 "mac": {"host": NOTHING_LISTENS, "ports": mac_ports, "credentials_file": str(credentials_file)}}  # fmt: skip
    selector = Selector(parse_worker_config(settings, "test config"))
    assert selector.choose().source == "mac"
    threading.Timer(0.3, publish, args=(new_password,)).start()
    choice = selector.choose_after_refusal(settle_seconds=5)
    assert (choice.source, choice.credentials.postgres.password) == ("pegasus", new_password)
