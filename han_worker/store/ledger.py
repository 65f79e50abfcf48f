"""The job ledger in PostgreSQL: the source of truth for every job and every attempt.

Redis only says which job to look at next; what a job is, whether it may run and how it ended live
here. Every status change is a guarded ``UPDATE``, and results are fenced by (job id, attempt): a
claim increments ``attempts`` and the claimer's number is its fencing token, so a result comes in
only while ``attempts`` still equals that number. A job that ran twice therefore records exactly
one success; the slower run is recorded as ``superseded`` and its result discarded.

A job costs the worker at most two commits: claim and finish (facts.md: commits, not Redis, bound the
rate). Each is one statement, data-modifying CTEs included, so each is one round trip as well. Under
load, :meth:`Ledger.finish_then_claim` commits one job's finish and the next job's claim in one
statement built from the same parts (one commit, one round trip), so the finish is fenced exactly as
alone and the claim is exactly as exclusive; a job then costs one commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from han_worker.fields import storable_text

log = logging.getLogger(__name__)

Row = tuple[Any, ...]
Connection = psycopg.Connection[Row]
# How a worker may end an attempt (``superseded`` is the ledger's own: a later attempt took over).
OUTCOMES = ("succeeded", "failed", "crashed", "released", "cancelled", "timed_out")
# The jobs table's CHECK.
STATUSES = ("queued", "running", "succeeded", "failed", "dead", "cancelled", "timed_out")
FINISHED = ("succeeded", "failed", "dead", "cancelled", "timed_out")  # no worker touches these again
REQUEUEABLE = ("dead", "timed_out", "failed", "cancelled")  # what ``requeue`` runs again
# Finished jobs that ran out of attempts or time, which a person looks at (han-worker status lists them).
NEED_A_PERSON = ("dead", "timed_out")
_MIGRATION_LOCK = 0x68616E5F6A6F6273  # pg_advisory_xact_lock key ("han_jobs"): one migrator at a time

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "jobs and job_attempts",
        """
        CREATE TABLE jobs (
            id uuid PRIMARY KEY,
            kind text NOT NULL,
            queue text NOT NULL,
            params jsonb NOT NULL DEFAULT '{}',
            inputs jsonb NOT NULL DEFAULT '{}',
            status text NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'dead')),
            attempts integer NOT NULL DEFAULT 0,
            releases integer NOT NULL DEFAULT 0,  -- attempts given back on drain: they do not count
            max_attempts integer NOT NULL CHECK (max_attempts >= 1),
            worker_id text, host text, platform text,
            control_plane text, control_plane_epoch integer,
            created_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz, finished_at timestamptz, heartbeat_at timestamptz,
            error text, result jsonb, outputs jsonb,
            stream_entry text
        );
        CREATE INDEX jobs_open ON jobs (status) WHERE status IN ('queued', 'running');
        CREATE INDEX jobs_dead ON jobs (finished_at) WHERE status = 'dead';
        CREATE TABLE job_attempts (
            job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            attempt integer NOT NULL,
            worker_id text NOT NULL, host text, platform text,
            control_plane text, control_plane_epoch integer,
            started_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            outcome text CHECK (outcome IN ('succeeded', 'failed', 'crashed', 'superseded', 'released')),
            error text,
            PRIMARY KEY (job_id, attempt)
        );
        """,
    ),
    (
        2,
        "batches",
        # A batch's row and its jobs go in with one statement (Ledger.insert_batch). jobs.batch_id is NULL for
        # a job submitted alone; its index holds only batch jobs. jobs_created serves listings that are not
        # only open jobs (han-worker jobs, newest first). Adding a NULL column rewrites no row.
        """
        CREATE TABLE batches (
            id uuid PRIMARY KEY,
            kind text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            jobs integer NOT NULL CHECK (jobs >= 1),
            manifest_sha256 text NOT NULL
        );
        ALTER TABLE jobs ADD COLUMN batch_id uuid REFERENCES batches (id);
        CREATE INDEX jobs_batch ON jobs (batch_id) WHERE batch_id IS NOT NULL;
        CREATE INDEX jobs_created ON jobs (created_at);
        """,
    ),
    (
        3,
        "cancel and timeouts",
        """
        ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
        ALTER TABLE jobs ADD CONSTRAINT jobs_status_check CHECK (status IN
            ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled', 'timed_out'));
        ALTER TABLE job_attempts DROP CONSTRAINT job_attempts_outcome_check;
        ALTER TABLE job_attempts ADD CONSTRAINT job_attempts_outcome_check CHECK (outcome IN
            ('succeeded', 'failed', 'crashed', 'superseded', 'released', 'cancelled', 'timed_out'));
        ALTER TABLE jobs ADD COLUMN cancel_requested_at timestamptz,
            ADD COLUMN timeout_seconds double precision CHECK (timeout_seconds > 0);
        COMMENT ON COLUMN jobs.releases IS
            'attempts not counted against max_attempts: given back on a drain, or made before a requeue';
        """,
    ),
    (
        4,
        "purge journal",
        # The objects of purged jobs, recorded in the transaction that deletes their rows and deleted from the
        # object store after it commits (han_worker.store.retention): no row ever points at a missing object,
        # and what an interrupted purge left here the next one deletes.
        """
        CREATE TABLE purge_journal (
            key text PRIMARY KEY,
            size bigint NOT NULL DEFAULT 0,
            journaled_at timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        5,
        "control-plane switches and scaler pools",
        # What /metrics counts beside the jobs (han_worker/store/tallies.py): one row per (from, to) pair of
        # sources, counted up by the workers that switched to this control plane; one row per elastic pool,
        # rewritten by its scaler at each tick. Both stay a handful of rows: a scrape reads them at no cost.
        """
        CREATE TABLE control_plane_switches (
            from_source text NOT NULL CHECK (from_source IN ('pegasus', 'mac')),
            to_source text NOT NULL CHECK (to_source IN ('pegasus', 'mac')),
            switches bigint NOT NULL DEFAULT 0 CHECK (switches >= 0),
            last_at timestamptz NOT NULL DEFAULT now(),
            last_worker_id text, last_host text,
            PRIMARY KEY (from_source, to_source)
        );
        CREATE TABLE scaler_pools (
            pool text PRIMARY KEY,
            queues text[] NOT NULL,
            desired integer NOT NULL CHECK (desired >= 0),
            pending integer NOT NULL CHECK (pending >= 0),
            running integer NOT NULL CHECK (running >= 0),
            paused_by text CHECK (paused_by IN ('failed_submissions', 'failed_starts')),
            reason text NOT NULL,
            idle_gpus integer NOT NULL DEFAULT 0 CHECK (idle_gpus >= 0),
            idle_gpu_seconds double precision NOT NULL DEFAULT 0 CHECK (idle_gpu_seconds >= 0),
            ticked_at timestamptz NOT NULL DEFAULT now()
        );
        COMMENT ON COLUMN scaler_pools.idle_gpu_seconds IS
            'GPUs of the pool''s started worker jobs running no job, times seconds (a counter)';
        """,
    ),
    (
        6,
        "inline outputs",
        # Small outputs stored in the ledger instead of the object store (han_worker.store.artifacts), written
        # by the statement that commits the result, so fenced as it is. A table of their own rather than a
        # column of jobs: jobs rows are read by every listing, status and scrape and rewritten by every
        # heartbeat, none of which needs the bytes; jobs.outputs stays the one record of every output
        # (SHA-256, size, and ``inline``), whichever store holds it. bytea, not base64 in jsonb (a third
        # larger, decoded on every read); PostgreSQL compresses values past ~2 KiB and moves them out of line
        # (TOAST). ON DELETE CASCADE: a purge deletes them with their job's row, in its first phase, with
        # nothing to journal for the object store.
        """
        CREATE TABLE job_outputs (
            job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            name text NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (job_id, name)
        );
        """,
    ),
)

