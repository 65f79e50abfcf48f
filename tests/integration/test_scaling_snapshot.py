"""What the scaler reads from a real ledger (han_worker/scaling/snapshot.py): the pool's waiting jobs, the age
of the oldest one, and the median run time of its recent successful attempts (not failures, not other
queues, not last month's)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from han_worker.scaling.snapshot import Pool, read_backlog
from han_worker.store.ledger import Ledger, NewJob
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import RunningControlPlane, start_control_plane

pytestmark = pytest.mark.self_contained

ADDRESS = "127.0.0.74"  # no other test or benchmark uses it
POOL = Pool("han-elastic-test", ("pose", "pose-large"))


@pytest.fixture(scope="module")
def ledger(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[Ledger]:
    running: RunningControlPlane = start_control_plane(unprivileged_env, workdir / "cp", address=ADDRESS)
    opened = running.ledger()
    try:
        opened.migrate()  # as the first submission or worker does
        yield opened
    finally:
        opened.close()
        running.shutdown()


def submit(ledger: Ledger, queue: str, count: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _index in range(count)]
    ledger.insert_jobs([NewJob(job_id, "noop", queue, {}, {}, 3) for job_id in ids])
    return ids


def ran(ledger: Ledger, job_id: str, seconds: float, outcome: str = "succeeded", days_ago: float = 0) -> None:
    """An attempt of ``seconds`` that ended ``days_ago``, written as a worker's claim and finish would."""
    with ledger.connection().transaction():
        ledger.connection().execute(
            "UPDATE jobs SET status = %(status)s, attempts = 1 WHERE id = %(id)s",
            {"status": "succeeded" if outcome == "succeeded" else "failed", "id": job_id},
        )
        ledger.connection().execute(
            """INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome)
               VALUES (%(id)s, 1, 'w', now() - make_interval(days => %(days)s, secs => %(secs)s),
                       now() - make_interval(days => %(days)s), %(outcome)s)""",
            {"id": job_id, "days": days_ago, "secs": seconds, "outcome": outcome},
        )


def test_a_pool_without_history_has_no_typical_run_time_and_counts_its_waiting_jobs(ledger: Ledger) -> None:
    before = read_backlog(ledger.connection(), Pool("han-elastic-empty", ("nothing-here",)))
    assert (before.demand.waiting, before.demand.typical_run_seconds, before.oldest_waiting_seconds) == (
        0,
        None,
        0,
    )
    submit(ledger, "pose", 3)
    submit(ledger, "pose-large", 2)
    submit(ledger, "other", 4)  # not the pool's
    backlog = read_backlog(ledger.connection(), POOL)
    assert backlog.demand.waiting == 5
    assert backlog.demand.typical_run_seconds is None
    assert backlog.oldest_waiting_seconds > 0


def test_the_typical_run_time_is_the_median_of_recent_successes_of_the_pools_queues(ledger: Ledger) -> None:
    waiting_before = read_backlog(ledger.connection(), POOL).demand.waiting
    for seconds, queue in ((10, "pose"), (20, "pose-large"), (30, "pose")):
        ran(ledger, submit(ledger, queue, 1)[0], seconds)
    ran(ledger, submit(ledger, "pose", 1)[0], 5000, outcome="failed")  # a failure says nothing of run time
    ran(ledger, submit(ledger, "pose", 1)[0], 9000, days_ago=8)  # last week's work is not today's
    ran(ledger, submit(ledger, "other", 1)[0], 7000)  # another pool's queue
    backlog = read_backlog(ledger.connection(), POOL)
    assert backlog.demand.typical_run_seconds == pytest.approx(20, abs=0.01)
    assert backlog.demand.waiting == waiting_before  # finished jobs are no backlog
