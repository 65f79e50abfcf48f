"""``han-worker cancel``, timeouts and ``han-worker requeue`` end to end, on a real control plane with a real
worker: a queued job cancelled never runs (the worker that pops its entry does not start it); a running one is
stopped at its worker's next heartbeat and the worker goes on; a finished one is left as it is; a cancel racing
a finish leaves exactly one final state (the race forced with a transaction held open on a second connection);
a job that hangs past its timeout is recorded timed_out while the worker goes on with the next job; a dead job
requeued runs again.

The control plane is the module's own, on 127.0.0.81; the commands run as the cluster user, as a lab
member's."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from han_worker import client
from han_worker.store.ledger import AttemptOwner, Cancelled, FinishReport, JobRecord, Ledger, NewJob, Outcome
from han_worker.store.link import Link
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    WorkerProcess,
    han_worker,
    own_control_plane,
    serving_worker,
    wait_for,
    worker_settings,
    write_private_file,
)

pytestmark = pytest.mark.self_contained

ADDRESS = "127.0.0.81"  # no other test or benchmark uses it
KIND_TIMEOUT = 6.0  # the worker configuration's job_timeouts for kind sleep
ABANDON_AFTER = 5.0  # han_worker.worker.attempt.ABANDON_AFTER_SECONDS
OWNER = AttemptOwner("race-test-worker", "race-host", "linux", "pegasus", 1)


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
    document = worker_settings(
        control_plane, workdir / "spool", mode="pegasus", job_timeouts={"sleep": KIND_TIMEOUT}
    )
    return write_private_file(unprivileged_env, workdir / "worker.json", json.dumps(document))


@pytest.fixture(scope="module")
def worker(unprivileged_env: UnprivilegedEnv, config: Path) -> Iterator[WorkerProcess]:
    """One worker: whatever it runs after a stopped job shows that it went on."""
    with serving_worker(unprivileged_env, config) as started:
        yield started


def run(env: UnprivilegedEnv, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = han_worker(env, args[0], "--config", str(config), *args[1:])
    assert "Traceback" not in done.stderr, done.stderr
    return done


def submit(link: Link, kind: str, params: dict[str, object], max_attempts: int = 1, **options: float) -> str:
    return client.submit(link, kind, params, {}, max_attempts, timeout=options.get("timeout"))


def status_becomes(link: Link, job_id: str, wanted: str, timeout: float, worker: WorkerProcess) -> JobRecord:
    def reached() -> JobRecord | None:
        record = link.ledger.job(job_id)
        return record if record is not None and record.status == wanted else None

    try:
        return wait_for(reached, timeout, f"job {job_id} {wanted}")  # type: ignore[no-any-return]
    except BaseException:
        print(worker.output())
        raise


def finished(link: Link, job_id: str, worker: WorkerProcess, timeout: float = 60) -> JobRecord:
    record = client.wait(link, job_id, timeout)
    assert record is not None, f"job {job_id} has not finished: {worker.output()}"
    return record


def outcomes(link: Link, job_id: str) -> list[tuple[object, object]]:
    return [(item["outcome"], item["error"]) for item in link.ledger.attempts(job_id)]


def test_the_ledger_has_migration_3_whatever_else_it_has(link: Link) -> None:
    rows = link.ledger.connection().execute("SELECT version FROM han_migrations").fetchall()
    assert {1, 3} <= {row[0] for row in rows}
    assert link.ledger.migrate() == []  # applied once


# -- cancel ----------------------------------------------------------------------------------------------


def test_a_queued_job_cancelled_never_runs(
    unprivileged_env: UnprivilegedEnv, config: Path, link: Link, worker: WorkerProcess
) -> None:
    busy = submit(link, "sleep", {"seconds": 3})  # keeps the one worker busy while the next job waits
    status_becomes(link, busy, "running", 30, worker)
    waiting = submit(link, "noop", {})
    done = run(unprivileged_env, config, "cancel", waiting)
    assert done.returncode == 0, done.stderr
    assert f"job {waiting} cancelled: it was waiting and will not run" in done.stdout

    assert finished(link, busy, worker).status == "succeeded"
    after = submit(link, "noop", {})  # the worker reads the cancelled job's entry before this one's
    assert finished(link, after, worker).status == "succeeded"
    record = link.ledger.job(waiting)
    assert record is not None
    assert (record.status, record.attempts, record.worker_id) == ("cancelled", 0, None)
    assert record.error == "cancelled before it ran"
    assert record.cancel_requested_at is not None
    assert link.ledger.attempts(waiting) == []
    # its entry was acknowledged, not left pending (the last job's acknowledgement may ride a later read)
    wait_for(lambda: link.queues.depth("noop").in_flight == 0, 10, "no entry pending on noop")


def test_a_running_job_cancelled_stops_at_the_next_heartbeat_and_the_worker_goes_on(
    unprivileged_env: UnprivilegedEnv, config: Path, link: Link, worker: WorkerProcess
) -> None:
    job_id = submit(link, "sleep", {"seconds": 60}, max_attempts=3)
    running = status_becomes(link, job_id, "running", 30, worker)
    asked = time.monotonic()
    done = run(unprivileged_env, config, "cancel", job_id, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "job_id": job_id, "action": "requested", "status": "running", "worker_id": running.worker_id
    }  # fmt: skip

    record = finished(link, job_id, worker, timeout=30)
    assert record.status == "cancelled", record
    assert time.monotonic() - asked < 5  # a heartbeat (0.5 s) and the sleep backend's 0.1 s check
    assert outcomes(link, job_id) == [("cancelled", "cancelled while it ran")]
    assert record.attempts == 1  # not retried although it had attempts left

    after = submit(link, "noop", {})
    assert finished(link, after, worker).status == "succeeded"


def test_a_running_job_whose_backend_does_not_stop_is_left_behind_and_the_worker_goes_on(
    unprivileged_env: UnprivilegedEnv, config: Path, link: Link, worker: WorkerProcess
) -> None:
    job_id = submit(link, "sleep", {"seconds": 40, "heed_stop": False}, timeout=30)
    status_becomes(link, job_id, "running", 30, worker)
    done = run(unprivileged_env, config, "cancel", job_id)
    assert done.returncode == 0, done.stderr
    assert "cancel requested" in done.stdout

    record = finished(link, job_id, worker, timeout=ABANDON_AFTER + 10)
    assert record.status == "cancelled", record
    [(outcome, error)] = outcomes(link, job_id)
    assert outcome == "cancelled"
    assert "its backend did not stop 5 s after it was asked to" in str(error)
    after = submit(link, "noop", {})  # while the stuck backend still sleeps, in the thread left behind
    assert finished(link, after, worker, timeout=15).status == "succeeded"
    assert "leaving it behind and serving on" in worker.output()


def test_a_finished_job_cancelled_is_left_as_it_was(
    unprivileged_env: UnprivilegedEnv, config: Path, link: Link, worker: WorkerProcess
) -> None:
    job_id = submit(link, "noop", {})
    before = finished(link, job_id, worker)
    done = run(unprivileged_env, config, "cancel", job_id)
    assert done.returncode == 0, done.stderr
    assert f"job {job_id} had already finished (succeeded): nothing changed" in done.stdout
    assert link.ledger.job(job_id) == before


def test_cancel_of_a_job_that_is_not_there_exits_2_naming_it(
    unprivileged_env: UnprivilegedEnv, config: Path
) -> None:
    missing = str(uuid.uuid4())
    for job, message in ((missing, f"JOB: no job {missing} in the ledger"), ("job-7", "JOB: 'job-7' is not")):
        done = run(unprivileged_env, config, "cancel", job)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr


# -- the cancel/finish race ------------------------------------------------------------------------------


def claimed_elsewhere(link: Link) -> str:
    """A job claimed by a worker of the test's own (its queue is served by no worker, so the module's worker
    and reconciler leave it be: a lease running out would re-enqueue it in a stream nobody reads)."""
    job_id = str(uuid.uuid4())
    link.ledger.insert_jobs([NewJob(job_id, "noop", "cancel-race", {}, {}, 3)])
    claim = link.ledger.claim(job_id, "0-1", OWNER, 60)
    assert claim is not None
    return job_id


def test_a_cancelled_job_whose_worker_died_is_recorded_cancelled_by_the_next_claim_not_run(
    link: Link,
) -> None:
    job_id = claimed_elsewhere(link)  # its worker never heartbeats again
    cancelled = link.ledger.cancel(job_id)
    assert cancelled == Cancelled(job_id, "running", OWNER.worker_id)
    time.sleep(1.0)
    # a worker reclaiming it after its lease (0.5 s here) is refused, and finds the job cancelled
    assert link.ledger.claim(job_id, "0-2", OWNER, 0.5) is None
    assert link.ledger.bury_if_exhausted(job_id, 0.5)
    record = link.ledger.job(job_id)
    assert record is not None
    assert (record.status, record.attempts) == ("cancelled", 1)
    assert str(record.error).startswith("cancelled; its worker was lost before it stopped the job")
    [(outcome, _error)] = outcomes(link, job_id)
    assert outcome == "crashed"


def forced_race(
    control_plane: RunningControlPlane, first: Callable[[Ledger], object], second: Callable[[Ledger], object]
) -> tuple[object, object]:
    """``first`` on one connection in a transaction held open until ``second``, on another, waits for the row
    lock; then ``first`` commits and ``second`` goes on. Their results."""
    held, other, probe = control_plane.ledger(), control_plane.ledger(), control_plane.ledger()
    results: dict[str, object] = {}
    try:
        with held.connection().transaction():
            results["first"] = first(held)
            thread = threading.Thread(target=lambda: results.update(second=second(other)), daemon=True)
            thread.start()
            wait_for(lambda: waiting_for_a_lock(probe), 10, "the second statement to wait for the row lock")
        thread.join(10)
        assert not thread.is_alive(), "the second statement did not go on after the commit"
        return results["first"], results["second"]
    finally:
        for ledger in (held, other, probe):
            ledger.close()


def waiting_for_a_lock(probe: Ledger) -> bool:
    row = (
        probe.connection()
        .execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        .fetchone()
    )
    return bool(row and row[0])


def test_a_finish_that_commits_first_wins_and_the_cancel_changes_nothing(
    control_plane: RunningControlPlane, link: Link
) -> None:
    job_id = claimed_elsewhere(link)
    report, cancelled = forced_race(
        control_plane,
        lambda ledger: ledger.finish(job_id, 1, Outcome("succeeded", {"ok": True})),
        lambda ledger: ledger.cancel(job_id),
    )
    assert report == FinishReport(True, "succeeded")
    assert cancelled is None  # the row it waited for was finished: not touched
    record = link.ledger.job(job_id)
    assert record is not None
    assert (record.status, record.result, record.cancel_requested_at) == ("succeeded", {"ok": True}, None)
    assert outcomes(link, job_id) == [("succeeded", None)]
    assert client.cancel(link, job_id).action == "finished"


def test_a_cancel_that_commits_first_lets_a_success_stand_and_stops_a_retry(
    control_plane: RunningControlPlane, link: Link
) -> None:
    succeeded = claimed_elsewhere(link)
    cancelled, report = forced_race(
        control_plane,
        lambda ledger: ledger.cancel(succeeded),
        lambda ledger: ledger.finish(succeeded, 1, Outcome("succeeded", {"ok": True})),
    )
    assert cancelled == Cancelled(succeeded, "running", OWNER.worker_id)
    assert report == FinishReport(True, "succeeded")  # it finished before the cancel reached its worker
    assert outcomes(link, succeeded) == [("succeeded", None)]

    crashed = claimed_elsewhere(link)  # an attempt that would be retried is not: the job is cancelled
    _cancelled, report = forced_race(
        control_plane,
        lambda ledger: ledger.cancel(crashed),
        lambda ledger: ledger.finish(crashed, 1, Outcome("crashed", error="boom")),
    )
    assert report == FinishReport(True, "cancelled")
    record = link.ledger.job(crashed)
    assert record is not None
    assert (record.status, record.attempts) == ("cancelled", 1)
    assert record.finished_at is not None
    assert outcomes(link, crashed) == [("crashed", "boom")]
    assert link.ledger.claim(crashed, "0-2", OWNER, 0.5) is None  # no claim starts it again


def test_a_claim_racing_a_cancel_of_a_queued_job_never_starts_it(
    control_plane: RunningControlPlane, link: Link
) -> None:
    job_id = str(uuid.uuid4())
    link.ledger.insert_jobs([NewJob(job_id, "noop", "cancel-race", {}, {}, 3)])
    cancelled, claim = forced_race(
        control_plane,
        lambda ledger: ledger.cancel(job_id),
        lambda ledger: ledger.claim(job_id, "0-1", OWNER, 60),
    )
    assert cancelled == Cancelled(job_id, "cancelled", None)
    assert claim is None
    assert link.ledger.attempts(job_id) == []


# -- timeouts ----------------------------------------------------------------------------------------------


def test_a_job_that_hangs_past_its_timeout_is_timed_out_while_the_worker_goes_on(
    link: Link, worker: WorkerProcess
) -> None:
    hung = submit(link, "sleep", {"seconds": 60, "heed_stop": False}, timeout=2)
    status_becomes(link, hung, "running", 30, worker)
    started = time.monotonic()
    following = submit(link, "noop", {})

    record = finished(link, hung, worker, timeout=2 + ABANDON_AFTER + 10)
    assert record.status == "timed_out", record
    assert 2 + ABANDON_AFTER - 1 <= time.monotonic() - started < 2 + ABANDON_AFTER + 10
    [(outcome, error)] = outcomes(link, hung)
    assert outcome == "timed_out"
    assert str(error).startswith("timed out after 2 s (its --timeout); its backend did not stop")
    assert finished(link, following, worker, timeout=15).status == "succeeded"  # the hung one still sleeps


def test_a_timed_out_job_is_retried_by_its_own_max_attempts(link: Link, worker: WorkerProcess) -> None:
    job_id = submit(link, "sleep", {"seconds": 60}, max_attempts=2, timeout=1)
    record = finished(link, job_id, worker, timeout=30)
    assert (record.status, record.attempts) == ("timed_out", 2), record
    assert outcomes(link, job_id) == [("timed_out", "timed out after 1 s (its --timeout)")] * 2
    assert record.error == "timed out after 1 s (its --timeout)"


def test_a_kind_without_its_own_timeout_has_the_worker_configurations(
    link: Link, worker: WorkerProcess
) -> None:
    job_id = submit(link, "sleep", {"seconds": 60})
    record = finished(link, job_id, worker, timeout=KIND_TIMEOUT + 20)
    assert record.status == "timed_out", record
    assert record.error == "timed out after 6 s (job_timeouts.sleep of the worker configuration)"


def test_status_lists_a_timed_out_job_beside_the_dead_ones_for_a_person_to_look_at(
    unprivileged_env: UnprivilegedEnv, config: Path, link: Link, worker: WorkerProcess
) -> None:
    job_id = submit(link, "sleep", {"seconds": 60}, timeout=1)
    assert finished(link, job_id, worker, timeout=30).status == "timed_out"
    shown = run(unprivileged_env, config, "status", "--limit", "1000")
    assert shown.returncode == 0, shown.stderr
    listed = shown.stdout.split("dead or timed out (", 1)[1]
    assert f"{job_id}  sleep  timed_out  attempts 1: timed out after 1 s (its --timeout)" in listed


def test_submit_refuses_a_timeout_that_is_not_positive(
    unprivileged_env: UnprivilegedEnv, config: Path
) -> None:
    for value in ("0", "-5", "nan", "inf", "soon"):
        done = run(unprivileged_env, config, "submit", "--kind", "noop", f"--timeout={value}")
        assert done.returncode == 2, done.stderr
        assert "--timeout" in done.stderr


# -- requeue -----------------------------------------------------------------------------------------------


def dead_job(link: Link) -> str:
    """A job dead after its only attempt crashed (run by a worker of the test's own)."""
    job_id = str(uuid.uuid4())
    link.ledger.insert_jobs([NewJob(job_id, "noop", "noop", {}, {}, 1)])
    assert link.ledger.claim(job_id, "0-1", OWNER, 60) is not None
    assert link.ledger.finish(job_id, 1, Outcome("crashed", error="lost its GPU")) == FinishReport(
        True, "dead"
    )
    return job_id


def test_a_dead_job_requeued_runs_again(
    unprivileged_env: UnprivilegedEnv, config: Path, link: Link, worker: WorkerProcess
) -> None:
    job_id = dead_job(link)
    refused = run(unprivileged_env, config, "requeue", job_id, "--state", "timed_out")
    assert refused.returncode == 2
    assert f"--state: job {job_id} is dead, not timed_out" in refused.stderr

    done = run(unprivileged_env, config, "requeue", job_id, "--state", "dead")
    assert done.returncode == 0, done.stderr
    assert f"job {job_id} requeued (it was dead)" in done.stdout
    record = finished(link, job_id, worker)
    assert (record.status, record.attempts, record.error) == ("succeeded", 2, None), record
    assert [outcome for outcome, _error in outcomes(link, job_id)] == ["crashed", "succeeded"]


def test_two_requeues_at_once_run_the_job_again_once(control_plane: RunningControlPlane, link: Link) -> None:
    job_id = str(uuid.uuid4())  # dead, in a queue no worker serves: it stays queued once requeued
    link.ledger.insert_jobs([NewJob(job_id, "noop", "cancel-race", {}, {}, 1)])
    assert link.ledger.claim(job_id, "0-1", OWNER, 60) is not None
    assert link.ledger.finish(job_id, 1, Outcome("crashed", error="lost")) == FinishReport(True, "dead")
    first, second = forced_race(
        control_plane,
        lambda ledger: ledger.requeue(job_id, ["dead"]),
        lambda ledger: ledger.requeue(job_id, ["dead"]),
    )
    assert first == ("cancel-race", "dead")
    assert second is None  # it waited for the row, then found it queued
    record = link.ledger.job(job_id)
    assert record is not None
    assert (record.status, record.attempts, record.error, record.finished_at) == ("queued", 1, None, None)
    assert link.ledger.claim(job_id, "0-2", OWNER, 60) is not None  # a fresh budget: attempt 2 of 1 + 1


def test_requeue_refuses_a_job_that_has_not_finished_or_has_succeeded_naming_its_state(
    unprivileged_env: UnprivilegedEnv, config: Path, link: Link, worker: WorkerProcess
) -> None:
    running = submit(link, "sleep", {"seconds": 30}, timeout=30)
    status_becomes(link, running, "running", 30, worker)
    done = run(unprivileged_env, config, "requeue", running)
    assert done.returncode == 2
    assert f"JOB: job {running} is running, not finished" in done.stderr
    assert run(unprivileged_env, config, "cancel", running).returncode == 0
    assert finished(link, running, worker).status == "cancelled"

    succeeded = submit(link, "noop", {})
    assert finished(link, succeeded, worker).status == "succeeded"
    done = run(unprivileged_env, config, "requeue", succeeded)
    assert done.returncode == 2
    assert f"JOB: job {succeeded} succeeded; its result stands" in done.stderr

    again = run(unprivileged_env, config, "requeue", running)  # a cancelled job may run again
    assert again.returncode == 0, again.stderr
    assert "(it was cancelled)" in again.stdout
    record = status_becomes(link, running, "running", 30, worker)
    assert (record.attempts, record.error, record.cancel_requested_at) == (2, None, None)
    assert run(unprivileged_env, config, "cancel", running).returncode == 0
    assert finished(link, running, worker).status == "cancelled"
