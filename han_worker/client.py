"""The lab's API: submitting jobs, waiting for them, seeing them, fetching their outputs, cancelling and
requeueing them, and a picture of the whole system (what ``han-worker submit``, ``wait``, ``status``,
``jobs``, ``show``, ``fetch``, ``cancel`` and ``requeue`` do).

A submission uploads the inputs first, then records the job in the ledger, then adds it to its
stream: a worker can never see a job whose inputs are missing, and a job recorded but never
enqueued (the submitter died in between) is put in its stream by a worker's reconciler.

Every function takes the :class:`~han_worker.store.link.Link` that :func:`connect` opens. Bad arguments raise
:class:`RequestError` naming the argument (as the command's flag); a control plane that fails raises what its
service raised (``han_worker.store.link.SERVICE_ERRORS``). See docs/jobs.md.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_all
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from han_worker import batches
from han_worker.backends import UnknownKind, get_backend, load_backends
from han_worker.batches import BatchPlan, BatchProgress, BatchSubmission, Progress
from han_worker.config import WorkerConfig
from han_worker.fields import (
    INT4_MAX,
    MAX_SECONDS,
    RequestError,
    check_storable_json,
    decode_json,
    json_type_name,
    shown,
)
from han_worker.selection.endpoints import format_time
from han_worker.selection.resolver import Selector, authentication_failures
from han_worker.store import retention
from han_worker.store.artifacts import (
    ArtifactError,
    InlineOutput,
    Snapshot,
    Stored,
    check_name,
    file_digest,
    input_key,
    output_record,
    take_snapshot,
    write_replacing,
)
from han_worker.store.ledger import (
    FINISHED,
    NEED_A_PERSON,
    REQUEUEABLE,
    STATUSES,
    BatchCounts,
    JobRecord,
    NewJob,
)
from han_worker.store.link import (
    CONTROL_PLANE_ERRORS,
    SERVICE_ERRORS,
    ConnectError,
    Link,
    describe,
    open_link,
)
from han_worker.store.retention import PurgeReport

__all__ = [
    "JOBS_LIMIT",
    "MAX_JOBS_LIMIT",
    "REQUEUEABLE",
    "TERMINAL",
    "BatchCancel",
    "BatchFetch",
    "BatchPlan",
    "BatchProgress",
    "BatchSubmission",
    "CancelResult",
    "FetchedFile",
    "JobDetail",
    "PurgeReport",
    "RequestError",
    "StatusReport",
    "age",
    "batch_progress",
    "cancel",
    "cancel_batch",
    "check_batch_id",
    "check_inputs",
    "check_job_id",
    "check_limit",
    "check_older_than",
    "check_output_dir",
    "check_params",
    "check_statuses",
    "check_timeout",
    "connect",
    "fetch",
    "fetch_batch",
    "format_batch_cancel",
    "format_batch_progress",
    "format_cancel",
    "format_fetched",
    "format_job",
    "format_jobs",
    "format_purge",
    "format_status",
    "jobs",
    "parse_params",
    "plan_batch",
    "purge",
    "queue_of",
    "requeue",
    "requeue_batch",
    "show",
    "snapshots",
    "status",
    "submit",
    "submit_batch",
    "submit_many",
    "wait",
    "wait_batch",
]

log = logging.getLogger(__name__)

TERMINAL = frozenset(FINISHED)  # succeeded, failed, dead, cancelled, timed_out: wait returns
JOBS_LIMIT = 50  # jobs listed when no limit is given
MAX_JOBS_LIMIT = 1000  # a listing is one query and one table on a terminal: never the whole ledger
# How long a refused client waits for a rotation to publish the credentials file it is about to.
REFUSAL_SETTLE_SECONDS = 2.0


def connect(config: WorkerConfig, name: str, block_seconds: float = 0.0) -> Link:
    """The control plane the worker configuration selects, connected; ConnectError when unhealthy.
    ``block_seconds``: how long a Redis read of this link may block (added to its socket timeout)."""
    choice = Selector(config).choose_after_refusal(settle_seconds=REFUSAL_SETTLE_SECONDS)
    failures = [result for result in choice.probes if not result.ok]
    if failures:
        raise ConnectError(
            f"{choice.source} is unhealthy: " + "; ".join(map(str, failures)),
            permanent=bool(authentication_failures(failures)),
        )
    return open_link(choice, timeout=config.probe_timeout_seconds, name=name, block_seconds=block_seconds)


def _json_value(text: str) -> object:
    """A ``--param`` VALUE: JSON when it is JSON, else the text itself.

    JSON past the bounds of :func:`han_worker.fields.decode_json` (too deep, too large, ``1e400``) is an
    error, never quietly a string: whoever wrote ``[[[...]]]`` meant a list. ``NaN`` and ``Infinity`` are
    not JSON, so they stay the words they are."""
    if not _is_json_syntax(text):
        return text
    return decode_json(text, "--param", RequestError)


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _is_json_syntax(text: str) -> bool:
    """Whether ``text`` is strict JSON, whatever its size; nesting too deep to parse counts as JSON."""
    try:
        json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        return True
    except ValueError:
        return False
    return True


def parse_params(items: Sequence[str], params_json: str | None = None) -> dict[str, object]:
    """``--params-json`` (an object), then each ``--param KEY=VALUE`` on top; checked as the ledger needs.

    A VALUE is read as JSON when it is JSON (``3`` is a number, ``true`` a boolean, ``[1,2]`` a list)
    and as a string otherwise (``abc``); quote it to force a string: ``KEY='"3"'``.
    """
    params: dict[str, object] = {}
    if params_json is not None:
        decoded = decode_json(params_json, "--params-json", RequestError)
        if not isinstance(decoded, dict):
            raise RequestError("--params-json: must be a JSON object, e.g. '{\"seconds\": 2}'")
        params.update(decoded)
    seen: set[str] = set()
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key or key != key.strip():
            raise RequestError(f"--param: {shown(item)} is not KEY=VALUE (e.g. seconds=2)")
        if key in seen:
            raise RequestError(f"--param: {shown(key)} is given twice")
        seen.add(key)
        params[key] = _json_value(value)
    return check_params(params, "--param")


def check_params(params: Mapping[str, object], origin: str = "params") -> dict[str, object]:
    """``params`` as the ledger's jsonb column takes them: JSON types, finite numbers, storable text,
    within the depth and size limits of :func:`han_worker.fields.decode_json`; RequestError otherwise."""
    decoded = check_storable_json(params, origin, RequestError)
    if not isinstance(decoded, dict):
        raise RequestError(f"{origin}: must be a JSON object, not {json_type_name(decoded)}")
    return decoded


def check_inputs(paths: Sequence[Path]) -> dict[str, Path]:
    """Input name (the file's name) -> path; every file must be readable and the names must differ."""
    inputs: dict[str, Path] = {}
    for path in paths:
        _check_readable(path)
        name = _input_name(path.name)
        if name in inputs:
            raise RequestError(f"--input: two inputs are named {shown(name)} ({inputs[name]} and {path})")
        inputs[name] = path
    return inputs


def _input_name(name: str) -> str:
    try:
        return check_name(name, "--input")
    except ArtifactError as exc:
        raise RequestError(str(exc)) from None


def _check_readable(path: Path) -> None:
    """Open ``path`` and read a byte: existence alone does not tell (permissions, /proc/self/mem)."""
    try:
        if not path.is_file():
            raise RequestError(f"--input: {path} {'is not a file' if path.exists() else 'does not exist'}")
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise RequestError(f"--input: {path}: cannot be read: {exc.strerror or exc}") from None


def _check_max_attempts(max_attempts: int) -> int:
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        raise RequestError(f"--max-attempts: must be a whole number, not {type(max_attempts).__name__}")
    if not 1 <= max_attempts <= INT4_MAX:
        raise RequestError(f"--max-attempts: {shown(max_attempts)} is not from 1 to {INT4_MAX}")
    return max_attempts


def check_timeout(timeout: float | None) -> float | None:
    """``--timeout`` of a job: None (the worker's per-kind default, if any) or seconds above 0, at most
    30 days."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise RequestError(f"--timeout: must be a number of seconds, not {type(timeout).__name__}")
    if not 0 < timeout <= MAX_SECONDS:  # NaN fails this too
        raise RequestError(
            f"--timeout: {shown(timeout)} is not a number of seconds above 0, at most {MAX_SECONDS:g}"
        )
    return float(timeout)


def queue_of(kind: str) -> str:
    """The queue of job kind ``kind`` (a registered backend); RequestError naming --kind otherwise."""
    try:
        return get_backend(kind).queue
    except UnknownKind as exc:
        raise RequestError(f"--kind: {exc}") from None


def snapshots(inputs: Mapping[str, Path]) -> dict[str, Snapshot]:
    """Every input read to its end before anything is uploaded; RequestError names the unreadable one."""
    taken: dict[str, Snapshot] = {}
    try:
        for name, path in inputs.items():
            _input_name(name)
            try:
                taken[name] = take_snapshot(path)
            except OSError as exc:
                raise RequestError(f"--input: {path}: cannot be read: {exc.strerror or exc}") from None
    except BaseException:
        _close(taken.values())
        raise
    return taken


def _close(taken: Iterable[Snapshot]) -> None:
    for snapshot in taken:
        snapshot.close()


def submit(  # noqa: PLR0913 - the API lab code calls since before timeouts; timeout is keyword-only
    link: Link, kind: str, params: Mapping[str, object], inputs: Mapping[str, Path], max_attempts: int,
    *, timeout: float | None = None,
) -> str:  # fmt: skip
    """Check everything, upload the inputs, record the job, enqueue it; returns its id.

    ``timeout``: seconds the job may run (each attempt, from its start on a worker) before it is stopped and
    recorded ``timed_out`` (retried while attempts are left); None: the worker's default for its kind.
    Every input is read before the first upload; a submission that fails before its job is recorded
    removes the objects it uploaded (best effort, logged)."""
    queue, checked = queue_of(kind), check_params(params)
    max_attempts, timeout = _check_max_attempts(max_attempts), check_timeout(timeout)
    taken = snapshots(inputs)
    job_id = str(uuid.uuid4())
    try:
        job = NewJob(job_id, kind, queue, checked, {}, max_attempts, timeout)
        uploaded = _upload_then_record(link, job, taken)
    finally:
        _close(taken.values())
    log.debug("recorded %s with inputs %s", job_id, uploaded)
    link.queues.enqueue(queue, job_id)  # a recorded job never enqueued is enqueued by a reconciler
    return job_id


def _upload_then_record(link: Link, job: NewJob, taken: Mapping[str, Snapshot]) -> list[str]:
    uploaded: list[str] = []
    try:
        records: dict[str, Mapping[str, object]] = {}
        for name, snapshot in taken.items():
            key = input_key(job.job_id, name)
            records[name] = link.artifacts.upload_snapshot(key, snapshot).to_dict()
            uploaded.append(key)
        link.ledger.insert_jobs([replace(job, inputs=records)])
    except BaseException:
        if uploaded and not _recorded(link, job.job_id):
            log.warning(
                "submission of %s failed: removing its %d uploaded input(s)", job.job_id, len(uploaded)
            )
            link.artifacts.remove(uploaded)
        raise
    return uploaded


def _recorded(link: Link, job_id: str) -> bool:
    """Whether the ledger holds the job after all (its commit's answer may be what got lost)."""
    try:
        return link.ledger.job(job_id) is not None
    except SERVICE_ERRORS as exc:
        log.debug("cannot tell whether %s was recorded: %s", job_id, describe(exc))
        return False


def submit_many(
    link: Link, kind: str, params: Sequence[Mapping[str, object]], max_attempts: int
) -> list[str]:
    """Jobs without inputs, one per ``params`` item, in one ledger commit and one Redis round trip; their ids
    (random: each call submits new jobs). For one job per input file, :func:`plan_batch` and
    :func:`submit_batch`."""
    queue, max_attempts = queue_of(kind), _check_max_attempts(max_attempts)
    checked = [check_params(each, f"params[{index}]") for index, each in enumerate(params)]
    jobs = [NewJob(str(uuid.uuid4()), kind, queue, each, {}, max_attempts) for each in checked]
    link.ledger.insert_jobs(jobs)
    link.queues.enqueue_many([(queue, job.job_id) for job in jobs])
    return [job.job_id for job in jobs]


# -- batches: one job per input file ----------------------------------------------------------------------


def plan_batch(
    source: Path, kind: str, params: Mapping[str, object], max_attempts: int, *, timeout: float | None = None
) -> BatchPlan:
    """Read a batch before submitting it: every file of ``source`` (a folder: its files, not its subfolders
    or hidden files; or a glob pattern, ``**`` crossing folders) checked and hashed, and the ids derived from
    what was read (the same files, kind and params give the same ids, wherever and whenever).

    RequestError, naming ``--input``, ``--kind``, ``--param`` or ``--max-attempts``: an empty folder, a
    pattern that matches nothing, an unreadable file, a symlink pointing out of the folder, more than
    ``batches.MAX_BATCH_JOBS`` files; a ``timeout`` (each job's, as submit's) that is not above 0. Nothing
    is sent anywhere. ``max_attempts`` and ``timeout`` are not part of the ids: a re-run keeps the first's."""
    queue, checked, limit = queue_of(kind), check_params(params), check_timeout(timeout)
    plan = batches.plan(source, kind, queue, checked, _check_max_attempts(max_attempts))
    return replace(plan, timeout_seconds=limit)


def submit_batch(
    link: Link, batch: BatchPlan, *, threads: int = batches.UPLOAD_THREADS, progress: Progress | None = None
) -> BatchSubmission:
    """Submit a planned batch: its inputs uploaded ``threads`` at a time, the batch and its jobs recorded in
    one ledger statement, then enqueued in one Redis round trip. ``progress(stage, done, total)`` is called as
    it goes (stages ``upload``, ``record``, ``enqueue``).

    Run it again with the same plan after an interruption (or from another process): nothing is recorded
    or uploaded twice, and jobs recorded but never enqueued are enqueued. RequestError names an input that
    changed since it was planned (nothing is recorded then)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 64:
        raise RequestError(f"threads: {shown(threads)} is not a whole number from 1 to 64")
    return batches.submit(link, batch, threads, progress)


def check_batch_id(text: str) -> str:
    """``text`` as a batch id (a UUID, in its canonical form); RequestError naming --batch otherwise."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise RequestError(
            f"--batch: {shown(text)} is not a batch id (a UUID, as submit prints it)"
        ) from None


def batch_progress(link: Link, batch_id: str) -> BatchProgress:
    """Batch ``batch_id``'s jobs by where they stand, its rate and time left (one query). RequestError naming
    ``--batch`` when it is not a UUID or not in the ledger."""
    return batches.progress_of(_batch_counts(link, batch_id))


def wait_batch(
    link: Link,
    batch_id: str,
    timeout: float,
    on_progress: Callable[[BatchProgress], None] | None = None,
    interval: float = 1.0,
) -> BatchProgress:
    """Wait until every job of batch ``batch_id`` has finished, or ``timeout`` seconds; the last progress
    seen (``.finished`` says which; ``.all_succeeded`` whether every job succeeded). ``on_progress`` gets
    each reading, one per ``interval`` seconds. RequestError as :func:`batch_progress`."""
    deadline = time.monotonic() + timeout
    progress = batch_progress(link, batch_id)
    while True:
        if on_progress is not None:
            on_progress(progress)
        if progress.finished or time.monotonic() + interval > deadline:
            return progress
        time.sleep(interval)
        try:
            progress = batch_progress(link, batch_id)
        except CONTROL_PLANE_ERRORS as exc:  # the control plane may come back before the deadline
            log.debug("reading batch %s: %s", batch_id, describe(exc))


def format_batch_progress(progress: BatchProgress) -> str:
    """One line for people: done (succeeded, failed), running, waiting, rate, time left."""
    return batches.format_progress(progress)


def check_job_id(text: str) -> str:
    """``text`` as a job id (a UUID, in its canonical form); RequestError naming JOB otherwise."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise RequestError(f"JOB: {shown(text)} is not a job id (a UUID, as submit prints it)") from None


def wait(link: Link, job_id: str, timeout: float) -> JobRecord | None:
    """The job once it has finished (succeeded, failed, dead, cancelled or timed_out), or None after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = 0.02
    while True:
        try:
            record = link.ledger.job(job_id)
        except CONTROL_PLANE_ERRORS as exc:  # the control plane may come back before the deadline
            log.debug("reading job %s: %s", job_id, describe(exc))
        else:
            if record is None:
                raise RequestError(f"JOB: no job {job_id} in the ledger of {link.source}")
            if record.status in TERMINAL:
                return record
        if time.monotonic() + pause > deadline:
            return None
        time.sleep(pause)
        pause = min(pause * 1.5, 0.5)


@dataclass(frozen=True)
class StatusReport:
    control_plane: dict[str, object]
    workers: list[dict[str, str]]
    queues: list[dict[str, object]]
    jobs: dict[str, int]
    pending: list[dict[str, object]]
    dead: list[dict[str, object]]

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _short(record: JobRecord) -> dict[str, object]:
    when = record.finished_at or record.created_at
    return {"id": record.id, "kind": record.kind, "status": record.status, "attempts": record.attempts,
            "worker_id": record.worker_id, "at": when.isoformat(), "error": record.error}  # fmt: skip


def _control_plane(link: Link) -> dict[str, object]:
    endpoints, expires_at = link.choice.endpoints, link.choice.endpoints.expires_at
    left = None
    if expires_at is not None:
        left = max(0, round((expires_at - datetime.now(timezone.utc)).total_seconds()))
    return {
        "source": link.source,
        "epoch": endpoints.epoch,
        "node": endpoints.node,
        "expires_at": None if expires_at is None else format_time(expires_at),
        "seconds_left": left,
        "reason": link.choice.reason,
    }


def status(link: Link, limit: int = 10) -> StatusReport:
    """The control plane, its workers, the queues' depths, the jobs by status, and up to ``limit`` pending
    jobs and ``limit`` dead or timed-out ones (``dead``: the most recently finished first)."""
    queues = {backend.queue for backend in load_backends().values()} | set(link.queues.known_queues())
    pending = link.ledger.jobs_with_status("running", limit) + link.ledger.jobs_with_status("queued", limit)
    return StatusReport(
        control_plane=_control_plane(link),
        workers=link.queues.workers(),
        queues=[link.queues.depth(queue).to_dict() for queue in sorted(queues)],
        jobs=link.ledger.counts(),
        pending=[_short(record) for record in pending[:limit]],
        dead=[_short(record) for record in _needing_a_person(link, limit)],
    )


def _needing_a_person(link: Link, limit: int) -> list[JobRecord]:
    """Up to ``limit`` dead or timed-out jobs, the most recently finished first."""
    found = [record for status in NEED_A_PERSON for record in link.ledger.jobs_with_status(status, limit)]
    found.sort(
        key=lambda record: record.finished_at or datetime.min.replace(tzinfo=timezone.utc), reverse=True
    )
    return found[:limit]


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int):
        return "no time limit"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m left"


