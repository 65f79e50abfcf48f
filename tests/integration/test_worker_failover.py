"""A worker in auto mode when Pegasus's control plane goes away mid-job, and when it comes back.

Two real control planes: Pegasus's on 127.0.0.10 (free ports, like a Slurm job's) and the Mac's on
127.0.0.20 with fixed ports (as the inventory gives them). The job in flight when Pegasus stops
belongs to Pegasus's ledger: its result waits in the worker's spool, and reaches that ledger when
Pegasus returns under a new epoch, while the worker serves the Mac in between.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from han_worker.control_plane.layout import pick_free_ports
from han_worker.store.tallies import read_switches
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    MAC_ADDRESS,
    RunningControlPlane,
    WorkerProcess,
    han_worker,
    output_body,
    start_control_plane,
    start_worker,
    wait_for,
    worker_settings,
    write_private_file,
)

# Only services this module starts itself: `make test` runs it beside the tests that share the testbed.
pytestmark = pytest.mark.self_contained


@dataclass
class Planes:
    pegasus: RunningControlPlane
    mac: RunningControlPlane
    mac_ports: dict[str, int]


@pytest.fixture(scope="module")
def planes(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[Planes]:
    ports = dict(zip(("postgres", "redis", "s3"), pick_free_ports(MAC_ADDRESS, 3), strict=True))
    mac_args = ["--source", "mac", *(f"--port={name}={port}" for name, port in ports.items())]
    with ThreadPoolExecutor(2) as pool:  # each start takes seconds: in parallel
        starts = [
            pool.submit(start_control_plane, unprivileged_env, workdir / "pegasus"),
            pool.submit(
                start_control_plane, unprivileged_env, workdir / "mac", *mac_args, address=MAC_ADDRESS
            ),
        ]
    started = [start.result() for start in starts if start.exception() is None]
    if len(started) < 2:
        for running in started:
            running.shutdown()
        starts[0].result() if starts[0].exception() else starts[1].result()
    running = Planes(started[0], started[1], ports)
    yield running
    for plane in (running.pegasus, running.mac):  # the test may have replaced pegasus: stop the current one
        plane.request_stop()
    for plane in (running.pegasus, running.mac):
        plane.shutdown()


@pytest.fixture
def worker_config(unprivileged_env: UnprivilegedEnv, workdir: Path, planes: Planes) -> Path:
    settings = worker_settings(
        planes.pegasus,
        workdir / "spool",
        mode="auto",
        lease_seconds=4,
        probe_timeout_seconds=1,
        mac={
            "host": MAC_ADDRESS,
            "ports": planes.mac_ports,
            "credentials_file": str(planes.mac.state_dir / "credentials.json"),
        },
    )
    return write_private_file(unprivileged_env, workdir / "worker.json", json.dumps(settings))


@pytest.fixture
def worker(unprivileged_env: UnprivilegedEnv, worker_config: Path) -> Iterator[WorkerProcess]:
    running = start_worker(unprivileged_env, worker_config)
    yield running
    try:
        running.stop(timeout=20)
    finally:
        running.kill()


def client(env: UnprivilegedEnv, config: Path, mode: str, *args: str) -> tuple[int, str, str]:
    result = han_worker(env, args[0], "--config", str(config), "--mode", mode, *args[1:])
    return result.returncode, result.stdout.strip(), result.stderr


# The worker's "serving <queues> on <source> (epoch N: <services>): <reason>" line.
SERVING = re.compile(r"serving \S+ on (pegasus|mac) \(epoch \d+: [^)]*\): (.*)$", re.MULTILINE)


def pegasus_copy(env: UnprivilegedEnv, planes: Planes, directory: Path, **changes: object) -> Path:
    """Pegasus's endpoints file with some fields changed, its credentials beside it, as the user wrote them."""
    directory.mkdir(exist_ok=True)
    shutil.chown(directory, env.user, env.user)
    document = {**planes.pegasus.endpoints, **changes}
    write_private_file(env, directory / "credentials.json", json.dumps(planes.pegasus.credentials))
    return write_private_file(env, directory / "endpoints.json", json.dumps(document))