# A claim: the next attempt of job %(claim)s, unless it is finished, running elsewhere (heartbeat within the
# lease) or out of attempts; the attempt whose worker lost it, if any, is closed as crashed.
_CLAIM_CTES = """
claimed AS (
    UPDATE jobs SET attempts = attempts + 1, status = 'running',
        worker_id = %(worker)s, host = %(host)s, platform = %(platform)s,
        control_plane = %(source)s, control_plane_epoch = %(epoch)s,
        started_at = now(), heartbeat_at = now(), stream_entry = %(entry)s
    WHERE id = %(claim)s AND status IN ('queued', 'running') AND attempts - releases < max_attempts
      AND (status = 'queued' OR heartbeat_at < now() - make_interval(secs => %(lease)s))
      AND cancel_requested_at IS NULL AND id IS DISTINCT FROM %(finishing)s::uuid
    RETURNING id, attempts, kind, queue, params, inputs, timeout_seconds
), lost AS (
    UPDATE job_attempts SET outcome = 'crashed', finished_at = now(), error = %(lost)s
    WHERE job_id = %(claim)s AND outcome IS NULL AND EXISTS (SELECT 1 FROM claimed)
), started AS (
    INSERT INTO job_attempts (job_id, attempt, worker_id, host, platform, control_plane, control_plane_epoch)
    SELECT id, attempts, %(worker)s, %(host)s, %(platform)s, %(source)s, %(epoch)s FROM claimed
)"""
_CLAIMED_COLUMNS = (
    "claimed.id::text, claimed.attempts, claimed.kind, claimed.queue, claimed.params, claimed.inputs, "
    "claimed.timeout_seconds"
)
_CLAIM = f"WITH {_CLAIM_CTES}\nSELECT {_CLAIMED_COLUMNS} FROM claimed"

# A claim refused for want of attempts left, or because a cancel was asked for: the last holder is gone, so
# the job is dead, or cancelled (its worker died before it learnt of the cancel).
_BURY = """
WITH buried AS (
    UPDATE jobs SET
        status = CASE WHEN cancel_requested_at IS NULL THEN 'dead' ELSE 'cancelled' END,
        finished_at = now(),
        error = CASE WHEN cancel_requested_at IS NULL THEN %(error)s ELSE %(cancelled)s END
    WHERE id = %(id)s AND status IN ('queued', 'running')
      AND (attempts - releases >= max_attempts OR cancel_requested_at IS NOT NULL)
      AND (status = 'queued' OR heartbeat_at < now() - make_interval(secs => %(lease)s))
    RETURNING id
), lost AS (
    UPDATE job_attempts SET outcome = 'crashed', finished_at = now(), error = %(error)s
    WHERE job_id = %(id)s AND outcome IS NULL AND EXISTS (SELECT 1 FROM buried)
)
SELECT count(*) FROM buried
"""