def format_status(report: StatusReport) -> str:
    """The status for people: the control plane, the workers, the queues, the jobs by status."""
    plane = report.control_plane
    lines = [
        f"control plane: {plane['source']} epoch {plane['epoch']} on {plane['node']}, "
        f"{_duration(plane['seconds_left'])}",
        f"  why: {plane['reason']}",
        f"workers ({len(report.workers)}):",
    ]
    for worker in report.workers:
        job = worker.get("current_job") or "idle"
        lines.append(
            f"  {worker['id']}  {worker.get('platform')}  queues {worker.get('queues')}  {job}  "
            f"{worker.get('jobs_done')} done  on {worker.get('control_plane')} epoch {worker.get('epoch')}"
        )
    lines.append("queues:")
    lines += [f"  {q['queue']}: {q['waiting']} waiting, {q['in_flight']} in flight" for q in report.queues]
    lines.append(
        "jobs: " + (", ".join(f"{name} {count}" for name, count in sorted(report.jobs.items())) or "none")
    )
    for title, records in (("pending", report.pending), ("dead or timed out", report.dead)):
        lines.append(f"{title} ({len(records)} shown):")
        for record in records:
            error = f": {record['error']}" if record["error"] and title != "pending" else ""
            lines.append(f"  {record['id']}  {record['kind']}  {record['status']}  "
                         f"attempts {record['attempts']}{error}")  # fmt: skip
    return "\n".join(lines)


