"""Retention: deleting finished jobs' ledger rows and the objects the ledger records for them.

The contract: at no moment does a ledger row point at a missing object, and an interrupted purge is finished
by the next one. So a purge works in two phases, through the ``purge_journal`` table (migration 4):

1. :func:`forget`, one statement and so one transaction: the doomed jobs' rows are deleted (their attempts
   with them, and their batches once no job is left), and the keys of the objects they recorded go into the
   journal, but only the keys no other job records (several jobs may share one object, read by byte range):
   which keys are shared is decided against the remaining rows inside that same statement.
2. :func:`delete_journaled`: the journal's objects are deleted from the object store (DeleteObjects, 1,000
   keys a request), 10,000 entries a transaction, each chunk's entries removed from the journal once S3 said
   so, with the chunk's rows locked (a second purge at the same time skips them) and each key checked once
   more against the rows (a job recorded since with the same key, e.g. the same batch submitted again after
   its first phase, keeps its object).

A batch submitted again after phase 1 forgot it has the same ids, so the same keys: its submission first
runs phase 2 for that batch's keys alone (:func:`delete_journaled_of_batch`, waiting for a purge that holds
them), then uploads them again. Otherwise a phase 2 running between the submission's look at the store and
its commit would delete objects its rows are about to record.

Every purge starts with phase 2 (what an interrupted purge journaled), so a purge killed between the phases,
or an object store that refused, leaves journal entries, never a row without its object. A job is doomed only
when it is finished (``FINISHED``) and finished before the cutoff; the rows are taken ``FOR UPDATE SKIP
LOCKED`` and re-checked after their lock, so a job requeued meanwhile is left alone.

Objects the ledger never recorded (a superseded attempt's outputs, the outputs a requeue forgot) are not
found by a purge: it deletes what the ledger points at, nothing else.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from minio.deleteobjects import DeleteObject

from han_worker.store.artifacts import ArtifactStore
from han_worker.store.ledger import FINISHED, Connection, Ledger

log = logging.getLogger(__name__)

ROUND_JOBS = 5_000  # jobs forgotten per transaction: short transactions, a bounded journal
DELETE_CHUNK = 10_000  # journal entries per transaction (the S3 client sends 1,000 keys a DeleteObjects)
MAX_DURATION = timedelta(days=36_500)  # a century: anything longer keeps everything, and overflows dates
_DURATION = re.compile(r"([0-9]{1,9})([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
_MISSING = frozenset({"NoSuchKey", "NoSuchObject"})  # already gone: as good as deleted


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``: a whole number above 0 and its unit (days, hours, minutes), at most a
    century. ValueError saying what is wrong otherwise (the caller names the flag)."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text[:40]!r} is not a duration: a whole number and d, h or m, as 30d, 12h or 90m")
    duration = timedelta(**{_UNITS[match[2]]: int(match[1])})
    if duration <= timedelta(0):
        raise ValueError(f"{text!r} must be more than 0")
    if duration > MAX_DURATION:
        raise ValueError(f"{text!r} must be at most {MAX_DURATION.days}d")
    return duration


# -- SQL --------------------------------------------------------------------------------------------------


def _records(row: str) -> str:
    """The artifact records ({key, sha256, size[, offset]}) of jobs row ``row``: its inputs' and outputs'
    (anything that is not an object is no record)."""
    parts = [
        f"SELECT value FROM jsonb_each(CASE WHEN jsonb_typeof({row}.{column}) = 'object' "  # noqa: S608
        f"THEN {row}.{column} ELSE '{{}}'::jsonb END)"
        for column in ("inputs", "outputs")
    ]
    return f"({parts[0]} UNION ALL {parts[1]}) AS record (value)"


def _number(name: str) -> str:
    """Field ``name`` of an artifact record as a number; 0 when it is none."""
    value = f"record.value->'{name}'"
    return f"CASE WHEN jsonb_typeof({value}) = 'number' THEN ({value})::text::numeric ELSE 0 END"


# From ``doomed`` (the jobs to delete): each key they record with the bytes it holds (for a shared object
# read by byte range, the end of the furthest range), and those of them that no other job records.
_KEYS = f"""
doomed_keys AS (
    SELECT record.value->>'key' AS key,
        least(max({_number("offset")} + {_number("size")}), 9e18)::bigint AS size
    FROM doomed CROSS JOIN LATERAL {_records("doomed")}
    WHERE jsonb_typeof(record.value->'key') = 'string'
    GROUP BY 1
), shared AS (
    SELECT DISTINCT record.value->>'key' AS key
    FROM jobs CROSS JOIN LATERAL {_records("jobs")}
    WHERE jobs.id NOT IN (SELECT id FROM doomed) AND record.value->>'key' IN (SELECT key FROM doomed_keys)
), unshared AS (
    SELECT key, size FROM doomed_keys WHERE key NOT IN (SELECT key FROM shared)
)"""  # noqa: S608 - constants only
_EMPTIED = """
    id IN (SELECT batch_id FROM doomed) AND NOT EXISTS (
        SELECT 1 FROM jobs WHERE jobs.batch_id = batches.id AND jobs.id NOT IN (SELECT id FROM doomed))"""
_BY_STATUS = (
    "(SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM "
    "(SELECT status, count(*) AS n FROM doomed GROUP BY status) AS counted)"
)
_OLD_FINISHED = "status = ANY(%(finished)s::text[]) AND finished_at < %(cutoff)s"

# What a purge would delete, read in one statement (one snapshot).
_PLAN = f"""
WITH doomed AS (
    SELECT id, status, batch_id, inputs, outputs FROM jobs WHERE {_OLD_FINISHED}
), {_KEYS}
SELECT {_BY_STATUS}, (SELECT count(*) FROM unshared), (SELECT coalesce(sum(size), 0) FROM unshared),
    (SELECT count(*) FROM batches WHERE {_EMPTIED}),
    (SELECT count(*) FROM purge_journal), (SELECT coalesce(sum(size), 0) FROM purge_journal)