def workers_choice(env: UnprivilegedEnv, config: Path) -> tuple[str, str]:
    """What ``han-worker run`` chose with ``config``: (source, reason), or ("none", why it exited 2)."""
    worker = start_worker(env, config)
    try:
        found = wait_for(
            lambda: SERVING.search(worker.output()) or worker.process.poll() is not None,
            30,
            "the worker's choice",
        )
    finally:
        worker.stop(timeout=20)
    if isinstance(found, re.Match):
        return found.group(1), found.group(2).strip()
    assert worker.process.returncode == 2, worker.output()
    message = worker.output().strip().splitlines()[-1]
    assert message.startswith("han-worker run: "), worker.output()
    return "none", message.removeprefix("han-worker run: ")


def endpoints_choice(env: UnprivilegedEnv, config: Path) -> tuple[str, str]:
    """What ``han-worker endpoints --config`` says of the same configuration."""
    result = han_worker(env, "endpoints", "--config", str(config), "--json", timeout=60)
    answer = json.loads(result.stdout)
    assert result.returncode == (0 if answer["ok"] else 2), result.stderr
    return (answer["source"], answer["reason"]) if answer["ok"] else ("none", answer["error"])


@pytest.mark.parametrize("mode", ["pegasus", "auto"])
@pytest.mark.parametrize("pegasus", ["up", "stale", "gone"])
def test_endpoints_chooses_what_the_worker_chooses_with_the_same_config(
    unprivileged_env: UnprivilegedEnv, workdir: Path, planes: Planes, mode: str, pegasus: str
):
    env = unprivileged_env
    endpoints_file = planes.pegasus.state_dir / "endpoints.json"
    if pegasus == "stale":
        endpoints_file = pegasus_copy(env, planes, workdir / "stale", stale=True)
    elif pegasus == "gone":  # killed without a word: the file still says it serves, Slurm knows better
        endpoints_file = pegasus_copy(env, planes, workdir / "gone", slurm_job_id="1")
    settings = worker_settings(
        None, workdir / "spool-choice", mode=mode, probe_timeout_seconds=1,
        pegasus={"endpoints_file": str(endpoints_file), "check_slurm_job": True},
        mac={"host": MAC_ADDRESS, "ports": planes.mac_ports,
             "credentials_file": str(planes.mac.state_dir / "credentials.json")},
    )  # fmt: skip
    config = write_private_file(env, workdir / f"choice-{mode}-{pegasus}.json", json.dumps(settings))
    by_endpoints, by_worker = endpoints_choice(env, config), workers_choice(env, config)
    assert by_endpoints == by_worker
    fallback = "mac" if mode == "auto" else "none"
    assert by_endpoints[0] == ("pegasus" if pegasus == "up" else fallback)
    if pegasus == "gone":
        assert "Slurm job 1 is no longer running" in by_endpoints[1]


def test_mac_mode_with_wrong_credentials_exits_2_naming_the_service(
    unprivileged_env: UnprivilegedEnv, workdir: Path, planes: Planes
):
    # Mode mac never fails selection (the runbook: always the Mac), so the worker itself must refuse.
    wrong = planes.mac.credentials
    wrong["redis"]["password"] = "a-wrong-secret-of-some-length"  # type: ignore[index]
    credentials = write_private_file(unprivileged_env, workdir / "wrong-mac.json", json.dumps(wrong))
    mac = {"host": MAC_ADDRESS, "ports": planes.mac_ports, "credentials_file": str(credentials)}
    settings = worker_settings(None, workdir / "spool-wrong", mode="mac", mac=mac)
    config = write_private_file(unprivileged_env, workdir / "wrong.json", json.dumps(settings))
    result = han_worker(unprivileged_env, "run", "--config", str(config), timeout=60)
    assert result.returncode == 2
    assert f"redis {MAC_ADDRESS}:{planes.mac_ports['redis']}" in result.stderr
    assert "authentication failed for user han_worker" in result.stderr
    assert "Traceback" not in result.stderr
    assert "a-wrong-secret" not in result.stderr