# -- seeing jobs: jobs, show, fetch ---------------------------------------------------------------------


def check_statuses(statuses: Iterable[str]) -> list[str]:
    """``--state`` values: each one of the ledger's statuses (queued, running, succeeded, failed, dead,
    cancelled, timed_out)."""
    checked = []
    for status in statuses:
        if status not in STATUSES:
            raise RequestError(f"--state: {shown(status)} is not one of {', '.join(STATUSES)}")
        checked.append(status)
    return checked


def check_limit(limit: int) -> int:
    """``--limit``: a whole number from 1 to MAX_JOBS_LIMIT."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_JOBS_LIMIT:
        raise RequestError(f"--limit: {shown(limit)} is not a whole number from 1 to {MAX_JOBS_LIMIT}")
    return limit


def jobs(
    link: Link,
    states: Sequence[str] = (),
    kind: str | None = None,
    limit: int = JOBS_LIMIT,
    batch: str | None = None,
) -> list[JobRecord]:
    """The newest jobs first, at most ``limit`` (1 to 1000) of them: those in one of ``states`` (any when
    empty), of ``kind`` (a registered kind; any when None) and of batch ``batch`` (any when None). One
    bounded query.

    RequestError names the argument at fault (``--state``, ``--kind``, ``--limit``, ``--batch``: not a UUID
    or no such batch)."""
    checked = check_statuses(states)
    if kind is not None:
        queue_of(kind)
    if batch is not None:
        batch = check_batch_id(batch)
        if link.ledger.batch_counts(batch) is None:
            raise RequestError(f"--batch: no batch {batch} in the ledger of {link.source}")
    return link.ledger.list_jobs(checked, kind, check_limit(limit), batch)


def age(since: datetime, now: datetime | None = None) -> str:
    """How long ago ``since`` was, in its largest unit: 45s, 12m, 3h, 9d."""
    seconds = max(0, int(((now or datetime.now(timezone.utc)) - since).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _one_line(text: str | None, width: int) -> str:
    """``text`` on one line of at most ``width`` characters (an error message may span lines)."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def format_jobs(records: Sequence[JobRecord], now: datetime | None = None) -> str:
    """A table for people: id, kind, state, attempts, age (since submission), worker, error."""
    header = ("JOB", "KIND", "STATE", "ATTEMPTS", "AGE", "WORKER", "ERROR")
    rows = [
        (record.id, record.kind, record.status, f"{record.attempts}/{record.max_attempts}",
         age(record.created_at, now), record.worker_id or "-", _one_line(record.error, 60) or "-")
        for record in records
    ]  # fmt: skip
    if not rows:
        return "no jobs"
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _iso(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


@dataclass(frozen=True)
class JobDetail:
    """One job as :func:`show` returns it: its ledger record and each of its attempts, oldest first
    (attempt, worker_id, host, platform, control_plane, control_plane_epoch, started_at, finished_at, outcome,
    error)."""

    record: JobRecord
    attempts: list[dict[str, object]]

    def to_dict(self) -> dict[str, object]:
        attempts = [{name: _iso(value) for name, value in item.items()} for item in self.attempts]
        return {**self.record.to_dict(), "attempts": attempts}


def show(link: Link, job_id: str) -> JobDetail:
    """Job ``job_id`` with its attempts: who ran each, where (host, platform, worker id), against which
    control plane and epoch, when, and how it ended. RequestError (naming JOB) when it is not a UUID or not
    in the ledger."""
    job_id = check_job_id(job_id)
    record = link.ledger.job(job_id)
    if record is None:
        raise RequestError(f"JOB: no job {job_id} in the ledger of {link.source}")
    return JobDetail(record, link.ledger.attempts(job_id))


def _when(moment: object) -> str:
    return moment.isoformat(timespec="seconds") if isinstance(moment, datetime) else "-"


def _took(item: Mapping[str, object]) -> str:
    started, finished = item.get("started_at"), item.get("finished_at")
    if isinstance(started, datetime) and isinstance(finished, datetime):
        return f" ({(finished - started).total_seconds():.1f}s)"
    return ""


def format_job(detail: JobDetail) -> str:
    """One job for people: what it is, where it stands, its outputs, then one line per attempt."""
    record = detail.record
    lines = [
        f"job {record.id}  kind {record.kind}  queue {record.queue}  {record.status}  "
        f"attempts {record.attempts}/{record.max_attempts}",
        f"  submitted {_when(record.created_at)}  started {_when(record.started_at)}  "
        f"finished {_when(record.finished_at)}",
        f"  params {json.dumps(record.params)}",
    ]
    if record.batch_id is not None:
        lines.append(f"  batch {record.batch_id}")
    if record.result is not None:
        lines.append(f"  result {json.dumps(record.result)}")
    for name, output in sorted((record.outputs or {}).items()):
        where = "in the ledger" if output.get("inline") is True else f"object {output.get('key')}"
        lines.append(f"  output {name}: {output.get('size')} bytes, SHA-256 {output.get('sha256')}, {where}")
    if record.error:
        lines.append(f"  error: {_one_line(record.error, 200)}")
    lines.append(f"attempts ({len(detail.attempts)}):")
    for item in detail.attempts:
        epoch = item["control_plane_epoch"]
        lines.append(
            f"  #{item['attempt']} {item['outcome'] or 'running'}  worker {item['worker_id']} on "
            f"{item['host'] or '?'} ({item['platform'] or '?'})  "
            f"control plane {item['control_plane'] or '?'} epoch {'?' if epoch is None else epoch}  "
            f"started {_when(item['started_at'])}  finished {_when(item['finished_at'])}{_took(item)}"
        )
        if item["error"]:
            lines.append(f"     error: {_one_line(str(item['error']), 200)}")
    return "\n".join(lines)


@dataclass(frozen=True)
class FetchedFile:
    """One output :func:`fetch` wrote or found: ``action`` is downloaded, replaced (a local file with another
    SHA-256 was there) or kept (already there and correct)."""

    name: str
    path: Path
    size: int
    sha256: str
    action: str

    def to_dict(self) -> dict[str, object]:
        return {**self.__dict__, "path": str(self.path)}


def check_output_dir(output: Path) -> Path:
    """``--output``: a directory, or nothing yet (made by :func:`fetch`)."""
    if output.exists() and not output.is_dir():
        raise RequestError(f"--output: {output} is not a directory")
    return output


def _outputs_of(link: Link, job_id: str) -> list[tuple[str, Stored]]:
    record = link.ledger.job(job_id)
    if record is None:
        raise RequestError(f"JOB: no job {job_id} in the ledger of {link.source}")
    if not record.outputs and record.status != "succeeded":
        raise RequestError(f"JOB: job {job_id} is {record.status}; it has no outputs to fetch")
    return _outputs_recorded(record, job_id)


def _outputs_recorded(record: JobRecord, job_id: str) -> list[tuple[str, Stored]]:
    return [
        (check_name(name, "output name"), output_record(output, f"output {name!r} of job {job_id}"))
        for name, output in sorted((record.outputs or {}).items())
    ]


def _local(destination: Path) -> tuple[str, int] | None:
    """(SHA-256, size) of the regular file at ``destination``, else None (missing, a link, unreadable)."""
    try:
        if not stat.S_ISREG(destination.lstat().st_mode):
            return None
        return file_digest(destination)
    except OSError:
        return None


@dataclass(frozen=True)
class _Output:
    """One output to fetch: whose, its name, what the ledger recorded, the folder it goes into."""

    job_id: str
    name: str
    recorded: Stored
    folder: Path

    @property
    def inline(self) -> bool:
        return isinstance(self.recorded, InlineOutput)


def _kept(output: _Output) -> FetchedFile | None:
    """Its local file when that is already there and correct (its SHA-256 is the ledger's), else None."""
    destination, recorded = output.folder / output.name, output.recorded
    if _local(destination) == (recorded.sha256, recorded.size):
        return FetchedFile(output.name, destination, recorded.size, recorded.sha256, "kept")
    return None


def _write_inline(output: _Output, data: bytes | None, destination: Path, durable: bool) -> None:
    """Write an output the ledger stores inline (``data``: its bytes there), checked against its record as a
    downloaded one is."""
    where = f"output {output.name!r} of job {output.job_id}"
    if data is None:
        raise ArtifactError(f"{where}: recorded inline, but missing from the ledger")
    try:
        write_replacing([data], output.recorded, destination, durable=durable)
    except ArtifactError as exc:
        raise ArtifactError(f"{where}: {exc}") from None


def _write(link: Link, output: _Output, inline_data: bytes | None, *, durable: bool) -> FetchedFile:
    """Download (or, inline, write ``inline_data``) the output over whatever is at its path, its folder made
    when missing."""
    destination, recorded = output.folder / output.name, output.recorded
    _make_folder(output.folder)
    existed = os.path.lexists(destination)  # a wrong copy, a link, an unreadable file: replaced
    try:
        if isinstance(recorded, InlineOutput):
            _write_inline(output, inline_data, destination, durable)
        else:
            link.artifacts.download_replacing(recorded, destination, durable=durable)
    except (ConnectionError, TimeoutError):  # OSErrors of the network, not of the directory
        raise
    except OSError as exc:
        raise RequestError(f"--output: {destination}: cannot be written: {exc.strerror or exc}") from None
    action = "replaced" if existed else "downloaded"
    log.debug("%s %s from %s", action, destination, recorded.where)
    return FetchedFile(output.name, destination, recorded.size, recorded.sha256, action)


def _fetch_one(link: Link, output: _Output) -> FetchedFile:
    kept = _kept(output)
    if kept is not None:
        return kept
    data = link.ledger.inline_output(output.job_id, output.name) if output.inline else None
    return _write(link, output, data, durable=True)


def fetch(link: Link, job_id: str, output: Path) -> list[FetchedFile]:
    """Download job ``job_id``'s outputs into directory ``output`` (made when missing), each as
    ``output/NAME``, checked against the size and SHA-256 the ledger recorded and written atomically
    (a temporary file in ``output``, renamed). A file already there with the right SHA-256 is kept, one with
    another is replaced: a fetch can be run again.

    RequestError names JOB (not a UUID, no such job, not finished) or ``--output`` (not a directory, cannot be
    written); ArtifactError names the object whose bytes are not those the ledger recorded (nothing is written
    for it)."""
    job_id = check_job_id(job_id)
    check_output_dir(output)
    outputs = _outputs_of(link, job_id)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RequestError(f"--output: {output}: cannot be made: {exc.strerror or exc}") from None
    return [_fetch_one(link, _Output(job_id, name, recorded, output)) for name, recorded in outputs]


@dataclass(frozen=True)
class BatchFetch:
    """What :func:`fetch_batch` did: each output it wrote or kept, and the jobs that have no outputs to fetch
    (job id, status: not finished, failed or dead)."""

    files: list[FetchedFile]
    without_outputs: list[tuple[str, str]]

    def to_dict(self) -> dict[str, object]:
        return {
            "files": [item.to_dict() for item in self.files],
            "without_outputs": [{"id": job_id, "status": status} for job_id, status in self.without_outputs],
        }


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RequestError(f"--output: {folder}: cannot be made: {exc.strerror or exc}") from None


def fetch_batch(
    link: Link, batch_id: str, output: Path, *, threads: int = batches.UPLOAD_THREADS
) -> BatchFetch:
    """Download the outputs of every succeeded job of batch ``batch_id``, ``threads`` at a time, each job's
    into ``output/<its input's path in the batch's folder>/`` (``results/a/photo1.jpg/landmarks.json``), each
    file checked, written and kept as :func:`fetch` does: run it again and it fetches only what is missing or
    wrong. The outputs the ledger keeps are read FETCH_ROUND to a query, and the files reach the disk with
    one sync at the end, not a flush each. The jobs without outputs (not finished, failed, dead) are
    returned, not raised.

    RequestError names ``--batch`` (not a UUID, no such batch) or ``--output``; ArtifactError names an object
    whose bytes are not those the ledger recorded (the other downloads finish first)."""
    batch_id = check_batch_id(batch_id)
    check_output_dir(output)
    if link.ledger.batch_counts(batch_id) is None:
        raise RequestError(f"--batch: no batch {batch_id} in the ledger of {link.source}")
    work: list[_Output] = []
    without: list[tuple[str, str]] = []
    for record in link.ledger.batch_jobs(batch_id):
        if record.status != "succeeded":
            without.append((record.id, record.status))
            continue
        folder = output / batches.output_folder(record.inputs, record.id)  # made when an output is written
        outputs = _outputs_recorded(record, record.id)
        work += [_Output(record.id, name, stored, folder) for name, stored in outputs]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="han-fetch") as pool:
        kept = list(pool.map(_kept, work))
        try:
            missing = [item for item, found in zip(work, kept, strict=True) if found is None]
            written = _write_missing(link, pool, missing)
        finally:
            _flush_to_disk()
    fetched = iter(written)
    return BatchFetch([found or next(fetched) for found in kept], without)


