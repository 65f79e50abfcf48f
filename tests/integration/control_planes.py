"""Real control planes and workers for tests and benchmarks, run as the cluster account.

``start_control_plane`` runs ``han-control-plane run`` (PostgreSQL, Valkey, SeaweedFS S3) and returns
once its endpoints are published; ``start_worker`` runs ``han-worker run`` with a configuration file.
The helpers that talk to the services (ledger, Redis) connect as the test process (root), reading the
control plane's files directly: root may not use the trusted-file readers on the cluster user's files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from minio import Minio

from han_worker.control_plane.hardening.listen import parse_ss
from han_worker.selection.checks import s3_client
from han_worker.selection.credentials import Credentials, parse_credentials
from han_worker.selection.endpoints import ServiceEndpoint, parse_endpoints
from han_worker.selection.redis_tls import tls_redis
from han_worker.selection.resolver import Choice
from han_worker.selection.tls import postgres_tls
from han_worker.store.artifacts import ArtifactStore
from han_worker.store.ledger import JobRecord, Ledger
from han_worker.store.link import Link, redis_client
from han_worker.store.queues import Queues
from tests.integration.conftest import UnprivilegedEnv

ADDRESS = "127.0.0.10"  # the Pegasus node's private address in the testbed
MAC_ADDRESS = "127.0.0.20"  # the Mac's LAN address in the testbed


@dataclass
class RunningControlPlane:
    process: subprocess.Popen[str]
    state_dir: Path
    log: Path

    @property
    def endpoints(self) -> dict[str, object]:
        return dict(json.loads((self.state_dir / "endpoints.json").read_text()))

    def service(self, name: str) -> ServiceEndpoint:
        return parse_endpoints(self.endpoints, "endpoints.json").services[name]

    @property
    def credentials(self) -> dict[str, object]:
        return dict(json.loads((self.state_dir / "credentials.json").read_text()))

    @property
    def secrets(self) -> dict[str, dict[str, str]]:
        return dict(json.loads((self.state_dir / "secrets.json").read_text()))

    def output(self) -> str:
        return self.log.read_text()

    def request_stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> int:
        self.request_stop()
        return self.process.wait(timeout)

    def shutdown(self, timeout: float = 60) -> None:
        """For teardown: stop, and kill if that takes too long (its services die with it)."""
        try:
            self.stop(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)

    # -- talking to its services as the worker user (and, for Redis, as its admin) ----------------

    def worker_credentials(self) -> Credentials:
        return parse_credentials(self.credentials, "credentials.json")

    def ledger(self) -> Ledger:
        credentials, postgres = self.worker_credentials(), self.service("postgres")

        def connect() -> psycopg.Connection[tuple[Any, ...]]:
            return psycopg.connect(
                postgres_tls(credentials.tls_ca_cert, "credentials.json"),
                host=postgres.host, port=postgres.port, user=credentials.postgres.user,
                password=credentials.postgres.password, dbname=credentials.postgres.database,
                autocommit=True, connect_timeout=5,
            )  # fmt: skip

        return Ledger(connect)

    def redis_admin(self, timeout: float = 5) -> redis.Redis:
        """Valkey's admin user over TLS (stunnel), the server verified against the secrets' authority."""
        endpoint, admin = self.service("redis"), self.secrets["redis"]
        return tls_redis(
            endpoint.host, endpoint.port, self.secrets["tls"]["ca_cert"], "secrets.json",
            username=admin["admin_user"], password=admin["admin_password"],
            decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout,
        )  # fmt: skip

    def redis_worker(self, **options: Any) -> redis.Redis:
        """Valkey's worker user over TLS, the server verified against the authority in credentials.json."""
        credentials, endpoint = self.worker_credentials(), self.service("redis")
        return tls_redis(
            endpoint.host, endpoint.port, credentials.tls_ca_cert, "credentials.json",
            username=credentials.redis.user, password=credentials.redis.password, socket_timeout=5, **options,
        )  # fmt: skip

    def link_parts(self) -> tuple[Ledger, redis.Redis, Any]:
        """Ledger, Redis (worker user) and S3 client (worker key) of this control plane."""
        credentials = self.worker_credentials()
        return (
            self.ledger(),
            redis_client(self.service("redis"), credentials, 5),
            worker_s3(self, credentials),
        )

    def client_link(self) -> Link:
        """This control plane as a client that chose it sees it, its ledger migrated (built by hand: root may
        not use the trusted-file readers on the cluster user's files). The caller closes it."""
        credentials = self.worker_credentials()
        endpoints = parse_endpoints(self.endpoints, "endpoints.json")
        ledger, redis_connection, s3 = self.link_parts()
        ledger.migrate()
        return Link(
            Choice("pegasus", endpoints, credentials, "the test's own"), ledger, self.ledger(),
            Queues(redis_connection), ArtifactStore(s3, credentials.s3.bucket),
        )  # fmt: skip


def worker_s3(
    control_plane: RunningControlPlane, credentials: Credentials | None = None, timeout: float = 5
) -> Minio:
    """An S3 client with the workers' keys (these ``credentials``, else the control plane's credentials file),
    over HTTPS verified against the authority they carry, as a worker's."""
    credentials = credentials or control_plane.worker_credentials()
    return s3_client(
        control_plane.service("s3"), credentials.s3, ca_cert=credentials.tls_ca_cert,
        origin="credentials.json", timeout=timeout,
    )  # fmt: skip


