"""A Slurm worker leaves a job it cannot finish before its walltime to another worker
(han_worker/worker/walltime_guard.py): from the walltime left and each kind's typical run time, looking the
job's kind up only when the time left is too short for one of the kinds the worker serves."""

from __future__ import annotations

import pytest

from han_worker.worker.walltime_guard import WalltimeGuard, refusal

TYPICAL = {"pose": 100.0, "noop": 1.0}


def never_asked() -> str | None:
    raise AssertionError("the job's kind was looked up though any kind fits")


def test_a_worker_outside_slurm_or_without_a_time_limit_takes_every_job() -> None:
    assert refusal(None, TYPICAL, ("pose", "noop"), never_asked) is None
    assert WalltimeGuard("", ("pose",)).walltime_left() is None  # no Slurm job: squeue is never asked


def test_with_time_for_the_longest_kind_the_jobs_kind_is_not_looked_up() -> None:
    assert refusal(125.0, TYPICAL, ("pose", "noop"), never_asked) is None  # 100 s x 1.25 margin


@pytest.mark.parametrize(("kind", "refused"), [("pose", True), ("noop", False), (None, False)])
def test_a_job_longer_than_the_walltime_left_is_refused_naming_both(kind: str | None, refused: bool) -> None:
    reason = refusal(120.0, TYPICAL, ("pose", "noop"), lambda: kind)
    if not refused:
        assert reason is None  # a short kind fits; a job the ledger does not know is left to the claim
        return
    assert reason == "120s of walltime left, too little for a pose job (a typical pose job runs 100s)"


def test_a_kind_without_history_fits_any_time_left_but_none() -> None:
    assert refusal(5.0, {}, ("pose",), never_asked) is None
    assert refusal(0.0, {}, ("pose",), lambda: "pose") == (
        "0s of walltime left, too little for a pose job (no history)"
    )


def test_a_job_no_fresh_worker_could_finish_is_taken_rather_than_refused_by_every_worker() -> None:
    hour_long = {"train": 3600.0}
    # 10 min left of a 30 min limit: a fresh worker could not finish an hour-long job either.
    assert refusal(600.0, hour_long, ("train",), lambda: "train", time_limit=1800.0) is None
    # Of a 2 h limit, a fresh worker could: this one leaves it.
    assert refusal(600.0, hour_long, ("train",), lambda: "train", time_limit=7200.0) == (
        "600s of walltime left, too little for a train job (a typical train job runs 3600s)"
    )
