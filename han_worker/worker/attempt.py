"""One attempt of one job: fetch its inputs, run its backend, record how it ended.

The backend runs in the calling thread, the worker's serving thread (never a forked process: the worker
runs on Windows too), while the worker's main thread stays free to keep its promises should a backend be
stuck: on SIGTERM the grace period runs, then the backend is asked to stop (``should_stop``), then the
main thread gives the job back and leaves without it (:meth:`han_worker.worker.loop.Worker._abandon`).
A job that is cancelled or past its timeout is stopped the same way, asked at once: its backend is asked to
stop, and should it not within :data:`ABANDON_AFTER_SECONDS`, the main thread records the attempt (cancelled,
timed_out), leaves the serving thread behind with it and starts another: the worker goes on with the next job.

Recording is upload (of the outputs too large for the ledger; the small ones go in with the commit), then the
fenced ledger commit, then the Redis acknowledgement (under load owed
to the next read: :meth:`han_worker.store.queues.Queues.owe`). Under load the
worker hands :func:`record` the next waiting delivery, taken after the upload and just before the
commit, and the same transaction claims it (:meth:`han_worker.store.ledger.Ledger.finish_then_claim`): one
commit per job instead of two, the result still committed before its entry is acknowledged. If the control
plane went away before the commit, the result goes to the spool and is delivered to that control
plane when it returns; once the commit is in, a Redis failure is only logged (the reconciler and
the lease repair what a lost acknowledgement or re-enqueue leaves behind).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from minio.error import S3Error

from han_worker.backends.base import Backend, JobContext, JobFailed, JobResult
from han_worker.fields import check_storable_json, storable_text
from han_worker.store.artifacts import ArtifactError, check_name
from han_worker.store.ledger import AttemptOwner, Claim, FinishReport, Outcome
from han_worker.store.link import CONTROL_PLANE_ERRORS, Link, describe
from han_worker.store.queues import Delivery
from han_worker.store.spool import Spool, SpooledResult

log = logging.getLogger(__name__)

# After a stop request (a drain's, a cancel's, a timeout's): leave a stuck backend behind.
ABANDON_AFTER_SECONDS = 5.0
# Why a job in flight may be asked to stop, as its attempt records it.
STOP_REASONS = ("cancelled", "timed_out")
# Errors of a control plane that may come back: recording them waits in the spool.
RECORDING_ERRORS: tuple[type[Exception], ...] = (*CONTROL_PLANE_ERRORS, S3Error)


class DrainClock:
    """When the worker was asked to stop, and what that means for the job in flight."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.requested_at: float | None = None

    def request(self) -> None:
        if self.requested_at is None:
            self.requested_at = time.monotonic()

    def _past(self, seconds: float) -> bool:
        return self.requested_at is not None and time.monotonic() >= self.requested_at + seconds

    def stop_due(self) -> bool:
        """The grace period is over: the backend should stop, and the job goes back to the queue."""
        return self._past(self.grace)

    def abandon_due(self) -> bool:
        return self._past(self.grace + ABANDON_AFTER_SECONDS)


# Where a job's time goes, in order: fetching its inputs, its backend, uploading its outputs, the ledger
# commit (with the next job's claim under load), Redis (taking the next entry, acknowledging this one).
PHASES = ("download", "backend", "upload", "ledger", "queue")


