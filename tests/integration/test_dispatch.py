"""Dispatch under load: a job's result and the next job's claim in one commit, every guarantee kept.

The ledger tests talk to a real control plane's PostgreSQL as the worker user.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from han_worker.ledger import AttemptOwner, Claim, FinishReport, Ledger, NewJob, Outcome
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    start_control_plane,
)

OWNER = AttemptOwner("dispatch-test-1", "here", "linux", "pegasus", 1)
OTHER = AttemptOwner("dispatch-test-2", "here", "linux", "pegasus", 1)
SUCCEEDED = Outcome("succeeded", {"ok": True})


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
