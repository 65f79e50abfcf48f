"""What the scaler looks at, read afresh at every tick, never carried over from memory (a scaler that
restarts with its control plane sees the same picture): the ledger's backlog and typical run times, the
worker registry, and the worker jobs Slurm holds for the pool.

A pool is one elastic deployment: the Slurm job name its worker jobs carry and the queues its workers serve.
A worker job that Slurm started but whose worker has not registered yet is still on its way (its worker
warms its model up), so it counts as pending: counting it as nothing is how a scaler submits twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from han_worker.scaling.policy import Demand, Supply, can_finish
from han_worker.slurm import QueuedJob, has_started, is_alive, parse_time_left
from han_worker.store.ledger import Connection

log = logging.getLogger(__name__)

# Run times come from the latest successful attempts, at most this many per pool and from the last week: the
# typical run time follows what the lab runs now, and the query stays small on a ledger of millions of jobs.
RUN_TIME_SAMPLE = 100

_DEMAND = """
SELECT count(*) FILTER (WHERE status = 'queued'),
       coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'queued')), 0)::float8
FROM jobs WHERE status IN ('queued', 'running') AND queue = ANY(%(queues)s)
"""
_TYPICAL_RUN = """
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) FROM (
    SELECT extract(epoch FROM a.finished_at - a.started_at)::float8 AS seconds
    FROM job_attempts a JOIN jobs j ON j.id = a.job_id
    WHERE a.outcome = 'succeeded' AND j.queue = ANY(%(queues)s)
      AND a.finished_at > now() - make_interval(days => 7)
    ORDER BY a.finished_at DESC LIMIT %(sample)s
) AS recent
"""
# The same estimate per kind, for a worker deciding whether it can finish a job (walltime_guard.py).
_TYPICAL_RUN_BY_KIND = """
SELECT served.kind, (
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) FROM (
        SELECT extract(epoch FROM a.finished_at - a.started_at)::float8 AS seconds
        FROM job_attempts a JOIN jobs j ON j.id = a.job_id
        WHERE a.outcome = 'succeeded' AND j.kind = served.kind
          AND a.finished_at > now() - make_interval(days => 7)
        ORDER BY a.finished_at DESC LIMIT %(sample)s
    ) AS recent
) FROM unnest(%(kinds)s::text[]) AS served(kind)
"""


@dataclass(frozen=True)
class Pool:
    job_name: str  # the Slurm job name of the pool's worker jobs
    queues: tuple[str, ...]


@dataclass(frozen=True)
class Backlog:
    demand: Demand
    oldest_waiting_seconds: float  # age of the oldest job not started yet (0 without backlog)


def read_backlog(connection: Connection, pool: Pool) -> Backlog:
    """The pool's waiting jobs, the oldest one's age and the median run time of its recent successes."""
    parameters = {"queues": list(pool.queues), "sample": RUN_TIME_SAMPLE}
    with connection.cursor() as cursor:
        cursor.execute(_DEMAND, parameters)
        waiting, oldest = cursor.fetchone() or (0, 0.0)
        cursor.execute(_TYPICAL_RUN, parameters)
        (typical,) = cursor.fetchone() or (None,)
    return Backlog(Demand(int(waiting), None if typical is None else float(typical)), float(oldest))


def read_typical_runs(connection: Connection, kinds: Iterable[str]) -> dict[str, float]:
    """Kind -> the median run time of its recent successes (as :func:`read_backlog` reads it for a pool);
    a kind without history is absent."""
    with connection.cursor() as cursor:
        cursor.execute(_TYPICAL_RUN_BY_KIND, {"kinds": sorted(set(kinds)), "sample": RUN_TIME_SAMPLE})
        rows = cursor.fetchall()
    return {str(kind): float(seconds) for kind, seconds in rows if seconds is not None}


def supply(
    pool: Pool, registry: Iterable[Mapping[str, str]], jobs: Sequence[QueuedJob], demand: Demand
) -> Supply:
    """The pool's workers by state and the worker jobs on their way, from the registry and squeue.

    Every registered worker serving one of the pool's queues counts (a fixed worker takes the pool's jobs as
    well as an elastic one). An idle worker without the walltime for a typical job cannot take one: it is
    counted as draining, an allocation that will end by itself."""
    ours = {job.job_id: job for job in jobs if job.name == pool.job_name and is_alive(job)}
    busy = idle = draining = 0
    registered: set[str] = set()
    for entry in registry:
        if not set(entry.get("queues", "").split(",")) & set(pool.queues):
            continue
        job = ours.get(entry.get("slurm_job_id", ""))
        if job is not None:
            registered.add(job.job_id)
        if entry.get("draining") == "1":
            draining += 1
        elif entry.get("current_job"):
            busy += 1
        elif can_finish(_walltime_left(job), demand.typical_run_seconds):
            idle += 1
        else:
            draining += 1
    on_the_way = [job for job_id, job in ours.items() if job_id not in registered]
    return Supply(busy=busy, idle=idle, draining=draining, pending=len(on_the_way))


def _walltime_left(job: QueuedJob | None) -> float | None:
    """Seconds left of a running worker job's walltime; None when unknown or unlimited."""
    if job is None or not has_started(job):
        return None
    try:
        left = parse_time_left(job.time_left)
    except ValueError:
        log.debug("job %s: time left %r is not a walltime", job.job_id, job.time_left)
        return None
    return None if left is None else float(left)
