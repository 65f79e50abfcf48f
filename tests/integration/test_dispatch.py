"""Dispatch under load: a job's result and the next job's claim in one commit, every guarantee kept.

The ledger tests talk to a real control plane's PostgreSQL as the worker user; the worker tests run
``han-worker run`` processes (queue ``noop``) under a batch of jobs submitted at once.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from han_worker import client
from han_worker.backends.base import JobContext, JobFailed, JobResult
from han_worker.config import Overrides, WorkerConfig, load_worker_config
from han_worker.selection.credentials import Credentials
from han_worker.selection.endpoints import parse_endpoints
from han_worker.selection.resolver import Choice, Selector
from han_worker.store.ledger import AttemptOwner, Claim, FinishReport, Ledger, NewJob, Outcome
from han_worker.store.link import Link, open_link
from han_worker.store.queues import Delivery, stream_key
from han_worker.worker import attempt
from han_worker.worker.attempt import AttemptResult, DrainClock, InFlight, run_attempt
from han_worker.worker.loop import Worker
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    WorkerProcess,
    start_control_plane,
    start_worker,
    wait_for,
    worker_settings,
    write_private_file,
)

# Only services this module starts itself: `make test` runs it beside the tests that share the testbed.
pytestmark = pytest.mark.self_contained

OWNER = AttemptOwner("dispatch-test-1", "here", "linux", "pegasus", 1)
OTHER = AttemptOwner("dispatch-test-2", "here", "linux", "pegasus", 1)
SUCCEEDED = Outcome("succeeded", {"ok": True})
STOPPED = re.compile(r"stopped after (\d+) job\(s\); (\d+) ledger commits")


@pytest.fixture(scope="module")
def control_plane(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[RunningControlPlane]:
    running = start_control_plane(unprivileged_env, workdir / "cp")
    yield running
    running.shutdown()


@pytest.fixture
def ledger(control_plane: RunningControlPlane) -> Iterator[Ledger]:
    opened = control_plane.ledger()
    opened.migrate()
    yield opened
    opened.close()


def new_jobs(ledger: Ledger, count: int) -> list[str]:
    jobs = [NewJob(str(uuid.uuid4()), "noop", "noop", {}, {}, 3) for _index in range(count)]
    ledger.insert_jobs(jobs)
    return [job.job_id for job in jobs]


def claimed(ledger: Ledger, job_id: str, owner: AttemptOwner = OWNER, lease: float = 30) -> Claim:
    claim = ledger.claim(job_id, "1-0", owner, lease)
    assert claim is not None
    return claim


def outcomes(ledger: Ledger, job_id: str) -> list[object]:
    return [attempt["outcome"] for attempt in ledger.attempts(job_id)]


# -- the ledger ---------------------------------------------------------------------------------------


def test_new_jobs_go_in_with_one_commit_however_many(ledger: Ledger):
    one = NewJob(str(uuid.uuid4()), "sleep", "noop", {"seconds": 2}, {}, 2)
    batch = [
        NewJob(str(uuid.uuid4()), "noop", "noop", {"n": index}, {"in": {"key": f"k{index}"}}, 1 + index)
        for index in range(3)
    ]
    before = ledger.commits

    ledger.insert_jobs([one])
    ledger.insert_jobs(batch)
    ledger.insert_jobs([])  # nothing to record: no statement at all

    assert ledger.commits - before == 2
    for job in [one, *batch]:
        record = ledger.job(job.job_id)
        assert record is not None
        assert (record.kind, record.queue, record.status, record.attempts) == (
            job.kind,
            job.queue,
            "queued",
            0,
        )
        assert (record.params, record.inputs, record.max_attempts) == (
            job.params,
            job.inputs,
            job.max_attempts,
        )


def test_a_batch_goes_in_whole_or_not_at_all(ledger: Ledger):
    fresh, taken = str(uuid.uuid4()), new_jobs(ledger, 1)[0]

    with pytest.raises(psycopg.errors.UniqueViolation):
        ledger.insert_jobs([NewJob(job_id, "noop", "noop", {}, {}, 3) for job_id in (fresh, taken)])

    assert ledger.job(fresh) is None


def test_a_result_and_the_next_claim_cost_one_commit(ledger: Ledger):
    first, second = new_jobs(ledger, 2)
    claim = claimed(ledger, first)
    before = ledger.commits

    handover = ledger.finish_then_claim((first, claim.attempt, SUCCEEDED), (second, "2-0"), OWNER, 30)

    assert ledger.commits - before == 1
    assert handover.tried
    assert handover.report == FinishReport(True, "succeeded")
    assert handover.claim is not None
    assert (handover.claim.job_id, handover.claim.attempt) == (second, 1)
    done, started = ledger.job(first), ledger.job(second)
    assert done is not None
    assert started is not None
    assert (done.status, done.result) == ("succeeded", {"ok": True})
    assert (started.status, started.worker_id) == ("running", OWNER.worker_id)
    assert outcomes(ledger, first) == ["succeeded"]
    assert outcomes(ledger, second) == [None]


def test_a_superseded_result_is_discarded_and_the_next_claim_still_goes_in(ledger: Ledger):
    first, second = new_jobs(ledger, 2)
    stale = claimed(ledger, first)
    time.sleep(0.05)
    current = claimed(ledger, first, OTHER, lease=0.01)  # the first holder's lease ran out
    assert current.attempt == stale.attempt + 1

    handover = ledger.finish_then_claim((first, stale.attempt, SUCCEEDED), (second, "2-0"), OWNER, 30)

    assert handover.report == FinishReport(False, None)
    assert handover.claim is not None
    job = ledger.job(first)
    assert job is not None
    assert (job.status, job.attempts, job.worker_id, job.result) == ("running", 2, OTHER.worker_id, None)
    assert outcomes(ledger, first) == ["superseded", None]


def test_the_next_claim_stays_exclusive(ledger: Ledger, control_plane: RunningControlPlane):
    mine, theirs, shared = new_jobs(ledger, 3)
    other = control_plane.ledger()
    try:
        my_claim, their_claim = claimed(ledger, mine), claimed(other, theirs, OTHER)
        first = ledger.finish_then_claim((mine, my_claim.attempt, SUCCEEDED), (shared, "3-0"), OWNER, 30)
        second = other.finish_then_claim((theirs, their_claim.attempt, SUCCEEDED), (shared, "3-0"), OTHER, 30)
    finally:
        other.close()

    assert first.claim is not None
    assert second.tried
    assert second.claim is None
    assert second.report == FinishReport(True, "succeeded")  # the refused claim costs its result nothing
    assert outcomes(ledger, shared) == [None]
    job = ledger.job(shared)
    assert job is not None
    assert (job.attempts, job.worker_id) == (1, OWNER.worker_id)


def test_a_duplicate_entry_of_the_job_just_finished_is_refused(ledger: Ledger):
    (job_id,) = new_jobs(ledger, 1)
    claim = claimed(ledger, job_id)

    handover = ledger.finish_then_claim((job_id, claim.attempt, SUCCEEDED), (job_id, "2-0"), OWNER, 30)

    assert handover.tried
    assert handover.claim is None
    job = ledger.job(job_id)
    assert job is not None
    assert (job.status, job.attempts) == ("succeeded", 1)
    assert outcomes(ledger, job_id) == ["succeeded"]


def test_a_claim_that_fails_costs_no_result(ledger: Ledger):
    (job_id,) = new_jobs(ledger, 1)
    claim = claimed(ledger, job_id)
    before = ledger.commits

    handover = ledger.finish_then_claim((job_id, claim.attempt, SUCCEEDED), ("not-a-uuid", "2-0"), OWNER, 30)

    assert not handover.tried
    assert handover.claim is None
    assert handover.report == FinishReport(True, "succeeded")
    assert ledger.commits - before == 1  # the failed transaction committed nothing; the finish alone did
    assert outcomes(ledger, job_id) == ["succeeded"]
    assert ledger.connection().info.transaction_status == psycopg.pq.TransactionStatus.IDLE


# -- the worker ---------------------------------------------------------------------------------------


@pytest.fixture
def link(control_plane: RunningControlPlane) -> Iterator[Link]:
    """A link as root, like the bench's: the control plane's files belong to the cluster user."""
    endpoints = parse_endpoints(control_plane.endpoints, "endpoints.json")
    choice = Choice("pegasus", endpoints, control_plane.worker_credentials(), "dispatch test")
    opened = open_link(choice, timeout=5, name="han-dispatch-test")
    yield opened
    opened.close()


@pytest.fixture
def workers(
    unprivileged_env: UnprivilegedEnv, workdir: Path, control_plane: RunningControlPlane
) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        try:
            worker.stop(timeout=15)
        except Exception:  # killed instead; the next test must not meet it
            worker.kill()


def start_workers(
    env: UnprivilegedEnv, workdir: Path, cp: RunningControlPlane, started: list[WorkerProcess], count: int
) -> list[WorkerProcess]:
    settings = worker_settings(cp, workdir / "spool-dispatch", mode="pegasus", lease_seconds=30,
                               reconcile_seconds=30, drain_grace_seconds=10)  # fmt: skip
    config = write_private_file(env, workdir / "dispatch.json", json.dumps(settings))
    for _index in range(count):
        started.append(start_worker(env, config))
    wait_for(lambda: all("serving noop" in worker.output() for worker in started[-count:]), 30,
             f"{count} worker(s) to start")  # fmt: skip
    return started[-count:]


def statuses(ledger: Ledger, job_ids: list[str]) -> dict[str, int]:
    rows = ledger.connection().execute(
        "SELECT status, count(*) FROM jobs WHERE id = ANY(%s::uuid[]) GROUP BY status", (job_ids,)
    )
    return {str(row[0]): int(row[1]) for row in rows}


def attempt_outcomes(ledger: Ledger, job_ids: list[str]) -> dict[str, list[object]]:
    rows = ledger.connection().execute(
        "SELECT job_id::text, array_agg(outcome ORDER BY attempt) FROM job_attempts "
        "WHERE job_id = ANY(%s::uuid[]) GROUP BY job_id",
        (job_ids,),
    )
    return {str(row[0]): list(row[1]) for row in rows}


def commits_per_job(workers: list[WorkerProcess]) -> float:
    jobs = commits = 0
    for worker in workers:
        found = STOPPED.search(worker.output())
        assert found, worker.output()
        jobs, commits = jobs + int(found.group(1)), commits + int(found.group(2))
    return commits / jobs


def test_a_batch_costs_about_one_commit_per_job_and_runs_each_job_once(
    unprivileged_env: UnprivilegedEnv, workdir: Path, control_plane: RunningControlPlane, link: Link,
    workers: list[WorkerProcess],
):  # fmt: skip
    started = start_workers(unprivileged_env, workdir, control_plane, workers, 2)
    batch = client.submit_many(link, "noop", [{}] * 300, max_attempts=3)

    wait_for(lambda: statuses(link.ledger, batch) == {"succeeded": 300}, 60, "300 jobs to succeed")
    for worker in started:
        assert worker.stop(timeout=15) == 0

    assert set(map(tuple, attempt_outcomes(link.ledger, batch).values())) == {("succeeded",)}
    assert link.queues.client.xlen(stream_key("noop")) == 0  # every entry acknowledged and deleted
    # Alone, claim and finish are two commits; a batch chains them. The first job of each chain and
    # the worker's start cost extra, so not exactly 1.
    assert commits_per_job(started) < 1.2


def test_a_drain_under_load_leaves_no_job_claimed_and_not_run(
    unprivileged_env: UnprivilegedEnv, workdir: Path, control_plane: RunningControlPlane, link: Link,
    workers: list[WorkerProcess],
):  # fmt: skip
    (worker,) = start_workers(unprivileged_env, workdir, control_plane, workers, 1)
    batch = client.submit_many(link, "sleep", [{"seconds": 0.02}] * 200, max_attempts=3)
    wait_for(lambda: statuses(link.ledger, batch).get("succeeded", 0) >= 20, 60, "20 jobs to succeed")

    assert worker.stop(timeout=20) == 0

    left = statuses(link.ledger, batch)
    assert set(left) <= {"succeeded", "queued"}, left
    assert 0 < left.get("queued", 0) < 200
    ran = attempt_outcomes(link.ledger, batch)
    assert set(map(tuple, ran.values())) == {("succeeded",)}  # nothing claimed and then given up
    assert len(ran) == left["succeeded"]
    # Every job not run is still in the stream for the next worker, and no job run is: the stop sent the
    # acknowledgements the worker owed.
    assert link.queues.job_ids("noop") >= {job for job in batch if job not in ran}
    assert not link.queues.job_ids("noop") & set(ran)

    start_workers(unprivileged_env, workdir, control_plane, workers, 1)
    wait_for(lambda: statuses(link.ledger, batch) == {"succeeded": 200}, 60, "every job to succeed")
    assert set(map(tuple, attempt_outcomes(link.ledger, batch).values())) == {("succeeded",)}


# -- the backend in the serving thread ------------------------------------------------------------------
# run_attempt and Worker.run in this process, on jobs in the real ledger, with backends that say where
# they ran.


def succeed(_context: JobContext) -> JobResult:
    return JobResult({"ok": True})


@dataclass
class Probe:
    """A backend that records the thread of each call, then does what ``then`` says."""

    then: Callable[[JobContext], JobResult] = succeed
    threads: list[threading.Thread] = field(default_factory=list)
    name: str = "noop"
    queue: str = "noop"
    platforms: frozenset[str] = frozenset({"linux"})

    def run(self, context: JobContext) -> JobResult:
        self.threads.append(threading.current_thread())
        return self.then(context)


def attempt_on(link: Link, probe: Probe, tmp_path: Path) -> AttemptResult:
    (job_id,) = new_jobs(link.ledger, 1)
    claim = claimed(link.ledger, job_id)
    inflight = InFlight(Delivery("noop", "1-0", job_id), claim, link)
    return run_attempt(inflight, probe, tmp_path, DrainClock(5))


def test_the_backend_runs_in_the_calling_thread_and_its_errors_are_the_attempts_outcome(
    link: Link, tmp_path: Path
):
    errors: list[BaseException] = [RuntimeError("boom"), JobFailed("bad input"), SystemExit(3)]

    def fail(_context: JobContext) -> JobResult:
        raise errors.pop(0)

    probe = Probe(fail)
    crashed, failed, exited = (attempt_on(link, probe, tmp_path) for _index in range(3))
    probe.then = succeed
    succeeded = attempt_on(link, probe, tmp_path)

    assert (crashed.outcome, crashed.error) == ("crashed", "RuntimeError: boom")
    assert (failed.outcome, failed.error) == ("failed", "bad input")
    assert (exited.outcome, exited.error) == ("crashed", "SystemExit: 3")
    assert (succeeded.outcome, succeeded.summary) == ("succeeded", {"ok": True})
    assert set(probe.threads) == {threading.current_thread()}  # no thread handed a job over


class FixedSelector(Selector):
    """Chooses the test's control plane, read as root (its files belong to the cluster user)."""

    def __init__(self, config: WorkerConfig, choice: Choice) -> None:
        super().__init__(config)
        self.choice = choice

    def choose(self) -> Choice:
        return self.choice

    def credentials_on_disk(self, source: str) -> Credentials | None:
        return self.choice.credentials