"""  # noqa: S608 - constants only

# Phase 1: up to %(limit)s doomed jobs' rows deleted and their unshared keys journaled, in one statement. The
# parts share one snapshot, in which the deleted rows are still there: ``shared`` leaves them out by id.
_FORGET = f"""
WITH chosen AS (
    SELECT id FROM jobs WHERE {_OLD_FINISHED} ORDER BY finished_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), doomed AS (
    DELETE FROM jobs WHERE id IN (SELECT id FROM chosen) AND {_OLD_FINISHED}
    RETURNING id, status, batch_id, inputs, outputs
), {_KEYS}, journaled AS (
    INSERT INTO purge_journal (key, size) SELECT key, size FROM unshared ON CONFLICT (key) DO NOTHING
    RETURNING key
), emptied AS (
    DELETE FROM batches WHERE {_EMPTIED} RETURNING id
)
SELECT {_BY_STATUS}, (SELECT count(*) FROM unshared), (SELECT coalesce(sum(size), 0) FROM unshared),
    (SELECT count(*) FROM emptied), (SELECT count(*) FROM journaled)
"""  # noqa: S608 - constants only

# Which of %(keys)s a job records. Only a job recorded after the keys were journaled can (phase 1 kept every
# key an older one records), and a job's created_at is its insert's clock, which commits within a statement:
# with a day of margin, the jobs_created index reads only the recent jobs.
_REFERENCED = f"""
SELECT DISTINCT record.value->>'key' FROM jobs CROSS JOIN LATERAL {_records("jobs")}
WHERE jobs.created_at > %(since)s - interval '1 day' AND record.value->>'key' = ANY(%(keys)s::text[])
"""  # noqa: S608 - constants only


# -- reports ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Forgotten:
    """What one :func:`forget` deleted from the ledger: jobs by status, the objects (and their bytes) no
    other job records, which phase 2 deletes, and the batches left with no job."""

    jobs: dict[str, int]
    objects: int
    bytes: int
    batches: int

    @property
    def job_count(self) -> int:
        return sum(self.jobs.values())


@dataclass(frozen=True)
class Deleted:
    """What :func:`delete_journaled` did: objects deleted (or found gone) and their bytes; ``kept``: keys a
    job recorded again meanwhile (left in the store, out of the journal); ``failed``: objects the store
    refused to delete (left in the journal for the next purge)."""

    objects: int = 0
    bytes: int = 0
    kept: int = 0
    failed: int = 0

    def __add__(self, other: Deleted) -> Deleted:
        return Deleted(self.objects + other.objects, self.bytes + other.bytes, self.kept + other.kept,
                       self.failed + other.failed)  # fmt: skip


@dataclass(frozen=True)
class PurgeReport:
    """What a purge deleted (or, ``dry_run``, would delete): jobs finished before ``cutoff`` by status,
    objects and bytes (those an interrupted purge left, ``resumed`` of them, included), batches left empty;
    ``failed``: objects the store refused, left in the journal for the next purge."""

    dry_run: bool
    cutoff: datetime
    jobs: dict[str, int] = field(default_factory=dict)
    objects: int = 0
    bytes: int = 0
    batches: int = 0
    resumed: int = 0
    failed: int = 0

    @property
    def job_count(self) -> int:
        return sum(self.jobs.values())

    def to_dict(self) -> dict[str, object]:
        return {**self.__dict__, "cutoff": self.cutoff.isoformat(), "job_count": self.job_count}


# -- the phases -------------------------------------------------------------------------------------------


def cutoff_of(ledger: Ledger, older_than: timedelta) -> datetime:
    """The ledger's clock minus ``older_than``: jobs finished before it are purged (the ledger's clock
    wrote finished_at; the caller's may differ)."""
    row = ledger.connection().execute("SELECT now() - %s::interval", (older_than,)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _params(cutoff: datetime, **more: object) -> dict[str, object]:
    return {"finished": list(FINISHED), "cutoff": cutoff, **more}


def plan(ledger: Ledger, cutoff: datetime) -> PurgeReport:
    """What :func:`purge` would delete now: nothing is changed."""
    row = ledger.connection().execute(_PLAN, _params(cutoff)).fetchone()
    assert row is not None
    by_status, objects, size, batches, journaled, journaled_bytes = row
    return PurgeReport(
        True, cutoff, {str(name): int(count) for name, count in by_status.items()}, int(objects + journaled),
        int(size + journaled_bytes), int(batches), int(journaled),
    )  # fmt: skip


def forget(ledger: Ledger, cutoff: datetime, limit: int = ROUND_JOBS) -> Forgotten:
    """Phase 1: delete up to ``limit`` jobs finished before ``cutoff`` (oldest first) and journal their
    objects, in one transaction (see the module). Their objects are still in the store afterwards."""
    row = ledger.connection().execute(_FORGET, _params(cutoff, limit=limit)).fetchone()
    ledger.commits += 1
    assert row is not None
    by_status, objects, size, batches, _journaled = row
    return Forgotten({str(name): int(count) for name, count in by_status.items()}, int(objects), int(size),
                     int(batches))  # fmt: skip


def _lock_chunk(connection: Connection, after: str, chunk: int) -> list[tuple[str, int, datetime]]:
    """The journal's next ``chunk`` entries after key ``after``, locked until the transaction ends (a purge
    running at the same time skips them)."""
    rows = connection.execute(
        "SELECT key, size, journaled_at FROM purge_journal WHERE key > %s ORDER BY key LIMIT %s "
        "FOR UPDATE SKIP LOCKED",
        (after, chunk),
    ).fetchall()
    return [(str(key), int(size), when) for key, size, when in rows]


def delete_objects(artifacts: ArtifactStore, keys: Sequence[str]) -> dict[str, str]:
    """Delete ``keys`` from the store (one DeleteObjects request per 1,000); key -> error of those it refused
    (a key already gone is deleted). A store that cannot be reached raises."""
    errors = artifacts.client.remove_objects(artifacts.bucket, [DeleteObject(key) for key in keys])
    return {
        str(error.name): f"{error.code}: {error.message}" for error in errors if error.code not in _MISSING
    }


def split_chunk(
    entries: Sequence[tuple[str, int, datetime]], referenced: set[str]
) -> tuple[list[str], list[str]]:
    """(keys to delete, keys a job records again: kept in the store) of a journal chunk."""
    keys = [key for key, _size, _when in entries]
    return [key for key in keys if key not in referenced], [key for key in keys if key in referenced]


def _delete_chunk(
    connection: Connection, artifacts: ArtifactStore, entries: Sequence[tuple[str, int, datetime]]
) -> Deleted:
    keys = [key for key, _size, _when in entries]
    since = min(when for _key, _size, when in entries)
    referenced = {str(row[0]) for row in connection.execute(_REFERENCED, {"keys": keys, "since": since})}
    doomed, kept = split_chunk(entries, referenced)
    refused = delete_objects(artifacts, doomed) if doomed else {}
    for key, error in sorted(refused.items())[:5]:
        log.warning("purge: %s could not be deleted (%s); the next purge tries again", key, error)
    connection.execute(
        "DELETE FROM purge_journal WHERE key = ANY(%s::text[])",
        ([key for key in keys if key not in refused],),
    )
    sizes = {key: size for key, size, _when in entries}
    deleted = [key for key in doomed if key not in refused]
    return Deleted(len(deleted), sum(sizes[key] for key in deleted), len(kept), len(refused))


# The journal's entries for one batch's objects: what its submission uploads (under batches/<id>/) and what
# its jobs' workers upload (under jobs/<job id>/). Not skipped when locked: a purge deleting them is awaited.
_LOCK_BATCH = """
SELECT key, size, journaled_at FROM purge_journal
WHERE starts_with(key, %(prefix)s)
    OR (starts_with(key, 'jobs/') AND split_part(key, '/', 2) = ANY(%(job_ids)s::text[]))
ORDER BY key FOR UPDATE
"""


def delete_journaled_of_batch(
    ledger: Ledger, artifacts: ArtifactStore, prefix: str, job_ids: Sequence[str]
) -> Deleted:
    """Phase 2 for one batch's objects only (``prefix``: its submission's, ``job_ids``: its jobs'), in one
    transaction that waits for a purge deleting some of them now.

    A batch submitted again after a purge's first phase forgot it has the same ids, so the same keys as the
    journaled ones: left there, a purge's second phase could delete an object between the submission's look
    at the store and its commit (or a worker's upload of an output and its commit), and a row would point
    at a missing object. Deleting them first, before the submission looks at the store, makes it upload them
    again; after this, no purge holds an entry of the batch (its rows are gone: none can be journaled)."""
    connection = ledger.connection()
    with connection.transaction():
        rows = connection.execute(_LOCK_BATCH, {"prefix": prefix, "job_ids": list(job_ids)}).fetchall()
        entries = [(str(key), int(size), when) for key, size, when in rows]
        return _delete_chunk(connection, artifacts, entries) if entries else Deleted()


def delete_journaled(ledger: Ledger, artifacts: ArtifactStore, chunk: int = DELETE_CHUNK) -> Deleted:
    """Phase 2: delete the journal's objects, then their entries, ``chunk`` at a time, each chunk in a
    transaction that holds its entries locked (see the module); each entry is tried once per call. Objects
    the store refuses are logged and stay journaled; a store or ledger that fails raises (the chunk's entries
    stay, for the next purge)."""
    done, after = Deleted(), ""
    while True:
        connection = ledger.connection()
        with connection.transaction():
            entries = _lock_chunk(connection, after, chunk)
            if not entries:
                return done
            done += _delete_chunk(connection, artifacts, entries)
        after = entries[-1][0]


def purge(
    ledger: Ledger, artifacts: ArtifactStore, cutoff: datetime, stopping: Callable[[], bool] = lambda: False
) -> PurgeReport:
    """Delete every job finished before ``cutoff`` (:func:`cutoff_of`) and its objects: first what an
    interrupted purge left in the journal, then round after round of :func:`forget` and
    :func:`delete_journaled` until no such job is left, or until ``stopping()`` says so between two rounds
    (the next purge goes on from there)."""
    resumed = delete_journaled(ledger, artifacts)
    deleted, batches = resumed, 0
    jobs: dict[str, int] = {}
    while not stopping():
        forgotten = forget(ledger, cutoff)
        if not forgotten.job_count:
            break
        for status, count in forgotten.jobs.items():
            jobs[status] = jobs.get(status, 0) + count
        batches += forgotten.batches
        deleted += delete_journaled(ledger, artifacts)
    return PurgeReport(
        False, cutoff, jobs, deleted.objects, deleted.bytes, batches, resumed.objects, deleted.failed
    )


def format_report(report: PurgeReport) -> str:
    """One line for people (and the supervisor's log)."""
    verb = "would delete" if report.dry_run else "deleted"
    statuses = ", ".join(f"{count} {status}" for status, count in sorted(report.jobs.items()))
    line = (
        f"purge {verb} {report.job_count} job(s) finished before {report.cutoff:%Y-%m-%d %H:%M:%S %Z}"
        f"{f' ({statuses})' if statuses else ''}, {report.objects} object(s) ({report.bytes} bytes), "
        f"{report.batches} batch(es)"
    )
    if report.resumed:
        line += f"; {report.resumed} of the objects were left by an interrupted purge"
    if report.failed:
        line += f"; {report.failed} object(s) could not be deleted and stay journaled for the next purge"
    return line
