"""A lab's Prometheus follows the control plane where it moves: through a real walltime rollover of Pegasus's
control plane (a Slurm job whose successor, queued with --dependency=singleton, publishes the next epoch on the
same data) and a failover of a real worker to the Mac's control plane.

Debian's Prometheus, as the cluster user, scrapes both control planes with the jobs playbooks/prometheus_scrape.yml
renders, each through the target file its supervisor rewrites; the test reads through Prometheus's HTTP API:
- after the rollover, Pegasus's target under the new epoch's label, the jobs finished before it (the ledger's),
  and the worker back on Pegasus, its return counted by the new epoch's switches;
- an elastic pool's scaler paused after a refused submission (a partition that does not exist), with its reason;
- after Pegasus's control plane stops, the worker on the Mac's (source mac) and the Mac's count of switches from
  Pegasus one higher.

Pegasus's control plane runs as Slurm jobs of the module's own name, and both control planes and Prometheus listen
on 127.0.0.84 (no other test or benchmark uses it), on free ports."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from han_worker.control_plane.layout import pick_free_ports
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
from tests.integration.prometheus import Prometheus, job_name

pytestmark = pytest.mark.own_names  # the testbed's Slurm, under job names of its own; no GPU

ADDRESS = "127.0.0.84"
PEGASUS, MAC = job_name("pegasus"), job_name("mac")
# Slurm sends B:TERM 30-60 s earlier than asked (it checks limits every ~30 s): with 3 minutes and a 90 s warning
# the first job stops 30-90 s after it started, and its successor takes over (test_control_plane_role.py's
# rollover). The successors run 10 minutes: one rollover is what the test is about.
FIRST_TIME, SUCCESSOR_TIME, WARNING = "00:03:00", "00:10:00", 90
ROLLOVER_TIMEOUT = 240

JOB_SCRIPT = """#!/bin/bash -eu
# Pegasus's control plane as role control_plane's script runs it: queue the successor, then the keeper.
export PATH=/usr/bin:/bin
if [ -z "$(squeue --noheader --me --name={name} --states=PENDING --format=%i)" ]; then
  sbatch --parsable --job-name={name} --dependency=singleton --partition=batch --time={time} \\
    --cpus-per-task=1 --mem=2G --signal=B:TERM@{warning} --export=NONE --output={output} {script} >/dev/null
fi
exec {bin_dir}/han-control-plane run --state-dir {state_dir} --source pegasus --launch-mode slurm \\
  --restart-crashed --bind {address}