def test_a_backend_that_does_not_stop_is_left_behind_and_its_job_given_back(
    link: Link, control_plane: RunningControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(attempt, "ABANDON_AFTER_SECONDS", 0.5)
    monkeypatch.setattr(Worker, "_install_signal_handlers", lambda _self: None)  # pytest's own stay
    queue = f"abandon-{uuid.uuid4().hex[:8]}"  # this test's only: the module's worker processes never see it
    release, started = threading.Event(), threading.Event()

    def deaf(_context: JobContext) -> JobResult:  # never asks should_stop
        started.set()
        return JobResult({"late": release.wait(30)})

    stuck = Probe(deaf, name="noop", queue=queue)
    document = {"mode": "pegasus", "queues": [queue], "spool_dir": str(tmp_path / "spool"),
                "pegasus": {"endpoints_file": str(control_plane.state_dir / "endpoints.json")},
                "lease_seconds": 30, "heartbeat_seconds": 0.5, "probe_interval_seconds": 60,
                "drain_grace_seconds": 0.2}  # fmt: skip
    (tmp_path / "worker.json").write_text(json.dumps(document))
    (tmp_path / "worker.json").chmod(0o600)
    config = load_worker_config(tmp_path / "worker.json", Overrides(), {})
    worker = Worker(config, {"noop": stuck}, FixedSelector(config, link.choice))
    (job_id,) = new_jobs(link.ledger, 1)
    link.ledger.connection().execute("UPDATE jobs SET queue = %s WHERE id = %s", (queue, job_id))
    link.queues.enqueue(queue, job_id)
    stopper = threading.Thread(target=lambda: started.wait(30) and worker.stop())
    stopper.start()
    try:
        began = time.monotonic()
        assert worker.run() == 0  # in this (main) thread, as the CLI runs it
        took = time.monotonic() - began
        stopper.join(5)

        (stuck_thread,) = stuck.threads
        assert stuck_thread is not threading.current_thread()
        assert stuck_thread.is_alive()  # still in the backend: left behind
        assert took < 10
        job = link.ledger.job(job_id)
        assert job is not None
        assert (job.status, job.error) == ("queued", "the worker is draining (the backend did not stop)")
        assert outcomes(link.ledger, job_id) == ["released"]  # given back: it does not count as an attempt
        assert job_id in link.queues.job_ids(queue)  # back in the queue for another worker
    finally:
        release.set()
        link.queues.client.delete(stream_key(queue))
    stuck_thread.join(5)
    assert outcomes(link.ledger, job_id) == ["released"]  # its late result was not recorded


# -- owed acknowledgements --------------------------------------------------------------------------------


@pytest.fixture
def queue(link: Link) -> Iterator[str]:
    """A queue of this test only, so that the module's workers (queue noop) never read it."""
    name = f"owed-{uuid.uuid4().hex[:8]}"
    link.queues.ensure_group(name)
    yield name
    link.queues.client.delete(stream_key(name))


def entries(link: Link, queue: str) -> list[str]:
    return [str(entry_id) for entry_id, _fields in link.queues.client.xrange(stream_key(queue))]


def test_an_owed_acknowledgement_goes_with_the_next_read(link: Link, queue: str):
    queues = link.queues
    for job in ("job-1", "job-2", "job-3"):
        queues.enqueue(queue, job)
    first = queues.next_delivery([queue], "owed-test", None)
    assert first is not None

    queues.owe(first)
    assert first.entry_id in entries(link, queue)  # owed, not sent
    second = queues.next_delivery([queue], "owed-test", None)

    assert second is not None
    assert second.job_id == "job-2"
    assert first.entry_id not in entries(link, queue)
    assert queues.owed == []
    queues.owe(second)
    third = queues.next_delivery([queue], "owed-test", None)
    assert third is not None
    queues.done(third)  # an acknowledgement carries the owed one as well
    assert entries(link, queue) == []
    assert queues.client.xpending(stream_key(queue), "workers")["pending"] == 0


def test_flush_owed_sends_them_alone(link: Link, queue: str):
    queues = link.queues
    queues.enqueue(queue, "job-1")
    delivery = queues.next_delivery([queue], "owed-test", None)
    assert delivery is not None
    queues.owe(delivery)

    queues.flush_owed()

    assert entries(link, queue) == []
    assert queues.owed == []


def test_the_heartbeat_sends_an_owed_acknowledgement_while_a_long_job_runs(
    unprivileged_env: UnprivilegedEnv, workdir: Path, control_plane: RunningControlPlane, link: Link,
    workers: list[WorkerProcess],
):  # fmt: skip
    # Both queued before the worker starts: the sleep job is taken while the noop job is recorded, so
    # the noop job's acknowledgement is owed, and the loop's next read comes only after 6 s of sleep.
    quick = client.submit(link, "noop", {}, {}, max_attempts=3)
    slow = client.submit(link, "sleep", {"seconds": 6}, {}, max_attempts=3)
    start_workers(unprivileged_env, workdir, control_plane, workers, 1)  # heartbeat every 0.5 s

    wait_for(lambda: statuses(link.ledger, [slow]) == {"running": 1}, 20, "the sleep job to run")
    wait_for(lambda: quick not in link.queues.job_ids("noop"), 3, "the noop job's entry to go")

    assert statuses(link.ledger, [quick, slow]) == {"succeeded": 1, "running": 1}
    assert slow in link.queues.job_ids("noop")
    wait_for(lambda: statuses(link.ledger, [slow]) == {"succeeded": 1}, 20, "the sleep job to succeed")


def test_an_unacknowledged_entry_of_a_finished_job_is_refused_and_deleted(
    unprivileged_env: UnprivilegedEnv, workdir: Path, control_plane: RunningControlPlane, link: Link,
    workers: list[WorkerProcess],
):  # fmt: skip
    # What a worker killed while it owed an acknowledgement leaves behind: a finished job whose entry
    # is still pending for it. Another worker reclaims the entry after a lease and must not run the job.
    job = client.submit(link, "noop", {}, {}, max_attempts=3)
    delivery = link.queues.next_delivery(["noop"], "killed-worker", None)
    assert delivery is not None
    assert delivery.job_id == job
    claim = link.ledger.claim(job, delivery.entry_id, OWNER, 1)
    assert claim is not None
    assert link.ledger.finish(job, claim.attempt, SUCCEEDED).recorded
    settings = worker_settings(control_plane, workdir / "spool-reclaim", mode="pegasus", lease_seconds=1,
                               heartbeat_seconds=0.2, reconcile_seconds=30)  # fmt: skip
    config = write_private_file(unprivileged_env, workdir / "reclaim.json", json.dumps(settings))
    workers.append(start_worker(unprivileged_env, config))

    wait_for(lambda: job not in link.queues.job_ids("noop"), 30, "the entry to be reclaimed and deleted")

    assert outcomes(link.ledger, job) == ["succeeded"]  # one attempt: the finished job did not run again
    assert statuses(link.ledger, [job]) == {"succeeded": 1}
