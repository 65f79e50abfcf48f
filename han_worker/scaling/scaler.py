"""The scaler: at every tick, read the pool's picture (snapshot.py), decide (policy.py) and submit the worker
jobs decided, then sleep until the next tick or a submission to one of the pool's queues, whichever comes
first.

What must survive a restart of the scaler lives in its state file, not in memory: the worker jobs it
submitted that have not registered yet (to tell an allocation that died before its worker registered) and
the failures in a row (for the back-off and the pause). Everything else is read afresh each tick. A pause
lasts until the operator resumes the pool (``han-worker scale --resume``, with which the control plane's
supervisor starts the scaler when the role registered a changed pool file; control_plane/scalers.py).
"""

from __future__ import annotations

import getpass
import logging
import os
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from han_worker.fields import FieldReader
from han_worker.private_files import TrustedFileError, read_trusted_json, write_private_json
from han_worker.scaling.policy import Decision, Demand, Failures, Supply, decide, pause_cause
from han_worker.scaling.pool import PoolSettings
from han_worker.scaling.snapshot import read_backlog, supply
from han_worker.slurm import COMMAND_ENVIRONMENT, QueuedJob, has_started, is_alive, parse_squeue, squeue_argv
from han_worker.store.link import Link
from han_worker.store.queues import stream_key
from han_worker.store.tallies import PoolTick, record_tick

log = logging.getLogger(__name__)

SLURM_TIMEOUT = 30.0  # seconds an sbatch or squeue may take on a busy slurmctld


@dataclass(frozen=True)
class Starts:
    """What became of the worker jobs a scaler submitted and had not seen register, by one tick."""

    registered: tuple[str, ...]  # their worker registered: a start that worked
    # Cancelled (scancel, by an operator or an admin) before their worker registered: someone's choice, not
    # a start that failed, so neither counted towards the pause nor clearing the failures in a row.
    cancelled: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]  # (job id, how it ended) ended or gone before their worker registered


def starts_of(
    submitted: Iterable[str], registry: Sequence[Mapping[str, str]], jobs: Sequence[QueuedJob]
) -> Starts:
    """Sort the ``submitted`` job ids by the workers' registry and the pool's squeue lines; a job still
    queued or running without a registered worker yet is in none of the three."""
    registered_ids = {entry.get("slurm_job_id", "") for entry in registry}
    alive = {job.job_id for job in jobs if is_alive(job)}
    states = {job.job_id: job.state for job in jobs}
    registered, cancelled, failed = [], [], []
    for job_id in submitted:
        if job_id in registered_ids:
            registered.append(job_id)
        elif job_id in alive:
            continue
        elif states.get(job_id) == "CANCELLED":
            cancelled.append(job_id)
        else:
            failed.append((job_id, states.get(job_id, "gone from Slurm's queue")))
    return Starts(tuple(registered), tuple(cancelled), tuple(failed))


class StateFileError(ValueError):
    """The scaler's state file cannot be read; the message names it."""


@dataclass
class ScalerState:
    """Worker jobs submitted and not registered yet (job id -> submission time), failures in a row, and the
    last decision (what ``han-worker status --scaler-state`` shows; the scaler itself never reads it back)."""

    submitted: dict[str, float] = field(default_factory=dict)
    failures: Failures = field(default_factory=Failures)
    last: dict[str, object] = field(default_factory=dict)  # pool, at, reason, paused, submitted

    def to_dict(self) -> dict[str, object]:
        return {"submitted": dict(self.submitted), "failures": asdict(self.failures), "last": dict(self.last)}


def load_state(path: Path) -> ScalerState:
    if not path.exists():
        return ScalerState()
    try:
        data = read_trusted_json(path)
    except TrustedFileError as exc:
        raise StateFileError(str(exc)) from exc
    fields = FieldReader(data, str(path), StateFileError)
    submitted = fields.child("submitted")
    failures = fields.child("failures")
    return ScalerState(
        submitted={job_id: submitted.seconds(job_id, 0.0, 0.0, 1e12) for job_id in submitted.data},
        failures=Failures(
            submissions=failures.integer("submissions", 0, 1_000_000),
            starts=failures.integer("starts", 0, 1_000_000),
            last_at=failures.seconds("last_at", 0.0, 0.0, 1e12),
            last_error=failures.string("last_error") if failures.data.get("last_error") else "",
        ),
        last=_last_decision(fields),
    )


