"""An elastic pool of worker jobs on the testbed's real Slurm, for the modules that scale one (issue 20).

The files are the ones role pegasus_worker writes for a pool, with a test's own job name beside the test's own
control plane: a worker configuration (queue noop, leaving after 3 s idle), a worker job script that runs the
test venv's ``han-worker run`` as the cluster user (as the role's script runs the env's), and the pool file
``han-worker scale`` reads. Each module keeps its own address, job name prefix, tick and limits: what differs
between them is what they test.
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from pathlib import Path

from han_worker.slurm import WAITING_STATES, is_alive, parse_squeue, squeue_argv
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    han_worker,
    worker_settings,
    write_private_file,
)


def alive_states(job_name: str) -> list[str]:
    """The states of the Slurm jobs named ``job_name`` that are alive (pending or running)."""
    listed = subprocess.run(squeue_argv("squeue", name=job_name), capture_output=True, text=True, check=True)
    return [job.state for job in parse_squeue(listed.stdout) if is_alive(job)]


def submit_sleeps(
    env: UnprivilegedEnv, control_plane: RunningControlPlane, workdir: Path, count: int, seconds: int
) -> list[str]:
    """Submit ``count`` sleep jobs of ``seconds`` through ``han-worker submit`` as the cluster user (a client's
    configuration in ``workdir``); their job ids."""
    client = worker_settings(control_plane, workdir / "spool-client")
    config = write_private_file(env, workdir / "client.json", json.dumps(client))
    jobs = []
    for _index in range(count):
        submitted = han_worker(env, "submit", "--config", str(config), "--kind", "sleep",
                               "--param", f"seconds={seconds}")  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        jobs.append(submitted.stdout.strip())
    return jobs


class ElasticPool:
    """A pool's files in ``workdir`` (worker configuration, worker job script, pool file) and where its scaler
    keeps its state; ``job_prefix`` and a random suffix name its worker jobs."""

    def __init__(
        self,
        env: UnprivilegedEnv,
        workdir: Path,
        control_plane: RunningControlPlane,
        *,
        job_prefix: str,
        tick_seconds: int,
        max_workers: int,
        max_pending: int,
    ) -> None:
        self.env, self.workdir, self.cp = env, workdir, control_plane
        self.job_name = f"{job_prefix}-{uuid.uuid4().hex[:8]}"
        self.worker_config = write_private_file(env, workdir / "worker.json", json.dumps(worker_settings(
            control_plane, workdir / "spool", queues=["noop"], idle_timeout_seconds=3)))  # fmt: skip
        self.script = write_private_file(env, workdir / "worker.sbatch", "#!/bin/bash -eu\nexec "
                                         f"{env.bin_dir / 'han-worker'} run --config {self.worker_config}\n",
                                         0o700)  # fmt: skip
        self.pool_file = write_private_file(env, workdir / "pool.json", json.dumps({
            "job_name": self.job_name, "queues": ["noop"], "script": str(self.script),
            "tick_seconds": tick_seconds,
            "sbatch": {"time": "10:00", "output": str(workdir / "slurm-%j.out"), "chdir": str(workdir),
                       "cpus_per_task": 1, "mem": "500M"},
            "limits": {"max_workers": max_workers, "max_pending": max_pending, "horizon_seconds": 5},
        }))  # fmt: skip
        self.state = workdir / "scaler-state.json"

    def alive(self) -> list[str]:
        """The states of the pool's worker jobs that are alive."""
        return alive_states(self.job_name)

    def submit_sleeps(self, count: int, seconds: int) -> list[str]:
        """Submit ``count`` sleep jobs of ``seconds`` to the pool's control plane (the one running now)."""
        return submit_sleeps(self.env, self.cp, self.workdir, count, seconds)


class PeakSampler(threading.Thread):
    """squeue every half second: the most worker jobs of a pool alive, and waiting, at any moment, which the
    scaler's limits bound (a check at the end alone would miss a peak in between)."""

    def __init__(self, pool: ElasticPool) -> None:
        super().__init__(daemon=True)
        self.pool, self.stopping = pool, threading.Event()
        self.most_alive = self.most_waiting = 0

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            states = self.pool.alive()
            self.most_alive = max(self.most_alive, len(states))
            self.most_waiting = max(self.most_waiting, sum(state in WAITING_STATES for state in states))
