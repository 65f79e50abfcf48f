"""``han-worker jobs | show | fetch``: their flags refused before any control plane is contacted, and the
tables and lines they print, from records built here (the commands against a real control plane are in
tests/integration/test_job_views.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from han_worker import client
from han_worker.cli import build_worker_parser
from han_worker.client import FetchedFile, JobDetail, RequestError, age, format_job, format_jobs
from han_worker.store.ledger import JobRecord
from tests.unit.test_jobs_cli import clean_env, run

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
JOB = "5b7c9c1e-8d1e-4c61-9a39-3f1f0e4b2a10"
# The CLI tests' clean environment (autouse there) and their way of running a command.
pytestmark = pytest.mark.usefixtures(clean_env.__name__)


def record(**changes: object) -> JobRecord:
    fields: dict[str, object] = {
        "id": JOB, "kind": "sleep", "queue": "noop", "status": "succeeded", "attempts": 2, "max_attempts": 3,
        "params": {"seconds": 1}, "inputs": {}, "result": {"slept": 1},
        "outputs": {"slept.txt": {"key": f"jobs/{JOB}/outputs/2/slept.txt", "sha256": "ab" * 32, "size": 2}},
        "error": None, "worker_id": "w-1", "host": "node1", "platform": "linux", "control_plane": "pegasus",
        "control_plane_epoch": 4, "created_at": NOW - timedelta(minutes=90), "started_at": NOW,
        "finished_at": NOW + timedelta(seconds=2), "heartbeat_at": NOW,
    }  # fmt: skip
    fields.update(changes)
    return JobRecord(**fields)  # type: ignore[arg-type]


def attempt(number: int, outcome: str | None, error: str | None = None) -> dict[str, object]:
    return {
        "attempt": number, "worker_id": f"w-{number}", "host": "node1", "platform": "linux",
        "control_plane": "mac" if number == 1 else "pegasus", "control_plane_epoch": number + 2,
        "started_at": NOW, "finished_at": None if outcome is None else NOW + timedelta(seconds=1.5),
        "outcome": outcome, "error": error,
    }  # fmt: skip


# -- flags refused before any connection -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["jobs", "show", "fetch"])
def test_help_explains_each_command(capsys: pytest.CaptureFixture[str], command: str):
    code, out, _err = run(capsys, command, "--help")
    assert code == 0
    assert "control plane selection" in out


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["jobs", "--state", "done"], "--state"),
        (["jobs", "--state", "Queued"], "--state"),
        (["jobs", "--limit", "0"], "--limit"),
        (["jobs", "--limit", "1001"], "--limit"),
        (["jobs", "--limit", "-5"], "--limit"),
        (["jobs", "--limit", "٣"], "--limit"),
        (["jobs", "--kind", "no-such-kind"], "--kind"),
        (["show", "not-a-uuid"], "JOB"),
        (["show", ""], "JOB"),
        (["fetch", "12345", "--output", "out"], "JOB"),
        (["fetch", JOB], "--output"),
        (["fetch", JOB, "--output", ""], "--output"),
    ],
)
def test_a_bad_value_exits_2_naming_it(capsys: pytest.CaptureFixture[str], argv: list[str], named: str):
    code, _out, err = run(capsys, *argv)
    assert code == 2, err
    assert named in err, err


def test_fetch_into_a_file_exits_2_naming_output_and_makes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    a_file = tmp_path / "results"
    a_file.write_text("not a directory")
    code, _out, err = run(capsys, "fetch", JOB, "--output", str(a_file))
    assert code == 2
    assert f"--output: {a_file} is not a directory" in err


def test_fetch_checks_nothing_locally_before_the_job_is_known(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    missing = tmp_path / "new" / "dir"
    code, _out, err = run(capsys, "fetch", JOB, "--output", str(missing), "--mode", "mac")
    assert code == 2  # no Mac address: selection refuses before anything is made
    assert not missing.parent.exists(), err


def test_several_states_are_taken():
    args = build_worker_parser().parse_args(["jobs", "--state", "dead", "--state", "failed"])
    assert args.states == ["dead", "failed"]
    assert args.limit == client.JOBS_LIMIT == 50


# -- the client's own checks -------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, -1, 1001, True, 2.5])
def test_the_client_refuses_a_limit_out_of_bounds(limit: object):
    with pytest.raises(RequestError, match="--limit"):
        client.check_limit(limit)  # type: ignore[arg-type]


def test_the_client_refuses_an_unknown_state():
    assert client.check_statuses(["queued", "dead"]) == ["queued", "dead"]
    with pytest.raises(RequestError, match="--state: 'finished' is not one of queued, running"):
        client.check_statuses(["finished"])


# -- what is printed ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0, "0s"), (59, "59s"), (60, "1m"), (3599, "59m"), (7200, "2h"), (90000, "1d")]
)
def test_age_is_given_in_its_largest_unit(seconds: int, shown: str):
    assert age(NOW - timedelta(seconds=seconds), NOW) == shown


def test_an_age_in_the_future_is_zero():
    assert age(NOW + timedelta(seconds=30), NOW) == "0s"


def test_the_jobs_table_has_one_aligned_row_per_job_and_errors_on_one_line():
    failed = record(
        id="0" * 8 + JOB[8:], status="dead", worker_id=None, error="Traceback\n  line 2\n" + "x" * 100
    )
    table = format_jobs([record(), failed], NOW).splitlines()
    assert table[0].split() == ["JOB", "KIND", "STATE", "ATTEMPTS", "AGE", "WORKER", "ERROR"]
    assert table[1].split() == [JOB, "sleep", "succeeded", "2/3", "1h", "w-1", "-"]
    assert table[2].split()[:6] == ["0" * 8 + JOB[8:], "sleep", "dead", "2/3", "1h", "-"]
    assert "Traceback line 2 xxx" in table[2]
    assert table[2].endswith("…")
    assert len({line.index("KIND") if "KIND" in line else line.index("sleep") for line in table}) == 1


def test_no_jobs_is_said():
    assert format_jobs([], NOW) == "no jobs"


def test_show_lists_each_attempt_with_where_it_ran_and_why_it_ended():
    detail = JobDetail(record(), [attempt(1, "crashed", "lease expired"), attempt(2, "succeeded")])
    text = format_job(detail)
    assert f"job {JOB}  kind sleep  queue noop  succeeded  attempts 2/3" in text
    assert "output slept.txt: 2 bytes, SHA-256 " + "ab" * 32 in text
    assert "#1 crashed  worker w-1 on node1 (linux)  control plane mac epoch 3" in text
    assert "error: lease expired" in text
    assert "#2 succeeded  worker w-2 on node1 (linux)  control plane pegasus epoch 4" in text
    assert "(1.5s)" in text


def test_a_running_attempt_is_shown_running():
    text = format_job(JobDetail(record(status="running", result=None, outputs=None), [attempt(1, None)]))
    assert "#1 running" in text
    assert "finished -" in text


def test_show_json_holds_the_record_and_its_attempts_as_text():
    detail = JobDetail(record(), [attempt(1, "succeeded")])
    decoded = json.loads(json.dumps(detail.to_dict()))
    assert decoded["id"] == JOB
    assert decoded["attempts"][0]["started_at"] == NOW.isoformat()
    assert decoded["attempts"][0]["control_plane_epoch"] == 3


def test_a_fetched_file_line_says_what_was_done(tmp_path: Path):
    kept = FetchedFile("a.json", tmp_path / "a.json", 12, "cd" * 32, "kept")
    assert (
        client.format_fetched(kept)
        == f"{tmp_path / 'a.json'}  12 bytes  kept (already there, SHA-256 matches)"
    )
    assert client.format_fetched(FetchedFile("a", tmp_path / "a", 1, "0", "downloaded")).endswith(
        "downloaded"
    )
    assert kept.to_dict()["path"] == str(tmp_path / "a.json")


def test_the_client_exports_its_api_each_documented():
    assert {"jobs", "show", "fetch", "submit", "submit_many", "wait", "connect", "status"} <= set(
        client.__all__
    )
    for name in client.__all__:
        assert hasattr(client, name), name
        value = getattr(client, name)
        if callable(value):
            assert value.__doc__, f"{name} has no docstring"


def test_show_names_the_batch_of_a_batch_job():
    batch = "6f1c3d0e-0000-5000-8000-000000000000"
    assert f"\n  batch {batch}\n" in format_job(JobDetail(record(batch_id=batch), []))
    assert "  batch " not in format_job(JobDetail(record(), []))
