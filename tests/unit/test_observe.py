"""The metrics snapshot as Prometheus reads it (parsed back with prometheus_client's own parser), the worker
figures read from registry entries, and what ``han-worker top`` prints without a terminal. The figures' reading
from a real ledger and registry is tested in tests/integration/test_observe.py."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from han_worker.cli import worker_main
from han_worker.observe import snapshot as snapshot_queries
from han_worker.observe.exposition import exposition
from han_worker.observe.snapshot import (
    ATTEMPTS_BOUNDS,
    RUN_SECONDS_BOUNDS,
    ControlPlaneFigures,
    Failure,
    FinishedJobs,
    FinishedTimings,
    Histogram,
    QueueFigures,
    Snapshot,
    _attempts,
    _run_times,
    worker_figures,
)
from han_worker.observe.view import ViewState, duration, render_plain
from han_worker.store import ledger

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
JOB = "0b5f8a4e-1a2b-4c3d-8e9f-001122334455"


def registry_entries() -> list[dict[str, str]]:
    return [
        {"id": "node1-slurm12-77-ab12", "host": "node1", "platform": "linux", "current_job": JOB, "queues": "pose",
         "control_plane": "pegasus", "epoch": "7", "heartbeat_at": "2026-12-06T11:59:58Z", "draining": "0",
         "jobs_done": "41", "walltime_end": "2026-12-06T13:30:00Z"},
        {"id": "win-9-cd34", "host": "win", "platform": "windows", "current_job": "", "queues": "gpu,pose",
         "control_plane": "pegasus", "epoch": "7", "heartbeat_at": "garbled", "draining": "0", "jobs_done": "x"},
        {"id": "node2-5-ef56", "host": "node2", "platform": "linux", "current_job": "not-a-job", "queues": "pose",
         "control_plane": "pegasus", "epoch": "", "draining": "1", "jobs_done": "3"},
    ]  # fmt: skip


def snapshot(successors: int | None = 0, walltime_left: float | None = 1500.0) -> Snapshot:
    plane = ControlPlaneFigures(
        "pegasus", 7, "node0", "4242", NOW - timedelta(hours=3), NOW + timedelta(seconds=1500), walltime_left,
        successors,
    )  # fmt: skip
    return Snapshot(
        taken_at=NOW,
        control_plane=plane,
        queues=(QueueFigures("gpu", 0, 0, 0.0), QueueFigures("pose", 12, 1, 734.5)),
        finished=(
            FinishedJobs("pose", "pose", "dead", 1),
            FinishedJobs("pose", "pose", "failed", 2),
            FinishedJobs("pose", "pose", "succeeded", 97),
        ),
        workers=worker_figures(registry_entries(), {JOB: NOW - timedelta(seconds=65)}, NOW),
        failures=(
            Failure("9d4e0a3c-0000-4000-8000-000000000001", "pose", "pose", "dead", 3,
                    "no person found\nTraceback ...", NOW - timedelta(minutes=2), "node1-slurm12-77-ab12", "node1"),
        ),
    )  # fmt: skip


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def families(text: str) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def test_the_exposition_parses_back_to_the_snapshots_figures() -> None:
    found = samples(exposition(snapshot()))
    assert found[("han_queue_jobs_waiting", (("queue", "pose"),))] == 12
    assert found[("han_queue_jobs_waiting", (("queue", "gpu"),))] == 0
    assert found[("han_queue_jobs_running", (("queue", "pose"),))] == 1
    assert found[("han_queue_oldest_waiting_job_age_seconds", (("queue", "pose"),))] == 734.5
    finished = ("kind", "pose"), ("outcome", "failed"), ("queue", "pose")
    assert found[("han_jobs_finished_total", finished)] == 2
    assert found[("han_control_plane_info", (("node", "node0"), ("source", "pegasus")))] == 1
    assert found[("han_control_plane_epoch", (("source", "pegasus"),))] == 7
    assert found[("han_control_plane_walltime_left_seconds", (("source", "pegasus"),))] == 1500
    assert found[("han_control_plane_successors_queued", (("source", "pegasus"),))] == 0
    start = found[("han_control_plane_start_time_seconds", (("source", "pegasus"),))]
    assert start == (NOW - timedelta(hours=3)).timestamp()


def test_workers_are_counted_by_state_platform_and_host_and_each_has_its_own_series() -> None:
    found = samples(exposition(snapshot()))
    assert found[("han_workers", (("host", "node1"), ("platform", "linux"), ("state", "busy")))] == 1
    assert found[("han_workers", (("host", "node1"), ("platform", "linux"), ("state", "idle")))] == 0
    assert found[("han_workers", (("host", "win"), ("platform", "windows"), ("state", "idle")))] == 1
    assert found[("han_workers", (("host", "node2"), ("platform", "linux"), ("state", "draining")))] == 1
    node1 = (("host", "node1"), ("platform", "linux"), ("worker", "node1-slurm12-77-ab12"))
    assert found[("han_worker_up", node1)] == 1
    assert found[("han_worker_draining", node1)] == 0
    assert found[("han_worker_walltime_left_seconds", node1)] == 90 * 60
    assert found[("han_worker_current_job_seconds", node1)] == 65
    node2 = (("host", "node2"), ("platform", "linux"), ("worker", "node2-5-ef56"))
    assert found[("han_worker_draining", node2)] == 1
    # unknown figures are absent, not zero
    walltimes = [labels for name, labels in found if name == "han_worker_walltime_left_seconds"]
    assert walltimes == [node1]


def test_names_types_and_labels_follow_prometheus_conventions() -> None:
    text = exposition(snapshot())
    types = families(text)
    assert types["han_jobs_finished"] == "counter"
    assert types["han_job_run_seconds"] == types["han_job_attempts"] == "histogram"
    assert all(name.startswith("han_") for name in types)
    assert types["han_worker_control_plane_switches"] == "counter"
    counters = {"han_jobs_finished", "han_worker_control_plane_switches", "han_scaler_idle_gpu_seconds"}
    others = set(types) - counters - {"han_job_run_seconds", "han_job_attempts"}
    assert all(types[name] == "gauge" for name in others)
    assert JOB not in text
    assert "9d4e0a3c" not in text
    assert "# TYPE han_jobs_finished_total counter" in text


def timings() -> FinishedTimings:
    runs = Histogram.empty(RUN_SECONDS_BOUNDS) + Histogram(
        RUN_SECONDS_BOUNDS, (0, 0, 1, 3, 3, 3, 3, 3, 3, 3, 3), 4, 4321.5
    )
    attempts = Histogram((1.0, 2.0, 3.0, 5.0, 10.0), (2, 3, 4, 4, 4), 4, 7.0)
    return FinishedTimings("pose", "pose", runs, attempts)


def test_run_times_and_attempts_are_histograms_by_queue_and_kind() -> None:
    found = samples(exposition(replace(snapshot(), timings=(timings(),))))
    labels = (("kind", "pose"), ("queue", "pose"))
    assert found[("han_job_run_seconds_bucket", (*labels[:1], ("le", "1.0"), *labels[1:]))] == 1
    assert found[("han_job_run_seconds_bucket", (*labels[:1], ("le", "5.0"), *labels[1:]))] == 3
    assert found[("han_job_run_seconds_bucket", (*labels[:1], ("le", "+Inf"), *labels[1:]))] == 4
    assert found[("han_job_run_seconds_count", labels)] == 4
    assert found[("han_job_run_seconds_sum", labels)] == 4321.5
    assert found[("han_job_attempts_bucket", (*labels[:1], ("le", "2.0"), *labels[1:]))] == 3
    assert found[("han_job_attempts_sum", labels)] == 7
    assert len(ATTEMPTS_BOUNDS) == 5


def test_unknown_walltime_and_successors_are_absent_so_no_rule_reads_them_as_zero() -> None:
    names = {key[0] for key in samples(exposition(snapshot(successors=None, walltime_left=None)))}
    assert "han_control_plane_successors_queued" not in names
    assert "han_control_plane_walltime_left_seconds" not in names
    assert "han_control_plane_epoch" in names


def test_worker_figures_read_what_the_registry_holds_and_ignore_what_is_garbled() -> None:
    by_host = {worker.host: worker for worker in snapshot().workers}
    assert by_host["node1"].state == "busy"
    assert by_host["node1"].current_job == JOB
    assert by_host["node1"].job_seconds == 65
    assert by_host["node1"].heartbeat_age_seconds == 2
    assert by_host["node1"].epoch == 7
    assert by_host["win"].queues == ("gpu", "pose")
    assert (by_host["win"].heartbeat_age_seconds, by_host["win"].jobs_done) == (None, 0)
    assert (by_host["node2"].state, by_host["node2"].current_job, by_host["node2"].epoch) == (
        "draining",
        None,
        None,
    )


def test_the_plain_view_shows_queues_workers_and_failures() -> None:
    state = ViewState()
    state.update(snapshot())
    text = render_plain(state)
    assert "control plane: pegasus epoch 7 on node0" in text
    assert "walltime left 25m 00s, no successor queued" in text
    assert any(line.split()[:4] == ["pose", "12", "12m", "14s"] for line in text.splitlines())
    assert "node1" in text
    assert "windows" in text
    assert "0b5f8a4e" in text
    assert "1m 05s" in text
    assert "no person found" in text
    assert "Traceback" not in text


def test_the_view_says_since_when_the_control_plane_is_unreachable_and_keeps_the_last_picture() -> None:
    state = ViewState()
    state.update(snapshot())
    state.lost(NOW, "pegasus: connection refused")
    state.lost(NOW + timedelta(seconds=4), "pegasus: still refused")
    text = render_plain(state)
    assert (
        f"control plane unreachable since {NOW.astimezone().strftime('%H:%M:%S')}: pegasus: still refused"
        in text
    )
    assert "node1" in text
    state.update(snapshot())
    assert "unreachable" not in render_plain(state)


def test_rates_come_from_consecutive_snapshots_of_one_control_plane() -> None:
    state = ViewState()
    first = snapshot()
    state.update(first)
    later = Snapshot(
        first.taken_at + timedelta(seconds=2), first.control_plane, first.queues,
        (*first.finished[:2], FinishedJobs("pose", "pose", "succeeded", 103)), first.workers, first.failures,
    )  # fmt: skip
    state.update(later)
    assert state.rates["pose"] == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (0, "0s"), (59.9, "59s"), (61, "1m 01s"), (3600 * 25 + 120, "25h 02m")],
)
def test_durations(seconds: float | None, shown: str) -> None:
    assert duration(seconds) == shown


@pytest.mark.parametrize("value", ["0.4", "3601", "nan", "inf", "-2", "2s", "", "٣"])
def test_a_refresh_interval_out_of_range_is_refused_naming_the_flag(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        worker_main(["top", f"--interval={value}"])
    assert exit_.value.code == 2
    assert "--interval" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("run_seconds", "first_bound"),
    [(0.05, 0.1), (0.1, 0.1), (60.0, 60.0), (60.5, 300.0), (43200.0, 43200.0), (50000.0, None), (None, None)],
)
def test_a_run_time_counts_from_the_first_bound_at_or_above_it(
    run_seconds: float | None, first_bound: float | None
) -> None:
    # what width_bucket(-run_seconds, negated bounds) answers in the ledger's query: the bounds >= run_seconds
    run_bucket = (
        None if run_seconds is None else sum(1 for bound in RUN_SECONDS_BOUNDS if bound >= run_seconds)
    )
    histogram = _run_times(run_bucket, 2, 0 if run_seconds is None else 2, 2 * (run_seconds or 0.0))
    expected = tuple(
        2 if first_bound is not None and bound >= first_bound else 0 for bound in RUN_SECONDS_BOUNDS
    )
    assert histogram.buckets == expected
    assert histogram.count == (0 if run_seconds is None else 2)


def test_attempts_count_from_the_first_bound_at_or_above_them() -> None:
    assert _attempts(3, 4, 12).buckets == (0, 0, 4, 4, 4)
    assert _attempts(11, 1, 40).buckets == (0, 0, 0, 0, 0)  # capped above the last bound: +Inf only
    assert (_attempts(11, 1, 40).count, _attempts(11, 1, 40).total) == (1, 40.0)


def test_the_snapshots_queries_count_every_finished_status_the_ledger_has() -> None:
    """A new final status (cancelled, timed_out came with migration 3) must reach the metrics and the view."""
    assert snapshot_queries.FINISHED_STATUSES == ledger.FINISHED
    for status in ledger.FINISHED:
        assert f"'{status}'" in snapshot_queries._FINISHED
    for status in snapshot_queries.FAILED_STATUSES:
        assert f"'{status}'" in snapshot_queries._FAILURES
    assert set(snapshot_queries.FAILED_STATUSES) < set(ledger.FINISHED)
