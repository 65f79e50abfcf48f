"""The control plane's /metrics as a lab's Prometheus sees it: a real Prometheus (Debian's, started here as the
cluster user, on the loopback) finds the control plane through the file_sd target file the supervisor writes,
scrapes it over HTTPS with the password file and the authority file beside the credentials, and the values read
back through Prometheus's HTTP API follow jobs submitted, run and failed by a real worker, and a restart of the
control plane (a new epoch, a new port: the target follows; the counters, read from the ledger, go on).

Without credentials, or with wrong ones, /metrics answers 401 with no figure.

The control plane and Prometheus are the module's own, on 127.0.0.82 (no other test or benchmark uses it)."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from han_worker import client
from han_worker.selection.endpoints import ServiceEndpoint, parse_endpoints
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    WorkerProcess,
    serving_worker,
    start_control_plane,
    wait_for,
    worker_settings,
    write_private_file,
)
from tests.integration.prometheus import Prometheus, job_name

pytestmark = pytest.mark.self_contained

ADDRESS = "127.0.0.82"
JOB = job_name("pegasus")


class ControlPlaneHolder:
    """The module's control plane; a test restarts it on the same state directory."""

    def __init__(self, env: UnprivilegedEnv, state_dir: Path) -> None:
        self.env, self.state_dir = env, state_dir
        self.running = start_control_plane(env, state_dir, address=ADDRESS)

    def restart(self) -> RunningControlPlane:
        assert self.running.stop() == 0, self.running.output()
        self.running = start_control_plane(self.env, self.state_dir, address=ADDRESS)
        return self.running

    def metrics(self) -> ServiceEndpoint:
        endpoint = parse_endpoints(self.running.endpoints, "endpoints.json").metrics
        assert endpoint is not None
        return endpoint


