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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from han_worker.backends import UnknownKind, get_backend, load_backends
from han_worker.config import WorkerConfig
from han_worker.selection.endpoints import format_time
from han_worker.selection.resolver import Selector, authentication_failures
from han_worker.store.artifacts import ArtifactError, check_name, input_key
from han_worker.store.ledger import JobRecord, NewJob
from han_worker.store.link import CONTROL_PLANE_ERRORS, ConnectError, Link, describe, open_link

log = logging.getLogger(__name__)

TERMINAL = frozenset({"succeeded", "failed", "dead"})
# How long a refused client waits for a rotation to publish the credentials file it is about to.
REFUSAL_SETTLE_SECONDS = 2.0


class RequestError(ValueError):
    """A bad request; the message names the flag (or argument) at fault."""


def connect(config: WorkerConfig, name: str) -> Link:
    """The control plane the worker configuration selects, connected; ConnectError when unhealthy."""
    choice = Selector(config).choose_after_refusal(settle_seconds=REFUSAL_SETTLE_SECONDS)
    failures = [result for result in choice.probes if not result.ok]
    if failures:
        raise ConnectError(
            f"{choice.source} is unhealthy: " + "; ".join(map(str, failures)),
            permanent=bool(authentication_failures(failures)),
        )
    return open_link(choice, timeout=config.probe_timeout_seconds, name=name)


def _refuse_constant(constant: str) -> object:
    raise ValueError(f"{constant} is not allowed (JSON has no {constant})")


def _json_value(text: str) -> object:
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError:
        return text


def parse_params(items: Sequence[str], params_json: str | None = None) -> dict[str, object]:
    """``--params-json`` (an object), then each ``--param KEY=VALUE`` on top.

    A VALUE is read as JSON when it is JSON (``3`` is a number, ``true`` a boolean, ``[1,2]`` a list)
    and as a string otherwise (``abc``); quote it to force a string: ``KEY='"3"'``.
    """
    params: dict[str, object] = {}
    if params_json is not None:
        try:
            decoded = json.loads(params_json, parse_constant=_refuse_constant)
        except ValueError as exc:
            raise RequestError(f"--params-json: not valid JSON: {exc}") from None
        if not isinstance(decoded, dict):
            raise RequestError("--params-json: must be a JSON object, e.g. '{\"seconds\": 2}'")
        params.update(decoded)
    seen: set[str] = set()
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key or key != key.strip():
            raise RequestError(f"--param: {item!r} is not KEY=VALUE (e.g. seconds=2)")
        if key in seen:
            raise RequestError(f"--param: {key!r} is given twice")
        seen.add(key)
        params[key] = _json_value(value)
    return params


def check_inputs(paths: Sequence[Path]) -> dict[str, Path]:
    """Input name (the file's name) -> path; every file must exist and the names must differ."""
    inputs: dict[str, Path] = {}
    for path in paths:
        if not path.is_file():
            raise RequestError(f"--input: {path} {'is not a file' if path.exists() else 'does not exist'}")
        try:
            name = check_name(path.name, "--input")
        except ArtifactError as exc:
            raise RequestError(str(exc)) from None
        if name in inputs:
            raise RequestError(f"--input: two inputs are named {name!r} ({inputs[name]} and {path})")
        inputs[name] = path
    return inputs


def queue_of(kind: str) -> str:
    try:
        return get_backend(kind).queue
    except UnknownKind as exc:
        raise RequestError(f"--kind: {exc}") from None


def submit(
    link: Link, kind: str, params: Mapping[str, object], inputs: Mapping[str, Path], max_attempts: int
) -> str:
    """Upload the inputs, record the job, enqueue it; returns its id."""
    queue, job_id = queue_of(kind), str(uuid.uuid4())
    uploaded = {name: link.artifacts.upload(input_key(job_id, name), path) for name, path in inputs.items()}
    records = {name: artifact.to_dict() for name, artifact in uploaded.items()}
    link.ledger.insert_jobs([NewJob(job_id, kind, queue, params, records, max_attempts)])
    link.queues.enqueue(queue, job_id)
    return job_id


def submit_many(
    link: Link, kind: str, params: Sequence[Mapping[str, object]], max_attempts: int
) -> list[str]:
    """Jobs without inputs in one ledger commit and one Redis round trip (benchmarks, drills)."""
    queue = queue_of(kind)
    jobs = [NewJob(str(uuid.uuid4()), kind, queue, each, {}, max_attempts) for each in params]
    link.ledger.insert_jobs(jobs)
    link.queues.enqueue_many([(queue, job.job_id) for job in jobs])
    return [job.job_id for job in jobs]


def check_job_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise RequestError(f"JOB: {text!r} is not a job id (a UUID, as submit prints it)") from None


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