def _last_decision(fields: FieldReader) -> dict[str, object]:
    if not isinstance(fields.data.get("last"), dict) or not fields.data["last"]:
        return {}
    last = fields.child("last")
    return {
        "pool": last.string("pool"),
        "at": last.seconds("at", 0.0, 0.0, 1e12),
        "reason": last.string("reason"),
        "paused": bool(last.data.get("paused")),
        "submitted": last.integer("submitted", 0, 1_000_000),
    }


def describe_state(path: Path, now: float | None = None) -> dict[str, object]:
    """What ``han-worker status --scaler-state`` shows: the last decision and its age, the failures in a row
    and the worker jobs on their way; ``state: none`` before the scaler's first tick."""
    state = load_state(path)
    if not state.last:
        return {"file": str(path), "state": "none"}
    age = max(0.0, (time.time() if now is None else now) - float(str(state.last["at"])))
    return {
        "file": str(path), "state": "paused" if state.last["paused"] else "scaling",
        "age_seconds": round(age), **state.last, "failures": asdict(state.failures),
        "on_the_way": sorted(state.submitted),
    }  # fmt: skip


RESUME_HINT = (
    "  paused until resumed: fix the setting and re-run playbooks/pegasus_worker.yml (the control plane "
    "starts the scaler again with --resume when the pool's file changed)"
)


def format_state(summary: Mapping[str, object]) -> str:
    """The scaler for people, as :func:`describe_state` summed it up: ``scaler han-pose-worker: paused, 12 s
    ago: paused after 3 ...``, then, indented, the failures in a row, the worker jobs on their way and how to
    resume a paused pool, each only when there is something to say."""
    if summary.get("state") == "none":
        return f"scaler: no decision yet ({summary['file']})"
    lines = [
        f"scaler {summary['pool']}: {summary['state']}, {summary['age_seconds']} s ago: {summary['reason']}"
    ]
    failures = summary.get("failures")
    if isinstance(failures, Mapping) and (failures.get("submissions") or failures.get("starts")):
        last_error = f"; the last: {failures['last_error']}" if failures.get("last_error") else ""
        lines.append(
            f"  failures in a row: {failures.get('submissions', 0)} submission(s) refused, "
            f"{failures.get('starts', 0)} worker job(s) ended before their worker registered{last_error}"
        )
    on_the_way = summary.get("on_the_way")
    if isinstance(on_the_way, list) and on_the_way:
        lines.append(
            f"  worker jobs submitted, their worker not registered yet: {', '.join(map(str, on_the_way))}"
        )
    if summary.get("state") == "paused":
        lines.append(RESUME_HINT)
    return "\n".join(lines)


def run_slurm(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=SLURM_TIMEOUT, check=False,
        env={**_plain_environment(), **COMMAND_ENVIRONMENT},
    )  # fmt: skip


def _plain_environment() -> dict[str, str]:
    """What Slurm's commands need from ours (PATH, HOME, USER): none of the caller's other variables."""
    return {key: os.environ[key] for key in ("PATH", "HOME", "USER", "LOGNAME") if key in os.environ}


