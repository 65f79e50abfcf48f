"""The scaler's decision (han_worker/scaling/policy.py): only the shortfall, within the caps, backing off and
pausing on failures, and a reason for every decision, also when nothing is submitted."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from han_worker.scaling.policy import (
    BACKOFF_SECONDS,
    Decision,
    Demand,
    Failures,
    Limits,
    LimitsError,
    Supply,
    can_finish,
    decide,
)

NOW = 1_000_000.0
LIMITS = Limits(max_workers=8, max_pending=8, horizon_seconds=60)


NO_WORKERS, NO_FAILURES = Supply(), Failures()


def decision(
    demand: Demand, supply: Supply = NO_WORKERS, limits: Limits = LIMITS, failures: Failures = NO_FAILURES
) -> Decision:
    return decide(demand, supply, limits, failures, NOW)


def test_a_burst_from_zero_asks_for_workers_to_start_the_work_within_the_horizon() -> None:
    # 200 one-second jobs: 200 s of work, to start within 60 s: 4 workers.
    made = decision(Demand(waiting=200, typical_run_seconds=1.0))
    assert (made.submit, made.desired) == (4, 4)
    assert made.reason == (
        "submit 4: 200 waiting (typical run 1s); workers 0 busy, 0 idle, 0 draining; 0 pending in Slurm; want 4"
    )


def test_without_history_each_waiting_job_gets_a_worker_up_to_max_workers() -> None:
    assert decision(Demand(waiting=3)).submit == 3
    made = decision(Demand(waiting=30))
    assert (made.submit, made.desired) == (8, 8)


def test_long_jobs_get_one_worker_each_never_more() -> None:
    made = decision(Demand(waiting=2, typical_run_seconds=3600))
    assert (made.submit, made.desired) == (2, 2)


def test_jobs_longer_than_a_worker_jobs_walltime_get_no_worker_and_the_reason_says_so() -> None:
    one_hour = Limits(max_workers=8, max_pending=8, horizon_seconds=60, worker_walltime_seconds=3600)
    made = decision(Demand(waiting=3, typical_run_seconds=4000), Supply(busy=1), one_hour)  # 4000 s > 1 h
    assert made.submit == 0
    assert made.desired == 1, "the busy worker keeps its job; none more"
    assert made.reason.startswith(
        "not scaling for the backlog: a typical job (4000s) needs more than a worker job's walltime (3600s) "
        "allows; raise the pool's time limit: 3 waiting"
    ), made.reason
    fits = decision(Demand(waiting=3, typical_run_seconds=3500), limits=one_hour)  # a fresh worker can
    assert fits.submit == 3
    assert decision(Demand(waiting=3), limits=one_hour).submit == 3, "no history: any walltime will do"
    assert decision(Demand(waiting=0, typical_run_seconds=4000), limits=one_hour).reason.startswith(
        "no backlog"
    )
    keep_two = Limits(max_workers=8, min_workers=2, max_pending=8, worker_walltime_seconds=3600)
    kept = decision(Demand(waiting=3, typical_run_seconds=4000), limits=keep_two)
    assert (kept.submit, kept.desired) == (2, 2), "min_workers still holds"


def test_pending_allocations_and_idle_workers_are_subtracted() -> None:
    made = decision(Demand(waiting=5), Supply(idle=2, pending=2))
    assert made.submit == 1
    assert made.desired == 5


def test_busy_workers_keep_their_jobs_and_the_backlog_is_added_to_them() -> None:
    made = decision(Demand(waiting=2), Supply(busy=3))
    assert (made.submit, made.desired) == (2, 5)


def test_a_backlog_the_idle_workers_cover_submits_nothing_and_says_so() -> None:
    made = decision(Demand(waiting=2, typical_run_seconds=10), Supply(busy=1, idle=2))
    assert made.submit == 0
    assert made.reason.startswith("backlog fits the running workers: 2 waiting (typical run 10s); ")


def test_no_backlog_submits_nothing_and_never_asks_to_cancel() -> None:
    made = decision(Demand(waiting=0), Supply(busy=2, idle=3, pending=1))
    assert made.submit == 0
    assert made.desired == 2  # fewer than there are: the idle ones leave by themselves
    assert made.reason.startswith("no backlog: ")


def test_min_workers_are_kept_without_backlog() -> None:
    made = decision(Demand(waiting=0), limits=Limits(max_workers=4, min_workers=2, max_pending=4))
    assert (made.submit, made.desired) == (2, 2)


def test_at_max_workers_nothing_is_submitted_and_draining_workers_still_hold_their_gpu() -> None:
    made = decision(Demand(waiting=10), Supply(busy=6, draining=2))
    assert made.submit == 0
    assert made.reason.startswith("at max_workers (8): ")


def test_at_max_pending_nothing_more_waits_in_slurm() -> None:
    made = decision(Demand(waiting=10), Supply(pending=2), Limits(max_workers=8, max_pending=2))
    assert made.submit == 0
    assert made.reason.startswith("at max_pending (2 allocation(s) waiting in Slurm): ")


def test_a_capped_submission_names_its_cap() -> None:
    made = decision(Demand(waiting=10), limits=Limits(max_workers=8, max_pending=3))
    assert made.submit == 3
    assert made.reason.startswith("submit 3 (capped by max_pending 3): ")
    made = decision(Demand(waiting=10), Supply(busy=5, draining=1), Limits(max_workers=8, max_pending=8))
    assert made.submit == 2  # a draining worker still holds its allocation
    assert made.reason.startswith("submit 2 (capped by max_workers 8): ")


@pytest.mark.parametrize(
    ("failed", "seconds_ago", "submits"),
    [(1, 0, 3), (2, 30, 0), (2, 60, 3), (3, 899, 0), (3, 900, 3), (4, 1799, 0), (5, 3599, 0), (9, 3600, 3)],
)
def test_failed_submissions_back_off_0_60_900_1800_3600_seconds(
    failed: int, seconds_ago: float, submits: int
) -> None:
    failures = Failures(submissions=failed, last_at=NOW - seconds_ago, last_error="sbatch: error: timeout")
    made = decision(Demand(waiting=3), failures=failures)
    assert made.submit == submits
    if submits == 0:
        wait = BACKOFF_SECONDS[min(failed, len(BACKOFF_SECONDS)) - 1] - seconds_ago
        assert made.reason.startswith(
            f"backing off after {failed} failed submission(s) in a row, next at +{wait:.0f}s: sbatch: error: timeout: "
        )
        assert made.retry_at == NOW - seconds_ago + BACKOFF_SECONDS[min(failed, len(BACKOFF_SECONDS)) - 1]


def test_the_queue_pauses_after_ten_failed_submissions_with_slurms_error() -> None:
    error = "sbatch: error: invalid partition specified: gpu-typo"
    made = decision(Demand(waiting=3), failures=Failures(submissions=10, last_at=0.0, last_error=error))
    assert (made.submit, made.paused) == (0, True)
    assert made.reason == f"paused after 10 failed submissions in a row: {error}"


def test_the_queue_pauses_after_three_allocations_that_died_before_their_worker_registered() -> None:
    error = "job 4711 ended FAILED before its worker registered"
    made = decision(Demand(waiting=3), failures=Failures(starts=3, last_error=error))
    assert (made.submit, made.paused) == (0, True)
    assert made.reason == f"paused after 3 allocations in a row ended before their worker registered: {error}"


@pytest.mark.parametrize(
    ("walltime_left", "typical", "expected"),
    [(None, None, True), (None, 100.0, True), (0.0, None, False), (10.0, None, True),
     (125.0, 100.0, True), (124.0, 100.0, False)],
)  # fmt: skip
def test_a_worker_takes_only_a_job_it_can_finish_before_its_walltime(
    walltime_left: float | None, typical: float | None, expected: bool
) -> None:
    assert can_finish(walltime_left, typical) is expected


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_workers": 0}, "max_workers: 0 must be at least 1"),
        ({"max_workers": 2, "min_workers": 3}, "min_workers: 3 must be within 0-2 (max_workers)"),
        ({"max_workers": 2, "max_pending": 0}, "max_pending: 0 must be at least 1"),
        (
            {"max_workers": 2, "horizon_seconds": float("nan")},
            "horizon_seconds: nan must be a positive number",
        ),
        ({"max_workers": 2, "max_failed_starts": 0}, "max_failed_starts: 0 must be at least 1"),
    ],
)
def test_limits_that_cannot_work_are_refused_naming_the_setting(
    settings: dict[str, float], message: str
) -> None:
    with pytest.raises(LimitsError, match=re.escape(message)):
        Limits(**settings)  # type: ignore[arg-type]


counts = st.integers(min_value=0, max_value=50)


@given(
    waiting=counts, typical=st.one_of(st.none(), st.floats(0.01, 10_000)), busy=counts, idle=counts,
    draining=counts, pending=counts, max_workers=st.integers(1, 60), max_pending=st.integers(1, 20),
    min_workers=counts, failed=st.integers(0, 12), starts=st.integers(0, 4), since=st.floats(0, 10_000),
)  # fmt: skip
def test_never_past_the_caps_never_more_than_the_backlog_and_always_a_reason(  # noqa: PLR0917 (hypothesis)
    waiting: int, typical: float | None, busy: int, idle: int, draining: int, pending: int,
    max_workers: int, max_pending: int, min_workers: int, failed: int, starts: int, since: float,
) -> None:  # fmt: skip
    limits = Limits(max_workers, min(min_workers, max_workers), max_pending)
    supply = Supply(busy, idle, draining, pending)
    failures = Failures(failed, starts, NOW - since, "sbatch: error")
    made = decide(Demand(waiting, typical), supply, limits, failures, NOW)
    assert made.submit >= 0
    if made.submit:
        assert supply.allocations + made.submit <= max_workers
        assert pending + made.submit <= max_pending
        assert made.submit <= max(waiting, limits.min_workers) - idle - pending
        assert not made.paused
    if failed >= limits.max_failed_submissions or starts >= limits.max_failed_starts:
        assert made.paused
        assert made.submit == 0
    assert made.reason
    assert "\n" not in made.reason
    assert made.desired <= max_workers
