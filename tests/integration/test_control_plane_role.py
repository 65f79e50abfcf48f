"""Runbook step 2 on the testbed: the control plane as a Slurm job on "Pegasus" (the Mac's direct mode:
test_control_plane_role_mac.py).

Each test uses its own job name, state directory and free ports, and stops what it started: the module runs
beside the tests that use the inventory's control planes (tests/run_lanes.sh).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from han_worker.selection.tls import postgres_tls
from tests.conftest import run_ansible
from tests.integration.conftest import PEGASUS, recap, ssh

pytestmark = pytest.mark.own_names

PEGASUS_HOST = "pegasus-login"


def control_plane(*args: str) -> subprocess.CompletedProcess[str]:
    return run_ansible("ansible-playbook", "playbooks/control_plane.yml", *args)


def read_json(destination: str, path: str) -> dict[str, object]:
    result = ssh(destination, f"cat {path}")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def jobs(name: str) -> list[str]:
    result = ssh(PEGASUS, f"squeue --noheader --me --name={name} --format='%i %T'")
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture(scope="module", autouse=True)
def bootstrapped() -> None:
    """The env with this checkout's han_worker on both machines (seconds when it is current)."""
    result = run_ansible("ansible-playbook", "playbooks/bootstrap.yml")
    assert result.returncode == 0, result.stdout[-3000:]