class Scaler:
    def __init__(self, settings: PoolSettings, link: Link, state_file: Path) -> None:
        self.settings = settings
        self.link = link
        self.state_file = state_file
        self.state = load_state(state_file)
        self._last_reason = ""

    # -- one tick ----------------------------------------------------------------------------------

    def tick(self) -> Decision:
        pool = self.settings.pool
        backlog = read_backlog(self.link.ledger.connection(), pool)
        registry = self.link.queues.workers()
        jobs = self._our_jobs()
        self._account_for_starts(registry, jobs)
        have = supply(pool, registry, jobs, backlog.demand)
        decision = self._decide(backlog.demand, have)
        submitted = self._submit(decision.submit) if decision.submit else 0
        self.state.last = {"pool": pool.job_name, "at": time.time(), "reason": decision.reason,
                           "paused": decision.paused, "submitted": submitted}  # fmt: skip
        self._save()
        self._record(decision, registry, jobs)
        self._explain(decision, submitted)
        return decision

    def _record(
        self, decision: Decision, registry: Sequence[Mapping[str, str]], jobs: Sequence[QueuedJob]
    ) -> None:
        """The tick in the ledger, for /metrics (han_worker/store/tallies.py). The jobs just submitted are
        not in ``jobs`` yet: they show from the next tick on."""
        settings = self.settings
        ours = [job for job in jobs if job.name == settings.pool.job_name and is_alive(job)]
        running = [job for job in ours if has_started(job)]
        computing = {entry.get("slurm_job_id") for entry in registry if entry.get("current_job")}
        idle = sum(1 for job in running if job.job_id not in computing)
        tick = PoolTick(
            pool=settings.pool.job_name, queues=settings.pool.queues, desired=decision.desired,
            pending=len(ours) - len(running), running=len(running),
            paused_by=pause_cause(self.state.failures, settings.limits) if decision.paused else None,
            reason=decision.reason, idle_gpus=idle * settings.gpus_per_job,
        )  # fmt: skip
        record_tick(self.link.ledger.connection(), tick, settings.tick_seconds)

    def _decide(self, demand: Demand, have: Supply) -> Decision:
        return decide(demand, have, self.settings.limits, self.state.failures, time.time())

    def _our_jobs(self) -> list[QueuedJob]:
        squeue = self.settings.slurm_program("squeue")
        result = run_slurm(squeue_argv(squeue, name=self.settings.pool.job_name, user=getpass.getuser()))
        if result.returncode != 0:
            raise SlurmError(f"squeue: {result.stderr.strip() or f'exit {result.returncode}'}")
        return parse_squeue(result.stdout)

    def _account_for_starts(self, registry: Sequence[Mapping[str, str]], jobs: Sequence[QueuedJob]) -> None:
        starts = starts_of(self.state.submitted, registry, jobs)
        for job_id in starts.registered:
            del self.state.submitted[job_id]
            self.state.failures = replace(self.state.failures, starts=0)
        for job_id in starts.cancelled:
            del self.state.submitted[job_id]
            log.info("worker job %s was cancelled before its worker registered: not a failed start", job_id)
        for job_id, ended in starts.failed:
            del self.state.submitted[job_id]
            self._failed(starts=1, error=f"worker job {job_id} ended ({ended}) before its worker registered")

    def _submit(self, count: int) -> int:
        for done in range(count):
            result = run_slurm(self.settings.sbatch_argv())
            job_id = result.stdout.strip().split(";")[0]
            if result.returncode != 0 or not job_id.isdigit():
                self._failed(
                    submissions=1, error=(result.stderr.strip() or f"sbatch exit {result.returncode}")
                )
                return done
            self.state.submitted[job_id] = time.time()
            self.state.failures = replace(self.state.failures, submissions=0)
            log.info("submitted worker job %s (%s)", job_id, self.settings.pool.job_name)
        return count

    def _failed(self, *, submissions: int = 0, starts: int = 0, error: str) -> None:
        failures = self.state.failures
        self.state.failures = Failures(
            failures.submissions + submissions, failures.starts + starts, time.time(), error[:500]
        )
        log.warning("%s", error)

    def _save(self) -> None:
        write_private_json(self.state_file, self.state.to_dict())

    def _explain(self, decision: Decision, submitted: int) -> None:
        """One line per tick that changes something, or whose reason changed (not one every few seconds)."""
        if submitted or decision.reason != self._last_reason:
            level = logging.WARNING if decision.paused else logging.INFO
            log.log(level, "%s: %s", self.settings.pool.job_name, decision.reason)
        self._last_reason = decision.reason

    # -- the loop ----------------------------------------------------------------------------------

    def wait_for_work(self) -> None:
        """Until the next tick, or until a job is submitted to one of the pool's queues."""
        streams: dict[str | bytes | memoryview, str | bytes | int | memoryview] = {
            stream_key(queue): "$" for queue in self.settings.pool.queues
        }
        self.link.queues.client.xread(streams, count=1, block=int(self.settings.tick_seconds * 1000))

    def resume(self) -> None:
        """The operator fixed what made the pool pause: forget the failures."""
        self.state.failures = Failures()
        self._save()
        log.info("%s: resumed (failures forgotten)", self.settings.pool.job_name)


class SlurmError(RuntimeError):
    """A Slurm command the scaler needs did not answer."""