# A result of attempt %(attempt)s of job %(id)s, fenced: it goes in only while that attempt is the job's
# current one; otherwise the attempt is marked superseded and the result discarded, its inline outputs with it
# (a row of job_outputs is only ever the current result's: a job whose result is recorded is finished and
# never runs again, so the ON CONFLICT is there for nothing but a retried statement). An attempt that would be
# retried (crashed, released, timed out with attempts left) is not when a cancel was asked for meanwhile: the
# job is cancelled. A success or a failure stands: the job ended before the cancel reached it.
_FINISH_CTES = """
finished AS (
    UPDATE jobs SET
        status = CASE
            WHEN %(outcome)s::text IN ('crashed', 'released', 'timed_out') AND cancel_requested_at IS NOT NULL
                THEN 'cancelled'
            WHEN %(outcome)s::text = 'crashed'
                THEN CASE WHEN attempts - releases >= max_attempts THEN 'dead' ELSE 'queued' END
            WHEN %(outcome)s::text = 'timed_out'
                THEN CASE WHEN attempts - releases >= max_attempts THEN 'timed_out' ELSE 'queued' END
            WHEN %(outcome)s::text = 'released' THEN 'queued'
            ELSE %(outcome)s::text END,
        releases = releases + CASE WHEN %(outcome)s::text = 'released' THEN 1 ELSE 0 END,
        finished_at = CASE
            WHEN %(outcome)s::text IN ('crashed', 'released', 'timed_out') AND cancel_requested_at IS NULL
             AND (%(outcome)s::text = 'released' OR attempts - releases < max_attempts) THEN NULL
            ELSE now() END,
        heartbeat_at = now(), result = %(result)s, outputs = %(outputs)s, error = %(error)s
    WHERE id = %(id)s AND attempts = %(attempt)s AND status = 'running'
    RETURNING status
), attempt AS (
    UPDATE job_attempts SET finished_at = now(), error = coalesce(%(error)s, error),
        outcome = CASE WHEN EXISTS (SELECT 1 FROM finished) THEN %(outcome)s::text ELSE 'superseded' END
    WHERE job_id = %(id)s AND attempt = %(attempt)s AND (outcome IS NULL OR outcome = 'crashed')
    RETURNING outcome
), inlined AS (
    INSERT INTO job_outputs (job_id, name, data)
    SELECT %(id)s, name, data
    FROM unnest(%(inline_names)s::text[], %(inline_data)s::bytea[]) AS new (name, data)
    WHERE EXISTS (SELECT 1 FROM finished)
    ON CONFLICT (job_id, name) DO UPDATE SET data = excluded.data
)"""
_FINISHED_COLUMNS = "(SELECT status FROM finished), (SELECT outcome FROM attempt)"
_FINISH = f"WITH {_FINISH_CTES}\nSELECT {_FINISHED_COLUMNS}"

# Both in one statement: one round trip, one commit. Its parts share one snapshot and must not touch the same
# row twice (PostgreSQL would keep one of the changes, unpredictably): the claim refuses the job being
# finished (%(finishing)s), so every part touches its own job's rows. That duplicate entry is refused as it
# is after the finish alone: a job finished now is done, and a retry goes in with an entry of its own.
_FINISH_THEN_CLAIM = f"""WITH {_FINISH_CTES}, {_CLAIM_CTES}
SELECT {_FINISHED_COLUMNS}, {_CLAIMED_COLUMNS} FROM (SELECT) AS one LEFT JOIN claimed ON true"""  # noqa: S608 - constants only

# What Ledger.warm runs its statements on: a job id no row has, and an output name.
_NIL_JOB = "00000000-0000-0000-0000-000000000000"
_WARM_NAME = "warm-up"

