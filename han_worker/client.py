"""Submitting jobs, waiting for them, and a picture of the whole system: what submit, wait and status do.

A submission uploads the inputs first, then records the job in the ledger, then adds it to its
stream: a worker can never see a job whose inputs are missing, and a job recorded but never
enqueued (the submitter died in between) is put in its stream by a worker's reconciler.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from han_worker.backends import UnknownKind, get_backend, load_backends
from han_worker.config import WorkerConfig
from han_worker.fields import INT4_MAX, check_storable_json, decode_json, json_type_name, shown
from han_worker.selection.endpoints import format_time
from han_worker.selection.resolver import Selector, authentication_failures
from han_worker.store.artifacts import ArtifactError, Snapshot, check_name, input_key, take_snapshot
from han_worker.store.ledger import JobRecord, NewJob
from han_worker.store.link import (
    CONTROL_PLANE_ERRORS,
    SERVICE_ERRORS,
    ConnectError,
    Link,
    describe,
    open_link,
)

log = logging.getLogger(__name__)

TERMINAL = frozenset({"succeeded", "failed", "dead"})
# How long a refused client waits for a rotation to publish the credentials file it is about to.
REFUSAL_SETTLE_SECONDS = 2.0


class RequestError(ValueError):
    """A bad request; the message names the flag (or argument) at fault."""


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


def queue_of(kind: str) -> str:
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


def submit(
    link: Link, kind: str, params: Mapping[str, object], inputs: Mapping[str, Path], max_attempts: int
) -> str:
    """Check everything, upload the inputs, record the job, enqueue it; returns its id.

    Every input is read before the first upload; a submission that fails before its job is recorded
    removes the objects it uploaded (best effort, logged)."""
    queue, checked = queue_of(kind), check_params(params)
    max_attempts = _check_max_attempts(max_attempts)
    taken = snapshots(inputs)
    job_id = str(uuid.uuid4())
    try:
        uploaded = _upload_then_record(link, NewJob(job_id, kind, queue, checked, {}, max_attempts), taken)
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
    """Jobs without inputs in one ledger commit and one Redis round trip (benchmarks, drills)."""
    queue, max_attempts = queue_of(kind), _check_max_attempts(max_attempts)
    checked = [check_params(each, f"params[{index}]") for index, each in enumerate(params)]
    jobs = [NewJob(str(uuid.uuid4()), kind, queue, each, {}, max_attempts) for each in checked]
    link.ledger.insert_jobs(jobs)
    link.queues.enqueue_many([(queue, job.job_id) for job in jobs])
    return [job.job_id for job in jobs]


def check_job_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise RequestError(f"JOB: {shown(text)} is not a job id (a UUID, as submit prints it)") from None


def wait(link: Link, job_id: str, timeout: float) -> JobRecord | None:
    """The job once it has finished (succeeded, failed or dead), or None after ``timeout`` seconds."""
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
    queues = {backend.queue for backend in load_backends().values()} | set(link.queues.known_queues())
    pending = link.ledger.jobs_with_status("running", limit) + link.ledger.jobs_with_status("queued", limit)
    return StatusReport(
        control_plane=_control_plane(link),
        workers=link.queues.workers(),
        queues=[link.queues.depth(queue).to_dict() for queue in sorted(queues)],
        jobs=link.ledger.counts(),
        pending=[_short(record) for record in pending[:limit]],
        dead=[_short(record) for record in link.ledger.jobs_with_status("dead", limit)],
    )


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int):
        return "no time limit"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m left"


def format_status(report: StatusReport) -> str:
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
    for title, records in (("pending", report.pending), ("dead", report.dead)):
        lines.append(f"{title} ({len(records)} shown):")
        for record in records:
            error = f": {record['error']}" if record["error"] and title == "dead" else ""
            lines.append(f"  {record['id']}  {record['kind']}  {record['status']}  "
                         f"attempts {record['attempts']}{error}")  # fmt: skip
    return "\n".join(lines)
