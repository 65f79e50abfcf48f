"""Retention without services: the age a purge takes, the journal chunk's split, the report's line, the
supervisor's retention loop surviving a control plane that cannot be reached, its flags and the role's
rendering of ``control_plane_retention_days``. The purge itself runs on real services in
tests/integration/test_purge.py."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from han_worker import client
from han_worker.cli import build_control_plane_parser
from han_worker.cli.control_plane import _config, _run_argv
from han_worker.control_plane.retention import RetentionLoop
from han_worker.store import retention
from han_worker.store.link import ConnectError, Link
from tests.unit.role_templates import evaluate, role_variables

ROLE = Path(__file__).resolve().parents[2] / "roles" / "control_plane"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("90m", timedelta(minutes=90)),
     ("1m", timedelta(minutes=1)), ("36500d", timedelta(days=36500)), ("007d", timedelta(days=7))],
)  # fmt: skip
def test_a_duration_is_a_whole_number_and_its_unit(text: str, expected: timedelta) -> None:
    assert retention.parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [("0d", "more than 0"), ("0m", "more than 0"), ("-1d", "not a duration"), ("30", "not a duration"),
     ("30s", "not a duration"), ("1.5d", "not a duration"), ("", "not a duration"), ("30 d", "not a duration"),
     ("٣d", "not a duration"), ("36501d", "at most 36500d"), ("999999999m", "at most 36500d"),
     ("9999999999d", "not a duration")],
)  # fmt: skip
def test_anything_else_is_refused_saying_why(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        retention.parse_duration(text)


@pytest.mark.parametrize(
    "value", ["0d", "soon", timedelta(0), timedelta(seconds=-1), timedelta(days=40000), 30]
)
def test_the_client_refuses_an_age_naming_older_than(value: object) -> None:
    with pytest.raises(client.RequestError, match="--older-than"):
        client.check_older_than(value)  # type: ignore[arg-type]


def test_the_client_takes_text_or_a_timedelta() -> None:
    assert client.check_older_than("12h") == client.check_older_than(timedelta(hours=12))
    assert {"purge", "format_purge", "check_older_than", "PurgeReport"} <= set(client.__all__)


def test_a_journal_chunk_keeps_the_keys_a_job_records_again() -> None:
    now = datetime.now(timezone.utc)
    entries = [("a", 1, now), ("b", 2, now), ("c", 3, now)]
    assert retention.split_chunk(entries, {"b", "z"}) == (["a", "c"], ["b"])
    assert retention.split_chunk(entries, set()) == (["a", "b", "c"], [])


def test_deleted_figures_add_up() -> None:
    total = retention.Deleted(2, 10, 0, 1) + retention.Deleted(1, 5, 1, 0)
    assert total == retention.Deleted(3, 15, 1, 1)


def test_the_report_line_says_what_went_and_what_an_interrupted_purge_left() -> None:
    cutoff = datetime(2026, 11, 6, 12, 0, tzinfo=timezone.utc)
    report = retention.PurgeReport(False, cutoff, {"succeeded": 3, "dead": 1}, 7, 1234, 1, 2, 0)
    assert retention.format_report(report) == (
        "purge deleted 4 job(s) finished before 2026-11-06 12:00:00 UTC (1 dead, 3 succeeded), 7 object(s) "
        "(1234 bytes), 1 batch(es); 2 of the objects were left by an interrupted purge"
    )
    planned = retention.PurgeReport(True, cutoff, failed=3)
    assert retention.format_report(planned).startswith("purge would delete 0 job(s)")
    assert "3 object(s) could not be deleted" in retention.format_report(planned)
    assert report.to_dict()["job_count"] == 4
    assert report.to_dict()["cutoff"] == "2026-11-06T12:00:00+00:00"


def test_the_retention_loop_logs_a_control_plane_it_cannot_reach_and_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def unreachable() -> Link:
        raise ConnectError("postgres 127.0.0.1:1 of pegasus: connection refused")

    loop = RetentionLoop(30, unreachable, interval=0.05)
    with caplog.at_level(logging.INFO, logger="han_worker.control_plane.retention"):
        assert loop.run_once() is None
        loop.start()
        try:
            for _tick in range(200):
                if caplog.text.count("cannot be reached") >= 3:
                    break
                loop._stopping.wait(0.02)
        finally:
            loop.stop()
    assert caplog.text.count("cannot be reached") >= 3  # every tick tried again
    assert "connection refused" in caplog.text
    assert loop.runs == 0


@pytest.mark.parametrize("days", [0, -1, 36501])
def test_the_retention_loop_needs_days_from_1(days: int) -> None:
    with pytest.raises(ValueError, match="retention days"):
        RetentionLoop(days, lambda: None, 1.0)  # type: ignore[arg-type, return-value]


def test_the_supervisor_flags_reach_its_configuration_and_its_background_run(tmp_path: Path) -> None:
    argv = ["run", "--bind", "127.0.0.1", "--state-dir", str(tmp_path / "cp")]
    args = build_control_plane_parser().parse_args(
        [*argv, "--retention-days", "30", "--retention-interval", "60"]
    )
    config = _config(args)
    assert (config.retention_days, config.retention_interval) == (30, 60.0)
    assert "--retention-days=30" in _run_argv(config, False)
    assert "--retention-interval=60.0" in _run_argv(config, False)
    default = _config(build_control_plane_parser().parse_args(argv))
    assert default.retention_days == 0
    assert not any(item.startswith("--retention") for item in _run_argv(default, False))


@pytest.mark.parametrize(
    ("days", "expected"), [(0, []), ("0", []), (30, ["--retention-days=30"]), ("7", ["--retention-days=7"])]
)
def test_the_role_renders_the_retention_for_either_control_plane(days: object, expected: list[str]) -> None:
    play = {"ansible_facts": {"user_dir": "/home/lab"}, "control_plane_retention_days": days}
    for source, where in (("pegasus", {"control_plane_bind_network": "10.1.0.0/16"}),
                          ("mac", {"control_plane_bind_address": "192.168.1.20"})):  # fmt: skip
        variables = role_variables(ROLE, play, {"control_plane_source": source, **where})
        rendered = evaluate(variables, "_control_plane_run_args")
        assert [item for item in rendered if item.startswith("--retention")] == expected