_INSERT_JOB = (
    "INSERT INTO jobs (id, kind, queue, params, inputs, max_attempts, timeout_seconds) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
# New jobs as columns of arrays: one statement for a whole batch.
_INSERT_JOBS = """
INSERT INTO jobs (id, kind, queue, params, inputs, max_attempts, timeout_seconds)
SELECT * FROM unnest(%(ids)s::uuid[], %(kinds)s::text[], %(queues)s::text[], %(params)s::jsonb[],
                     %(inputs)s::jsonb[], %(max)s::integer[], %(timeouts)s::double precision[])
"""

# A batch and its jobs in one statement: one round trip, one commit. Both inserts skip rows already there, so
# a submission run again after an interruption records nothing twice; the ids of the jobs recorded by this
# statement come back (the others were recorded before). The jobs' foreign key is checked at the statement's
# end, when the batch's row is there. Params and inputs travel as one JSON array each (paired with the other
# columns by position): for 2,000 jobs their client-side encoding takes ~4 ms instead of ~45 ms as jsonb[].
_INSERT_BATCH = """
WITH batch AS (
    INSERT INTO batches (id, kind, jobs, manifest_sha256) VALUES (%(batch)s, %(kind)s, %(count)s, %(digest)s)
    ON CONFLICT (id) DO NOTHING
), inserted AS (
    INSERT INTO jobs (id, kind, queue, params, inputs, max_attempts, timeout_seconds, batch_id)
    SELECT id, kind, queue, params, inputs, max_attempts, timeout_seconds, %(batch)s::uuid
    FROM ROWS FROM (unnest(%(ids)s::uuid[]), unnest(%(kinds)s::text[]), unnest(%(queues)s::text[]),
                    jsonb_array_elements(%(params)s::jsonb), jsonb_array_elements(%(inputs)s::jsonb),
                    unnest(%(max)s::integer[]), unnest(%(timeouts)s::double precision[]))
        AS new (id, kind, queue, params, inputs, max_attempts, timeout_seconds)
    ON CONFLICT (id) DO NOTHING
    RETURNING id::text
)
SELECT coalesce(array_agg(id), '{}') FROM inserted
"""
# A batch with its jobs counted by status (whatever statuses the jobs table allows), in one query.
_BATCH_PROGRESS = """
SELECT b.id::text, b.kind, b.jobs, b.created_at, b.manifest_sha256,
    (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM (
        SELECT status, count(*) AS n FROM jobs WHERE batch_id = b.id GROUP BY status) AS counted),
    (SELECT min(started_at) FROM jobs WHERE batch_id = b.id),
    (SELECT max(finished_at) FROM jobs WHERE batch_id = b.id),
    now()
FROM batches AS b WHERE b.id = %s
"""

_JOB_COLUMNS = sql.SQL("""id::text, kind, queue, status, attempts, max_attempts, params, inputs, result,
    outputs, error, worker_id, host, platform, control_plane, control_plane_epoch, created_at, started_at,
    finished_at, heartbeat_at, cancel_requested_at, timeout_seconds, batch_id::text""")

# A cancel of the open jobs {where}, in one conditional UPDATE of each row: a queued job is cancelled at once
# (no claim takes it after this commit); a running one has the request recorded, which its worker reads with
# its next heartbeat. A row a finish changed meanwhile is re-read after its lock (READ COMMITTED): a finished
# job is not touched, so a cancel racing a finish leaves exactly one final state. {where} is a condition on
# the jobs table (``id = %(id)s``; a batch's would be ``batch_id = %(batch)s``).
_CANCEL = """
UPDATE jobs SET
    cancel_requested_at = coalesce(cancel_requested_at, now()),
    status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
    finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END,
    error = CASE WHEN status = 'queued' THEN %(error)s ELSE error END
WHERE ({where}) AND status IN ('queued', 'running')
RETURNING id::text, status, worker_id
"""
# Finished jobs {where} with one of %(states)s run again: queued, with a fresh attempt budget (the attempts
# made so far count as releases: the attempt numbers, the results' fencing tokens, keep increasing). The rows
# are locked first, so that each returns the status it had (two requeues at once: the second finds it queued).
_REQUEUE = """
UPDATE jobs SET status = 'queued', releases = attempts, cancel_requested_at = NULL, finished_at = NULL,
    heartbeat_at = now(), error = NULL, result = NULL, outputs = NULL
FROM (
    SELECT id, status FROM jobs
    WHERE ({where}) AND status = ANY(%(states)s::text[])
      AND status IN ('dead', 'timed_out', 'failed', 'cancelled')
    FOR UPDATE
) AS old
WHERE jobs.id = old.id
RETURNING jobs.id::text, jobs.queue, old.status
"""


@dataclass(frozen=True)
class AttemptOwner:
    """Who runs an attempt, and against which control plane (recorded on the job and the attempt)."""

    worker_id: str
    host: str
    platform: str
    source: str
    epoch: int


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int  # the fencing token
    kind: str
    queue: str
    params: dict[str, object]
    inputs: dict[str, dict[str, object]]
    timeout_seconds: float | None = None  # the job's own (submit --timeout); None: the worker's default


@dataclass(frozen=True)
class Outcome:
    kind: str  # one of OUTCOMES
    summary: Mapping[str, object] | None = None
    error: str | None = None
    outputs: Mapping[str, Mapping[str, object]] | None = None  # name -> {key, sha256, size} or {inline, ...}
    inline: Mapping[str, bytes] = field(default_factory=dict)  # name -> bytes of the outputs stored inline


@dataclass(frozen=True)
class FinishReport:
    recorded: bool  # False: a later attempt superseded this one and the result was discarded
    status: str | None  # the job's status after the commit (when recorded)


@dataclass(frozen=True)
class Handover:
    """What :meth:`Ledger.finish_then_claim` did: the finish, and the next job's claim if it was tried."""

    report: FinishReport
    claim: Claim | None  # None: refused (finished, running elsewhere, out of attempts) or not tried
    tried: bool  # False: the claim was not committed with the finish; claim it alone


@dataclass(frozen=True)
class Beat:
    """What a heartbeat learnt: does the attempt still hold its job, and was a cancel asked for?"""

    held: bool  # False: a later attempt has taken the job (or it finished meanwhile)
    cancel_requested: bool


CANCELLED_ERROR = "cancelled before it ran"


@dataclass(frozen=True)
class Cancelled:
    """An open job a cancel reached: ``status`` is cancelled (it was queued) or running (its worker will
    stop it at its next heartbeat)."""

    job_id: str
    status: str
    worker_id: str | None


@dataclass(frozen=True)
class NewJob:
    job_id: str
    kind: str
    queue: str
    params: Mapping[str, object]
    inputs: Mapping[str, Mapping[str, object]]
    max_attempts: int
    timeout_seconds: float | None = None  # None: the worker's per-kind default, if any


@dataclass(frozen=True)
class NewBatch:
    batch_id: str
    kind: str
    manifest_sha256: str  # the digest the ids derive from: kind, params, each input's path, size and SHA-256


@dataclass(frozen=True)
class BatchCounts:
    """A batch as the ledger holds it: its jobs counted by status, and when the first started and the last
    finished."""

    batch_id: str
    kind: str
    jobs: int
    created_at: datetime
    manifest_sha256: str
    by_status: dict[str, int]
    first_started_at: datetime | None
    last_finished_at: datetime | None
    observed_at: datetime  # the ledger's clock when it counted (the times above are the ledger's too)


@dataclass(frozen=True)
class JobRecord:
    id: str
    kind: str
    queue: str
    status: str
    attempts: int
    max_attempts: int
    params: dict[str, object]
    inputs: dict[str, dict[str, object]]
    result: dict[str, object] | None
    outputs: dict[str, dict[str, object]] | None
    error: str | None
    worker_id: str | None
    host: str | None
    platform: str | None
    control_plane: str | None
    control_plane_epoch: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    cancel_requested_at: datetime | None = None
    timeout_seconds: float | None = None
    batch_id: str | None = None  # None: submitted alone

    def to_dict(self) -> dict[str, object]:
        return {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in self.__dict__.items()
        }


def _claim_params(
    job_id: str, entry_id: str, owner: AttemptOwner, lease: float, finishing: str | None = None
) -> dict[str, object]:
    return {
        "claim": job_id, "finishing": finishing, "entry": entry_id, "lease": lease, "worker": owner.worker_id,
        "host": owner.host, "platform": owner.platform, "source": owner.source, "epoch": owner.epoch,
        "lost": f"lease expired (no heartbeat for {lease:g} s); reclaimed by {owner.worker_id}",
    }  # fmt: skip


def _claim_of(row: Row | None) -> Claim | None:
    """The claim in ``row`` (its seven columns), or None: no row, or a row of NULLs (refused)."""
    if row is None or row[0] is None:
        return None
    return Claim(row[0], row[1], row[2], row[3], row[4], row[5], row[6])


def _finish_params(job_id: str, attempt: int, outcome: Outcome) -> dict[str, object]:
    if outcome.kind not in OUTCOMES:
        raise ValueError(f"outcome {outcome.kind!r} is not one of {', '.join(OUTCOMES)}")
    return {
        # an error message may quote what PostgreSQL cannot store (a NUL from a decoder): escaped, not lost
        "id": job_id, "attempt": attempt, "outcome": outcome.kind,
        "error": None if outcome.error is None else storable_text(outcome.error),
        "result": None if outcome.summary is None else Jsonb(outcome.summary),
        "outputs": None if outcome.outputs is None else Jsonb(outcome.outputs),
        "inline_names": list(outcome.inline), "inline_data": list(outcome.inline.values()),
    }  # fmt: skip


class Ledger:
    """One connection to the ledger, re-opened after it breaks; counts the commits of its job writes."""

    def __init__(self, connect: Callable[[], Connection]) -> None:
        self._connect = connect
        self._connection: Connection | None = None
        self.commits = 0

    def connection(self) -> Connection:
        if self._connection is None or self._connection.closed:
            self._connection = self._connect()
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _write(
        self, query: str, params: Mapping[str, object] | Sequence[object], *, prepare: bool | None = None
    ) -> Row | None:
        """One statement in autocommit mode: one transaction, one commit, one round trip; its first row, if
        it returns rows. ``prepare`` True: prepared on the server from its first execution (:meth:`warm`)."""
        cursor = self.connection().execute(query, params, prepare=prepare)
        self.commits += 1
        return cursor.fetchone() if cursor.description is not None else None

    def warm(self, owner: AttemptOwner, lease: float) -> None:
        """Run the statements of every job once, on no job: a claim, a finish, and the two in one statement,
        for the nil job id, which no row has, so nothing changes (and a transaction that changed nothing
        writes nothing to disk). The server plans and prepares them and this connection's backend loads the
        tables' and indexes' metadata now, before the worker takes its first job, not during it (psycopg would
        prepare them only after five executions). Counted in no commit."""
        outcome = Outcome("succeeded", {}, None, {_WARM_NAME: {}}, {_WARM_NAME: b""})  # the types of a result
        entry = ("0-0", owner, lease)
        connection = self.connection()
        both = _finish_params(_NIL_JOB, 0, outcome) | _claim_params(_NIL_JOB, *entry, finishing=_NIL_JOB)
        try:
            connection.execute(_CLAIM, _claim_params(_NIL_JOB, *entry), prepare=True)
            connection.execute(_FINISH, _finish_params(_NIL_JOB, 0, outcome), prepare=True)
            connection.execute(_FINISH_THEN_CLAIM, both, prepare=True)
        except psycopg.Error as exc:
            if connection.closed or connection.broken:
                raise
            log.warning("ledger: the warm-up's statements failed (%s); the first job prepares them", exc)

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        connection = self.connection()
        with connection.transaction():
            yield connection

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction around the block's statements (from any thread: the connection runs one at a time),
        committed when the block ends, rolled back when it raises."""
        with self._transaction():
            yield

    def migrate(self) -> list[int]:
        """Apply the missing migrations, in order, in one transaction; safe with many workers at once."""
        with self._transaction() as connection:
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            connection.execute(
                "CREATE TABLE IF NOT EXISTS han_migrations (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in connection.execute("SELECT version FROM han_migrations")}
            applied = []
            for version, name, statements in MIGRATIONS:
                if version not in done:
                    connection.execute(statements)
                    connection.execute(
                        "INSERT INTO han_migrations (version, name) VALUES (%s, %s)", (version, name)
                    )
                    applied.append(version)
        if applied:
            log.info("ledger: applied migration(s) %s", ", ".join(map(str, applied)))
        return applied

    def insert_jobs(self, jobs: Sequence[NewJob]) -> None:
        """Record new jobs as queued: one statement however many, so one round trip and one commit (a
        submission waits for nothing else before its Redis entry goes in). One job is a plain row, which
        PostgreSQL takes ~0.07 ms sooner than a batch of one."""
        if not jobs:
            return
        if len(jobs) == 1:
            job = jobs[0]
            row = (job.job_id, job.kind, job.queue, Jsonb(job.params), Jsonb(job.inputs), job.max_attempts,
                   job.timeout_seconds)  # fmt: skip
            self._write(_INSERT_JOB, row)
            return
        self._write(_INSERT_JOBS, {
            "ids": [job.job_id for job in jobs], "kinds": [job.kind for job in jobs],
            "queues": [job.queue for job in jobs], "params": [Jsonb(job.params) for job in jobs],
            "inputs": [Jsonb(job.inputs) for job in jobs], "max": [job.max_attempts for job in jobs],
            "timeouts": [job.timeout_seconds for job in jobs],
        })  # fmt: skip

    def insert_batch(self, batch: NewBatch, jobs: Sequence[NewJob]) -> list[str]:
        """Record a batch and its jobs (queued) in one statement: one round trip, one commit. Rows already
        there (the same batch submitted before) are left as they are; returns the ids of the jobs recorded
        now."""
        if not jobs:
            raise ValueError(f"batch {batch.batch_id} has no jobs")
        row = self._write(_INSERT_BATCH, {
            "batch": batch.batch_id, "kind": batch.kind, "count": len(jobs), "digest": batch.manifest_sha256,
            "ids": [job.job_id for job in jobs], "kinds": [job.kind for job in jobs],
            "queues": [job.queue for job in jobs], "params": Jsonb([job.params for job in jobs]),
            "inputs": Jsonb([job.inputs for job in jobs]), "max": [job.max_attempts for job in jobs],
            "timeouts": [job.timeout_seconds for job in jobs],
        })  # fmt: skip
        return [] if row is None else list(row[0])

    def batch_counts(self, batch_id: str) -> BatchCounts | None:
        """Batch ``batch_id`` with its jobs counted by status; None when the ledger holds no such batch."""
        row = self.connection().execute(_BATCH_PROGRESS, (batch_id,)).fetchone()
        if row is None:
            return None
        counts = {str(status): int(count) for status, count in row[5].items()}
        return BatchCounts(row[0], row[1], row[2], row[3], row[4], counts, row[6], row[7], row[8])

    def queued_of(self, job_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(job id, queue) of those of ``job_ids`` that are still queued."""
        rows = self.connection().execute(
            "SELECT id::text, queue FROM jobs WHERE id = ANY(%s::uuid[]) AND status = 'queued'",
            (list(job_ids),),
        )
        return [(row[0], row[1]) for row in rows]

    def batch_jobs(self, batch_id: str) -> list[JobRecord]:
        """Every job of batch ``batch_id``, in submission order (by id within one instant)."""
        query = sql.SQL("SELECT {} FROM jobs WHERE batch_id = %s ORDER BY created_at, id").format(
            _JOB_COLUMNS
        )
        return [JobRecord(*row) for row in self.connection().execute(query, (batch_id,))]

    def claim(self, job_id: str, entry_id: str, owner: AttemptOwner, lease: float) -> Claim | None:
        """Start the next attempt, or None when the job is finished, running elsewhere or out of attempts."""
        return _claim_of(self._write(_CLAIM, _claim_params(job_id, entry_id, owner, lease), prepare=True))

    def bury_if_exhausted(self, job_id: str, lease: float) -> bool:
        """Mark a job dead whose attempts are used up and whose last holder is gone (cancelled, when a
        cancel was asked for)."""
        error = (
            f"gave up: every attempt was used, the last one lost its worker (no heartbeat for {lease:g} s)"
        )
        cancelled = f"cancelled; its worker was lost before it stopped the job (no heartbeat for {lease:g} s)"
        row = self._write(_BURY, {"id": job_id, "lease": lease, "error": error, "cancelled": cancelled})
        return bool(row and row[0])

    def finish(self, job_id: str, attempt: int, outcome: Outcome) -> FinishReport:
        """Record how attempt ``attempt`` ended, if it is still the job's current attempt."""
        row = self._write(_FINISH, _finish_params(job_id, attempt, outcome), prepare=True)
        return self._finish_report(job_id, attempt, outcome, row)

    def finish_then_claim(
        self, finished: tuple[str, int, Outcome], entry: tuple[str, str], owner: AttemptOwner, lease: float
    ) -> Handover:
        """Record how attempt ``finished`` ended and claim job ``entry`` (job id, stream entry id) in one
        statement: one transaction, one commit, one round trip.

        The finish is fenced exactly as alone, and the claim is exactly as exclusive; a duplicate entry of
        the job being finished is refused, as it would be after the finish alone. Should the statement fail
        while the connection still works (a bad job id in the entry, a deadlock), nothing was committed: the
        finish is recorded alone and the claim is left to the caller (``tried`` False), so a claim's failure
        never costs a finish. A broken connection raises, as :meth:`finish` does: the caller spools the
        result; the claim, committed or not, is the same as a claim whose answer was lost (its stream entry
        is reclaimed after a lease)."""
        job_id, attempt, outcome = finished
        claim_params = _claim_params(*entry, owner, lease, finishing=job_id)
        params = _finish_params(job_id, attempt, outcome) | claim_params
        connection = self.connection()
        try:
            row = connection.execute(_FINISH_THEN_CLAIM, params, prepare=True).fetchone()
        except psycopg.Error as exc:
            if connection.closed or connection.broken:
                raise
            log.warning("finish and claim in one statement failed (%s); recording the finish alone", exc)
            return Handover(self.finish(job_id, attempt, outcome), None, tried=False)
        self.commits += 1
        finish_row, claim_row = (row[:2], row[2:]) if row is not None else (None, None)
        report = self._finish_report(job_id, attempt, outcome, finish_row)
        return Handover(report, _claim_of(claim_row), tried=True)

    def _finish_report(self, job_id: str, attempt: int, outcome: Outcome, row: Row | None) -> FinishReport:
        status, attempt_outcome = row if row is not None else (None, None)
        if status is not None:
            return FinishReport(True, status)
        if attempt_outcome is None and self._attempt_outcome(job_id, attempt) == outcome.kind:
            # Delivered before (a spooled result whose first commit's answer was lost): same result.
            return FinishReport(True, self.status(job_id))
        return FinishReport(False, None)

    def heartbeat(self, job_id: str, attempt: int) -> Beat:
        """Refresh a running attempt's heartbeat; the same statement says whether a cancel was asked for."""
        row = self._write(
            "UPDATE jobs SET heartbeat_at = now() "
            "WHERE id = %(id)s AND attempts = %(attempt)s AND status = 'running' "
            "RETURNING cancel_requested_at IS NOT NULL",
            {"id": job_id, "attempt": attempt},
        )
        return Beat(held=row is not None, cancel_requested=bool(row and row[0]))

    def _cancel(self, where: sql.Composable, params: Mapping[str, object]) -> list[Cancelled]:
        query = sql.SQL(_CANCEL).format(where=where)
        cursor = self.connection().execute(query, {**params, "error": CANCELLED_ERROR})
        self.commits += 1
        return [Cancelled(row[0], row[1], row[2]) for row in cursor]

    def cancel(self, job_id: str) -> Cancelled | None:
        """Cancel job ``job_id`` if it is open (one statement): see :data:`_CANCEL`. None: the job had
        already finished, or does not exist (:meth:`job` tells which)."""
        cancelled = self._cancel(sql.SQL("id = %(id)s"), {"id": job_id})
        return cancelled[0] if cancelled else None

    def cancel_batch(self, batch_id: str) -> list[Cancelled]:
        """Cancel every open job of batch ``batch_id`` (one statement): see :data:`_CANCEL`."""
        return self._cancel(sql.SQL("batch_id = %(batch)s"), {"batch": batch_id})

    def _requeue(
        self, where: sql.Composable, params: Mapping[str, object], states: Sequence[str]
    ) -> list[tuple[str, str, str]]:
        unknown = sorted(set(states) - set(REQUEUEABLE))
        if unknown:
            raise ValueError(f"state {unknown!r} is not one of {', '.join(REQUEUEABLE)}")
        query = sql.SQL(_REQUEUE).format(where=where)
        cursor = self.connection().execute(query, {**params, "states": list(states)})
        self.commits += 1
        return [(row[0], row[1], row[2]) for row in cursor]

    def requeue(self, job_id: str, states: Sequence[str] = REQUEUEABLE) -> tuple[str, str] | None:
        """Queue finished job ``job_id`` again, if its status is one of ``states``, with a fresh attempt
        budget: (its queue, the status it had), or None (another status, or no such job: :meth:`job` tells
        which). The caller adds it to that queue's stream (the reconciler would, should that fail)."""
        requeued = self._requeue(sql.SQL("id = %(id)s"), {"id": job_id}, states)
        return (requeued[0][1], requeued[0][2]) if requeued else None

    def requeue_batch(self, batch_id: str, states: Sequence[str] = REQUEUEABLE) -> list[tuple[str, str]]:
        """Queue again every job of batch ``batch_id`` whose status is one of ``states`` (one statement, as
        :meth:`requeue`): (job id, queue) of each; the caller adds them to their streams."""
        requeued = self._requeue(sql.SQL("batch_id = %(batch)s"), {"batch": batch_id}, states)
        return [(job_id, queue) for job_id, queue, _previous in requeued]

    def orphan_candidates(self, lease: float, min_age: float) -> list[tuple[str, str]]:
        """(job id, queue) of jobs that should be in a stream: queued, or running without a heartbeat."""
        rows = self.connection().execute(
            "SELECT id::text, queue FROM jobs WHERE (status = 'queued' "
            "  AND coalesce(heartbeat_at, created_at) < now() - make_interval(secs => %(age)s)) "
            "OR (status = 'running' AND heartbeat_at < now() - make_interval(secs => %(lease)s))",
            {"age": min_age, "lease": lease},
        )
        return [(row[0], row[1]) for row in rows]

    def job(self, job_id: str) -> JobRecord | None:
        query = sql.SQL("SELECT {} FROM jobs WHERE id = %s").format(_JOB_COLUMNS)
        row = self.connection().execute(query, (job_id,)).fetchone()
        return None if row is None else JobRecord(*row)

    def inline_output(self, job_id: str, name: str) -> bytes | None:
        """The bytes of output ``name`` of job ``job_id`` as the ledger stores them (an output recorded
        ``inline``); None when it holds none."""
        return self.inline_outputs([(job_id, name)]).get((job_id, name))

    def inline_outputs(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        """:meth:`inline_output` of many (job id, output name) at once, in one round trip; a key the ledger
        holds no bytes for is left out."""
        if not keys:
            return {}
        rows = self.connection().execute(
            "SELECT job_id::text, name, data FROM job_outputs"
            " WHERE (job_id, name) IN (SELECT * FROM unnest(%s::uuid[], %s::text[]))",
            ([job_id for job_id, _name in keys], [name for _job_id, name in keys]),
        )
        return {(job_id, name): bytes(data) for job_id, name, data in rows}

    def status(self, job_id: str) -> str | None:
        row = self.connection().execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
        return None if row is None else str(row[0])

    def _attempt_outcome(self, job_id: str, attempt: int) -> str | None:
        row = (
            self.connection()
            .execute("SELECT outcome FROM job_attempts WHERE job_id = %s AND attempt = %s", (job_id, attempt))
            .fetchone()
        )
        return None if row is None else row[0]

    def attempts(self, job_id: str) -> list[dict[str, object]]:
        """Every attempt of a job, oldest first: who ran it where, and how it ended."""
        cursor = self.connection().execute(
            "SELECT attempt, worker_id, host, platform, control_plane, control_plane_epoch, started_at, "
            "finished_at, outcome, error FROM job_attempts WHERE job_id = %s ORDER BY attempt",
            (job_id,),
        )
        names = [column.name for column in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def counts(self) -> dict[str, int]:
        rows = self.connection().execute("SELECT status, count(*) FROM jobs GROUP BY status")
        return {row[0]: row[1] for row in rows}

    def jobs_with_status(self, status: str, limit: int) -> list[JobRecord]:
        """The oldest jobs with ``status``; for dead or timed-out ones, the most recently finished."""
        order = sql.SQL("finished_at DESC" if status in NEED_A_PERSON else "created_at")
        query = sql.SQL("SELECT {} FROM jobs WHERE status = %s ORDER BY {} LIMIT %s").format(
            _JOB_COLUMNS, order
        )
        return [JobRecord(*row) for row in self.connection().execute(query, (status, limit))]

    def list_jobs(
        self, statuses: Sequence[str], kind: str | None, limit: int, batch_id: str | None = None
    ) -> list[JobRecord]:
        """The newest ``limit`` jobs (by creation), those with one of ``statuses`` (all when empty), of
        ``kind`` (any when None) and of batch ``batch_id`` (any when None). The filters are written as
        literal conditions, not ``%s IS NULL OR``, so a listing of queued or running jobs can use the
        ``jobs_open`` partial index, one of a batch ``jobs_batch``, and the rest ``jobs_created``."""
        unknown = sorted(set(statuses) - set(STATUSES))
        if unknown:
            raise ValueError(f"status {unknown!r} is not one of {', '.join(STATUSES)}")
        conditions: list[sql.Composable] = [sql.SQL("true")]
        if statuses:
            listed = sql.SQL(", ").join(sql.Literal(status) for status in sorted(set(statuses)))
            conditions.append(sql.SQL("status IN ({})").format(listed))
        if kind is not None:
            conditions.append(sql.SQL("kind = {}").format(sql.Literal(kind)))
        if batch_id is not None:
            conditions.append(sql.SQL("batch_id = {}::uuid").format(sql.Literal(batch_id)))
        query = sql.SQL("SELECT {} FROM jobs WHERE {} ORDER BY created_at DESC, id LIMIT %s").format(
            _JOB_COLUMNS, sql.SQL(" AND ").join(conditions)
        )
        return [JobRecord(*row) for row in self.connection().execute(query, (limit,))]