@dataclass
class Timings:
    """Seconds spent in each of :data:`PHASES`, and in all of a job (``total``), over one or more jobs."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def add(self, other: Timings) -> None:
        for name, seconds in other.seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def per_job(self, jobs: int) -> str:
        """``total 41.2 ms: download 2.0, backend 35.1, upload 2.5, ledger 1.0, queue 0.3, other 0.3``"""
        total = self.seconds.get("total", 0.0)
        other = total - sum(self.seconds.get(name, 0.0) for name in PHASES)
        parts = [f"{name} {1000 * self.seconds.get(name, 0.0) / jobs:.1f}" for name in PHASES]
        parts.append(f"other {1000 * other / jobs:.1f}")
        return f"total {1000 * total / jobs:.1f} ms: " + ", ".join(parts)


@dataclass
class InFlight:
    """The job this worker runs now, and the control plane it came from (its result goes there)."""

    delivery: Delivery
    claim: Claim
    link: Link
    started: float = field(default_factory=time.monotonic)
    superseded: bool = False  # set by the heartbeat: a later attempt owns the job now
    timings: Timings = field(default_factory=Timings)
    timeout: tuple[float, str] | None = None  # seconds from the claim, and where that limit came from
    stop_reason: str | None = None  # one of STOP_REASONS once the backend was asked to stop
    stop_asked_at: float | None = None
    abandoned: bool = False  # the main thread recorded it and left its serving thread behind

    def timed_out(self, now: float) -> bool:
        return self.timeout is not None and now >= self.started + self.timeout[0]

    def ask_to_stop(self, reason: str) -> bool:
        """Ask the backend to stop (its ``should_stop`` turns True); False when it was asked already."""
        if reason not in STOP_REASONS:
            raise ValueError(f"stop reason {reason!r} is not one of {', '.join(STOP_REASONS)}")
        if self.stop_reason is not None:
            return False
        self.stop_reason, self.stop_asked_at = reason, time.monotonic()
        return True

    def abandon_due(self, now: float) -> bool:
        """Asked to stop :data:`ABANDON_AFTER_SECONDS` ago and still running: leave it behind."""
        return self.stop_asked_at is not None and now >= self.stop_asked_at + ABANDON_AFTER_SECONDS

    def stop_error(self) -> str:
        """The attempt's error once stopped: why it was asked to."""
        if self.stop_reason == "timed_out" and self.timeout is not None:
            return f"timed out after {self.timeout[0]:g} s ({self.timeout[1]})"
        return "cancelled while it ran"


@dataclass(frozen=True)
class AttemptResult:
    outcome: str  # succeeded | failed | crashed | released | cancelled | timed_out
    summary: Mapping[str, object] | None = None
    error: str | None = None
    files: Mapping[str, Path] = field(default_factory=dict)  # outputs to upload (succeeded only)

    def __post_init__(self) -> None:
        # An error may quote what PostgreSQL cannot store (a NUL from a decoder); the spool's reader would
        # refuse it too. Escaped here, once, so the ledger and the spool record the same text.
        if self.error is not None:
            object.__setattr__(self, "error", storable_text(self.error))


def _checked(result: object) -> AttemptResult:
    """A backend's return value as a success; a malformed one is a crash (a bug, not bad input)."""
    if not isinstance(result, JobResult):
        raise TypeError(f"backend returned {type(result).__name__}, not JobResult")
    check_storable_json(result.summary, "the backend's summary", ValueError)  # it goes into a jsonb column
    for name, path in result.outputs.items():
        check_name(name, "output name")
        if not Path(path).is_file():
            raise FileNotFoundError(f"output {name!r}: {path} is not a file")
    return AttemptResult("succeeded", dict(result.summary), None, dict(result.outputs))


def _ended(
    error: BaseException, inflight: InFlight, clock: DrainClock, job_log: logging.Logger
) -> AttemptResult:
    """What a backend's exception means: failed (bad input, no retry), cancelled or timed_out (it stopped
    when asked to), released (it stopped because the worker drains) or crashed (retried)."""
    if isinstance(error, JobFailed):
        return AttemptResult("failed", error=str(error) or type(error).__name__)
    if inflight.stop_reason is not None:
        return AttemptResult(inflight.stop_reason, error=inflight.stop_error())
    if clock.stop_due():
        return AttemptResult("released", error=f"the worker is draining ({describe(error)})")
    job_log.error("attempt crashed", exc_info=error)
    return AttemptResult("crashed", error=f"{type(error).__name__}: {describe(error)}")