"""


def as_user(env: UnprivilegedEnv, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A Slurm command as the cluster user."""
    command = [
        "setpriv", f"--reuid={env.user}", f"--regid={env.user}", "--init-groups", "--",
        "env", "-i", f"HOME=/home/{env.user}", "PATH=/usr/bin:/bin", *argv,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


class SlurmControlPlane:
    """Pegasus's control plane as Slurm batch jobs of one name: the first with a short walltime, each queueing
    its successor."""

    def __init__(self, env: UnprivilegedEnv, directory: Path) -> None:
        self.env, self.name = env, f"han-metrics-follow-{uuid.uuid4().hex[:8]}"
        self.state_dir = directory / "pegasus"
        script = JOB_SCRIPT.format(
            name=self.name, time=SUCCESSOR_TIME, warning=WARNING, output=directory / "slurm-%j.out",
            script=directory / "pegasus.sbatch", bin_dir=env.bin_dir, state_dir=self.state_dir, address=ADDRESS,
        )  # fmt: skip
        self.script = write_private_file(env, directory / "pegasus.sbatch", script, mode=0o700)
        self.output_dir = directory

    def submit(self) -> str:
        submitted = as_user(
            self.env, "sbatch", "--parsable", f"--job-name={self.name}", "--partition=batch",
            f"--time={FIRST_TIME}", "--cpus-per-task=1", "--mem=2G", f"--signal=B:TERM@{WARNING}", "--export=NONE",
            f"--output={self.output_dir / 'slurm-%j.out'}", str(self.script),
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        return submitted.stdout.strip().split(";")[0]

    def jobs(self) -> dict[str, str]:
        """Job id -> state of the module's control-plane jobs Slurm still holds."""
        listed = as_user(self.env, "squeue", "--noheader", "--me", f"--name={self.name}", "--format=%i %T")
        assert listed.returncode == 0, listed.stderr
        return dict(line.split() for line in listed.stdout.splitlines() if line.strip())

    @property
    def endpoints(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.state_dir / "endpoints.json").read_text()))
        except (OSError, ValueError):
            return {}

    def published(self, after_epoch: int = 0) -> dict[str, Any]:
        """The endpoints once an epoch after ``after_epoch`` serves (not stale), failing with the jobs' logs."""
        return dict(
            wait_for(
                lambda: self._serving(after_epoch), ROLLOVER_TIMEOUT,
                f"Pegasus's control plane to publish an epoch after {after_epoch}: {self.jobs()}\n{self.logs()}",
                interval=1,
            )
        )  # fmt: skip

    def _serving(self, after_epoch: int) -> dict[str, Any] | None:
        endpoints = self.endpoints
        serving = endpoints and endpoints.get("stale") is False and int(endpoints["epoch"]) > after_epoch
        return endpoints if serving else None

    def stop(self) -> None:
        """As an operator stops it for good: the queued successor first, then SIGTERM to the running keeper
        (the batch shell), which stops the supervisor cleanly; it marks its endpoints stale."""
        as_user(self.env, "scancel", "--state=PENDING", f"--name={self.name}")
        for job_id, state in self.jobs().items():
            if state == "RUNNING":
                as_user(self.env, "scancel", "--batch", "--signal=TERM", job_id)
        wait_for(lambda: not self.jobs(), 90, f"the control-plane jobs to end:\n{self.logs()}", interval=1)

    def cancel_all(self) -> None:
        as_user(self.env, "scancel", f"--name={self.name}")

    def logs(self) -> str:
        return "\n".join(path.read_text()[-3000:] for path in sorted(self.output_dir.glob("slurm-*.out")))


@dataclass
class Planes:
    pegasus: SlurmControlPlane
    mac: RunningControlPlane
    mac_ports: dict[str, int]
    first: dict[str, Any]  # the first epoch's endpoints

    @property
    def first_epoch(self) -> int:
        return int(self.first["epoch"])


