"""Elastic workers on the testbed's real Slurm (issue 20): from zero workers, a burst of jobs makes
``han-worker scale`` submit worker jobs up to the pool's limits, every job succeeds once, and once the queue
is empty every worker leaves by itself (``idle_timeout_seconds``) and gives its allocation back. A worker
job leaves a job it cannot finish before its walltime to a worker that can, unclaimed. A scaler whose control
plane stops waits, and scales on the control plane's next epoch.

The pool, its worker jobs and the control plane are this module's own (their own job name, state directory
and address): `make test` runs it beside the tests that share the inventory's control planes. The worker
jobs run the test venv's ``han-worker run`` as the cluster user, as the role's job script runs the env's.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from han_worker.scaling.snapshot import RUN_TIME_SAMPLE
from han_worker.store.ledger import Ledger, NewJob
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    han_worker,
    start_control_plane,
    wait_for,
    write_private_file,
)
from tests.integration.scaling_pools import ElasticPool, PeakSampler

pytestmark = pytest.mark.own_names

ADDRESS = "127.0.0.75"  # no other test or benchmark uses it
JOBS = 12
MAX_WORKERS, MAX_PENDING = 3, 2


class Pool(ElasticPool):
    """The module's pool, whose worker jobs a test may also submit by hand."""

    def __init__(self, env: UnprivilegedEnv, workdir: Path, control_plane: RunningControlPlane) -> None:
        # A tick longer than the client's probe timeout (2 s): the scaler's blocking read between ticks must
        # outlast its Redis socket's timeout.
        super().__init__(env, workdir, control_plane, job_prefix="han-test-elastic", tick_seconds=3,
                         max_workers=MAX_WORKERS, max_pending=MAX_PENDING)  # fmt: skip

    def sbatch(self, time_limit: str, script: Path | None = None) -> str:
        """Submit one worker job of the pool by hand (its script, or ``script``), as the cluster user; its job
        id."""
        env = self.env
        submitted = subprocess.run(
            ["setpriv", f"--reuid={env.user}", f"--regid={env.user}", "--init-groups", "--", "sbatch",
             "--parsable", f"--job-name={self.job_name}", f"--time={time_limit}", "--cpus-per-task=1",
             "--mem=500M", f"--output={self.workdir / 'slurm-%j.out'}", f"--chdir={self.workdir}",
             "--export=NONE", str(script or self.script)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return submitted.stdout.strip().split(";")[0]

    def start_scaler(self, log: Path) -> subprocess.Popen[str]:
        """``han-worker scale`` for the pool as the cluster user, its output in ``log``."""
        with log.open("w") as scaler_output:
            return subprocess.Popen(
                self.env.argv("han-worker", "scale", "--config", str(self.worker_config), "--pool",
                              str(self.pool_file), "--state", str(self.state)),
                stdout=scaler_output, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip


@pytest.fixture
def pool(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[Pool]:
    control_plane = start_control_plane(unprivileged_env, workdir / "cp", address=ADDRESS)
    made = Pool(unprivileged_env, workdir, control_plane)
    try:
        yield made
    finally:
        subprocess.run(["scancel", f"--name={made.job_name}"], check=False)
        made.cp.shutdown()  # the one running now (a test may have restarted it)


def test_a_burst_from_zero_workers_scales_up_within_the_limits_and_every_worker_leaves_when_done(
    pool: Pool,
) -> None:
    jobs = pool.submit_sleeps(JOBS, seconds=1)
    assert pool.alive() == [], "no worker before the scaler"

    sampler = PeakSampler(pool)
    sampler.start()
    log = pool.workdir / "scaler.log"
    scaler = pool.start_scaler(log)
    ledger = pool.cp.ledger()
    try:
        wait_for(lambda: all(ledger.status(job) == "succeeded" for job in jobs), 180,
                 f"the {JOBS} jobs to succeed", interval=0.5)  # fmt: skip
        wait_for(
            lambda: pool.alive() == [], 60, "every worker job to end (idle_timeout_seconds 3)", interval=0.5
        )
        records = [ledger.job(job) for job in jobs]
    finally:
        sampler.stopping.set()
        scaler.send_signal(signal.SIGTERM)
        assert scaler.wait(30) == 0, log.read_text()
        ledger.close()
    output = log.read_text()
    assert sampler.most_alive <= MAX_WORKERS, output
    assert sampler.most_waiting <= MAX_PENDING, output
    assert [record.attempts if record else None for record in records] == [1] * JOBS, (
        "none killed, none run twice"
    )
    workers = {record.worker_id for record in records if record}
    assert len(workers) >= 2, f"the work was spread over more than one worker job: {workers}"
    worker_jobs = output.count("submitted worker job")
    assert 2 <= worker_jobs <= MAX_WORKERS + 2, (
        output
    )  # a worker that left may be replaced while work remains
    assert "no backlog" in output
    assert "paused" not in output, output
    assert "failed" not in output, output
    state = json.loads(pool.state.read_text())
    assert state["failures"]["starts"] == 0
    assert state["submitted"] == {}, "every worker job registered"


def test_the_scaler_waits_through_a_restart_of_its_control_plane_and_scales_on_its_next_epoch(
    pool: Pool,
) -> None:
    log = pool.workdir / "scaler-restart.log"
    scaler = pool.start_scaler(log)
    try:
        wait_for(pool.state.exists, 30, "the scaler's first tick (its state file)")
        epoch = pool.cp.endpoints["epoch"]
        assert pool.cp.stop() == 0
        # Down: the scaler's next tick loses it and waits (nothing is scaled, no traceback).
        wait_for(lambda: "nothing is scaled until it is" in log.read_text(), 30, "the scaler waiting")
        pool.cp = start_control_plane(pool.env, pool.cp.state_dir, address=ADDRESS)
        assert pool.cp.endpoints["epoch"] == epoch + 1
        jobs = pool.submit_sleeps(3, seconds=1)
        ledger = pool.cp.ledger()
        try:
            wait_for(lambda: all(ledger.status(job) == "succeeded" for job in jobs), 180,
                     f"the jobs to succeed on worker jobs the scaler submits on epoch {epoch + 1}:\n"
                     f"{log.read_text()[-3000:]}", interval=0.5)  # fmt: skip
        finally:
            ledger.close()
    finally:
        scaler.send_signal(signal.SIGTERM)
        assert scaler.wait(30) == 0, log.read_text()
    output = log.read_text()
    assert re.search(r"connected to .*: scaling again", output), output
    assert "submitted worker job" in output, output
    assert "Traceback" not in output, output


def ran_for(ledger: Ledger, kind: str, seconds: int) -> None:
    """History: as many jobs of ``kind`` as the typical run time is taken from, each of which succeeded after
    ``seconds``, the latest of all (the module's control planes share a ledger; the burst's sleep jobs ran 1 s)."""
    job_ids = [str(uuid.uuid4()) for _index in range(RUN_TIME_SAMPLE)]
    ledger.insert_jobs([NewJob(job_id, kind, "noop", {}, {}, 3) for job_id in job_ids])
    with ledger.connection().transaction():
        ledger.connection().execute(
            "UPDATE jobs SET status = 'succeeded', attempts = 1 WHERE id = ANY(%s::uuid[])", (job_ids,)
        )
        ledger.connection().execute(
            """INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome)
               SELECT id, 1, 'w', now() - make_interval(secs => %s), now(), 'succeeded'
               FROM unnest(%s::uuid[]) AS id""",
            (seconds, job_ids),
        )


def test_a_worker_leaves_a_job_it_cannot_finish_before_its_walltime_to_a_worker_that_can(pool: Pool) -> None:
    [job] = pool.submit_sleeps(1, seconds=1)
    ledger = pool.cp.ledger()
    try:
        # A typical sleep job runs 80 s, which the worker job's 2 min limit allows (x 1.25 margin: 100 s), but
        # its worker starts 30 s into the job: about 88 s are left when the job is delivered.
        ran_for(ledger, "sleep", 80)
        late = write_private_file(pool.env, pool.workdir / "late.sbatch",
                                  f"#!/bin/bash -eu\nsleep 30\nexec {pool.script}\n", 0o700)  # fmt: skip
        worker_job = pool.sbatch("2:00", late)
        wait_for(lambda: pool.alive() == [], 120, f"worker job {worker_job} to leave", interval=0.5)
        output = (pool.workdir / f"slurm-{worker_job}.out").read_text()
        record = ledger.job(job)
        assert record is not None
        assert (record.status, record.attempts) == ("queued", 0), output
        assert f"job {job} left to another worker: " in output, output
        assert "too little for a sleep job (a typical sleep job runs 80s)" in output, output

        # A worker without a walltime (outside Slurm) takes it, and leaves once idle.
        outside = han_worker(pool.env, "run", "--config", str(pool.worker_config), timeout=60)
        assert outside.returncode == 0, outside.stderr
        record = ledger.job(job)
        assert record is not None
        assert (record.status, record.attempts) == ("succeeded", 1), outside.stderr
    finally:
        ledger.close()