def test_auto_mode_fails_over_to_the_mac_and_delivers_the_result_home(
    unprivileged_env: UnprivilegedEnv,
    workdir: Path,
    planes: Planes,
    worker: WorkerProcess,
    worker_config: Path,
):
    env, pegasus_state = unprivileged_env, planes.pegasus.state_dir
    wait_for(lambda: "serving noop on pegasus" in worker.output(), 30, "the worker to choose Pegasus")
    code, job, err = client(
        env, worker_config, "pegasus", "submit", "--kind", "sleep", "--param", "seconds=6"
    )
    assert code == 0, err
    ledger = planes.pegasus.ledger()
    wait_for(lambda: ledger.status(job) == "running", 15, "the job to start on Pegasus")

    planes.pegasus.request_stop()  # mid-job: Pegasus's control plane goes away
    wait_for(lambda: "-> mac (epoch 0" in worker.output(), 45, "the worker to fail over to the Mac")
    code, mac_job, err = client(env, worker_config, "mac", "submit", "--kind", "noop")
    assert code == 0, err
    assert client(env, worker_config, "mac", "wait", mac_job, "--timeout", "30")[0] == 0
    mac_record = planes.mac.ledger().job(mac_job)
    assert mac_record is not None
    assert (mac_record.control_plane, mac_record.control_plane_epoch) == ("mac", 0)

    assert planes.pegasus.process.wait(60) == 0
    assert (workdir / "spool" / f"pegasus-{job}-1" / "result.json").is_file()  # kept for Pegasus

    planes.pegasus = start_control_plane(env, pegasus_state)  # back, same ledger, next epoch
    assert planes.pegasus.endpoints["epoch"] == 2
    ledger = planes.pegasus.ledger()
    wait_for(lambda: ledger.status(job) == "succeeded", 45, "the spooled result to reach Pegasus's ledger")
    record = ledger.job(job)
    assert record is not None
    assert (record.attempts, record.control_plane, record.control_plane_epoch) == (1, "pegasus", 1)
    assert [attempt["outcome"] for attempt in ledger.attempts(job)] == ["succeeded"]
    assert record.outputs is not None
    output = record.outputs["slept.txt"]
    _ledger, _redis, s3 = planes.pegasus.link_parts()
    assert output["inline"] is True, output  # a spooled small output goes into the ledger on delivery too
    body = output_body(ledger, s3, planes.pegasus.worker_credentials().s3.bucket, record, "slept.txt")
    assert hashlib.sha256(body).hexdigest() == output["sha256"]
    assert not list((workdir / "spool").glob("pegasus-*"))

    # Back on Pegasus between jobs: new Pegasus jobs run again.
    wait_for(lambda: "-> pegasus (epoch 2" in worker.output(), 30, "the worker to return to Pegasus")
    code, new_job, err = client(env, worker_config, "pegasus", "submit", "--kind", "noop")
    assert code == 0, err
    assert client(env, worker_config, "pegasus", "wait", new_job, "--timeout", "30")[0] == 0

    # Each switch counted in the ledger switched to (what /metrics reads): the failover by the Mac's, the
    # fail-back by Pegasus's.
    assert switches(planes.mac)[("pegasus", "mac")] == 1
    assert switches(planes.pegasus)[("mac", "pegasus")] == 1
    assert switches(planes.pegasus)[("pegasus", "pegasus")] == 0


def switches(plane: RunningControlPlane) -> dict[tuple[str, str], int]:
    ledger = plane.ledger()
    try:
        return {(item.from_source, item.to_source): item.count for item in read_switches(ledger.connection())}
    finally:
        ledger.close()
