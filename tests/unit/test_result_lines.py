"""The line a worker logs per finished attempt, and ``han-worker run --quiet``, which drops the successes."""

from __future__ import annotations

import logging

import pytest

from han_worker.cli import build_worker_parser
from han_worker.store.ledger import Claim, FinishReport
from han_worker.worker.attempt import AttemptResult, log_result

CLAIM = Claim("0b0e2a4e-6f1c-4a57-9d1e-3f1d2b8c9a10", 1, "noop", "noop", {}, {})
SUCCEEDED, CRASHED = AttemptResult("succeeded", {"ok": True}), AttemptResult("crashed", error="boom")


def lines(caplog: pytest.LogCaptureFixture, result: AttemptResult, report: FinishReport | None,
          successes: bool) -> list[tuple[int, str]]:  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="han_worker.worker.attempt"):
        log_result(CLAIM, result, report, successes=successes)
    return [(record.levelno, record.getMessage()) for record in caplog.records]


def test_a_success_is_one_info_line_unless_successes_are_not_wanted(caplog: pytest.LogCaptureFixture):
    recorded = FinishReport(True, "succeeded")
    assert lines(caplog, SUCCEEDED, recorded, True) == [
        (logging.INFO, f"job {CLAIM.job_id} (noop) attempt 1 succeeded")
    ]
    assert lines(caplog, SUCCEEDED, recorded, False) == []


def test_without_success_lines_everything_else_is_still_a_warning(caplog: pytest.LogCaptureFixture):
    crashed = lines(caplog, CRASHED, FinishReport(True, "queued"), False)
    spooled = lines(caplog, SUCCEEDED, None, False)
    superseded = lines(caplog, SUCCEEDED, FinishReport(False, None), False)
    assert crashed == [
        (logging.WARNING, f"job {CLAIM.job_id} (noop) attempt 1 crashed (job now queued): boom")
    ]
    assert [level for level, _message in spooled + superseded] == [logging.WARNING, logging.WARNING]
    assert "spooled until its control plane returns" in spooled[0][1]
    assert "a later attempt took over" in superseded[0][1]


def test_run_takes_quiet():
    parser = build_worker_parser()
    assert parser.parse_args(["run", "--quiet"]).quiet is True
    assert parser.parse_args(["run", "-q"]).quiet is True
    assert parser.parse_args(["run"]).quiet is False
