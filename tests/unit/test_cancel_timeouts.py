"""Cancel, timeouts and requeue without a control plane: flags and configuration refused where they enter
(exit 2 naming them), what a job asked to stop records, and the lines the commands print. Against a real
control plane and worker: tests/integration/test_cancel.py."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pytest

from han_worker import client
from han_worker.backends.base import JobContext, JobFailed
from han_worker.backends.builtin import SleepBackend
from han_worker.client import CancelResult, RequestError, format_cancel
from han_worker.config import WorkerConfigError, parse_worker_config
from han_worker.store.ledger import FINISHED, OUTCOMES, REQUEUEABLE, STATUSES, Claim
from han_worker.store.queues import Delivery
from han_worker.worker import attempt
from han_worker.worker.attempt import DrainClock, InFlight, _ended
from tests.unit.test_jobs_cli import clean_env, run

JOB = "5b7c9c1e-8d1e-4c61-9a39-3f1f0e4b2a10"
LOG = logging.getLogger("test.cancel")
pytestmark = pytest.mark.usefixtures(clean_env.__name__)


def inflight(timeout: tuple[float, str] | None = None) -> InFlight:
    claim = Claim(JOB, 1, "sleep", "noop", {}, {})
    return InFlight(Delivery("noop", "1-0", JOB), claim, link=None, timeout=timeout)  # type: ignore[arg-type]


# -- the ledger's vocabulary ------------------------------------------------------------------------------


def test_the_new_statuses_and_outcomes_are_the_ledgers():
    assert {"cancelled", "timed_out"} <= set(STATUSES) & set(OUTCOMES)
    assert set(FINISHED) == set(STATUSES) - {"queued", "running"}
    assert set(REQUEUEABLE) == set(FINISHED) - {"succeeded"}
    assert frozenset(FINISHED) == client.TERMINAL  # wait returns on a cancelled or timed-out job too


# -- submit --timeout, requeue --state, cancel JOB: refused before any connection ----------------------------


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "-inf", "1e400", "soon", "", "3000000", "١٢"])
def test_submit_refuses_a_timeout_that_is_not_positive_seconds(
    capsys: pytest.CaptureFixture[str], value: str
):
    code, _out, err = run(capsys, "submit", "--kind", "noop", f"--timeout={value}")
    assert code == 2
    assert "--timeout" in err


@pytest.mark.parametrize("value", [0, -2.5, math.nan, math.inf, 1e300, True, "60"])
def test_the_clients_submit_refuses_a_bad_timeout_naming_it(value: object):
    with pytest.raises(RequestError, match=r"^--timeout: "):
        client.check_timeout(value)  # type: ignore[arg-type]


def test_a_timeout_may_be_absent_or_any_positive_number_of_seconds():
    assert client.check_timeout(None) is None
    assert client.check_timeout(0.25) == 0.25
    assert client.check_timeout(600) == 600.0


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["requeue", JOB, "--state", "succeeded"], "--state"),
        (["requeue", JOB, "--state", "queued"], "--state"),
        (["requeue", "job-42"], "JOB: 'job-42' is not a job id"),
        (["cancel", "job-42"], "JOB: 'job-42' is not a job id"),
        (["cancel"], "JOB"),
        (["requeue"], "JOB"),
    ],
)
def test_cancel_and_requeue_refuse_bad_input_naming_it(
    capsys: pytest.CaptureFixture[str], argv: list[str], named: str
):
    code, _out, err = run(capsys, *argv)
    assert code == 2
    assert named in err


@pytest.mark.parametrize("states", [[], ["succeeded"], ["running"], ["Dead"]])
def test_the_clients_requeue_refuses_states_it_cannot_run_again(states: list[str]):
    with pytest.raises(RequestError, match=r"^--state: "):
        client.requeue(None, JOB, states)  # type: ignore[arg-type]  # refused before the link is used


@pytest.mark.parametrize("command", ["cancel", "requeue"])
def test_help_explains_each_command(capsys: pytest.CaptureFixture[str], command: str):
    code, out, _err = run(capsys, command, "--help")
    assert code == 0
    assert "control plane selection" in out


# -- job_timeouts in the worker configuration ---------------------------------------------------------------


def test_job_timeouts_are_read_per_kind():
    config = parse_worker_config({"job_timeouts": {"pose": 600, "sleep": 0.5}}, "w.json")
    assert config.job_timeouts == {"pose": 600.0, "sleep": 0.5}
    assert parse_worker_config({}, "w.json").job_timeouts == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "field 'job_timeouts' must be an object, not array"),
        ({"pose": 0}, "field 'job_timeouts.pose': 0.0 must be a number of seconds > 0"),
        ({"pose": -1}, "field 'job_timeouts.pose': -1 must be a finite number of seconds"),
        ({"pose": 1e99}, "field 'job_timeouts.pose': 1e+99 must be a finite number of seconds"),
        ({"pose": "600"}, "field 'job_timeouts.pose' must be a number of seconds, not str"),
        ({"pose": True}, "field 'job_timeouts.pose' must be a number of seconds, not bool"),
        ({"pose": None}, "field 'job_timeouts.pose' must be a number of seconds, not null"),
        ({" ": 5}, "field 'job_timeouts': kind ' ' must not be empty"),
        ({"po\x00se": 5}, "field 'job_timeouts': kind 'po\\x00se' holds a NUL"),
    ],
)
def test_job_timeouts_refuse_what_is_not_positive_seconds_naming_the_field(value: object, message: str):
    with pytest.raises(WorkerConfigError) as refused:
        parse_worker_config({"job_timeouts": value}, "w.json")
    assert str(refused.value).startswith(f"w.json: {message}")


# -- a job asked to stop ---------------------------------------------------------------------------------------


def test_a_job_times_out_only_past_its_limit_from_its_claim():
    job = inflight((2.0, "its --timeout"))
    assert not job.timed_out(job.started + 1.9)
    assert job.timed_out(job.started + 2.0)
    assert not inflight(None).timed_out(job.started + 1e6)


def test_a_job_is_asked_to_stop_once_and_abandoned_after_the_grace():
    job = inflight((2.0, "its --timeout"))
    assert not job.abandon_due(time.monotonic() + 1e6)  # never asked
    assert job.ask_to_stop("timed_out")
    assert not job.ask_to_stop("cancelled")  # the first reason stays
    assert job.stop_reason == "timed_out"
    assert job.stop_asked_at is not None
    assert not job.abandon_due(job.stop_asked_at + attempt.ABANDON_AFTER_SECONDS - 0.1)
    assert job.abandon_due(job.stop_asked_at + attempt.ABANDON_AFTER_SECONDS)
    with pytest.raises(ValueError, match="stop reason 'bored'"):
        inflight().ask_to_stop("bored")


def test_a_backend_that_stops_when_asked_records_why_it_was_asked():
    timed = inflight((2.5, "job_timeouts.sleep of the worker configuration"))
    timed.ask_to_stop("timed_out")
    ended = _ended(InterruptedError("asked to stop"), timed, DrainClock(30), LOG)
    assert (ended.outcome, ended.error) == (
        "timed_out", "timed out after 2.5 s (job_timeouts.sleep of the worker configuration)"
    )  # fmt: skip

    cancelled = inflight()
    cancelled.ask_to_stop("cancelled")
    ended = _ended(InterruptedError("asked to stop"), cancelled, DrainClock(30), LOG)
    assert (ended.outcome, ended.error) == ("cancelled", "cancelled while it ran")
    # a job that fails on its own input fails, whatever it was asked
    assert _ended(JobFailed("no person"), cancelled, DrainClock(30), LOG).outcome == "failed"
    # a cancel beats a drain: a cancelled job is not given back to be run again
    draining = DrainClock(0)
    draining.request()
    assert _ended(InterruptedError("stop"), cancelled, draining, LOG).outcome == "cancelled"
    assert _ended(InterruptedError("stop"), inflight(), draining, LOG).outcome == "released"


def test_sleep_wakes_when_asked_to_stop_unless_told_not_to(tmp_path: Path):
    asked = JobContext(JOB, "sleep", {"seconds": 30}, {}, tmp_path, LOG, should_stop=lambda: True)
    with pytest.raises(InterruptedError, match="asked to stop"):
        SleepBackend().run(asked)
    deaf = JobContext(JOB, "sleep", {"seconds": 0.2, "heed_stop": False}, {}, tmp_path, LOG, lambda: True)
    assert SleepBackend().run(deaf).summary == {"slept": 0.2}
    bad = JobContext(JOB, "sleep", {"heed_stop": "no"}, {}, tmp_path, LOG)
    with pytest.raises(JobFailed, match="param 'heed_stop' must be true or false"):
        SleepBackend().run(bad)


# -- what cancel prints ---------------------------------------------------------------------------------------


def test_cancel_says_what_it_did():
    assert format_cancel(CancelResult(JOB, "cancelled", "cancelled", None)) == (
        f"job {JOB} cancelled: it was waiting and will not run"
    )
    assert format_cancel(CancelResult(JOB, "requested", "running", "node1-42-ab")).startswith(
        f"job {JOB} is running on node1-42-ab: cancel requested; its worker stops it at its next heartbeat"
    )
    assert format_cancel(CancelResult(JOB, "finished", "dead", "node1-42-ab")) == (
        f"job {JOB} had already finished (dead): nothing changed"
    )
