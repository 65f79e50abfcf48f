"""One picture of the system, read afresh from the ledger (PostgreSQL) and the worker registry (Redis).

What both ``/metrics`` and ``han-worker top`` show comes from here, so the two never disagree. Every query is
bounded whatever the ledger holds: the open jobs are read through the partial index ``jobs_open``, the
finished ones only as counts per (queue, kind, status), the failures as the latest few, and the jobs in
flight by the ids the registry names (one per live worker). No list of every job id is ever read.

Nothing is kept between snapshots: the ledger and the registry are the truth, so a view or a scrape after a
restart, or against the Mac's control plane, shows the same history the ledger holds.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from han_worker.backends import load_backends
from han_worker.selection.endpoints import Endpoints
from han_worker.store.ledger import FINISHED, Connection
from han_worker.store.link import Link
from han_worker.store.tallies import PoolFigures, SwitchCount, read_pools, read_switches

log = logging.getLogger(__name__)

FINISHED_STATUSES = FINISHED  # the ledger's: every status no worker touches again
# What the failure ratio and the recent failures count: a cancelled job is someone's choice, not a failure.
FAILED_STATUSES = ("failed", "dead", "timed_out")
WORKER_STATES = ("busy", "idle", "draining")
DEFAULT_RECENT_FAILURES = 10
MAX_RECENT_FAILURES = 1000

_QUEUES = """
SELECT queue, count(*) FILTER (WHERE status = 'queued'), count(*) FILTER (WHERE status = 'running'),
       coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'queued')), 0)::float8
FROM jobs WHERE status IN ('queued', 'running') GROUP BY queue
"""
# Upper bounds of the histograms' buckets (Prometheus's "le"; +Inf is the count): a finished job's run time,
# from its last attempt's start to its end, and its attempts.
RUN_SECONDS_BOUNDS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0)
ATTEMPTS_BOUNDS = (1, 2, 3, 5, 10)
# One scan of the finished jobs, grouped by (queue, kind, status), run-time bucket and attempts (capped): the
# counts, and what the histograms need, with one bucket number per row rather than a comparison per bound.
# width_bucket() counts the bounds at or below its operand; on the negated run time and bounds it counts the
# bounds at or above the run time, which is Prometheus's "le" (a run of exactly 60 s is in le="60.0").
# date_part() gives a float8 at once (extract() a numeric, several times slower here). A job that never
# started (no run time) is counted, but in no run-time bucket.
_FINISHED = """
SELECT queue, kind, status,
       width_bucket(-run_seconds, %(negated_bounds)s::float8[]) AS run_bucket,
       least(attempts, %(cap)s) AS tried,
       count(*), count(run_seconds), coalesce(sum(run_seconds), 0)::float8, coalesce(sum(attempts), 0)::bigint
FROM (SELECT queue, kind, status, attempts, date_part('epoch', finished_at - started_at) AS run_seconds
      FROM jobs WHERE status IN ('succeeded', 'failed', 'dead', 'cancelled', 'timed_out')) AS finished
GROUP BY queue, kind, status, run_bucket, tried
"""
_FINISHED_PARAMETERS = {
    "negated_bounds": [-bound for bound in reversed(RUN_SECONDS_BOUNDS)],
    "cap": ATTEMPTS_BOUNDS[-1] + 1,
}
_FAILURES = """
SELECT id::text, kind, queue, status, attempts, error, finished_at, worker_id, host
FROM jobs WHERE status IN ('failed', 'dead', 'timed_out') ORDER BY finished_at DESC NULLS LAST LIMIT %(limit)s
"""
_IN_FLIGHT = "SELECT id::text, started_at FROM jobs WHERE id = ANY(%(ids)s::uuid[]) AND status = 'running'"


@dataclass(frozen=True)
class QueueFigures:
    queue: str
    waiting: int  # queued in the ledger, not started
    running: int
    oldest_waiting_seconds: float  # age of the oldest waiting job since its submission; 0 when none waits


@dataclass(frozen=True)
class FinishedJobs:
    queue: str
    kind: str
    outcome: str  # one of FINISHED_STATUSES
    count: int  # since the ledger began: a counter that survives restarts


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts (one per bound, as Prometheus's ``le``), the count (+Inf) and the sum."""

    bounds: tuple[float, ...]
    buckets: tuple[int, ...]
    count: int
    total: float

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(bounds, (0,) * len(bounds), 0, 0.0)

    def __add__(self, other: Histogram) -> Histogram:
        buckets = tuple(a + b for a, b in zip(self.buckets, other.buckets, strict=True))
        return Histogram(self.bounds, buckets, self.count + other.count, self.total + other.total)