def run_attempt(
    inflight: InFlight, backend: Backend | None, workdir: Path, clock: DrainClock
) -> AttemptResult:
    """Run the claimed job to an end: succeeded, failed (no retry), crashed (retry), released, cancelled or
    timed_out."""
    claim, link = inflight.claim, inflight.link
    job_log = logging.getLogger(f"han_worker.jobs.{claim.kind}")
    if backend is None:
        return AttemptResult("crashed", error=f"this worker has no backend for kind {claim.kind!r}")
    try:
        with inflight.timings.phase("download"):
            inputs = link.artifacts.download_inputs(claim.inputs, workdir / "inputs")
    except ArtifactError as exc:
        return AttemptResult("failed", error=str(exc))
    except RECORDING_ERRORS as exc:
        return AttemptResult("crashed", error=f"inputs could not be fetched: {describe(exc)}")
    context = JobContext(
        job_id=claim.job_id,
        kind=claim.kind,
        params=claim.params,
        inputs=inputs,
        scratch=workdir,
        log=job_log,
        should_stop=lambda: clock.stop_due() or inflight.superseded or inflight.stop_reason is not None,
    )
    try:
        with inflight.timings.phase("backend"):
            if inflight.stop_reason is not None:  # cancelled or timed out while its inputs came: not started
                raise InterruptedError("asked to stop before it started")
            returned = backend.run(context)
    except BaseException as exc:  # SystemExit included: a backend's exit is its attempt's crash, not ours
        return _ended(exc, inflight, clock, job_log)
    try:
        return _checked(returned)
    except (TypeError, ValueError, OSError, ArtifactError) as exc:
        return AttemptResult("crashed", error=f"invalid result: {describe(exc)}")


def log_result(
    claim: Claim, result: AttemptResult, report: FinishReport | None, *, successes: bool = True
) -> None:
    """One line per finished attempt: INFO for a success (none when ``successes`` is False), else WARNING."""
    if not successes and report is not None and report.recorded and result.outcome == "succeeded":
        return
    what = f"job {claim.job_id} ({claim.kind}) attempt {claim.attempt}"
    if report is None:
        log.warning("%s %s; spooled until its control plane returns", what, result.outcome)
    elif not report.recorded:
        log.warning("%s %s, but a later attempt took over: result discarded", what, result.outcome)
    elif result.outcome == "succeeded":
        log.info("%s succeeded", what)
    else:
        log.warning("%s %s (job now %s): %s", what, result.outcome, report.status, result.error)


@dataclass(frozen=True)
class Successor:
    """The next job's delivery, to be claimed in the transaction that records this job's result."""

    delivery: Delivery
    owner: AttemptOwner
    lease: float


@dataclass(frozen=True)
class Recorded:
    """How recording went: the report (None: spooled) and what became of the successor, if one was taken."""

    report: FinishReport | None
    successor: Successor | None = None
    claim: Claim | None = None  # the successor's attempt, started in the same commit
    tried: bool = False  # the successor's claim was committed with the result (claim None: refused)


def _no_successor() -> Successor | None:
    return None


def _uploaded(link: Link, claim_id: tuple[str, int], result: AttemptResult) -> Outcome:
    """Upload the outputs too large for the ledger; the outcome to commit, naming every output and carrying
    the bytes of the small ones, which the commit stores (han_worker.store.artifacts)."""
    if not result.files:
        return Outcome(result.outcome, result.summary, result.error)
    records, inline = link.artifacts.store_outputs(*claim_id, result.files)
    outputs = {name: record.to_dict() for name, record in records.items()}
    return Outcome(result.outcome, result.summary, result.error, outputs, inline)


def _acknowledge(
    link: Link, job_id: str, delivery: Delivery, report: FinishReport, *, defer: bool = False
) -> None:
    """After the commit: re-enqueue a retry, acknowledge the entry. A Redis failure is only logged.

    ``defer``: the acknowledgement is owed, to ride with the next read (the worker takes one soon)."""
    try:
        if report.recorded and report.status == "queued":
            link.queues.enqueue(delivery.queue, job_id)
        if defer:
            link.queues.owe(delivery)
        else:
            link.queues.done(delivery)
    except CONTROL_PLANE_ERRORS as exc:
        log.warning(
            "job %s is recorded, but Redis did not take the acknowledgement: %s", job_id, describe(exc)
        )


