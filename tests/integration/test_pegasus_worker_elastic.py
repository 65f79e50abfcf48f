"""Role pegasus_worker in elastic mode on the testbed (issue 20): the play writes the pool's file and registers
the pool with the control plane, whose supervisor runs the scaler (``han-worker scale``); it cancels the
scaler's own Slurm job an earlier version of the role left; a second run and check mode change nothing (the same
scaler runs on), a burst of jobs is served by worker jobs the scaler submits, which leave when the queue is
empty, switching to a fixed array and back with jobs in flight loses none and runs none twice (the fixed array
unregisters the scaler), ``playbooks/status.yml`` shows where the scaler runs and its last decision, and
stopping ends the scaler and its workers.

Everything here is this module's own: a control plane on 127.0.0.76 (a process of the cluster user), the
pool's Slurm job name (and the old scaler job's), the state directory; the workers serve queue noop and ask for
no GPU.
The role runs this checkout's han_worker (the test venv), through ``pegasus_worker_env_bin_dir``.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from han_worker.scaling.pool import parse_pool
from tests.conftest import run_ansible
from tests.integration.conftest import UnprivilegedEnv, recap
from tests.integration.control_planes import (
    RunningControlPlane,
    start_control_plane,
    wait_for,
)
from tests.integration.scaling_pools import alive_states, submit_sleeps

pytestmark = pytest.mark.own_names

ADDRESS = "127.0.0.76"  # no other test or benchmark uses it
PEGASUS_HOST = "pegasus-login"
POOL_JOB = f"han-test-elastic-{uuid.uuid4().hex[:6]}"
SCALER_JOB = f"{POOL_JOB}-scaler"
STATE_DIR = Path("/home/pegasus/.han") / POOL_JOB
JOBS = 4


class Deployment:
    def __init__(self, env: UnprivilegedEnv, control_plane: RunningControlPlane) -> None:
        self.env, self.cp = env, control_plane
        self.variables: dict[str, object] = {
            "pegasus_worker_scaling": "elastic",
            "pegasus_worker_control_plane_mode": "pegasus",
            "pegasus_worker_queues": "noop",
            "pegasus_worker_slurm_job_name": POOL_JOB,
            "pegasus_worker_state_dir": str(STATE_DIR),
            "pegasus_worker_env_bin_dir": str(env.bin_dir),
            "pegasus_worker_endpoints_file": str(control_plane.state_dir / "endpoints.json"),
            "pegasus_worker_slurm_partition": "batch",
            "pegasus_worker_slurm_gres": "",
            "pegasus_worker_slurm_cpus": 1,
            "pegasus_worker_slurm_mem": "500M",
            "pegasus_worker_slurm_time": "10:00",
            "pegasus_worker_drain_grace": 5,
            "pegasus_worker_max": 2,
            "pegasus_worker_max_pending": 1,
            "pegasus_worker_idle_timeout": 3,
            "pegasus_worker_scaler_horizon": 5,
            "pegasus_worker_stop_timeout": 60,
        }

    @property
    def scalers_dir(self) -> Path:
        return self.cp.state_dir / "scalers"

    def scaler_pid(self) -> int | None:
        """The pid of the pool's scaler while the control plane's supervisor says it runs."""
        try:
            return int(json.loads((self.scalers_dir / f"{POOL_JOB}.running").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def play(self, *args: str, **changes: object) -> subprocess.CompletedProcess[str]:
        variables = json.dumps({**self.variables, **changes})
        return run_ansible("ansible-playbook", "playbooks/pegasus_worker.yml", "-e", variables, *args)


@pytest.fixture(scope="module")
def deployment(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[Deployment]:
    control_plane = start_control_plane(unprivileged_env, workdir / "cp", address=ADDRESS)
    made = Deployment(unprivileged_env, control_plane)
    try:
        yield made
    finally:
        made.play("-e", "state=stopped")
        for name in (SCALER_JOB, POOL_JOB):
            subprocess.run(["scancel", f"--name={name}"], check=False)
        control_plane.shutdown()
        subprocess.run(["rm", "-rf", str(STATE_DIR)], check=False)


def test_elastic_mode_runs_the_scaler_alone_until_there_is_work_and_a_second_run_changes_nothing(
    deployment: Deployment,
) -> None:
    # What an earlier version of the role left running: the scaler as a Slurm job of its own.
    legacy = subprocess.run(
        ["setpriv", f"--reuid={deployment.env.user}", f"--regid={deployment.env.user}", "--init-groups", "--",
         "sbatch", "--parsable", f"--job-name={SCALER_JOB}", "--time=10:00", "--cpus-per-task=1", "--mem=100M",
         "--output=/dev/null", "--chdir=/tmp", "--wrap=exec sleep 600"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    wait_for(
        lambda: alive_states(SCALER_JOB) == ["RUNNING"], 60, f"the old scaler job {legacy.stdout.strip()}"
    )
    first = deployment.play()
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr
    assert alive_states(SCALER_JOB) == [], "the old scaler's Slurm job was stopped"
    registration = json.loads((deployment.scalers_dir / f"{POOL_JOB}.json").read_text())
    assert registration["pool"] == str(STATE_DIR / "config" / "pool.json")
    scaler = wait_for(
        deployment.scaler_pid, 30, f"the control plane running the scaler:\n{deployment.cp.output()}"
    )
    assert alive_states(POOL_JOB) == [], "no backlog, no worker job"
    settings = parse_pool(json.loads((STATE_DIR / "config" / "pool.json").read_text()), "pool.json")
    assert (settings.pool.job_name, settings.pool.queues, settings.limits.max_workers) == (
        POOL_JOB,
        ("noop",),
        2,
    )
    config = json.loads((STATE_DIR / "config" / "worker.json").read_text())
    assert config["idle_timeout_seconds"] == 3

    second = deployment.play()
    assert second.returncode == 0, second.stdout[-4000:]
    assert recap(second, PEGASUS_HOST)["changed"] == 0, second.stdout[-3000:]
    checked = deployment.play("--check")
    assert checked.returncode == 0, checked.stdout[-4000:]
    assert recap(checked, PEGASUS_HOST)["changed"] == 0, checked.stdout[-3000:]
    assert deployment.scaler_pid() == scaler, "the same scaler, not a second one"


def test_a_burst_is_served_by_worker_jobs_that_leave_when_the_queue_is_empty(
    deployment: Deployment, workdir: Path
) -> None:
    jobs = submit_sleeps(deployment.env, deployment.cp, workdir, JOBS, seconds=1)
    ledger = deployment.cp.ledger()
    try:
        wait_for(lambda: all(ledger.status(job) == "succeeded" for job in jobs), 180,
                 f"the {JOBS} jobs to succeed on the pool's workers", interval=0.5)  # fmt: skip
        records = [ledger.job(job) for job in jobs]
    finally:
        ledger.close()
    assert [record.attempts if record else None for record in records] == [1] * JOBS
    workers = [record.worker_id or "" if record else "" for record in records]
    assert all("-slurm" in worker for worker in workers), f"done by Slurm worker jobs: {workers}"
    wait_for(
        lambda: alive_states(POOL_JOB) == [], 60, "every worker job to leave (idle_timeout 3 s)", interval=0.5
    )
    assert deployment.scaler_pid() is not None


def test_switching_between_fixed_and_elastic_with_jobs_in_flight_loses_no_job(
    deployment: Deployment, workdir: Path
) -> None:
    ledger = deployment.cp.ledger()
    try:
        jobs = submit_sleeps(deployment.env, deployment.cp, workdir, 6, seconds=2)
        wait_for(lambda: any(ledger.status(job) == "running" for job in jobs), 120,
                 "a job running on the elastic pool's workers", interval=0.5)  # fmt: skip
        to_fixed = deployment.play(pegasus_worker_scaling="fixed", pegasus_worker_count=1)
        assert to_fixed.returncode == 0, to_fixed.stdout[-4000:] + to_fixed.stderr
        assert deployment.scaler_pid() is None, "a fixed array has no scaler"
        assert not (deployment.scalers_dir / f"{POOL_JOB}.json").exists()
        jobs += submit_sleeps(deployment.env, deployment.cp, workdir, 3, seconds=2)
        wait_for(lambda: any(ledger.status(job) == "running" for job in jobs), 120,
                 "a job running on the fixed array", interval=0.5)  # fmt: skip
        to_elastic = deployment.play()
        assert to_elastic.returncode == 0, to_elastic.stdout[-4000:] + to_elastic.stderr
        wait_for(lambda: all(ledger.status(job) == "succeeded" for job in jobs), 240,
                 f"the {len(jobs)} jobs to succeed across the two switches", interval=0.5)  # fmt: skip
        outcomes = {job: [attempt["outcome"] for attempt in ledger.attempts(job)] for job in jobs}
    finally:
        ledger.close()
    # Drained workers hand their job back (an attempt that did not succeed); none runs a job to success twice.
    successes = {job: found.count("succeeded") for job, found in outcomes.items()}
    assert successes == dict.fromkeys(jobs, 1), outcomes
    assert wait_for(deployment.scaler_pid, 30, "elastic again: its scaler runs")
    wait_for(lambda: alive_states(POOL_JOB) == [], 60, "the pool's workers to leave once idle", interval=0.5)


def test_status_shows_the_running_scaler_and_its_last_decision(deployment: Deployment) -> None:
    variables = json.dumps(deployment.variables)
    status = run_ansible("ansible-playbook", "playbooks/status.yml", "-e", variables)
    assert status.returncode == 0, status.stdout[-4000:] + status.stderr
    running = re.search(
        rf"Scaler {re.escape(POOL_JOB)}: running with the control plane \(pid (\d+) on", status.stdout
    )
    assert running, status.stdout[-3000:]
    assert int(running.group(1)) == deployment.scaler_pid()
    # The scaler's own words (han-worker status --scaler-state), after the burst: scaling, not paused.
    decision = rf"scaler {re.escape(POOL_JOB)}: scaling, \d+ s ago: \S"
    assert re.search(decision, status.stdout), status.stdout[-3000:]
    assert "paused until resumed" not in status.stdout
    assert recap(status, PEGASUS_HOST)["changed"] == 0


def test_stopping_ends_the_scaler_and_its_workers(deployment: Deployment) -> None:
    stopped = deployment.play("-e", "state=stopped")
    assert stopped.returncode == 0, stopped.stdout[-4000:]
    assert deployment.scaler_pid() is None, "the play waited until the control plane had stopped the scaler"
    assert not (deployment.scalers_dir / f"{POOL_JOB}.json").exists()
    assert f"scaler {POOL_JOB} stopped" in deployment.cp.output()
    assert alive_states(POOL_JOB) == []