class SlurmControlPlane:
    def __init__(self, name: str) -> None:
        self.name = name
        self.state_dir = f"~/.han/test-{name}"
        self.vars = (
            "-e",
            f"control_plane_slurm_job_name={name}",
            "-e",
            f"control_plane_state_dir={self.state_dir}",
        )

    def start(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return control_plane(*self.vars, *extra)

    def stop(self) -> subprocess.CompletedProcess[str]:
        return control_plane(*self.vars, "-e", "state=stopped")

    def endpoints(self) -> dict[str, object]:
        return read_json(PEGASUS, f"{self.state_dir}/endpoints.json")

    def connect_postgres(self) -> psycopg.Connection[tuple[object, ...]]:
        document = read_json(PEGASUS, f"{self.state_dir}/credentials.json")
        credentials, ca_cert = document["postgres"], document["tls"]["ca_cert"]  # type: ignore[index]
        service = self.endpoints()["services"]["postgres"]  # type: ignore[index]
        return psycopg.connect(
            postgres_tls(ca_cert, "credentials.json"),  # type: ignore[arg-type]
            host=service["host"], port=service["port"], user=credentials["user"],  # type: ignore[index]
            password=credentials["password"], dbname=credentials["database"], connect_timeout=5,  # type: ignore[index]
        )  # fmt: skip

    @property
    def escrow_file(self) -> Path:
        """The controller's ansible-vault copy of this control plane's secrets (the testbed turns escrow on):
        named after the host and the state directory, not the host alone, so it is not the inventory's."""
        return Path.home() / ".han" / "escrow" / f"{PEGASUS_HOST}-test-{self.name}-secrets.vault"

    def postgres_log(self) -> str:
        return ssh(PEGASUS, f"cat {self.state_dir}/logs/postgres.log").stdout


@pytest.fixture
def slurm_control_plane(request: pytest.FixtureRequest) -> Iterator[SlurmControlPlane]:
    running = SlurmControlPlane(f"han-cp-{request.node.name.removeprefix('test_')[:40]}".replace("_", "-"))
    yield running
    running.stop()
    ssh(PEGASUS, f"rm -rf {running.state_dir}")
    running.escrow_file.unlink(missing_ok=True)


def test_start_status_logs_stop_on_pegasus(slurm_control_plane: SlurmControlPlane) -> None:
    started = slurm_control_plane.start()
    assert started.returncode == 0, started.stdout[-3000:]
    assert recap(started, PEGASUS_HOST)["changed"] > 0
    endpoints = slurm_control_plane.endpoints()
    assert endpoints["source"] == "pegasus"
    assert endpoints["stale"] is False
    assert {service["host"] for service in endpoints["services"].values()} == {"127.0.0.10"}  # type: ignore[union-attr]
    states = sorted(line.split()[1] for line in jobs(slurm_control_plane.name))
    assert states == ["PENDING", "RUNNING"], "the running job and its queued successor"

    again = slurm_control_plane.start()
    assert recap(again, PEGASUS_HOST)["changed"] == 0, again.stdout[-3000:]
    assert len(jobs(slurm_control_plane.name)) == 2
    assert slurm_control_plane.escrow_file.stat().st_mode & 0o777 == 0o600

    # A control plane started by a version before TLS publishes credentials without its authority: the
    # role's wait stops at its first answer (not after control_plane_start_timeout) and says to restart it.
    credentials = f"{slurm_control_plane.state_dir}/credentials.json"
    drop_tls = "import json, sys; d = json.load(open(sys.argv[1])); d.pop('tls'); json.dump(d, open(sys.argv[1], 'w'))"
    written = ssh(PEGASUS, f'cp -p {credentials} {credentials}.kept && python3 -c "{drop_tls}" {credentials}')
    assert written.returncode == 0, written.stderr
    try:
        refused = slurm_control_plane.start("-e", "control_plane_start_timeout=900")
    finally:
        assert ssh(PEGASUS, f"mv {credentials}.kept {credentials}").returncode == 0
    assert refused.returncode == 2, refused.stdout[-3000:]
    assert "The running control plane was started by a version before TLS: stop it and start it again" in (
        refused.stdout
    )
    assert "did not publish healthy endpoints within" not in refused.stdout
    assert re.search(r"^ *attempts: 1$", refused.stdout, re.MULTILINE), refused.stdout[-3000:]

    status = run_ansible("ansible-playbook", "playbooks/status.yml", *slurm_control_plane.vars)
    assert status.returncode == 0, status.stdout
    assert "postgres: SELECT 1 as han_worker on han ok" in status.stdout
    assert f"Endpoints: epoch {endpoints['epoch']} on " in status.stdout

    logs = run_ansible("ansible-playbook", "playbooks/logs.yml", *slurm_control_plane.vars, "-e", "lines=200")
    assert logs.returncode == 0, logs.stdout
    assert "database system is ready to accept connections" in logs.stdout

    stopped = slurm_control_plane.stop()
    assert stopped.returncode == 0, stopped.stdout[-3000:]
    assert recap(stopped, PEGASUS_HOST)["changed"] == 1
    assert jobs(slurm_control_plane.name) == []
    assert slurm_control_plane.endpoints()["stale"] is True
    assert "database system is shut down" in slurm_control_plane.postgres_log()
    ports = [service["port"] for service in endpoints["services"].values()]  # type: ignore[union-attr]
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    assert not [port for port in ports if f"127.0.0.10:{port} " in listening], listening
    assert recap(slurm_control_plane.stop(), PEGASUS_HOST)["changed"] == 0


def test_scancel_stops_cleanly_and_the_next_start_keeps_the_data(
    slurm_control_plane: SlurmControlPlane,
) -> None:
    assert slurm_control_plane.start().returncode == 0
    with slurm_control_plane.connect_postgres() as connection:
        connection.execute("CREATE TABLE kept (value text)")
        connection.execute("INSERT INTO kept VALUES ('before scancel')")
    first_epoch = slurm_control_plane.endpoints()["epoch"]

    # What an operator would type: cancel every job of that name (successor included), every process.
    assert ssh(PEGASUS, f"scancel --name={slurm_control_plane.name}").returncode == 0
    deadline = time.monotonic() + 120
    while jobs(slurm_control_plane.name) and time.monotonic() < deadline:
        time.sleep(1)
    assert jobs(slurm_control_plane.name) == []
    assert slurm_control_plane.endpoints()["stale"] is True

    assert slurm_control_plane.start().returncode == 0
    assert slurm_control_plane.endpoints()["epoch"] == first_epoch + 1  # type: ignore[operator]
    with slurm_control_plane.connect_postgres() as connection:
        assert connection.execute("SELECT value FROM kept").fetchall() == [("before scancel",)]
    log = slurm_control_plane.postgres_log()
    assert "database system was not properly shut down" not in log
    assert log.count("database system is shut down") >= 1


def test_walltime_rollover_publishes_the_next_epoch_on_the_same_data(
    slurm_control_plane: SlurmControlPlane,
) -> None:
    # Slurm sends B:TERM 30-60 s earlier than asked (it checks limits every ~30 s): with 3 minutes and a
    # 90 s warning the first job stops after about 30-60 s (it published in ~10 s) and its successor takes over.
    short = ("-e", "control_plane_slurm_time=00:03:00", "-e", "control_plane_walltime_warning=90")
    assert slurm_control_plane.start(*short).returncode == 0
    first = slurm_control_plane.endpoints()
    with slurm_control_plane.connect_postgres() as connection:
        connection.execute("CREATE TABLE kept (value text)")
        connection.execute("INSERT INTO kept VALUES ('before the walltime')")

    deadline = time.monotonic() + 240
    current = first
    while time.monotonic() < deadline:
        current = slurm_control_plane.endpoints()
        if current["epoch"] != first["epoch"] and current["stale"] is False:
            break
        time.sleep(2)
    assert current["epoch"] == first["epoch"] + 1, current  # type: ignore[operator]
    assert current["slurm_job_id"] != first["slurm_job_id"]
    with slurm_control_plane.connect_postgres() as connection:
        assert connection.execute("SELECT value FROM kept").fetchall() == [("before the walltime",)]
    assert "database system was not properly shut down" not in slurm_control_plane.postgres_log()


def test_bad_inputs_fail_before_anything_is_submitted(slurm_control_plane: SlurmControlPlane) -> None:
    cases = {
        ("-e", "control_plane_slurm_partition=nope"): "partition",
        ("-e", "control_plane_slurm_time=48:00:00"): "time",
        ("-e", "control_plane_bind_network=0.0.0.0/0"): "control_plane_bind_network",
        ("-e", "control_plane_walltime_warning=5"): "control_plane_walltime_warning must be at least 30",
        (
            "-e",
            "control_plane_env_bin_dir=/nonexistent",
        ): "control_plane_env_bin_dir: /nonexistent/han-control-plane",
        ("-e", "control_plane_launch_mode=kubernetes"): "control_plane_launch_mode",
        (
            "-e",
            "control_plane_retention_days=-1",
        ): "control_plane_retention_days must be a whole number of days",
        ("-e", "control_plane_retention_days=soon"): "control_plane_retention_days",
    }
    for args, message in cases.items():
        result = slurm_control_plane.start(*args)
        assert result.returncode == 2, (args, result.stdout[-2000:])
        assert message in result.stdout, (args, result.stdout[-2000:])
    assert jobs(slurm_control_plane.name) == []