def output_body(ledger: Ledger, s3: Minio, bucket: str, record: JobRecord, name: str) -> bytes:
    """The bytes of output ``name`` of the job of ``record`` wherever the record says they are: in the ledger
    itself (``inline``, a small output) or in the object store."""
    assert record.outputs is not None, record
    saved = record.outputs[name]
    if saved.get("inline") is True:
        data = ledger.inline_output(record.id, name)
        assert data is not None, (
            f"output {name} of job {record.id} is recorded inline, but the ledger has no bytes"
        )
        return data
    return bytes(s3.get_object(bucket, str(saved["key"])).read())


def start_control_plane(
    env: UnprivilegedEnv, state_dir: Path, *extra: str, address: str = ADDRESS
) -> RunningControlPlane:
    log = state_dir.parent / f"supervisor-{time.monotonic_ns()}.log"
    argv = env.argv("han-control-plane", "run", "--state-dir", str(state_dir), "--bind", address, *extra)
    with log.open("w") as handle:
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, text=True)
    running = RunningControlPlane(process, state_dir, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"han-control-plane exited with {process.returncode}:\n{running.output()}")
        try:
            # On a restart the previous run's file is there already: wait for this run's own log line.
            if running.endpoints.get("stale") is False and "published" in running.output():
                return running
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    running.stop()
    pytest.fail(f"no endpoints published within 90 s:\n{running.output()}")


# -- workers ----------------------------------------------------------------------------------------


def write_private_file(env: UnprivilegedEnv, path: Path, text: str, mode: int = 0o600) -> Path:
    """A file the cluster user owns (the worker's trusted-file readers refuse anything else)."""
    path.write_text(text)
    shutil.chown(path, env.user, env.user)
    path.chmod(mode)
    return path


def worker_settings(
    control_plane: RunningControlPlane | None, spool_dir: Path, /, **settings: object
) -> dict[str, object]:
    """A worker configuration with the short intervals tests need; ``settings`` override."""
    document: dict[str, object] = {
        "queues": ["noop"],
        "spool_dir": str(spool_dir),
        "lease_seconds": 3,
        "heartbeat_seconds": 0.5,
        "probe_interval_seconds": 1,
        "probe_timeout_seconds": 2,
        "flap_threshold": 2,
        "reconcile_seconds": 1,
        "drain_grace_seconds": 5,
    }
    if control_plane is not None:
        document["pegasus"] = {"endpoints_file": str(control_plane.state_dir / "endpoints.json")}
    document.update(settings)
    return document


@dataclass
class WorkerProcess:
    process: subprocess.Popen[str]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (drain), then SIGKILL if it has not exited within ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)


def start_worker(env: UnprivilegedEnv, config: Path, *args: str) -> WorkerProcess:
    log = config.parent / f"{config.stem}-{time.monotonic_ns()}.log"
    argv = env.argv("han-worker", "run", "--config", str(config), *args)
    with log.open("w") as handle:
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, text=True)
    return WorkerProcess(process, log)


@contextmanager
def serving_worker(env: UnprivilegedEnv, config: Path, *args: str) -> Iterator[WorkerProcess]:
    """A worker started with ``config`` once it serves (its log says so; it must not have exited), stopped
    when the block ends (killed if it does not stop within 15 s)."""
    started = start_worker(env, config, *args)
    wait_for(
        lambda: "serving noop" in started.output() or started.process.poll() is not None, 30, "the worker"
    )
    assert started.process.poll() is None, started.output()
    try:
        yield started
    finally:
        try:
            started.stop(timeout=15)
        except subprocess.TimeoutExpired:
            started.kill()


@contextmanager
def own_control_plane(env: UnprivilegedEnv, state_dir: Path, address: str) -> Iterator[RunningControlPlane]:
    """A test module's own control plane on ``address``, shut down when the block ends."""
    running = start_control_plane(env, state_dir, address=address)
    try:
        yield running
    finally:
        running.shutdown()


def han_worker(env: UnprivilegedEnv, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run one ``han-worker`` command as the cluster user and capture its output."""
    return subprocess.run(
        env.argv("han-worker", *args), capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition()`` until it returns something truthy; fail the test with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}")


def child_pids(parent: int) -> set[int]:
    """The processes whose parent is ``parent`` now (a supervisor's services, a keeper's child)."""
    output = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True, check=False
    ).stdout
    return {int(pid) for pid in output.split()}


def process_tree(root: int) -> set[int]:
    """``root`` and every process below it now (a supervisor and its services' own children)."""
    tree, frontier = {root}, [root]
    while frontier:
        children = child_pids(frontier.pop()) - tree
        tree |= children
        frontier += children
    return tree


def weed_ports(control_plane: RunningControlPlane) -> list[tuple[str, int]]:
    """Every TCP port the control plane's weed listens on but the published S3 gateway."""
    ss = subprocess.run(["ss", "-H", "-l", "-n", "-p", "-t"], capture_output=True, text=True, check=True)
    tree = process_tree(control_plane.process.pid)
    s3_port = control_plane.service("s3").port
    found = [
        (item.address, item.port)
        for item in parse_ss(ss.stdout)
        if set(item.pids) & tree and "weed" in item.programs and item.port != s3_port
    ]
    assert len(found) >= 7, found  # master, volume and filer, each HTTP and gRPC, and the S3 gateway's gRPC
    return sorted(found)


def reload_postgres(data_dir: Path) -> None:
    """SIGHUP to the postmaster (its pid is postmaster.pid's first line): it reads pg_hba.conf again."""
    os.kill(int((data_dir / "postmaster.pid").read_text().split()[0]), signal.SIGHUP)
    time.sleep(1.0)  # the reload is asynchronous
