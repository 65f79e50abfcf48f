"""``han-worker purge`` and the control plane's own retention end to end, on a real control plane (PostgreSQL,
S3) with a real worker: a dry run deletes nothing and counts what would go; a purge deletes exactly the old
finished jobs (every finished status), their attempts, their emptied batches and every object the ledger
records for them, and nothing of an unfinished job, a recent one, or an object another job still records;
a purge while a worker runs jobs touches none of theirs; a purge interrupted between its two phases (only
the first run, through the importable function) leaves no row pointing at a missing object and is finished
by the next; a purged batch submitted again while a purge deletes its objects ends with every object its
rows record; a bad --older-than exits 2 naming it; a supervisor started with --retention-days purges by itself.

Jobs are made old by moving their finished_at back in the ledger (the ledger's clock decides what is old).
The control planes are the module's own, on 127.0.0.83; the commands run as the cluster user."""

from __future__ import annotations

import io
import json
import subprocess
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from han_worker import client
from han_worker.store import retention
from han_worker.store.artifacts import INLINE_OUTPUT_MAX_BYTES, Artifact, InlineOutput, input_key, output_key
from han_worker.store.ledger import AttemptOwner, NewJob, Outcome
from han_worker.store.link import Link
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    WorkerProcess,
    han_worker,
    own_control_plane,
    serving_worker,
    start_control_plane,
    wait_for,
    worker_settings,
    write_private_file,
)

pytestmark = pytest.mark.self_contained

ADDRESS = "127.0.0.83"  # no other test or benchmark uses it
QUEUE = "purge-test"  # jobs made by hand go here: no worker serves it
OWNER = AttemptOwner("purge-test-worker", "purge-host", "linux", "pegasus", 1)
# How each finished status is reached by a one-attempt job (cancelled: cancelled while queued).
OUTCOME_OF = {"succeeded": "succeeded", "failed": "failed", "dead": "crashed", "timed_out": "timed_out"}


