"""How many worker jobs an elastic queue needs now: the scaler's decision, from a snapshot, with no I/O.

The scaler (issue 20) reads the ledger, the worker registry and Slurm, then asks :func:`decide`. What it
decides, and why, follows what HyperQueue's automatic allocation does well and avoids where it and
dask-jobqueue, Parsl and KEDA fail their users:

- **Only the shortfall.** The waiting work (jobs times their typical run time) is spread over workers so that
  it starts within ``horizon_seconds``; the workers there (busy ones keep their jobs, idle ones take the next)
  and the allocations Slurm still holds pending are subtracted, so a pending allocation is never submitted
  twice (Parsl's scale-out/scale-in loop counted them as idle). One worker per waiting job at most.
- **Hard caps.** Never more than ``max_workers`` allocations in all (running, draining and pending: each holds
  or will hold a GPU) nor ``max_pending`` waiting in Slurm (HyperQueue's ``--backlog``).
- **Shrinking is the workers' own.** A worker with nothing to do leaves after its ``idle_timeout_seconds``;
  the decision never cancels anything (dask-jobqueue's adapt() cancels workers about to compute).
- **Failures back off, then pause.** After failed submissions the next waits 0 s, 60 s, 15 min, 30 min, then
  1 h (HyperQueue's schedule); ``max_failed_submissions`` failures in a row, or ``max_failed_starts``
  allocations in a row that ended before their worker registered (a bad partition, account or QoS), pause
  the queue with the reason and Slurm's error until the operator resumes it.
- **Never for jobs a new worker cannot finish.** When the waiting jobs' typical run time is more than the
  worker jobs' whole walltime, none is submitted for them (``min_workers`` still holds) and the reason says
  so: a worker would be killed at its walltime in the middle of each, the attempt lost.
- **Every decision explained.** :class:`Decision` carries one line saying what was decided and why, also
  when nothing is submitted ("at max_workers (4)", "backlog fits the running workers: ...").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Seconds to wait before the next submission after 1, 2, 3, 4, 5 or more failed ones in a row.
BACKOFF_SECONDS = (0.0, 60.0, 15 * 60.0, 30 * 60.0, 60 * 60.0)


class LimitsError(ValueError):
    """Scaling limits that cannot work together; the message names the setting."""


@dataclass(frozen=True)
class Limits:
    max_workers: int
    min_workers: int = 0
    max_pending: int = 1
    horizon_seconds: float = 60.0  # the waiting work should have started within this long
    max_failed_submissions: int = 10
    max_failed_starts: int = 3
    worker_walltime_seconds: float | None = None  # the time limit of the worker jobs it submits (None: none)

    def __post_init__(self) -> None:
        if self.max_workers < 1:
            raise LimitsError(f"max_workers: {self.max_workers} must be at least 1")
        if not 0 <= self.min_workers <= self.max_workers:
            raise LimitsError(
                f"min_workers: {self.min_workers} must be within 0-{self.max_workers} (max_workers)"
            )
        if self.max_pending < 1:
            raise LimitsError(f"max_pending: {self.max_pending} must be at least 1")
        if not (math.isfinite(self.horizon_seconds) and self.horizon_seconds > 0):
            raise LimitsError(f"horizon_seconds: {self.horizon_seconds} must be a positive number of seconds")
        for name in ("max_failed_submissions", "max_failed_starts"):
            if getattr(self, name) < 1:
                raise LimitsError(f"{name}: {getattr(self, name)} must be at least 1")


@dataclass(frozen=True)
class Demand:
    """The queue's backlog: jobs waiting to start, and how long one typically runs (None: no history yet,
    so each waiting job is given a worker of its own, up to the caps)."""

    waiting: int
    typical_run_seconds: float | None = None


@dataclass(frozen=True)
class Supply:
    """The queue's workers by state and its allocations Slurm has not started yet. ``idle`` counts only
    idle workers with enough walltime left for a typical job (:func:`can_finish`); draining workers are
    leaving, so they take nothing, but their allocation still counts against ``max_workers``."""

    busy: int = 0
    idle: int = 0
    draining: int = 0
    pending: int = 0

    @property
    def allocations(self) -> int:
        return self.busy + self.idle + self.draining + self.pending


@dataclass(frozen=True)
class Failures:
    """Failures in a row since the last success: submissions sbatch refused, and allocations that ended
    before their worker registered. ``last_at`` is the time (seconds, the caller's clock) of the last one."""

    submissions: int = 0
    starts: int = 0
    last_at: float = 0.0
    last_error: str = ""


@dataclass(frozen=True)
class Decision:
    submit: int  # worker jobs to submit now
    desired: int  # allocations the queue should have once they start
    reason: str  # one line: what and why
    paused: bool = False
    retry_at: float | None = None  # backing off: no submission before this time


def can_finish(walltime_left: float | None, typical_run_seconds: float | None, margin: float = 1.25) -> bool:
    """Whether a worker with ``walltime_left`` seconds (None: no walltime) can take a typical job and finish
    it: its typical run time times ``margin``. Without history, any time left will do."""
    if walltime_left is None or typical_run_seconds is None:
        return walltime_left is None or walltime_left > 0
    return walltime_left >= typical_run_seconds * margin


def desired_allocations(demand: Demand, supply: Supply, limits: Limits) -> int:
    """The busy workers, plus enough workers for the waiting work to start within the horizon (one per
    waiting job at most), within ``min_workers``-``max_workers``."""
    if demand.waiting <= 0:
        wanted = supply.busy
    elif demand.typical_run_seconds is None:
        wanted = supply.busy + demand.waiting
    else:
        work = demand.waiting * demand.typical_run_seconds
        wanted = supply.busy + min(demand.waiting, max(1, math.ceil(work / limits.horizon_seconds)))
    return min(limits.max_workers, max(limits.min_workers, wanted))


def decide(demand: Demand, supply: Supply, limits: Limits, failures: Failures, now: float) -> Decision:
    """What to do for one queue now; see the module's docstring."""
    paused = _pause_reason(failures, limits)
    desired = desired_allocations(demand, supply, limits)
    if paused is not None:
        return Decision(0, desired, paused, paused=True)
    if demand.waiting > 0 and not can_finish(limits.worker_walltime_seconds, demand.typical_run_seconds, 1.0):
        # Even a fresh worker could not finish a typical job: it would take it (worker/walltime_guard.py) and
        # be killed at its walltime, the attempt lost and the GPU held for nothing, again and again.
        kept = max(limits.min_workers, min(desired, supply.allocations))
        up_to_min = max(0, min(kept - supply.allocations, limits.max_pending - supply.pending))
        return Decision(up_to_min, kept, _too_long(demand, supply, limits, kept))
    shortfall = desired - (supply.busy + supply.idle + supply.pending)
    room = limits.max_workers - supply.allocations
    room_pending = limits.max_pending - supply.pending
    submit = max(0, min(shortfall, room, room_pending))
    picture = _picture(demand, supply, desired)
    if submit == 0:
        return Decision(0, desired, f"{_why_none(demand, shortfall, room, limits)}: {picture}")
    retry_at = _backoff_until(failures)
    if retry_at is not None and now < retry_at:
        wait = f"backing off after {failures.submissions} failed submission(s) in a row"
        reason = f"{wait}, next at +{retry_at - now:.0f}s: {failures.last_error}: {picture}"
        return Decision(0, desired, reason, retry_at=retry_at)
    capped = "" if submit == shortfall else f" (capped by {_cap(room, room_pending, limits)})"
    return Decision(submit, desired, f"submit {submit}{capped}: {picture}")


def pause_cause(failures: Failures, limits: Limits) -> str | None:
    """Why the pool is paused, as a word a metric's label can hold (``failed_submissions``,
    ``failed_starts``); None while it is not."""
    if failures.submissions >= limits.max_failed_submissions:
        return "failed_submissions"
    if failures.starts >= limits.max_failed_starts:
        return "failed_starts"
    return None


def _pause_reason(failures: Failures, limits: Limits) -> str | None:
    if failures.submissions >= limits.max_failed_submissions:
        return f"paused after {failures.submissions} failed submissions in a row: {failures.last_error}"
    if failures.starts >= limits.max_failed_starts:
        return (
            f"paused after {failures.starts} allocations in a row ended before their worker registered: "
            f"{failures.last_error}"
        )
    return None


def _too_long(demand: Demand, supply: Supply, limits: Limits, desired: int) -> str:
    return (
        f"not scaling for the backlog: a typical job ({demand.typical_run_seconds:g}s) needs more than a "
        f"worker job's walltime ({limits.worker_walltime_seconds:g}s) allows; raise the pool's time limit: "
        f"{_picture(demand, supply, desired)}"
    )


def _backoff_until(failures: Failures) -> float | None:
    if failures.submissions <= 0:
        return None
    return failures.last_at + BACKOFF_SECONDS[min(failures.submissions, len(BACKOFF_SECONDS)) - 1]


def _why_none(demand: Demand, shortfall: int, room: int, limits: Limits) -> str:
    if demand.waiting <= 0 and shortfall <= 0:
        return "no backlog"
    if shortfall <= 0:
        return "backlog fits the running workers"
    if room <= 0:
        return f"at max_workers ({limits.max_workers})"
    return f"at max_pending ({limits.max_pending} allocation(s) waiting in Slurm)"


def _cap(room: int, room_pending: int, limits: Limits) -> str:
    return (
        f"max_workers {limits.max_workers}" if room <= room_pending else f"max_pending {limits.max_pending}"
    )


def _picture(demand: Demand, supply: Supply, desired: int) -> str:
    typical = "unknown" if demand.typical_run_seconds is None else f"{demand.typical_run_seconds:g}s"
    return (
        f"{demand.waiting} waiting (typical run {typical}); workers {supply.busy} busy, {supply.idle} idle, "
        f"{supply.draining} draining; {supply.pending} pending in Slurm; want {desired}"
    )