@pytest.fixture(scope="module")
def plane(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[ControlPlaneHolder]:
    holder = ControlPlaneHolder(unprivileged_env, workdir / "cp")
    yield holder
    holder.running.shutdown()


@pytest.fixture(scope="module")
def prometheus(
    unprivileged_env: UnprivilegedEnv, workdir: Path, plane: ControlPlaneHolder
) -> Iterator[Prometheus]:
    started = Prometheus(unprivileged_env, workdir, ADDRESS, {"pegasus": plane.state_dir})
    yield started
    started.stop()


@pytest.fixture(scope="module")
def worker(
    unprivileged_env: UnprivilegedEnv, workdir: Path, plane: ControlPlaneHolder
) -> Iterator[WorkerProcess]:
    document = worker_settings(plane.running, workdir / "spool", mode="pegasus")
    config = write_private_file(unprivileged_env, workdir / "worker.json", json.dumps(document))
    with serving_worker(unprivileged_env, config) as started:
        yield started


def metrics_request(plane: ControlPlaneHolder, authorization: str | None) -> tuple[int, bytes]:
    endpoint = plane.metrics()
    tls = ssl.create_default_context(cafile=str(plane.state_dir / "metrics-ca.pem"))
    connection = http.client.HTTPSConnection(endpoint.host, endpoint.port, context=tls, timeout=10)
    try:
        connection.request(
            "GET", "/metrics", headers={"Authorization": authorization} if authorization else {}
        )
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_supervisor_publishes_metrics_its_password_and_target_privately(
    plane: ControlPlaneHolder,
) -> None:
    endpoints = plane.running.endpoints
    services: Any = endpoints["services"]
    assert set(services) == {"postgres", "redis", "s3"}
    endpoint = plane.metrics()
    assert endpoint.host == ADDRESS
    targets = json.loads((plane.state_dir / "metrics-targets.json").read_text())
    assert targets == [
        {"targets": [endpoint.address], "labels": {"source": "pegasus", "epoch": str(endpoints["epoch"])}}
    ]
    for name in ("metrics-password", "metrics-targets.json", "metrics-ca.pem", "secrets.json"):
        assert stat.S_IMODE((plane.state_dir / name).stat().st_mode) == 0o600, name
    password = (plane.state_dir / "metrics-password").read_text()
    assert password == plane.running.secrets["metrics"]["password"]
    assert password not in plane.running.output()  # never in the supervisor's log


def test_without_or_with_wrong_credentials_metrics_answers_401_and_no_figure(
    plane: ControlPlaneHolder,
) -> None:
    password = (plane.state_dir / "metrics-password").read_text()
    for authorization in (
        None,
        basic("han_metrics", "wrong-password-of-some-length"),
        basic("root", password),
    ):
        status, body = metrics_request(plane, authorization)
        assert status == 401, authorization
        assert b"han_" not in body
    status, body = metrics_request(plane, basic("han_metrics", password))
    assert status == 200
    assert b"han_control_plane_epoch" in body


# Run as another user of the node: can it read the password, and what does /metrics answer it?
NOBODY_SCRIPT = """
import http.client, pathlib, ssl, sys
try:
    pathlib.Path(sys.argv[3]).read_text()
    print("password read")
except OSError as exc:
    print("password refused:", type(exc).__name__)
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
connection = http.client.HTTPSConnection(sys.argv[1], int(sys.argv[2]), timeout=10, context=context)
connection.request("GET", "/metrics")
response = connection.getresponse()
print("status", response.status, "han_" in response.read().decode(errors="replace"))
"""


def test_another_user_of_the_node_can_neither_read_the_password_nor_get_a_figure(
    unprivileged_env: UnprivilegedEnv, plane: ControlPlaneHolder
) -> None:
    endpoint = plane.metrics()
    argv = [
        "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--",
        str(unprivileged_env.bin_dir / "python"), "-c", NOBODY_SCRIPT,
        endpoint.host, str(endpoint.port), str(plane.state_dir / "metrics-password"),
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/", check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["password refused: PermissionError", "status 401 False"]


def test_prometheus_reads_the_jobs_waiting_through_the_discovery_file(
    plane: ControlPlaneHolder, prometheus: Prometheus
) -> None:
    epoch = str(plane.running.endpoints["epoch"])
    wait_for(
        lambda: prometheus.value(f'up{{job="{JOB}"}}') == 1, 60, f"the target up: {prometheus.targets()}"
    )
    [target] = prometheus.targets()
    assert target["labels"] == {
        "instance": plane.metrics().address, "job": JOB, "source": "pegasus", "epoch": epoch,
    }  # fmt: skip
    link = plane.running.client_link()
    try:
        client.submit_many(link, "noop", [{}] * 3, 3)
    finally:
        link.close()
    wait_for(lambda: prometheus.value('han_queue_jobs_waiting{queue="noop"}') == 3, 30, "3 jobs waiting")
    assert (prometheus.value('han_queue_oldest_waiting_job_age_seconds{queue="noop"}') or 0) > 0
    assert prometheus.value(f'han_control_plane_epoch{{source="pegasus",epoch="{epoch}"}}') == int(epoch)
    [info] = prometheus.query("han_control_plane_info")
    assert "exported_source" not in info  # the job honours the control plane's own source label
    node = plane.running.endpoints["node"]
    assert (info["source"], info["epoch"], info["node"]) == ("pegasus", epoch, node)


def test_prometheus_reads_the_jobs_a_worker_ran_and_failed(
    plane: ControlPlaneHolder, prometheus: Prometheus, worker: WorkerProcess
) -> None:
    link = plane.running.client_link()
    try:
        client.submit_many(link, "fail", [{"message": "failed on purpose"}], 1)
    finally:
        link.close()
    succeeded = 'han_jobs_finished_total{queue="noop",kind="noop",outcome="succeeded"}'
    failed = 'han_jobs_finished_total{queue="noop",kind="fail",outcome="failed"}'
    wait_for(lambda: prometheus.value(succeeded) == 3, 60, "3 jobs succeeded")
    wait_for(lambda: prometheus.value(failed) == 1, 60, "1 job failed")
    wait_for(lambda: prometheus.value('han_queue_jobs_waiting{queue="noop"}') == 0, 30, "no job waiting")
    wait_for(
        lambda: prometheus.value('sum(han_workers{state="idle",platform="linux"})') == 1, 30, "1 idle worker"
    )
    assert prometheus.value("count(han_worker_up)") == 1
    assert prometheus.value('han_job_run_seconds_count{kind="noop"}') == 3
    assert prometheus.value('han_job_attempts_bucket{kind="fail",le="1.0"}') == 1


def rotate(env: UnprivilegedEnv, plane: ControlPlaneHolder, *args: str) -> dict[str, Any]:
    argv = env.argv("han-control-plane", "rotate", "--state-dir", str(plane.state_dir), *args)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(json.loads(result.stdout))


def test_a_rotation_hands_prometheus_the_new_password_and_authority_and_it_keeps_scraping(
    unprivileged_env: UnprivilegedEnv,
    plane: ControlPlaneHolder,
    prometheus: Prometheus,
    worker: WorkerProcess,
) -> None:
    password_file = plane.state_dir / "metrics-password"
    old = password_file.read_text()
    begun = rotate(unprivileged_env, plane)
    new = password_file.read_text()
    assert new != old
    assert any("metrics-password" in step for step in begun["steps"]), begun
    assert (plane.state_dir / "metrics-ca.pem").read_text().count("BEGIN CERTIFICATE") == 2
    assert metrics_request(plane, basic("han_metrics", old))[0] == 200  # both, until the retire phase
    assert metrics_request(plane, basic("han_metrics", new))[0] == 200
    rotate(unprivileged_env, plane, "--retire", "--wait-workers", "60")
    assert (plane.state_dir / "metrics-ca.pem").read_text().count("BEGIN CERTIFICATE") == 1
    # a new connection, verified against the new authority alone: /metrics serves its new certificate
    assert metrics_request(plane, basic("han_metrics", old))[0] == 401
    assert metrics_request(plane, basic("han_metrics", new))[0] == 200
    retired_at = time.time()
    wait_for(
        lambda: (prometheus.value(f'timestamp(up{{job="{JOB}"}} == 1)') or 0) > retired_at + 1, 30,
        f"a successful scrape after the retire phase: {prometheus.targets()}",
    )  # fmt: skip


def test_the_target_follows_a_restart_with_a_new_epoch_and_the_counters_go_on(
    plane: ControlPlaneHolder, prometheus: Prometheus, worker: WorkerProcess
) -> None:
    before = int(str(plane.running.endpoints["epoch"]))
    old_target = plane.metrics().address
    plane.restart()
    after = int(str(plane.running.endpoints["epoch"]))
    assert after == before + 1
    wait_for(
        lambda: prometheus.value(f'han_control_plane_epoch{{epoch="{after}"}}') == after, 60,
        f"a scrape of epoch {after}: {prometheus.targets()}",
    )  # fmt: skip
    [target] = [item for item in prometheus.targets() if item["health"] == "up"]
    assert target["labels"]["epoch"] == str(after)
    assert target["labels"]["instance"] == plane.metrics().address
    assert old_target == plane.metrics().address or not any(
        item["labels"]["instance"] == old_target for item in prometheus.targets()
    )
    # The ledger's counts, not the process's: the new epoch's series starts where the old one ended.
    succeeded = f'han_jobs_finished_total{{epoch="{after}",kind="noop",outcome="succeeded"}}'
    wait_for(lambda: prometheus.value(succeeded) == 3, 30, "the finished jobs after the restart")
