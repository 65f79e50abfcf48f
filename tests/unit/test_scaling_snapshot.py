"""The pool's workers by state, from the worker registry and squeue (han_worker/scaling/snapshot.py): a worker
job started but not registered yet is still on its way; an idle worker too close to its walltime takes
nothing; other pools' jobs and ended jobs do not count."""

from __future__ import annotations

import pytest

from han_worker.scaling.policy import Demand, Supply
from han_worker.scaling.scaler import starts_of
from han_worker.scaling.snapshot import Pool, supply
from han_worker.slurm import QueuedJob, parse_time_left

POOL = Pool("han-elastic", ("pose",))


def job(
    job_id: str, state: str = "RUNNING", time_left: str = "1:00:00", name: str = "han-elastic"
) -> QueuedJob:
    return QueuedJob(job_id, job_id, "N/A", state, "None", "gpu", "node1", "0:10", time_left, "2:00:00",
                     "", "", "", "gres:gpu:1", "pegasus", name)  # fmt: skip


def worker(
    slurm_job_id: str, current_job: str = "", draining: str = "0", queues: str = "pose"
) -> dict[str, str]:
    return {"slurm_job_id": slurm_job_id, "current_job": current_job, "draining": draining, "queues": queues}


def test_workers_by_state_and_jobs_on_their_way() -> None:
    jobs = [job("1"), job("2"), job("3"), job("4"), job("5", state="PENDING", time_left="2:00:00"),
            job("6")]  # fmt: skip
    registry = [worker("1", current_job="j1"), worker("2"), worker("3", draining="1"), worker("4")]
    # 6 started but its worker has not registered yet (warming its model up): on its way, like 5.
    assert supply(POOL, registry, jobs, Demand(3, 60.0)) == Supply(busy=1, idle=2, draining=1, pending=2)


def test_an_idle_worker_without_walltime_for_a_typical_job_takes_nothing() -> None:
    jobs = [job("1", time_left="1:00"), job("2", time_left="0:00")]
    registry = [worker("1"), worker("2")]
    assert supply(POOL, registry, jobs, Demand(3, 600.0)) == Supply(draining=2)
    assert supply(POOL, registry, jobs, Demand(3, None)) == Supply(
        idle=1, draining=1
    )  # no history: any time left


def test_workers_outside_slurm_and_of_the_pools_queues_count_other_pools_jobs_and_ended_ones_do_not() -> None:
    jobs = [job("7", name="someone-else"), job("8", state="COMPLETED"), job("9", state="CANCELLED")]
    registry = [
        worker(""),  # a fixed worker outside Slurm (the Windows host, a direct launch) serving pose: idle
        worker("", queues="gpu"),  # not the pool's queue
        worker("", current_job="j2", queues="gpu,pose"),
    ]
    assert supply(POOL, registry, jobs, Demand(1, 5.0)) == Supply(busy=1, idle=1)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1:00:00", 3600), ("0:00", 0), ("5:30", 330), ("1-00:00:00", 86400), ("UNLIMITED", None),
     ("INVALID", None), ("N/A", None)],
)  # fmt: skip
def test_time_left_is_zero_when_none_is_left_not_unlimited(text: str, seconds: int | None) -> None:
    assert parse_time_left(text) == seconds


def test_submitted_jobs_by_what_became_of_them_a_cancel_is_no_failed_start() -> None:
    jobs = [job("11"), job("12", state="PENDING"), job("13", state="CANCELLED"), job("14", state="FAILED"),
            job("15", state="CANCELLED")]  # fmt: skip
    registry = [worker("11")]
    starts = starts_of(["11", "12", "13", "14", "15", "16"], registry, jobs)
    assert starts.registered == ("11",)
    # an operator's scancel, of a pending or a starting job: not the pool's fault
    assert starts.cancelled == ("13", "15")
    assert starts.failed == (("14", "FAILED"), ("16", "gone from Slurm's queue"))  # 12: still on its way
