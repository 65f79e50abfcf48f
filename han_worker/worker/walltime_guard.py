"""Whether a Slurm worker can finish a delivered job before its walltime, asked before it claims the job.

A job taken too close to the walltime is killed with its worker, and costs an attempt; three such and a long
job is dead. So a worker whose walltime left is shorter than the job's typical run time (times a margin: the
estimate the scaler uses, :func:`han_worker.scaling.policy.can_finish`) leaves the job to another worker,
unclaimed, and then drains: every later job would be refused too. In an elastic pool the scaler sees the
backlog and submits a successor (issue 20).

Cheap on purpose, since it runs before every claim of a Slurm worker with a time limit:

- the walltime left is read from ``squeue`` once a minute and counted down on the monotonic clock between;
- the typical run time of each kind the worker serves comes from the ledger once a minute (per control
  plane: each has its own history);
- the job's own kind is looked up only when the walltime left is too short for one of those kinds.

A worker outside Slurm, without a time limit, or that Slurm does not answer takes every job, as before. So
does a worker for a job that typically runs longer than its whole time limit: no worker of the same time limit
could finish it, and refusing it would only make every worker in turn leave (the scaler would start more, each
refusing it again).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from han_worker.scaling.policy import can_finish
from han_worker.scaling.snapshot import read_typical_runs
from han_worker.slurm import (
    COMMAND_ENVIRONMENT,
    has_started,
    parse_squeue,
    parse_time_left,
    parse_walltime,
    squeue_argv,
)
from han_worker.store.ledger import Connection

log = logging.getLogger(__name__)

REFRESH_SECONDS = 60.0  # how long a walltime read from Slurm and the typical run times are trusted
SQUEUE_TIMEOUT = 10.0
_KIND_OF_JOB = "SELECT kind FROM jobs WHERE id = %s::uuid"


def refusal(
    walltime_left: float | None,
    typical_runs: Mapping[str, float],
    served_kinds: Iterable[str],
    kind_of_job: Callable[[], str | None],
    time_limit: float | None = None,
) -> str | None:
    """Why the delivered job cannot be finished in ``walltime_left`` seconds (None: take it).

    ``kind_of_job`` is asked only when the time left is too short for one of the ``served_kinds``: a job
    of any kind fits otherwise. A kind without history fits any time left (as for the scaler). A job that
    would not fit in the worker's whole ``time_limit`` either is taken: a fresh worker could not finish it."""
    if walltime_left is None:
        return None
    if all(can_finish(walltime_left, typical_runs.get(kind)) for kind in served_kinds):
        return None
    kind = kind_of_job()
    if kind is None:  # no such job: the claim refuses it, as for any worker
        return None
    typical = typical_runs.get(kind)
    if can_finish(walltime_left, typical):
        return None
    if typical is not None and time_limit is not None and not can_finish(time_limit, typical):
        log.warning(
            "a typical %s job runs %gs, longer than a worker's whole time limit (%gs): taking it anyway, "
            "since no fresh worker could finish it either; give the workers a longer walltime",
            kind, typical, time_limit,
        )  # fmt: skip
        return None
    runs = "no history" if typical is None else f"a typical {kind} job runs {typical:g}s"
    return f"{walltime_left:.0f}s of walltime left, too little for a {kind} job ({runs})"


def read_walltime(slurm_job_id: str) -> tuple[float, float | None] | None:
    """Seconds left of this Slurm job's walltime and its whole time limit, from squeue; None when unlimited
    or Slurm cannot tell."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    try:
        result = subprocess.run(
            squeue_argv(squeue, job_ids=[slurm_job_id]), env={**os.environ, **COMMAND_ENVIRONMENT},
            capture_output=True, text=True, timeout=SQUEUE_TIMEOUT, check=False,
        )  # fmt: skip
        started = [job for job in parse_squeue(result.stdout) if has_started(job)]
        if result.returncode != 0 or not started:
            return None
        left, limit = parse_time_left(started[0].time_left), parse_walltime(started[0].time_limit)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        log.debug("squeue for job %s: %s", slurm_job_id, exc)
        return None
    return None if left is None else (float(left), None if limit is None else float(limit))


@dataclass
class WalltimeGuard:
    """One worker's guard: its Slurm job (empty outside Slurm) and the kinds it serves."""

    slurm_job_id: str
    served_kinds: tuple[str, ...]
    _ends_at: float | None = None  # monotonic time the walltime ends
    _time_limit: float | None = None
    _next_read: float = 0.0
    _typical: dict[str, tuple[float, dict[str, float]]] = field(default_factory=dict)  # source -> (at, runs)

    def refusal(self, connection: Connection, source: str, job_id: str) -> str | None:
        """Why this worker cannot finish ``job_id`` before its walltime (None: it can): :func:`refusal`."""
        left = self.walltime_left()
        if left is None:
            return None
        return refusal(
            left, self._typical_runs(connection, source), self.served_kinds,
            lambda: _kind_of_job(connection, job_id), self._time_limit,
        )  # fmt: skip

    def walltime_left(self) -> float | None:
        if not self.slurm_job_id:
            return None
        now = time.monotonic()
        if now >= self._next_read:
            self._next_read = now + REFRESH_SECONDS
            read = read_walltime(self.slurm_job_id)
            self._ends_at = None if read is None else now + read[0]
            self._time_limit = None if read is None else read[1]
        return None if self._ends_at is None else max(0.0, self._ends_at - now)

    def _typical_runs(self, connection: Connection, source: str) -> dict[str, float]:
        read_at, runs = self._typical.get(source, (float("-inf"), {}))
        if time.monotonic() - read_at >= REFRESH_SECONDS:
            runs = read_typical_runs(connection, self.served_kinds)
            self._typical[source] = (time.monotonic(), runs)
        return runs


def _kind_of_job(connection: Connection, job_id: str) -> str | None:
    try:
        uuid.UUID(job_id)
    except ValueError:
        return None
    row = connection.execute(_KIND_OF_JOB, (job_id,)).fetchone()
    return None if row is None else str(row[0])