FETCH_ROUND = 256  # outputs whose inline bytes one ledger query reads: at most 16 MiB held at a time


def _write_missing(link: Link, pool: ThreadPoolExecutor, missing: list[_Output]) -> list[FetchedFile]:
    """Write each output, FETCH_ROUND at a time: one ledger query for the round's inline bytes, then the
    pool writes them (and downloads the rest), none flushed to disk on its own. Every write is tried before
    the first error is raised (the others finish first)."""
    futures: list[Future[FetchedFile]] = []
    for start in range(0, len(missing), FETCH_ROUND):
        round_ = missing[start : start + FETCH_ROUND]
        inline = link.ledger.inline_outputs([(item.job_id, item.name) for item in round_ if item.inline])
        submitted = [
            pool.submit(_write, link, item, inline.get((item.job_id, item.name)), durable=False)
            for item in round_
        ]
        wait_for_all(submitted)  # the round's bytes are let go before the next round's are read
        futures += submitted
    return [future.result() for future in futures]


def _flush_to_disk() -> None:
    """One sync for the files a batch fetch wrote without a flush each (write_replacing, durable False). Where
    there is none (Windows), the system writes them back in its own time: a crash before then leaves files
    the next fetch finds wrong and replaces."""
    sync = getattr(os, "sync", None)
    if sync is not None:
        sync()


