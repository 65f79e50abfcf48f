"""What the scaler reads from a real ledger (han_worker/scaling/snapshot.py): the pool's waiting jobs, the age
of the oldest one, and the median run time of its recent successful attempts (not failures, not other
queues, not last month's); and what it and the workers write there for /metrics (han_worker/store/tallies.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from han_worker.scaling.snapshot import Pool, read_backlog
from han_worker.store.ledger import Ledger, NewJob
from han_worker.store.tallies import (
    PoolFigures,
    PoolTick,
    read_pools,
    read_switches,
    record_switch,
    record_tick,
)
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


def tick(idle_gpus: int, paused_by: str | None = None) -> PoolTick:
    return PoolTick("han-elastic-tallied", ("pose",), desired=2, pending=1, running=1, paused_by=paused_by,
                    reason="at max_pending (1 allocation(s) waiting in Slurm)", idle_gpus=idle_gpus)  # fmt: skip


def tallied(ledger: Ledger) -> PoolFigures:
    [figures] = [item for item in read_pools(ledger.connection()) if item.tick.pool == "han-elastic-tallied"]
    return figures


def test_a_scalers_tick_is_kept_and_idle_gpus_count_up_for_the_time_between_ticks(ledger: Ledger) -> None:
    """What /metrics reads of the scaler (han_worker/store/tallies.py): the last tick's figures, and the GPUs
    seen idle at a tick times the seconds to the next, capped for a scaler that was away."""
    record_tick(ledger.connection(), tick(idle_gpus=2), tick_seconds=5)
    first = tallied(ledger)
    assert (first.tick, first.idle_gpu_seconds) == (tick(idle_gpus=2), 0)
    time.sleep(0.5)
    record_tick(ledger.connection(), tick(idle_gpus=0, paused_by="failed_starts"), tick_seconds=5)
    second = tallied(ledger)
    assert second.tick.paused_by == "failed_starts"
    assert 2 * 0.5 <= second.idle_gpu_seconds < 2 * 5  # two GPUs idle for the half second between
    assert second.ticked_at > first.ticked_at
    time.sleep(0.3)
    record_tick(ledger.connection(), tick(idle_gpus=1), tick_seconds=5)
    assert tallied(ledger).idle_gpu_seconds == second.idle_gpu_seconds  # none idle since the second tick
    ledger.connection().execute(  # the scaler away for an hour: its last idle GPU is not counted for it all
        "UPDATE scaler_pools SET ticked_at = now() - interval '1 hour' WHERE pool = 'han-elastic-tallied'"
    )
    record_tick(ledger.connection(), tick(idle_gpus=1), tick_seconds=5)
    assert tallied(ledger).idle_gpu_seconds == pytest.approx(second.idle_gpu_seconds + 60, abs=0.5)


def test_switches_are_counted_per_pair_of_sources_and_refused_outside_them(ledger: Ledger) -> None:
    before = {(item.from_source, item.to_source): item.count for item in read_switches(ledger.connection())}
    assert set(before) == {("pegasus", "mac"), ("mac", "pegasus"), ("pegasus", "pegasus"), ("mac", "mac")}
    for _worker in range(3):
        record_switch(ledger.connection(), "pegasus", "mac", f"node1-{_worker}", "node1")
    record_switch(ledger.connection(), "mac", "pegasus", "node1-0", "node1")
    after = {(item.from_source, item.to_source): item.count for item in read_switches(ledger.connection())}
    assert after[("pegasus", "mac")] == before[("pegasus", "mac")] + 3
    assert after[("mac", "pegasus")] == before[("mac", "pegasus")] + 1
    assert after[("pegasus", "pegasus")] == before[("pegasus", "pegasus")]
    with pytest.raises(psycopg.errors.CheckViolation):  # the ledger's own check, past the function's
        ledger.connection().execute(
            "INSERT INTO control_plane_switches (from_source, to_source) VALUES ('pegasus', 'lab')"
        )