@pytest.fixture(scope="module")
def planes(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[Planes]:
    ports = dict(zip(("postgres", "redis", "s3"), pick_free_ports(ADDRESS, 3), strict=True))
    mac_args = ["--source", "mac", *(f"--port={name}={port}" for name, port in ports.items())]
    pegasus = SlurmControlPlane(unprivileged_env, workdir)
    pegasus.submit()
    mac = start_control_plane(unprivileged_env, workdir / "mac", *mac_args, address=ADDRESS)
    try:
        yield Planes(pegasus, mac, ports, pegasus.published())
    finally:
        pegasus.cancel_all()
        mac.shutdown()
        wait_for(lambda: not pegasus.jobs(), 90, "the control-plane jobs to end", interval=1)


@pytest.fixture(scope="module")
def prometheus(unprivileged_env: UnprivilegedEnv, workdir: Path, planes: Planes) -> Iterator[Prometheus]:
    control_planes = {"pegasus": planes.pegasus.state_dir, "mac": planes.mac.state_dir}
    started = Prometheus(unprivileged_env, workdir, ADDRESS, control_planes)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def worker_config(unprivileged_env: UnprivilegedEnv, workdir: Path, planes: Planes) -> Path:
    settings = worker_settings(
        None, workdir / "spool", mode="auto", lease_seconds=4, probe_timeout_seconds=1,
        pegasus={"endpoints_file": str(planes.pegasus.state_dir / "endpoints.json")},
        mac={"host": ADDRESS, "ports": planes.mac_ports,
             "credentials_file": str(planes.mac.state_dir / "credentials.json")},
    )  # fmt: skip
    return write_private_file(unprivileged_env, workdir / "worker.json", json.dumps(settings))


@pytest.fixture(scope="module")
def worker(unprivileged_env: UnprivilegedEnv, worker_config: Path) -> Iterator[WorkerProcess]:
    running = start_worker(unprivileged_env, worker_config)
    wait_for(lambda: "serving noop on pegasus" in running.output(), 60, "the worker to serve Pegasus")
    yield running
    try:
        running.stop(timeout=20)
    finally:
        running.kill()


def submit(env: UnprivilegedEnv, config: Path, mode: str, kind: str = "noop") -> str:
    result = han_worker(env, "submit", "--config", str(config), "--mode", mode, "--kind", kind, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def active(prometheus: Prometheus, job: str) -> list[dict[str, Any]]:
    """The labels of ``job``'s targets that Prometheus scrapes successfully now."""
    return [
        target["labels"] for target in prometheus.targets()
        if target["labels"]["job"] == job and target["health"] == "up"
    ]  # fmt: skip


def test_prometheus_finds_both_control_planes_and_the_jobs_the_worker_ran_on_pegasus(
    unprivileged_env: UnprivilegedEnv,
    planes: Planes,
    prometheus: Prometheus,
    worker: WorkerProcess,
    worker_config: Path,
) -> None:
    for job, source in ((PEGASUS, "pegasus"), (MAC, "mac")):
        wait_for(lambda job=job: active(prometheus, job), 60, f"{job} scraped: {prometheus.targets()}")
        [labels] = active(prometheus, job)
        assert labels["source"] == source
    wait_for(  # the rollover may come at any time from now on: the label is the epoch serving now
        lambda: [labels["epoch"] for labels in active(prometheus, PEGASUS)] == [str(planes.pegasus.endpoints["epoch"])],
        30, f"Pegasus's target labelled with its epoch: {prometheus.targets()}",
    )  # fmt: skip
    for _job in range(2):
        submit(unprivileged_env, worker_config, "pegasus")
    succeeded = f'max(han_jobs_finished_total{{job="{PEGASUS}",kind="noop",outcome="succeeded"}})'
    wait_for(
        lambda: prometheus.value(succeeded) == 2, 180, f"2 jobs succeeded on Pegasus:\n{worker.output()}"
    )
    wait_for(
        lambda: prometheus.value(f'count(han_worker_up{{job="{PEGASUS}"}})') == 1,
        120,
        "the worker on Pegasus",
    )


def test_after_a_walltime_rollover_the_target_has_the_new_epoch_and_the_values_come_back(
    planes: Planes, prometheus: Prometheus, worker: WorkerProcess
) -> None:
    rolled = planes.pegasus.published(after_epoch=planes.first_epoch)
    epoch = int(rolled["epoch"])
    assert epoch == planes.first_epoch + 1
    assert rolled["slurm_job_id"] != planes.first["slurm_job_id"]  # a new Slurm job: the successor
    wait_for(
        lambda: [labels["epoch"] for labels in active(prometheus, PEGASUS)] == [str(epoch)], 60,
        f"Pegasus's target under epoch {epoch}: {prometheus.targets()}",
    )  # fmt: skip
    assert prometheus.value(f'han_control_plane_epoch{{job="{PEGASUS}",epoch="{epoch}"}}') == epoch
    # The ledger's counts, not the process's: the new epoch's series starts where the old one ended.
    succeeded = f'han_jobs_finished_total{{job="{PEGASUS}",epoch="{epoch}",kind="noop",outcome="succeeded"}}'
    wait_for(lambda: prometheus.value(succeeded) == 2, 30, "the jobs finished before the rollover")
    # The worker followed (straight to the new epoch, or by the Mac while Pegasus's was stale), and said so in
    # the ledger it came back to.
    wait_for(
        lambda: prometheus.value(f'han_worker_up{{job="{PEGASUS}",epoch="{epoch}"}}') == 1, 90,
        f"the worker on Pegasus's epoch {epoch}:\n{worker.output()[-3000:]}",
    )  # fmt: skip
    returned = (
        f'sum(han_worker_control_plane_switches_total{{job="{PEGASUS}",epoch="{epoch}",to_source="pegasus"}})'
    )
    assert (prometheus.value(returned) or 0) >= 1


def test_an_elastic_pool_paused_by_a_refused_submission_is_scraped_with_its_reason(
    unprivileged_env: UnprivilegedEnv, workdir: Path, prometheus: Prometheus, worker_config: Path
) -> None:
    """The scaler of a pool whose partition does not exist, against the Mac's control plane, where jobs wait (no
    worker serves it yet): its first tick's submission is refused, its second tick finds the pool paused."""
    pool_name = f"han-metrics-elastic-{uuid.uuid4().hex[:6]}"
    pool = {"job_name": pool_name, "queues": ["noop"], "script": str(workdir / "never.sbatch"),
            "sbatch": {"partition": "no-such-partition", "time": "00:05:00"},
            "limits": {"max_workers": 2, "max_failed_submissions": 1}}  # fmt: skip
    pool_file = write_private_file(unprivileged_env, workdir / "pool.json", json.dumps(pool))
    submit(unprivileged_env, worker_config, "mac")  # backlog on the Mac, for the scaler to submit for
    argv = ["scale", "--config", str(worker_config), "--mode", "mac", "--pool", str(pool_file),
            "--state", str(workdir / "scaler-state.json"), "--once"]  # fmt: skip
    ticks = [han_worker(unprivileged_env, *argv, timeout=90) for _tick in range(2)]
    assert [tick.returncode for tick in ticks] == [0, 0], [tick.stderr for tick in ticks]
    assert ticks[1].stdout.startswith("paused after 1 failed submissions in a row"), ticks[1].stdout
    paused = f'han_scaler_paused{{job="{MAC}",pool="{pool_name}",reason="failed_submissions"}}'
    wait_for(
        lambda: prometheus.value(paused) == 1, 30, f"the pool paused: {prometheus.query('han_scaler_paused')}"
    )
    by_pool = f'{{job="{MAC}",pool="{pool_name}"}}'
    assert (
        prometheus.value(f'han_scaler_paused{{job="{MAC}",pool="{pool_name}",reason="failed_starts"}}') == 0
    )
    assert (prometheus.value(f"han_scaler_desired_worker_jobs{by_pool}") or 0) >= 1
    assert prometheus.value(f"han_scaler_pending_worker_jobs{by_pool}") == 0
    assert prometheus.value(f"han_scaler_running_worker_jobs{by_pool}") == 0
    assert prometheus.value(f"han_scaler_idle_gpu_seconds_total{by_pool}") == 0


def test_after_a_failover_the_mac_counts_the_switch_and_shows_the_worker_under_source_mac(
    planes: Planes, prometheus: Prometheus, worker: WorkerProcess
) -> None:
    switched = (
        f'sum(han_worker_control_plane_switches_total{{job="{MAC}",from_source="pegasus",to_source="mac"}})'
    )
    wait_for(lambda: prometheus.value(switched) is not None, 30, "the Mac's switch counter")
    before = prometheus.value(switched)
    assert before is not None
    planes.pegasus.stop()
    assert planes.pegasus.endpoints["stale"] is True
    wait_for(
        lambda: prometheus.value(switched) == before + 1, 60,
        f"the Mac's count of switches from Pegasus at {before + 1:g}:\n{worker.output()[-3000:]}",
    )  # fmt: skip
    wait_for(lambda: prometheus.value(f'han_worker_up{{job="{MAC}"}}') == 1, 30, "the worker on the Mac")
    [info] = prometheus.query(f'han_control_plane_info{{job="{MAC}"}}')
    assert info["source"] == "mac"
    [labels] = active(prometheus, MAC)
    assert labels["source"] == "mac"
    # The job that waited on the Mac runs now: the Mac's ledger counts it.
    succeeded = f'han_jobs_finished_total{{job="{MAC}",kind="noop",outcome="succeeded"}}'
    wait_for(lambda: (prometheus.value(succeeded) or 0) >= 1, 60, "the Mac's waiting job run")