def format_fetched(item: FetchedFile) -> str:
    """One line for people: where an output is, its size, and what :func:`fetch` did with it."""
    what = {"kept": "kept (already there, SHA-256 matches)", "replaced": "replaced (its SHA-256 differed)"}
    return f"{item.path}  {item.size} bytes  {what.get(item.action, item.action)}"


# -- cancelling and running again ------------------------------------------------------------------------


@dataclass(frozen=True)
class CancelResult:
    """What :func:`cancel` did. ``action``: ``cancelled`` (it was queued: it will never run), ``requested``
    (it is running: its worker stops it at its next heartbeat) or ``finished`` (it had already finished:
    nothing changed). ``status`` is the job's status after the cancel."""

    job_id: str
    action: str
    status: str
    worker_id: str | None

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def cancel(link: Link, job_id: str) -> CancelResult:
    """Cancel job ``job_id``: a queued job at once (no worker starts it after this), a running one at its
    worker's next heartbeat (its backend is asked to stop, left behind when it does not, and the attempt
    and the job recorded ``cancelled``); a finished job is left as it is. One conditional UPDATE: a cancel
    racing a finish leaves exactly one final state. RequestError (naming JOB) when it is not a UUID or not
    in the ledger."""
    job_id = check_job_id(job_id)
    reached = link.ledger.cancel(job_id)
    if reached is not None:
        action = "cancelled" if reached.status == "cancelled" else "requested"
        return CancelResult(job_id, action, reached.status, reached.worker_id)
    record = link.ledger.job(job_id)
    if record is None:
        raise RequestError(f"JOB: no job {job_id} in the ledger of {link.source}")
    return CancelResult(job_id, "finished", record.status, record.worker_id)


