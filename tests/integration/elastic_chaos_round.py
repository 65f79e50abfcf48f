"""An elastic chaos round, shared by tests/integration/test_elastic_chaos.py (small) and the bench's
``elastic_chaos`` section (longer): the chaos of chaos_round.py, with the workers an elastic pool's Slurm jobs.

Its own control plane (``han-control-plane run --restart-crashed``, direct mode, 127.0.0.86, free ports), its own
pool (Slurm job name ``han-chaos-elastic-<hex>``, partition batch, 1 CPU, no GRES: the testbed's fake GPUs
belong to the inventory's lane), registered with that control plane, whose supervisor runs its ``han-worker
scale`` (as role pegasus_worker registers a pool). Each worker job runs
the role's elastic job script's command, ``han-worker run --restart-crashed`` (the keeper is the batch
process), with ``idle_timeout_seconds``. From zero workers, N ``sleep`` jobs are submitted at once; then:

1. the first worker job the scaler submitted is cancelled (``scancel``) while it is on its way (pending in
   Slurm, or started with its worker not registered yet: the scaler counts both as pending);
2. once the scaler has submitted again, in the middle of its scale-up, the scaler and the supervisor with all
   its services are SIGKILLed at once (a control-plane restart: the keeper starts a new supervisor, which starts
   the pool's scaler again from its registration), with the same state file: it must rebuild its picture from
   Slurm and the ledger;
3. worker processes are SIGKILLed mid-job inside their Slurm jobs (their keeper starts them again), at even
   steps of the jobs' progress;
4. a running worker job is cancelled (``scancel``, an allocation lost from the outside), mid-job if one is busy.

Meanwhile ``squeue`` is sampled every SAMPLE_S. Once the ledger says every job finished, the round waits for
the pool's worker jobs to leave, then counts:

- succeeded, lost (not succeeded) and duplicated (more than one succeeded attempt) jobs, from the ledger;
- the most allocations (worker jobs alive: pending or running) and the most pending in Slurm at any sample,
  and how many samples were over ``max_workers`` or ``max_pending``;
- orphaned allocations: the pool's worker jobs still alive in Slurm once the queue drained and every worker
  had ``idle_timeout`` plus a tick plus LEAVE_SLACK_S to leave (nobody accounts for them: no backlog wants
  them); and the worker jobs the scaler's state file still says are on their way;
- when each worker job left after the queue drained (the last job's end in the ledger), against
  ``idle_timeout`` plus one tick; the scaler's failures in a row and whether it paused.

Root runs this (as the tests do): it reads the cluster user's files, signals its processes, and cancels the
pool's Slurm jobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from han_worker import client
from han_worker.control_plane.layout import Layout, running_pid
from han_worker.slurm import WAITING_STATES, QueuedJob, is_alive, parse_squeue, squeue_argv
from tests.integration.chaos_round import (
    ChaosError,
    _at_least,
    _postgres,
    control_plane_answers,
    count_from_ledger,
    epoch,
    finished,
    registry,
    wait_until,
)
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    child_pids,
    start_control_plane,
    worker_settings,
    write_private_file,
)

ADDRESS = "127.0.0.86"  # no other test or benchmark uses it
SAMPLE_S = 0.25
CATCH_S = 0.05  # how often the round looks for a worker job on its way: one is caught within a second
LEAVE_SLACK_S = 5.0  # Slurm's end of a job that left (epilog, whole seconds) before it counts as an orphan
WORKER_KILL, PENDING_CANCEL, RUNNING_CANCEL, SCALER_KILL = (
    "worker", "pending worker job", "running worker job", "scaler and control plane",
)  # fmt: skip


@dataclass(frozen=True)
class Plan:
    jobs: int
    job_seconds: float
    max_workers: int
    max_pending: int
    worker_kills: int
    idle_timeout: float = 3.0
    tick_seconds: float = 2.0
    horizon_seconds: float = 5.0
    max_attempts: int = 5  # a job may meet more than one kill: each costs an attempt


@dataclass
class Result:
    plan: Plan
    seconds: float = 0.0
    succeeded: int = 0
    lost: int = 0
    duplicated: int = 0
    crashed_attempts: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    worker_kills_mid_job: int = 0
    pending_cancelled: str = ""  # the job and its state in Slurm when it was cancelled
    running_cancelled: str = ""  # the job, and whether its worker ran a job
    allocations_at_scaler_kill: int = 0
    scaler_starts: int = 0
    worker_jobs_seen: int = 0
    worker_jobs_submitted: int = 0  # the scalers' "submitted worker job" lines
    samples: int = 0
    most_allocations: int = 0
    most_pending: int = 0
    samples_over_max_workers: int = 0
    samples_over_max_pending: int = 0
    epoch_before: int | None = None
    epoch_after: int | None = None
    drained_after: float = 0.0  # seconds from the burst's submission to its last job's end
    left_after_drain: dict[str, float] = field(default_factory=dict)  # worker job -> seconds after the drain
    left_late: list[str] = field(default_factory=list)  # worker jobs alive past idle_timeout + a tick
    orphans: list[str] = field(default_factory=list)
    on_the_way_at_end: list[str] = field(default_factory=list)
    scaler_failures: dict[str, object] = field(default_factory=dict)
    scaler_paused: bool = False
    scaler_last_reason: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def limits_kept(self) -> bool:
        return self.samples_over_max_workers == 0 and self.samples_over_max_pending == 0


class SlurmSampler(threading.Thread):
    """``squeue`` for the pool every SAMPLE_S: the most allocations and pending jobs, the samples over the
    limits, and when each worker job was last seen alive (wall clock, as the ledger's)."""

    def __init__(self, job_name: str, plan: Plan, result: Result) -> None:
        super().__init__(name="elastic-chaos-sampler", daemon=True)
        self.job_name, self.plan, self.result = job_name, plan, result
        self.last_alive: dict[str, float] = {}
        self.jobs: list[QueuedJob] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(SAMPLE_S):
            with contextlib.suppress(subprocess.SubprocessError, OSError):  # a failed squeue skips a sample
                self.sample()

    def sample(self) -> None:
        jobs = [job for job in pool_jobs(self.job_name) if is_alive(job)]
        pending = sum(job.state in WAITING_STATES for job in jobs)
        now, result = time.time(), self.result
        self.jobs = jobs
        for job in jobs:
            self.last_alive[job.job_id] = now
        result.samples += 1
        result.most_allocations = max(result.most_allocations, len(jobs))
        result.most_pending = max(result.most_pending, pending)
        result.samples_over_max_workers += int(len(jobs) > self.plan.max_workers)
        result.samples_over_max_pending += int(pending > self.plan.max_pending)


def pool_jobs(job_name: str) -> list[QueuedJob]:
    listed = subprocess.run(
        squeue_argv("squeue", name=job_name), capture_output=True, text=True, check=True, timeout=30
    )
    return parse_squeue(listed.stdout)


def alive_ids(job_name: str) -> list[str]:
    return [job.job_id for job in pool_jobs(job_name) if is_alive(job)]


@dataclass
class ElasticRound:
    env: UnprivilegedEnv
    workdir: Path
    plan: Plan
    log: Callable[[str], None] = print
    result: Result = field(init=False)
    job_name: str = field(init=False)
    cp: RunningControlPlane | None = field(default=None, init=False)
    killed_in: Counter[str] = field(
        default_factory=Counter, init=False
    )  # worker job -> its workers SIGKILLed

    def __post_init__(self) -> None:
        self.result = Result(self.plan, kills=dict.fromkeys(
            (PENDING_CANCEL, SCALER_KILL, WORKER_KILL, RUNNING_CANCEL), 0))  # fmt: skip
        self.job_name = f"han-chaos-elastic-{uuid.uuid4().hex[:8]}"

    def run(self) -> Result:
        with self._running() as cp:
            sampler = SlurmSampler(self.job_name, self.plan, self.result)
            self.result.epoch_before = epoch(cp)
            started, submitted_at = time.monotonic(), time.time()
            job_ids = self._submit(cp)
            sampler.start()
            try:
                self._register_pool()
                self._cancel_pending_then_kill_scale_up(cp)
                self._kill_and_cancel_while_running(cp, job_ids)
                wait_until(lambda: finished(cp, job_ids) == len(job_ids), "every job to finish", 600,
                           detail=self._state)  # fmt: skip
                drained = self._drained_at(cp, job_ids)
                self._wait_for_the_workers_to_leave(drained)
            finally:
                sampler.stopping.set()
                sampler.join()
            self.result.seconds = time.monotonic() - started
            self.result.drained_after = drained - submitted_at
            count_from_ledger(cp, job_ids, self.result)
            self._count_departures(sampler, drained)
            self.result.epoch_after = epoch(cp)
        return self.result

    # -- setting up ---------------------------------------------------------------------------------

    @contextmanager
    def _running(self) -> Iterator[RunningControlPlane]:
        cp = self.cp = start_control_plane(
            self.env, self.workdir / "cp", "--restart-crashed", address=ADDRESS
        )
        try:
            self._write_pool(cp)
            yield cp
        finally:
            self._stop_scalers()
            subprocess.run(["scancel", f"--name={self.job_name}"], check=False)
            cp.shutdown()

    def _write_pool(self, cp: RunningControlPlane) -> None:
        env, workdir, plan = self.env, self.workdir, self.plan
        settings = worker_settings(
            cp, workdir / "spool", mode="pegasus", idle_timeout_seconds=plan.idle_timeout
        )
        self.worker_config = write_private_file(env, workdir / "worker.json", json.dumps(settings))
        # The role's elastic worker script runs the keeper as the batch process: a killed worker is started
        # again in its allocation.
        script = write_private_file(env, workdir / "worker.sbatch", "#!/bin/bash -eu\nexec "
                                    f"{env.bin_dir / 'han-worker'} run --config={self.worker_config} "
                                    "--restart-crashed\n", 0o700)  # fmt: skip
        self.pool_file = write_private_file(env, workdir / "pool.json", json.dumps({
            "job_name": self.job_name, "queues": ["noop"], "script": str(script),
            "tick_seconds": plan.tick_seconds,
            "sbatch": {"partition": "batch", "time": "15:00", "output": str(workdir / "slurm-%j.out"),
                       "chdir": str(workdir), "cpus_per_task": 1, "mem": "500M", "signal": "B:TERM@60"},
            "limits": {"max_workers": plan.max_workers, "max_pending": plan.max_pending,
                       "horizon_seconds": plan.horizon_seconds, "max_failed_starts": 5},
        }))  # fmt: skip
        self.state_file = workdir / "scaler-state.json"

    def _submit(self, cp: RunningControlPlane) -> list[str]:
        link = cp.client_link()
        try:
            params = [{"seconds": self.plan.job_seconds}] * self.plan.jobs
            return client.submit_many(link, "sleep", params, max_attempts=self.plan.max_attempts)
        finally:
            link.close()

    def _scalers_file(self, suffix: str) -> Path:
        assert self.cp is not None
        return self.cp.state_dir / "scalers" / f"{self.job_name}{suffix}"

    def _register_pool(self) -> None:
        """The pool's registration with the control plane (written as the cluster user, then renamed in)."""
        document = {"schema": 1, "config": str(self.worker_config), "pool": str(self.pool_file),
                    "state": str(self.state_file)}  # fmt: skip
        staged = write_private_file(self.env, self._scalers_file(".json.tmp"), json.dumps(document))
        staged.rename(self._scalers_file(".json"))
        wait_until(lambda: self.scaler_pid() is not None, "the control plane running the scaler", 30,
                   detail=self._state)  # fmt: skip

    def scaler_pid(self) -> int | None:
        """The pid of the pool's scaler while the supervisor says it runs."""
        try:
            return int(json.loads(self._scalers_file(".running").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def _stop_scalers(self) -> None:
        """Unregister the pool; the supervisor stops its scaler (SIGTERM, between two ticks)."""
        if self.cp is None:
            return
        self._scalers_file(".json").unlink(missing_ok=True)
        with contextlib.suppress(ChaosError):
            wait_until(lambda: self.scaler_pid() is None, "the scaler to stop", 40)
        if self.cp is not None:
            self.result.scaler_starts = self.cp.output().count(f"started scaler {self.job_name} ")

    def scaler_output(self) -> str:
        try:
            return self._scalers_file(".log").read_text()
        except (OSError, AssertionError):
            return ""

    # -- the chaos ----------------------------------------------------------------------------------

    def _cancel_pending_then_kill_scale_up(self, cp: RunningControlPlane) -> None:
        """The first worker job on its way is cancelled; once the scaler has submitted its replacement, the
        scaler and the control plane are killed in the middle of the scale-up; the keeper's new supervisor starts
        the scaler again."""
        first = self._catch_on_the_way(cp, set())
        subprocess.run(["scancel", first.job_id], check=True)
        self.result.pending_cancelled = f"{first.job_id} ({first.state})"
        self.result.kills[PENDING_CANCEL] += 1
        self.log(f"elastic chaos: scancel worker job {first.job_id} on its way ({first.state})")
        self._catch_on_the_way(cp, {first.job_id})
        self.result.allocations_at_scaler_kill = len(alive_ids(self.job_name))
        killed = self._kill_scaler_and_control_plane(cp)
        wait_until(lambda: control_plane_answers(cp), "the control plane back", detail=self._state)
        wait_until(lambda: self.scaler_pid() not in (None, killed), "the new supervisor's scaler", 60,
                   detail=self._state)  # fmt: skip

    def _catch_on_the_way(self, cp: RunningControlPlane, seen: set[str]) -> QueuedJob:
        """A worker job of the pool not in ``seen`` that is pending, or started with no worker registered."""
        caught: list[QueuedJob] = []

        def on_its_way() -> bool:
            registered = {entry.get("slurm_job_id", "") for entry in _registry(cp)}
            caught[:] = [job for job in pool_jobs(self.job_name)
                         if is_alive(job) and job.job_id not in seen and job.job_id not in registered]  # fmt: skip
            return bool(caught)

        wait_until(on_its_way, "a worker job on its way", 60, detail=self._state)
        return caught[0]

    def _kill_scaler_and_control_plane(self, cp: RunningControlPlane) -> int:
        """SIGKILL the scaler, the supervisor and its services at once (as a killed Slurm job's); the scaler's
        pid."""
        supervisor, scaler = running_pid(Layout(cp.state_dir)), self.scaler_pid()
        if supervisor is None or scaler is None:
            raise ChaosError(f"no supervisor holds the state directory's lock, or no scaler runs ({scaler})")
        for pid in [scaler, supervisor, *child_pids(supervisor)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.result.kills[SCALER_KILL] += 1
        self.log(f"elastic chaos: SIGKILL scaler pid {scaler}, supervisor pid {supervisor} and its services "
                 f"({self.result.allocations_at_scaler_kill} worker job(s) alive)")  # fmt: skip
        return scaler

    def _kill_and_cancel_while_running(self, cp: RunningControlPlane, job_ids: list[str]) -> None:
        steps = [WORKER_KILL] * self.plan.worker_kills
        steps.insert(round(len(steps) * 2 / 3), RUNNING_CANCEL)
        for index, what in enumerate(steps):
            due = len(job_ids) * (index + 1) / (len(steps) + 2)
            wait_until(_at_least(cp, job_ids, due), f"{due:.0f} jobs finished", 300, detail=self._state)
            if what == WORKER_KILL:
                self._kill_worker(cp)
            else:
                self._cancel_running(cp)
            self.result.kills[what] += 1

    def _busy_workers(self, cp: RunningControlPlane) -> list[dict[str, str]]:
        ours = set(alive_ids(self.job_name))
        return [entry for entry in _registry(cp)
                if entry.get("slurm_job_id") in ours and entry.get("current_job") and _runs(entry.get("pid"))]  # fmt: skip

    def _kill_worker(self, cp: RunningControlPlane) -> None:
        deadline = time.monotonic() + 20
        busy = self._busy_workers(cp)
        while not busy and time.monotonic() < deadline:  # mid-job if one gets a job within the wait
            time.sleep(0.1)
            busy = self._busy_workers(cp)
        ours = set(alive_ids(self.job_name))
        candidates = busy or [entry for entry in registry(cp)
                              if entry.get("slurm_job_id") in ours and _runs(entry.get("pid"))]  # fmt: skip
        # Spread over the allocations (each keeper restarts its worker 5 times in 10 minutes at most).
        candidates.sort(key=lambda entry: self.killed_in[entry.get("slurm_job_id", "")])
        if not candidates:
            raise ChaosError("no worker of the pool to kill" + self._state())
        entry = candidates[0]
        os.kill(int(entry["pid"]), signal.SIGKILL)
        self.killed_in[entry.get("slurm_job_id", "")] += 1
        self.result.worker_kills_mid_job += int(bool(entry.get("current_job")))
        self.log(f"elastic chaos: SIGKILL worker pid {entry['pid']} in worker job {entry.get('slurm_job_id')}"
                 f"{' (mid-job)' if entry.get('current_job') else ''}")  # fmt: skip

    def _cancel_running(self, cp: RunningControlPlane) -> None:
        # Another allocation than the ones whose worker was killed, where there is one: a loss of its own.
        busy = sorted(self._busy_workers(cp), key=lambda entry: self.killed_in[entry.get("slurm_job_id", "")])
        running = [job.job_id for job in pool_jobs(self.job_name) if job.state == "RUNNING"]
        job_id = busy[0]["slurm_job_id"] if busy else (running[0] if running else "")
        if not job_id:
            raise ChaosError("no running worker job to cancel" + self._state())
        subprocess.run(["scancel", job_id], check=True)
        self.result.running_cancelled = f"{job_id} ({'mid-job' if busy else 'idle'})"
        self.log(f"elastic chaos: scancel running worker job {self.result.running_cancelled}")

    # -- counting -----------------------------------------------------------------------------------

    def _drained_at(self, cp: RunningControlPlane, job_ids: list[str]) -> float:
        with _postgres(cp, timeout=5) as connection:
            row = connection.execute(
                "SELECT extract(epoch FROM max(finished_at))::float8 FROM job_attempts WHERE job_id = ANY(%s::uuid[])",
                (job_ids,),
            ).fetchone()
        if row is None or row[0] is None:
            raise ChaosError("the ledger holds no attempt of the round's jobs")
        return float(row[0])

    def _wait_for_the_workers_to_leave(self, drained: float) -> None:
        deadline = drained + self.plan.idle_timeout + self.plan.tick_seconds + LEAVE_SLACK_S
        with contextlib.suppress(ChaosError):
            wait_until(
                lambda: not alive_ids(self.job_name),
                "the worker jobs to leave",
                max(0, deadline - time.time()),
            )
        self.result.orphans = alive_ids(self.job_name)
        self._stop_scalers()
        self.result.worker_jobs_submitted = self.scaler_output().count("submitted worker job")
        state = json.loads(self.state_file.read_text())
        self.result.on_the_way_at_end = sorted(set(state.get("submitted", {})) - set(self.result.orphans))
        self.result.scaler_failures = dict(state.get("failures", {}))
        last = state.get("last", {})
        self.result.scaler_paused = bool(last.get("paused"))
        self.result.scaler_last_reason = str(last.get("reason", ""))

    def _count_departures(self, sampler: SlurmSampler, drained: float) -> None:
        bound = self.plan.idle_timeout + self.plan.tick_seconds
        self.result.worker_jobs_seen = len(sampler.last_alive)
        self.result.left_after_drain = {
            job_id: round(seen - drained, 2)
            for job_id, seen in sorted(sampler.last_alive.items())
            if seen > drained
        }
        self.result.left_late = sorted(
            job_id for job_id, after in self.result.left_after_drain.items() if after > bound
        ) + [job_id for job_id in self.result.orphans if job_id not in self.result.left_after_drain]

    def _state(self) -> str:
        """What a timed-out wait reports: Slurm, the registry, and the ends of the scalers' logs."""
        try:
            parts = [f"\nworker jobs alive: {alive_ids(self.job_name)}"]
        except (subprocess.SubprocessError, OSError) as exc:
            parts = [f"\nsqueue: {exc}"]
        if self.cp is not None:
            parts.append(f"control plane answers: {control_plane_answers(self.cp)}")
            parts += [str(entry) for entry in _registry(self.cp)]
        parts += ["--- scalers:", *self.scaler_output().splitlines()[-30:]]
        return "\n".join(parts)


def _runs(pid: str | None) -> bool:
    return pid is not None and pid.isdigit() and Path(f"/proc/{pid}").exists()


def _registry(cp: RunningControlPlane) -> list[dict[str, str]]:
    """The worker registry, or nothing while Valkey does not answer (a control plane being killed)."""
    try:
        return registry(cp)
    except Exception:  # whatever fails means "no entry this time"
        return []