@dataclass(frozen=True)
class FinishedTimings:
    """A (queue, kind)'s finished jobs since the ledger began: their run time and their attempts."""

    queue: str
    kind: str
    run_seconds: Histogram
    attempts: Histogram


@dataclass(frozen=True)
class WorkerFigures:
    worker_id: str
    host: str
    platform: str
    state: str  # one of WORKER_STATES
    queues: tuple[str, ...]
    current_job: str | None
    job_started_at: datetime | None  # when the attempt in flight started (the ledger's word)
    job_seconds: float | None  # how long it has run
    walltime_left_seconds: float | None  # None: not a Slurm job, or its end is unknown
    control_plane: str  # the one this worker uses, and its epoch
    epoch: int | None
    heartbeat_age_seconds: float | None
    jobs_done: int


@dataclass(frozen=True)
class ControlPlaneFigures:
    source: str
    epoch: int
    node: str
    slurm_job_id: str | None
    started_at: datetime
    expires_at: datetime | None
    walltime_left_seconds: float | None  # None: no walltime (the Mac, a direct launch)
    successors_queued: int | None  # Slurm jobs queued to take over at the walltime; None: not asked


@dataclass(frozen=True)
class Failure:
    job_id: str
    kind: str
    queue: str
    status: str  # failed, or dead (out of attempts)
    attempts: int
    error: str | None
    finished_at: datetime | None
    worker_id: str | None
    host: str | None


@dataclass(frozen=True)
class Snapshot:
    taken_at: datetime
    control_plane: ControlPlaneFigures
    queues: tuple[QueueFigures, ...]
    finished: tuple[FinishedJobs, ...]
    workers: tuple[WorkerFigures, ...]
    failures: tuple[Failure, ...]  # the latest first
    timings: tuple[FinishedTimings, ...] = ()
    switches: tuple[SwitchCount, ...] = ()  # the workers' switches to this control plane, by (from, to)
    pools: tuple[PoolFigures, ...] = ()  # each elastic pool's scaler at its last tick


SuccessorCount = Callable[[Endpoints], "int | None"]


def take_snapshot(
    link: Link,
    recent_failures: int = DEFAULT_RECENT_FAILURES,
    successors: SuccessorCount | None = None,
    now: datetime | None = None,
) -> Snapshot:
    """The system as ``link``'s control plane sees it now. ``successors`` counts the control plane's queued
    successor jobs (Slurm); without it that figure is unknown. Raises what the services raise
    (han_worker.store.link.SERVICE_ERRORS) when one of them goes away."""
    if not 0 <= recent_failures <= MAX_RECENT_FAILURES:
        raise ValueError(f"recent_failures: {recent_failures} is not from 0 to {MAX_RECENT_FAILURES}")
    taken_at = now or datetime.now(timezone.utc)
    connection = link.ledger.connection()
    registry = link.queues.workers()
    backends = load_backends().values()
    known = {backend.queue for backend in backends} | set(link.queues.known_queues())
    endpoints = link.choice.endpoints
    finished, timings = read_finished(connection, {(backend.queue, backend.name) for backend in backends})
    return Snapshot(
        taken_at=taken_at,
        control_plane=control_plane_figures(endpoints, taken_at, successors),
        queues=read_queues(connection, known),
        finished=finished,
        workers=worker_figures(registry, read_in_flight(connection, registry), taken_at),
        failures=read_failures(connection, recent_failures),
        timings=timings,
        switches=read_switches(connection),
        pools=read_pools(connection),
    )


def control_plane_figures(
    endpoints: Endpoints, now: datetime, successors: SuccessorCount | None = None
) -> ControlPlaneFigures:
    left = None if endpoints.expires_at is None else max(0.0, (endpoints.expires_at - now).total_seconds())
    queued = successors(endpoints) if successors is not None and endpoints.slurm_job_id else None
    return ControlPlaneFigures(
        endpoints.source, endpoints.epoch, endpoints.node, endpoints.slurm_job_id, endpoints.started_at,
        endpoints.expires_at, left, queued,
    )  # fmt: skip


def read_queues(connection: Connection, known: set[str]) -> tuple[QueueFigures, ...]:
    """Every queue with open jobs, and every ``known`` one (with zeros when idle), by name."""
    figures = {queue: QueueFigures(queue, 0, 0, 0.0) for queue in known}
    for queue, waiting, running, oldest in connection.execute(_QUEUES):
        figures[queue] = QueueFigures(queue, int(waiting), int(running), float(oldest))
    return tuple(figures[queue] for queue in sorted(figures))