@dataclass(frozen=True)
class BatchCancel:
    """What a cancel of a batch did: its waiting jobs cancelled, its running ones asked to stop (their workers
    stop them at their next heartbeat), the rest already finished and left as they were."""

    batch_id: str
    cancelled: int
    requested: int
    finished: int

    def to_dict(self) -> dict[str, object]:
        return {"batch_id": self.batch_id, "cancelled": self.cancelled, "requested": self.requested,
                "finished": self.finished}  # fmt: skip


def cancel_batch(link: Link, batch_id: str) -> BatchCancel:
    """Cancel every open job of batch ``batch_id`` in one statement, each as :func:`cancel` does one.
    RequestError naming ``--batch`` when it is not a UUID or not in the ledger."""
    counts = _batch_counts(link, batch_id)
    reached = link.ledger.cancel_batch(counts.batch_id)
    cancelled = sum(job.status == "cancelled" for job in reached)
    return BatchCancel(counts.batch_id, cancelled, len(reached) - cancelled, counts.jobs - len(reached))


def format_batch_cancel(result: BatchCancel) -> str:
    """One line for people: what the cancel of a batch did."""
    return (
        f"batch {result.batch_id}: {result.cancelled} waiting job(s) cancelled, {result.requested} running "
        f"job(s) asked to stop (at their workers' next heartbeat), {result.finished} already finished (left "
        "as they were)"
    )