def record_on(
    link: Link, claim_id: tuple[str, int], delivery: Delivery, result: AttemptResult
) -> FinishReport:
    """Upload, commit (fenced), then re-enqueue a retry and acknowledge: the order that loses nothing."""
    report = link.ledger.finish(*claim_id, _uploaded(link, claim_id, result))
    _acknowledge(link, claim_id[0], delivery, report)
    return report


def _record_then_claim(
    inflight: InFlight, result: AttemptResult, take_next: Callable[[], Successor | None]
) -> Recorded:
    """Like :func:`record_on`, but the next delivery (taken after the upload, just before the commit) is
    claimed in the same transaction as the result: one commit for both."""
    link, delivery, timings = inflight.link, inflight.delivery, inflight.timings
    claim_id = (inflight.claim.job_id, inflight.claim.attempt)
    with timings.phase("upload"):
        outcome = _uploaded(link, claim_id, result)
    with timings.phase("queue"):
        successor = take_next()
    if successor is None:
        with timings.phase("ledger"):
            report = link.ledger.finish(*claim_id, outcome)
        with timings.phase("queue"):
            _acknowledge(link, claim_id[0], delivery, report)
        return Recorded(report)
    next_entry = (successor.delivery.job_id, successor.delivery.entry_id)
    try:
        with timings.phase("ledger"):
            handover = link.ledger.finish_then_claim((*claim_id, outcome), next_entry, successor.owner,
                                                     successor.lease)  # fmt: skip
    except RECORDING_ERRORS:
        # Committed or not, the successor is now like a claim whose answer was lost: its entry stays
        # pending and is reclaimed after a lease (the ledger lets that claim through once the lease ran out).
        log.warning("job %s was taken but may not be claimed; its entry is left to be reclaimed",
                    successor.delivery.job_id)  # fmt: skip
        raise
    # The successor runs next, then the loop reads again: that read carries this acknowledgement (the
    # heartbeat sends it sooner when the successor runs long, so no lease runs out on an owed entry).
    with timings.phase("queue"):
        _acknowledge(link, claim_id[0], delivery, handover.report, defer=True)
    return Recorded(handover.report, successor, handover.claim, handover.tried)


def record(
    inflight: InFlight, result: AttemptResult, spool: Spool,
    take_next: Callable[[], Successor | None] = _no_successor,
) -> Recorded:  # fmt: skip
    """Record on the job's own control plane; when that is away, spool (the report is None then).

    ``take_next`` may hand over the next delivery, to be claimed in the transaction of this result."""
    claim, delivery, link = inflight.claim, inflight.delivery, inflight.link
    try:
        return _record_then_claim(inflight, result, take_next)
    except RECORDING_ERRORS as exc:
        log.warning("control plane %s is away (%s)", link.source, describe(exc))
    spool.put(
        SpooledResult(
            source=link.source,
            epoch=link.choice.epoch,
            job_id=claim.job_id,
            attempt=claim.attempt,
            queue=delivery.queue,
            entry_id=delivery.entry_id,
            outcome=result.outcome,
            summary=result.summary,
            error=result.error,
            outputs=tuple(result.files),
        ),
        result.files,
    )
    return Recorded(None)


def deliver_spooled(link: Link, spool: Spool, taker: str) -> int:
    """Deliver the spooled results that belong to ``link``'s control plane; returns how many."""

    def deliver(spooled: SpooledResult, files: dict[str, Path]) -> None:
        delivery = Delivery(spooled.queue, spooled.entry_id, spooled.job_id)
        result = AttemptResult(spooled.outcome, spooled.summary, spooled.error, files)
        report = record_on(link, (spooled.job_id, spooled.attempt), delivery, result)
        log.info(
            "delivered the spooled %s result of job %s attempt %d to %s: %s",
            spooled.outcome, spooled.job_id, spooled.attempt, link.source,
            "recorded" if report.recorded else "superseded meanwhile, discarded",
        )  # fmt: skip

    return spool.deliver(link.source, taker, deliver)