def read_finished(
    connection: Connection, known: set[tuple[str, str]]
) -> tuple[tuple[FinishedJobs, ...], tuple[FinishedTimings, ...]]:
    """Finished jobs by (queue, kind, outcome), and their run times and attempts by (queue, kind); every
    ``known`` (queue, kind) with every outcome, zeros included: a counter that appears only at its first
    failure hides that failure from Prometheus's rate()."""
    counts = {(queue, kind, status): 0 for queue, kind in known for status in FINISHED_STATUSES}
    timings = {pair: _no_timings() for pair in known}
    for row in connection.execute(_FINISHED, _FINISHED_PARAMETERS):
        queue, kind, status, run_bucket, tried, count, run_count, run_total, attempts_total = row
        counts[(queue, kind, status)] = counts.get((queue, kind, status), 0) + int(count)
        runs, attempts = timings.get((queue, kind), _no_timings())
        timings[(queue, kind)] = (
            runs + _run_times(run_bucket, int(count), int(run_count), float(run_total)),
            attempts + _attempts(int(tried), int(count), int(attempts_total)),
        )
    return (
        tuple(FinishedJobs(*key, count) for key, count in sorted(counts.items())),
        tuple(FinishedTimings(queue, kind, *timings[(queue, kind)]) for queue, kind in sorted(timings)),
    )


def _no_timings() -> tuple[Histogram, Histogram]:
    return Histogram.empty(RUN_SECONDS_BOUNDS), Histogram.empty(tuple(map(float, ATTEMPTS_BOUNDS)))


def _run_times(run_bucket: int | None, count: int, run_count: int, run_total: float) -> Histogram:
    """One row's jobs in the run-time histogram: ``run_bucket`` of them (bounds at or above their run time,
    see _FINISHED) say from which bound on they count; None: never started, in no bucket."""
    first = len(RUN_SECONDS_BOUNDS) - (run_bucket or 0)
    buckets = tuple(
        count if run_bucket is not None and index >= first else 0 for index in range(len(RUN_SECONDS_BOUNDS))
    )
    return Histogram(RUN_SECONDS_BOUNDS, buckets, run_count, run_total)


def _attempts(tried: int, count: int, total: int) -> Histogram:
    bounds = tuple(map(float, ATTEMPTS_BOUNDS))
    return Histogram(bounds, tuple(count if tried <= bound else 0 for bound in bounds), count, float(total))


def read_failures(connection: Connection, limit: int) -> tuple[Failure, ...]:
    if limit == 0:
        return ()
    return tuple(Failure(*row) for row in connection.execute(_FAILURES, {"limit": limit}))


def read_in_flight(connection: Connection, registry: Sequence[Mapping[str, str]]) -> dict[str, datetime]:
    """Job id -> when its running attempt started, for the jobs the registry says are in flight."""
    ids = sorted({job for entry in registry if (job := _job_id(entry.get("current_job", "")))})
    if not ids:
        return {}
    rows = connection.execute(_IN_FLIGHT, {"ids": ids}).fetchall()
    return {str(job_id): started for job_id, started in rows}


def _job_id(text: str) -> str | None:
    """The registry's current job as a job id; anything else (empty, garbled) is no job."""
    try:
        return str(uuid.UUID(text)) if text else None
    except ValueError:
        return None


def worker_figures(
    registry: Sequence[Mapping[str, str]], in_flight: Mapping[str, datetime], now: datetime
) -> tuple[WorkerFigures, ...]:
    return tuple(_worker(entry, in_flight, now) for entry in sorted(registry, key=lambda e: e.get("id", "")))


def _worker(entry: Mapping[str, str], in_flight: Mapping[str, datetime], now: datetime) -> WorkerFigures:
    job = _job_id(entry.get("current_job", ""))
    draining = entry.get("draining") == "1"
    walltime_end, heartbeat = _time(entry.get("walltime_end")), _time(entry.get("heartbeat_at"))
    started = in_flight.get(job) if job else None
    return WorkerFigures(
        worker_id=entry.get("id", ""),
        host=entry.get("host", ""),
        platform=entry.get("platform", ""),
        state="draining" if draining else "busy" if job else "idle",
        queues=tuple(queue for queue in entry.get("queues", "").split(",") if queue),
        current_job=job,
        job_started_at=started,
        job_seconds=None if started is None else max(0.0, (now - started).total_seconds()),
        walltime_left_seconds=_seconds_until(walltime_end, now),
        control_plane=entry.get("control_plane", ""),
        epoch=_whole(entry.get("epoch")),
        heartbeat_age_seconds=None if heartbeat is None else max(0.0, (now - heartbeat).total_seconds()),
        jobs_done=_whole(entry.get("jobs_done")) or 0,
    )


def _seconds_until(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else max(0.0, (moment - now).total_seconds())


def _time(text: str | None) -> datetime | None:
    """A registry time (ISO 8601, Z or an offset); None when absent or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _whole(text: str | None) -> int | None:
    return int(text) if text and text.isascii() and text.isdigit() and len(text) <= 18 else None