def requeue_batch(link: Link, batch_id: str, states: Sequence[str] = REQUEUEABLE) -> int:
    """Run again every job of batch ``batch_id`` whose status is one of ``states`` (default: dead,
    timed_out, failed, cancelled), as :func:`requeue` does one; returns how many. RequestError naming
    ``--batch`` (not a UUID, not in the ledger) or ``--state``."""
    counts, states = _batch_counts(link, batch_id), _check_requeue_states(states)
    requeued = link.ledger.requeue_batch(counts.batch_id, states)
    link.queues.enqueue_many([(queue, job_id) for job_id, queue in requeued])
    return len(requeued)


def _batch_counts(link: Link, batch_id: str) -> BatchCounts:
    batch_id = check_batch_id(batch_id)
    counts = link.ledger.batch_counts(batch_id)
    if counts is None:
        raise RequestError(f"--batch: no batch {batch_id} in the ledger of {link.source}")
    return counts


def format_cancel(result: CancelResult) -> str:
    """One line for people: what the cancel did."""
    if result.action == "cancelled":
        return f"job {result.job_id} cancelled: it was waiting and will not run"
    if result.action == "requested":
        return (
            f"job {result.job_id} is running on {result.worker_id or 'a worker'}: cancel requested; its "
            "worker stops it at its next heartbeat (han-worker wait shows the end)"
        )
    return f"job {result.job_id} had already finished ({result.status}): nothing changed"


