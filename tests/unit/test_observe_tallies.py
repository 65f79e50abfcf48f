"""The control-plane switches and the scaler's pools in /metrics (han_worker/store/tallies.py and the
exposition), parsed back with prometheus_client's own parser. Their reading from and writing to a real ledger is
tested in tests/integration/test_observe.py and test_metrics_follow.py."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from rich.console import Console

from han_worker.observe.exposition import exposition
from han_worker.observe.view import ViewState, render, render_plain
from han_worker.scaling.policy import Demand, Failures, Limits, Supply, decide, pause_cause
from han_worker.store import ledger, tallies
from han_worker.store.tallies import PAUSE_CAUSES, SOURCES, PoolFigures, PoolTick, SwitchCount, record_switch
from tests.unit.test_observe import families, samples, snapshot

TICKED = datetime(2026, 12, 6, 11, 59, 55, tzinfo=timezone.utc)


def pool(paused_by: str | None = None, queues: tuple[str, ...] = ("pose",)) -> PoolFigures:
    tick = PoolTick("han-pose-elastic", queues, desired=3, pending=1, running=2, paused_by=paused_by,
                    reason="submit 1: 4 waiting", idle_gpus=1)  # fmt: skip
    return PoolFigures(tick, 1234.5, TICKED)


def switches() -> tuple[SwitchCount, ...]:
    return tuple(SwitchCount(old, new, {("pegasus", "mac"): 3, ("mac", "pegasus"): 2}.get((old, new), 0))
                 for old in SOURCES for new in SOURCES)  # fmt: skip


def test_switches_are_a_counter_by_source_left_and_source_joined_zeros_included() -> None:
    text = exposition(replace(snapshot(), switches=switches()))
    found = samples(text)
    name = "han_worker_control_plane_switches_total"
    assert found[(name, (("from_source", "pegasus"), ("to_source", "mac")))] == 3
    assert found[(name, (("from_source", "mac"), ("to_source", "pegasus")))] == 2
    assert found[(name, (("from_source", "pegasus"), ("to_source", "pegasus")))] == 0
    assert len([key for key in found if key[0] == name]) == 4  # bounded: two sources, four pairs
    assert families(text)["han_worker_control_plane_switches"] == "counter"


def test_a_pools_scaler_figures_are_gauges_per_pool_and_idle_gpu_seconds_a_counter() -> None:
    text = exposition(replace(snapshot(), pools=(pool(queues=("pose", "noop")),)))
    found, by_pool = samples(text), (("pool", "han-pose-elastic"),)
    assert found[("han_scaler_desired_worker_jobs", by_pool)] == 3
    assert found[("han_scaler_pending_worker_jobs", by_pool)] == 1
    assert found[("han_scaler_running_worker_jobs", by_pool)] == 2
    assert found[("han_scaler_idle_gpu_seconds_total", by_pool)] == 1234.5
    assert found[("han_scaler_last_tick_timestamp_seconds", by_pool)] == TICKED.timestamp()
    for cause in PAUSE_CAUSES:
        assert found[("han_scaler_paused", (*by_pool, ("reason", cause)))] == 0
    queues = {dict(labels)["queue"] for name, labels in found if name == "han_scaler_pool_queue_info"}
    assert queues == {"pose", "noop"}
    types = families(text)
    assert types["han_scaler_idle_gpu_seconds"] == "counter"
    assert types["han_scaler_desired_worker_jobs"] == types["han_scaler_paused"] == "gauge"
    assert "submit 1" not in text  # the decision's line is for people (han-worker status), not a label


@pytest.mark.parametrize("cause", PAUSE_CAUSES)
def test_a_paused_pool_says_why_with_a_bounded_reason(cause: str) -> None:
    found = samples(exposition(replace(snapshot(), pools=(pool(paused_by=cause),))))
    paused = {
        dict(labels)["reason"]: value
        for (name, labels), value in found.items()
        if name == "han_scaler_paused"
    }
    assert paused == {cause: 1, **{other: 0 for other in PAUSE_CAUSES if other != cause}}


def test_without_an_elastic_pool_no_scaler_series_is_exposed() -> None:
    assert not [name for name, _labels in samples(exposition(snapshot())) if name.startswith("han_scaler_")]


def test_the_pause_cause_matches_the_policys_pause() -> None:
    limits = Limits(max_workers=2, max_failed_submissions=2, max_failed_starts=3)
    for failures, cause in (
        (Failures(), None),
        (Failures(submissions=2, last_error="sbatch: error: invalid partition"), "failed_submissions"),
        (Failures(starts=3, last_error="ended"), "failed_starts"),
    ):
        decision = decide(Demand(4), Supply(), limits, failures, 0.0)
        assert pause_cause(failures, limits) == cause
        assert decision.paused is (cause is not None)


def test_a_switch_from_or_to_an_unknown_source_is_refused_before_the_ledger_is_asked() -> None:
    with pytest.raises(ValueError, match="from_source: 'lab' is not one of pegasus, mac"):
        record_switch(None, "lab", "mac", "w", "h")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="paused_by: 'tired'"):
        tallies.record_tick(None, replace(pool().tick, paused_by="tired"), 5.0)  # type: ignore[arg-type]


def test_the_ledgers_checks_allow_exactly_the_labels_the_metrics_take() -> None:
    [migration] = [statements for version, _name, statements in ledger.MIGRATIONS if version == 5]
    checks = dict(re.findall(r"(\w+) text(?: NOT NULL)? CHECK \(\w+ IN \(([^)]*)\)\)", migration))
    assert checks["from_source"] == checks["to_source"] == ", ".join(f"'{s}'" for s in SOURCES)
    assert checks["paused_by"] == ", ".join(f"'{c}'" for c in PAUSE_CAUSES)


def test_the_view_shows_each_pools_scaler_and_the_switches_when_there_are_some() -> None:
    state = ViewState()
    state.update(replace(snapshot(), pools=(pool(paused_by="failed_starts"),), switches=switches()))
    text = render_plain(state)
    [row] = [line.split() for line in text.splitlines() if line.strip().startswith("han-pose-elastic")]
    assert row[:7] == ["han-pose-elastic", "pose", "3", "1", "2", "paused", "(failed_starts)"]
    assert "5s ago" in " ".join(row)
    assert "switches to this control plane: pegasus -> mac 3, mac -> pegasus 2" in text
    console = Console(record=True, width=200)
    console.print(render(state, 2))
    assert "paused (failed_starts)" in console.export_text()
    quiet = ViewState()
    quiet.update(snapshot())
    assert "scalers" not in render_plain(quiet)
    assert "switches" not in render_plain(quiet)
