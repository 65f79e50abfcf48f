"""The control plane heals: a crashed service is restarted in place, a killed control plane's leftovers are
cleared for its successor, a crash loop and an unprovable predecessor stop it with the reason in ``status``.

Real PostgreSQL, Valkey and SeaweedFS as the cluster account, in direct launch mode, on an address no other
test uses (127.0.0.50). Nothing here touches Slurm.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psycopg
import pytest

from han_worker.control_plane.leftovers import stale_seaweed_socket_ports
from han_worker.selection.checks import authenticated_probe, worker_checks
from han_worker.selection.endpoints import parse_endpoints
from han_worker.selection.tls import postgres_tls
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    child_pids,
    start_control_plane,
    wait_for,
    write_private_file,
)

# Only services this module starts itself: `make test` runs it beside the tests that share the testbed.
pytestmark = pytest.mark.self_contained

ADDRESS = "127.0.0.50"
BINARIES = {"postgres": "postgres", "redis": "valkey", "s3": "weed"}


def service_pid(running: RunningControlPlane, binary: str) -> int | None:
    for pid in child_pids(running.process.pid):
        try:
            if binary in os.readlink(f"/proc/{pid}/exe"):
                return pid
        except OSError:
            continue
    return None


def kill_and_wait_for_its_restart(running: RunningControlPlane, service: str = "redis") -> None:
    binary = BINARIES[service]
    before = service_pid(running, binary)
    assert before is not None
    restarts = running.output().count(f"{service} restarted on")
    os.kill(before, signal.SIGKILL)
    wait_for(lambda: running.output().count(f"{service} restarted on") > restarts, 90, f"{service} restarted")
    assert service_pid(running, binary) not in (None, before)


def worker_probe_passes(running: RunningControlPlane) -> bool:
    endpoints = parse_endpoints(running.endpoints, "endpoints.json")
    report = authenticated_probe(worker_checks(running.worker_credentials()), timeout=10)(endpoints)
    assert report.healthy, [str(failure) for failure in report.failures]
    return True


def status(env: UnprivilegedEnv, state_dir: Path) -> str:
    result = subprocess.run(
        env.argv("han-control-plane", "status", "--state-dir", str(state_dir)),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("service", ["redis", "postgres", "s3"])
def test_a_killed_service_comes_back_on_its_port_with_the_endpoints_kept(
    unprivileged_env: UnprivilegedEnv, workdir: Path, service: str
):
    running = start_control_plane(unprivileged_env, workdir / f"killed-{service}", address=ADDRESS)
    try:
        published = running.endpoints
        kill_and_wait_for_its_restart(running, service)
        assert running.process.poll() is None, "one service's crash must not stop the control plane"
        # Same address and port, same epoch, never marked stale: workers had nothing to re-read.
        assert running.endpoints == published
        assert worker_probe_passes(running)
        assert "marked" not in running.output()
    finally:
        running.shutdown()


def test_a_crash_loop_stops_it_with_the_reason_in_status(unprivileged_env: UnprivilegedEnv, workdir: Path):
    running = start_control_plane(unprivileged_env, workdir / "loop", address=ADDRESS)
    try:
        kill_and_wait_for_its_restart(running)
        kill_and_wait_for_its_restart(running)
        third = service_pid(running, "valkey")
        assert third is not None
        os.kill(third, signal.SIGKILL)
        assert running.process.wait(60) == 3
    finally:
        running.shutdown()
    assert running.endpoints["stale"] is True
    reason = "redis exited with code -9: 3 crashes within 300s; stopping the control plane"
    assert reason in running.output()
    said = status(unprivileged_env, running.state_dir)
    assert said.startswith("not running")
    assert "last failure: stopped at " in said
    assert reason in said


def test_a_killed_control_plane_is_started_over_by_the_next(unprivileged_env: UnprivilegedEnv, workdir: Path):
    """Every process of the control plane SIGKILLed at once, as when its Slurm job is killed: PostgreSQL's
    postmaster.pid names the dead postmaster, a zombie here (nothing reaps it), which PostgreSQL alone
    would take for a live one."""
    first = start_control_plane(unprivileged_env, workdir / "killed", address=ADDRESS)
    with postgres_as_worker(first) as connection:
        connection.execute("CREATE TABLE kept AS SELECT 'before the kill' AS value")
    epoch = first.endpoints["epoch"]
    owner = json.loads((first.state_dir / "owner.json").read_text())
    for pid in {first.process.pid, *child_pids(first.process.pid)}:
        os.kill(pid, signal.SIGKILL)
    first.process.wait(30)
    postmaster_pid = first.state_dir / "data" / "postgres" / "postmaster.pid"
    assert postmaster_pid.exists()
    first_weed_ports = set(owner["services"]["s3"]["ports"])

    second = start_control_plane(unprivileged_env, first.state_dir, address=ADDRESS)
    try:
        output = second.output()
        assert f"supervisor pid {first.process.pid} on " in output
        assert "and its services no longer run" in output
        assert f"postgres: removed what a stopped server left: {postmaster_pid}" in output
        assert "start attempt" not in output, "the first attempt should have succeeded"
        assert second.endpoints["epoch"] == epoch + 1  # type: ignore[operator]
        assert worker_probe_passes(second)
        with postgres_as_worker(second) as connection:
            assert connection.execute("SELECT value FROM kept").fetchall() == [("before the kill",)]
        # The dead one's SeaweedFS sockets in /tmp went with it (weed would not start on those ports).
        assert not first_weed_ports & stale_seaweed_socket_ports()
    finally:
        second.shutdown()
    assert "already exists" not in (first.state_dir / "logs" / "postgres.log").read_text()


def test_a_successor_waits_for_the_services_of_a_supervisor_killed_alone(
    unprivileged_env: UnprivilegedEnv, workdir: Path
):
    """Only the supervisor SIGKILLed: its services get their stop signal from the kernel (parent death) and
    are still shutting down when the next supervisor starts at once; it waits for them, then starts."""
    first = start_control_plane(unprivileged_env, workdir / "orphans", address=ADDRESS)
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(30)
    second = start_control_plane(unprivileged_env, first.state_dir, address=ADDRESS)
    try:
        output = second.output()
        assert "waiting for the previous owner to be gone" in output
        # SeaweedFS would wait out its filer's 15 s: killed after its stop grace, as its supervisor would have.
        assert "outlived its supervisor by" in output
        assert "and its services no longer run" in output
        assert worker_probe_passes(second)
    finally:
        second.shutdown()


def postgres_as_worker(running: RunningControlPlane) -> psycopg.Connection[tuple[object, ...]]:
    credentials, postgres = running.worker_credentials(), running.service("postgres")
    return psycopg.connect(
        postgres_tls(credentials.tls_ca_cert, "credentials.json"),
        host=postgres.host, port=postgres.port, user=credentials.postgres.user,
        password=credentials.postgres.password, dbname=credentials.postgres.database,
        autocommit=True, connect_timeout=5,
    )  # fmt: skip


def test_a_predecessor_that_cannot_be_proved_gone_is_refused_with_the_reason(
    unprivileged_env: UnprivilegedEnv, workdir: Path
):
    """Another host, no Slurm job: nothing here can tell whether it still runs, so nothing is touched."""
    state_dir = unprivileged_env.private_dir("han-heal-foreign-")
    record = {
        "host": "login-2.elsewhere",
        "boot_id": "not-this-boot",
        "supervisor": {"pid": 4242, "start_time": 1000},
        "slurm_job_id": None,
        "services": {},
    }
    write_private_file(unprivileged_env, state_dir / "owner.json", json.dumps(record))
    argv = unprivileged_env.argv(
        "han-control-plane", "run", "--state-dir", str(state_dir), "--bind", ADDRESS, "--start-timeout", "30"
    )
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert "attempt" not in result.stderr, "trying again cannot prove it gone"
    assert f"{state_dir / 'owner.json'}: supervisor pid 4242 on login-2.elsewhere" in result.stderr
    assert "check on login-2.elsewhere" in result.stderr
    said = status(unprivileged_env, state_dir)
    assert "last failure: could not start at " in said
    assert "cannot be proved" in said
    assert json.loads((state_dir / "owner.json").read_text()) == record, "its record must be left alone"
    assert not (state_dir / "endpoints.json").exists()
    # The background launch says why too, not only "see the log".
    started = subprocess.run(
        unprivileged_env.argv("han-control-plane", "start", "--state-dir", str(state_dir), "--bind", ADDRESS),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert started.returncode == 1
    assert (
        "han-control-plane start: han-control-plane run exited with code 1: could not start at "
        in started.stderr
    )
    assert "cannot be proved" in started.stderr