def requeue(link: Link, job_id: str, states: Sequence[str] = REQUEUEABLE) -> str:
    """Run finished job ``job_id`` again: queued with a fresh budget of its max_attempts, and added to its
    queue's stream; returns the status it had. ``states``: the statuses it may have (default: dead,
    timed_out, failed, cancelled). RequestError naming JOB when it is not a UUID, not in the ledger, not
    finished (its state is named) or succeeded; naming ``--state`` when it is in none of ``states``."""
    job_id = check_job_id(job_id)
    states = _check_requeue_states(states)
    requeued = link.ledger.requeue(job_id, states)
    if requeued is None:  # not there, or its status is not one of states: say which
        status = link.ledger.status(job_id)
        if status is None:
            raise RequestError(f"JOB: no job {job_id} in the ledger of {link.source}")
        raise RequestError(_not_requeued(job_id, status, states))
    queue, previous = requeued
    link.queues.enqueue(queue, job_id)  # a queued job never enqueued is enqueued by a reconciler
    return previous


def _check_requeue_states(states: Sequence[str]) -> list[str]:
    checked = []
    for status in states:
        if status not in REQUEUEABLE:
            raise RequestError(f"--state: {shown(status)} is not one of {', '.join(REQUEUEABLE)}")
        checked.append(status)
    if not checked:
        raise RequestError(f"--state: name at least one of {', '.join(REQUEUEABLE)}")
    return checked


def _not_requeued(job_id: str, status: str, states: Sequence[str]) -> str:
    if status not in FINISHED:
        return f"JOB: job {job_id} is {status}, not finished; only a finished job can be requeued"
    if status not in REQUEUEABLE:
        return f"JOB: job {job_id} {status}; its result stands (requeue runs {', '.join(REQUEUEABLE)} jobs)"
    return f"--state: job {job_id} is {status}, not {' or '.join(states)}"


def check_older_than(older_than: timedelta | str) -> timedelta:
    """A purge's age: a timedelta above 0, or text as ``30d``, ``12h``, ``90m`` (at most a century).
    RequestError naming ``--older-than`` otherwise."""
    if isinstance(older_than, str):
        try:
            return retention.parse_duration(older_than)
        except ValueError as exc:
            raise RequestError(f"--older-than: {exc}") from None
    if not isinstance(older_than, timedelta) or not timedelta(0) < older_than <= retention.MAX_DURATION:
        longest = retention.MAX_DURATION.days
        raise RequestError(f"--older-than: {older_than!r} must be a duration above 0 and at most {longest}d")
    return older_than


def purge(link: Link, older_than: timedelta | str, *, dry_run: bool = False) -> PurgeReport:
    """Delete the jobs that finished more than ``older_than`` ago (by the ledger's clock; ``"30d"``,
    ``"12h"``, ``"90m"`` or a timedelta): their ledger rows (attempts included, and their batches once no job
    is left) and every object the ledger records for them, inputs and outputs, unless another job records
    the same object. A job that has not finished is never touched. ``dry_run``: delete nothing, report what
    would be deleted. Crash-safe: no ledger row ever points at a deleted object, and a purge that was
    interrupted is finished by the next one (han_worker.store.retention). RequestError naming
    ``--older-than`` for an age that is not one."""
    cutoff = retention.cutoff_of(link.ledger, check_older_than(older_than))
    if dry_run:
        return retention.plan(link.ledger, cutoff)
    return retention.purge(link.ledger, link.artifacts, cutoff)


def format_purge(report: PurgeReport) -> str:
    """One line for people: what a purge deleted, or would delete."""
    return retention.format_report(report)