@pytest.fixture(scope="module")
def control_plane(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[RunningControlPlane]:
    with own_control_plane(unprivileged_env, workdir / "cp", ADDRESS) as running:
        yield running


@pytest.fixture(scope="module")
def link(control_plane: RunningControlPlane) -> Iterator[Link]:
    opened = control_plane.client_link()
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def config(unprivileged_env: UnprivilegedEnv, workdir: Path, control_plane: RunningControlPlane) -> Path:
    document = worker_settings(control_plane, workdir / "spool", mode="pegasus")
    return write_private_file(unprivileged_env, workdir / "worker.json", json.dumps(document))


@pytest.fixture(scope="module")
def worker(unprivileged_env: UnprivilegedEnv, config: Path) -> Iterator[WorkerProcess]:
    with serving_worker(unprivileged_env, config) as started:
        yield started


@pytest.fixture(autouse=True)
def nothing_old_left(link: Link) -> None:
    """Each test starts from a ledger in which nothing is old enough to purge, and an empty journal."""
    client.purge(link, "1m")
    assert link.ledger.connection().execute("SELECT count(*) FROM purge_journal").fetchone() == (0,)


# -- making jobs, and looking at what is left ----------------------------------------------------------


def put(link: Link, key: str, data: bytes) -> dict[str, object]:
    link.artifacts.client.put_object(link.artifacts.bucket, key, io.BytesIO(data), len(data))
    return Artifact(key, "0" * 64, len(data)).to_dict()


def made_job(link: Link, status: str, inputs: dict[str, dict[str, object]] | None = None) -> str:
    """A job in ``status`` reached through the ledger's own statements, with an input and (when it ran) an
    output in S3; ``inputs`` instead of its own input (e.g. a record shared with another job)."""
    job_id = str(uuid.uuid4())
    if inputs is None:
        inputs = {"in.txt": put(link, input_key(job_id, "in.txt"), f"input of {job_id}".encode())}
    link.ledger.insert_jobs([NewJob(job_id, "noop", QUEUE, {}, inputs, 1)])
    if status == "queued":
        return job_id
    if status == "cancelled":
        assert link.ledger.cancel(job_id) is not None
        return job_id
    claim = link.ledger.claim(job_id, "0-1", OWNER, 30.0)
    assert claim is not None
    if status == "running":
        return job_id
    outputs = {"out.txt": put(link, output_key(job_id, claim.attempt, "out.txt"), b"landmarks")}
    report = link.ledger.finish(job_id, claim.attempt, Outcome(OUTCOME_OF[status], {}, None, outputs))
    assert report.status == status, report
    return job_id


def age(link: Link, job_ids: Sequence[str], days: float = 40) -> None:
    """Move the jobs' times back ``days`` days, finished_at included (also on an open job: the status, not
    the time, must keep it)."""
    link.ledger.connection().execute(
        "UPDATE jobs SET created_at = created_at - make_interval(days => %(days)s), "
        "finished_at = coalesce(finished_at, now()) - make_interval(days => %(days)s) WHERE id = ANY(%(ids)s)",
        {"days": days, "ids": list(job_ids)},
    )


def keys_of(link: Link, job_ids: Sequence[str]) -> set[str]:
    rows = link.ledger.connection().execute(
        "SELECT value->>'key' FROM jobs, LATERAL (SELECT value FROM jsonb_each(inputs) UNION ALL "
        "SELECT value FROM jsonb_each(coalesce(outputs, '{}'))) AS record WHERE id = ANY(%s::uuid[]) "
        "AND value ? 'key'",  # an output kept in the ledger (inline) names no object
        (list(job_ids),),
    )
    return {row[0] for row in rows}


def stored(link: Link) -> set[str]:
    listing = link.artifacts.client.list_objects(link.artifacts.bucket, recursive=True)
    return {str(item.object_name) for item in listing}


def existing(link: Link, job_ids: Sequence[str]) -> set[str]:
    rows = link.ledger.connection().execute(
        "SELECT id::text FROM jobs WHERE id = ANY(%s::uuid[])", (list(job_ids),)
    )
    return {row[0] for row in rows}


def inline_rows(link: Link, job_ids: Sequence[str]) -> int:
    row = (
        link.ledger.connection()
        .execute("SELECT count(*) FROM job_outputs WHERE job_id = ANY(%s::uuid[])", (list(job_ids),))
        .fetchone()
    )
    assert row is not None
    return int(row[0])


def dangling(link: Link) -> set[str]:
    """Keys some ledger row records that the object store does not hold: the contract says none, ever."""
    rows = link.ledger.connection().execute(
        "SELECT DISTINCT value->>'key' FROM jobs, LATERAL (SELECT value FROM jsonb_each(inputs) UNION ALL "
        "SELECT value FROM jsonb_each(coalesce(outputs, '{}'))) AS record WHERE value ? 'key'"
    )
    return {row[0] for row in rows} - stored(link)


def purge_cli(env: UnprivilegedEnv, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = han_worker(env, "purge", "--config", str(config), *args)
    assert "Traceback" not in done.stderr, done.stderr
    return done


# -- the tests -----------------------------------------------------------------------------------------


def test_the_ledger_has_migration_4_whatever_else_it_has(link: Link) -> None:
    rows = link.ledger.connection().execute("SELECT version FROM han_migrations").fetchall()
    assert {1, 2, 3, 4} <= {row[0] for row in rows}
    assert link.ledger.migrate() == []


@pytest.mark.parametrize("value", ["0d", "-1d", "30", "30x", "1.5d", "d", "", "30 d", "99999999d", "٣d"])
def test_a_bad_older_than_exits_2_naming_it(
    unprivileged_env: UnprivilegedEnv, config: Path, value: str
) -> None:
    done = purge_cli(unprivileged_env, config, f"--older-than={value}")
    assert done.returncode == 2, done
    assert "--older-than" in done.stderr


def test_a_dry_run_counts_what_would_go_and_deletes_nothing_then_the_purge_deletes_exactly_that(
    unprivileged_env: UnprivilegedEnv, config: Path, link: Link
) -> None:
    old = {
        status: made_job(link, status) for status in ("succeeded", "failed", "dead", "cancelled", "timed_out")
    }
    opened = {status: made_job(link, status) for status in ("queued", "running")}
    recent = made_job(link, "succeeded")
    age(link, [*old.values(), *opened.values()])
    old_keys = keys_of(link, list(old.values()))
    assert len(old_keys) == 9  # an input each, an output for the four that ran
    kept_jobs = [*opened.values(), recent]
    kept_keys = keys_of(link, kept_jobs)
    before = stored(link)
    assert old_keys | kept_keys <= before

    dry = purge_cli(unprivileged_env, config, "--older-than", "30d", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["dry_run"] is True
    assert planned["jobs"] == {status: 1 for status in old}
    assert (planned["job_count"], planned["objects"], planned["batches"]) == (5, 9, 0)
    sizes = (
        link.ledger.connection()
        .execute(
            "SELECT sum((value->>'size')::bigint) FROM jobs, LATERAL (SELECT value FROM jsonb_each(inputs) UNION ALL "
            "SELECT value FROM jsonb_each(coalesce(outputs, '{}'))) AS record WHERE id = ANY(%s::uuid[]) "
            "AND value ? 'key'",  # an output kept in the ledger (inline) names no object
            (list(old.values()),),
        )
        .fetchone()
    )
    assert sizes is not None
    assert planned["bytes"] == sizes[0]
    assert stored(link) == before
    assert existing(link, list(old.values())) == set(old.values())
    text = purge_cli(unprivileged_env, config, "--older-than", "30d", "--dry-run")
    assert "purge would delete 5 job(s) finished before" in text.stdout, text.stdout

    done = purge_cli(unprivileged_env, config, "--older-than", "30d")
    assert done.returncode == 0, done.stderr
    assert "purge deleted 5 job(s)" in done.stdout, done.stdout
    assert "9 object(s)" in done.stdout, done.stdout
    assert existing(link, list(old.values())) == set()
    assert not old_keys & stored(link)
    assert existing(link, kept_jobs) == set(kept_jobs)
    assert kept_keys <= stored(link)
    assert link.ledger.connection().execute(
        "SELECT count(*) FROM job_attempts WHERE job_id = ANY(%s::uuid[])", (list(old.values()),)
    ).fetchone() == (0,)
    assert dangling(link) == set()
    again = purge_cli(unprivileged_env, config, "--older-than", "30d", "--json")
    assert json.loads(again.stdout)["job_count"] == 0


def test_an_object_another_job_records_is_kept_until_that_job_goes_too(link: Link) -> None:
    shared_key = f"packs/{uuid.uuid4()}.pack"
    pack = put(link, shared_key, b"one" + b"two")
    first = made_job(link, "succeeded", {"a.jpg": {**pack, "offset": 0, "size": 3}})
    second = made_job(link, "succeeded", {"b.jpg": {**pack, "offset": 3, "size": 3}})
    age(link, [first], days=40)
    age(link, [second], days=10)

    report = client.purge(link, "30d")
    assert report.job_count == 1
    assert existing(link, [first, second]) == {second}
    assert shared_key in stored(link)  # the second job still reads its range of it
    assert dangling(link) == set()

    plan = client.purge(link, "5d", dry_run=True)
    assert plan.job_count == 1
    assert plan.bytes >= 6
    client.purge(link, "5d")
    assert shared_key not in stored(link)


def test_a_batch_run_by_the_worker_is_purged_with_its_packs_outputs_and_row_once_its_last_job_goes(
    link: Link, worker: WorkerProcess, tmp_path: Path
) -> None:
    """16 small inputs go up as 8 packs of 2 (han_worker.packs): half the jobs old, one of each pack, go with
    their outputs (small: in the ledger, deleted with their rows) and leave every pack; the other half then
    take the packs and the batch's row with them."""
    for index in range(16):
        (tmp_path / f"photo{index:02d}.txt").write_text(f"photo {index}")
    plan = client.plan_batch(tmp_path, "sleep", {"seconds": 0.01}, 1)
    client.submit_batch(link, plan)
    assert client.wait_batch(link, plan.batch_id, 120).all_succeeded, worker.output()
    jobs = plan.job_ids
    packs = {key for key in keys_of(link, jobs) if "/packs/" in key}
    assert len(packs) == 8
    first, second = jobs[0::2], jobs[1::2]  # one member of each pack in each half
    assert {key for key in keys_of(link, first) if "/packs/" in key} == packs
    age(link, first)

    assert inline_rows(link, jobs) == 16
    report = client.purge(link, "30d")
    assert (report.jobs, report.batches, report.objects) == (
        {"succeeded": 8},
        0,
        0,
    )  # outputs inline, packs shared
    assert inline_rows(link, jobs) == 8
    assert existing(link, jobs) == set(second)
    assert packs <= stored(link)
    assert dangling(link) == set()
    assert link.ledger.batch_counts(plan.batch_id) is not None

    age(link, second)
    last_keys = keys_of(link, second)
    report = client.purge(link, "30d")
    assert (report.jobs, report.batches, report.objects) == ({"succeeded": 8}, 1, 8)  # the 8 packs
    assert inline_rows(link, jobs) == 0
    assert link.ledger.batch_counts(plan.batch_id) is None
    assert not last_keys & stored(link)
    assert not any(key.startswith(f"batches/{plan.batch_id}/") for key in stored(link))


def test_a_purge_while_a_worker_runs_jobs_touches_none_of_theirs(
    control_plane: RunningControlPlane, link: Link, worker: WorkerProcess, tmp_path: Path
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a photo")
    submitted: list[str] = []
    stop = threading.Event()
    submitter_link = control_plane.client_link()  # the submitter's own connections

    def submit_while_purging() -> None:
        while not stop.is_set() and len(submitted) < 300:
            job_id = client.submit(submitter_link, "sleep", {"seconds": 0.01}, {"in.txt": source}, 1)
            submitted.append(job_id)

    submitter = threading.Thread(target=submit_while_purging)
    submitter.start()
    old: list[str] = []
    try:
        wait_for(lambda: len(submitted) >= 10, 30, "jobs flowing")
        purged = 0
        for _round in range(3):  # old jobs made and purged while jobs are submitted, run and finished
            batch = [made_job(link, "succeeded") for _job in range(100)]
            age(link, batch)
            old += batch
            purged += client.purge(link, "30d").job_count
    finally:
        stop.set()
        submitter.join(60)
        submitter_link.close()
    assert purged == 300
    assert existing(link, old) == set()
    assert len(submitted) >= 10
    for job_id in submitted:
        record = client.wait(link, job_id, 120)
        assert record is not None, worker.output()
        assert record.status == "succeeded", worker.output()
    assert existing(link, submitted) == set(submitted)
    assert len(keys_of(link, submitted)) == len(submitted)  # an input each; the outputs are in the ledger
    assert inline_rows(link, submitted) == len(submitted)
    assert keys_of(link, submitted) <= stored(link)
    assert dangling(link) == set()


def test_a_purge_deletes_inline_outputs_with_their_jobs_and_asks_s3_for_no_object_of_theirs(
    link: Link, worker: WorkerProcess
) -> None:
    """A job whose output the ledger holds (the worker's sleep job, and one recorded by hand beside an input
    in S3): the purge deletes the output's row with the job's (ON DELETE CASCADE), and counts and journals
    only the input's object."""
    [by_worker] = client.submit_many(link, "sleep", [{"seconds": 0}], 3)
    done = client.wait(link, by_worker, 60)
    assert done is not None
    assert done.status == "succeeded", worker.output()
    by_hand = str(uuid.uuid4())
    inputs = {"in.txt": put(link, input_key(by_hand, "in.txt"), b"photo")}
    link.ledger.insert_jobs([NewJob(by_hand, "noop", QUEUE, {}, inputs, 1)])
    claim = link.ledger.claim(by_hand, "0-1", OWNER, 30.0)
    assert claim is not None
    data = b'{"frames": []}'
    outcome = Outcome("succeeded", {}, None, {"landmarks.json": InlineOutput.of(data).to_dict()},
                      {"landmarks.json": data})  # fmt: skip
    assert link.ledger.finish(by_hand, claim.attempt, outcome).status == "succeeded"
    jobs = [by_worker, by_hand]
    assert inline_rows(link, jobs) == 2
    assert keys_of(link, jobs) == {input_key(by_hand, "in.txt")}
    age(link, jobs)

    planned = client.purge(link, "30d", dry_run=True)
    assert (planned.job_count, planned.objects, planned.bytes) == (2, 1, 5)
    report = client.purge(link, "30d")
    assert (report.job_count, report.objects, report.bytes, report.failed) == (2, 1, 5, 0)
    assert existing(link, jobs) == set()
    assert inline_rows(link, jobs) == 0
    assert input_key(by_hand, "in.txt") not in stored(link)
    assert dangling(link) == set()


def test_a_purge_interrupted_between_its_phases_is_finished_by_the_next(
    unprivileged_env: UnprivilegedEnv, config: Path, link: Link
) -> None:
    old = [made_job(link, status) for status in ("succeeded", "dead", "cancelled")]
    age(link, old)
    keys = keys_of(link, old)
    cutoff = retention.cutoff_of(link.ledger, retention.parse_duration("30d"))

    forgotten = retention.forget(link.ledger, cutoff)  # the first phase only: as if killed right after it
    assert (forgotten.job_count, forgotten.objects) == (3, len(keys))
    assert existing(link, old) == set()
    assert keys <= stored(link)  # still there, journaled
    journal = {row[0] for row in link.ledger.connection().execute("SELECT key FROM purge_journal")}
    assert journal == keys
    assert dangling(link) == set()

    plan = client.purge(link, "30d", dry_run=True)
    assert (plan.job_count, plan.objects, plan.resumed) == (0, len(keys), len(keys))
    done = purge_cli(unprivileged_env, config, "--older-than", "30d", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["job_count"], report["objects"], report["resumed"]) == (0, len(keys), len(keys))
    assert not keys & stored(link)
    assert link.ledger.connection().execute("SELECT count(*) FROM purge_journal").fetchone() == (0,)


def test_a_key_recorded_again_after_the_first_phase_keeps_its_object(link: Link) -> None:
    """The same batch submitted again between the phases records the same keys: phase 2 checks each key
    against the rows once more and leaves its object."""
    job_id = made_job(link, "succeeded")
    age(link, [job_id])
    [input_record] = link.ledger.job(job_id).inputs.values()  # type: ignore[union-attr]
    retention.forget(link.ledger, retention.cutoff_of(link.ledger, retention.parse_duration("30d")))
    again = str(uuid.uuid4())
    link.ledger.insert_jobs([NewJob(again, "noop", QUEUE, {}, {"in.txt": input_record}, 1)])

    deleted = retention.delete_journaled(link.ledger, link.artifacts)
    assert deleted.kept == 1
    assert input_record["key"] in stored(link)
    assert dangling(link) == set()


def test_a_purged_batch_submitted_again_while_the_purge_deletes_keeps_every_object_its_rows_record(
    control_plane: RunningControlPlane, link: Link, worker: WorkerProcess, tmp_path: Path
) -> None:
    """A purged batch submitted again has the same ids, so the same keys, as its journaled objects (packs,
    an input too large to pack, outputs). The purge's second phase is run between the submission's look at the
    store and its commit (its progress callback runs it, on a connection of its own as a purge elsewhere
    would, once the uploads are done and before the rows are committed): no row may point at an object that
    phase deleted, and the batch's jobs run again and succeed."""
    for index in range(4):
        (tmp_path / f"photo{index}.txt").write_text(f"photo {index}")
    (tmp_path / "large.bin").write_bytes(bytes(range(256)) * 6_144)  # 1.5 MiB: an object of its own
    # Outputs too large for the ledger: objects too, under the jobs' own keys.
    params = {"seconds": 0.01, "output_bytes": INLINE_OUTPUT_MAX_BYTES + 1}
    plan = client.plan_batch(tmp_path, "sleep", params, 1)
    client.submit_batch(link, plan)
    assert client.wait_batch(link, plan.batch_id, 120).all_succeeded, worker.output()
    old_keys = keys_of(link, plan.job_ids)
    assert any("/packs/" in key for key in old_keys)
    assert any("/outputs/" in key for key in old_keys)
    age(link, plan.job_ids)
    retention.forget(link.ledger, retention.cutoff_of(link.ledger, retention.parse_duration("30d")))
    journal = {row[0] for row in link.ledger.connection().execute("SELECT key FROM purge_journal")}
    assert old_keys <= journal

    deleted_meanwhile: list[retention.Deleted] = []

    purger = control_plane.client_link()

    def purge_before_the_commit(stage: str, done: int, _total: int) -> None:
        if stage == "record" and done == 0:
            deleted_meanwhile.append(retention.delete_journaled(purger.ledger, purger.artifacts))

    try:
        again = client.submit_batch(link, plan, progress=purge_before_the_commit)
    finally:
        purger.close()
    assert (again.recorded, again.uploaded) == (len(plan.job_ids), len(plan.job_ids))
    assert deleted_meanwhile == [
        retention.Deleted()
    ]  # the submission had deleted the journaled objects first
    assert dangling(link) == set()
    assert client.wait_batch(link, plan.batch_id, 120).all_succeeded, worker.output()
    assert keys_of(link, plan.job_ids) == old_keys
    assert dangling(link) == set()
    assert link.ledger.connection().execute("SELECT count(*) FROM purge_journal").fetchone() == (0,)


def test_the_supervisor_purges_by_itself_with_retention_days(
    unprivileged_env: UnprivilegedEnv, workdir: Path
) -> None:
    running = start_control_plane(
        unprivileged_env, workdir / "cp-retention", "--retention-days", "1", "--retention-interval", "2",
        address=ADDRESS,
    )  # fmt: skip
    try:
        own = running.client_link()
        try:
            old = [made_job(own, "succeeded") for _job in range(3)]
            recent = made_job(own, "failed")
            age(own, old, days=2)
            keys = keys_of(own, old)
            wait_for(lambda: not existing(own, old), 30, "the supervisor's retention to purge the old jobs")
            wait_for(lambda: not keys & stored(own), 30, "their objects to be deleted")
            assert existing(own, [recent]) == {recent}
            assert dangling(own) == set()
        finally:
            own.close()
        wait_for(
            lambda: "retention: purge deleted 3 job(s)" in running.output(), 10, "the retention's log line"
        )
    finally:
        running.shutdown()
