"""The keeper of `han-worker run --restart-crashed`: real child processes, killed and crashing for real."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from han_worker.cli import worker_main
from han_worker.worker.keeper import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    RestartPolicy,
    WorkerKeeper,
    describe_exit,
    worker_command,
)

FAST = RestartPolicy(max_restarts=3, window_seconds=60.0, backoff_seconds=(0.01,))

# A stand-in worker: each run appends a line to RUNS, then behaves as the n-th entry of PLAN says
# (kill: SIGKILL itself, crash: exit 1, usage: exit 2, ok: exit 0, serve: drain on SIGTERM and exit 0, starting:
# no SIGTERM handler yet). The handler is in place before the run is written down, so a test that waits for the
# run and then stops the keeper knows which of the two it meets.
STAND_IN = """
import os, signal, sys, time
runs, plan = sys.argv[1], sys.argv[2].split(",")
n = len(open(runs).read().splitlines()) + 1 if os.path.exists(runs) else 1
action = plan[min(n, len(plan)) - 1]
if action == "serve":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
with open(runs, "a") as f:
    f.write(f"{os.getpid()}\\n")
if action == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if action in ("serve", "starting"):
    while True:
        time.sleep(0.05)
sys.exit({"crash": 1, "usage": 2, "ok": 0}[action])
"""


def stand_in(tmp_path: Path, *plan: str) -> tuple[list[str], Path]:
    runs = tmp_path / "runs"
    return [sys.executable, "-c", STAND_IN, str(runs), ",".join(plan)], runs


def runs_of(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def test_a_killed_worker_is_started_again_and_its_clean_exit_ends_the_keeper(tmp_path: Path) -> None:
    command, runs = stand_in(tmp_path, "kill", "crash", "ok")
    assert WorkerKeeper(command, FAST).run() == EXIT_OK
    assert runs_of(runs) == 3


def test_exit_2_is_not_restarted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    command, runs = stand_in(tmp_path, "usage", "ok")
    assert WorkerKeeper(command, FAST).run() == EXIT_USAGE
    assert runs_of(runs) == 1
    assert "not restarting it" in caplog.text


def test_a_worker_that_keeps_dying_exhausts_the_budget(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    command, runs = stand_in(tmp_path, "kill")
    assert WorkerKeeper(command, FAST).run() == EXIT_FAILED
    assert runs_of(runs) == FAST.max_restarts + 1
    assert "killed by SIGKILL) after 3 restarts within 60s; giving up" in caplog.text


def test_restarts_older_than_the_window_no_longer_count(tmp_path: Path) -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 100.0  # each death comes 100 s after the previous one
        return now[0]

    command, runs = stand_in(tmp_path, "crash", "crash", "crash", "crash", "crash", "ok")
    policy = RestartPolicy(max_restarts=2, window_seconds=150.0, backoff_seconds=(0.01,))
    assert WorkerKeeper(command, policy, clock=clock).run() == EXIT_OK
    assert runs_of(runs) == 6


@pytest.mark.parametrize(
    "behaviour",
    ["serve", "starting"],
    ids=["the worker drains on SIGTERM", "the worker is stopped before its handler is in place"],
)
def test_a_stop_is_passed_on_and_the_worker_is_not_started_again(tmp_path: Path, behaviour: str) -> None:
    command, runs = stand_in(tmp_path, behaviour)
    keeper = WorkerKeeper(command, FAST)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(keeper.run()))
    thread.start()
    deadline = time.monotonic() + 10
    while runs_of(runs) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    keeper.request_stop(signal.SIGTERM)
    thread.join(10)
    assert result == [EXIT_OK]
    assert runs_of(runs) == 1


def test_a_stop_during_the_backoff_ends_the_keeper(tmp_path: Path) -> None:
    command, runs = stand_in(tmp_path, "crash", "ok")
    keeper = WorkerKeeper(command, RestartPolicy(backoff_seconds=(30.0,)))
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(keeper.run()))
    thread.start()
    deadline = time.monotonic() + 10
    while not keeper.restarts and time.monotonic() < deadline:
        time.sleep(0.02)
    keeper.request_stop(signal.SIGTERM)
    thread.join(10)
    assert result == [EXIT_OK]
    assert runs_of(runs) == 1


@pytest.mark.parametrize(
    ("returncode", "text"), [(-9, "killed by SIGKILL"), (1, "exit code 1"), (-200, "killed by signal 200")]
)
def test_an_exit_is_described_as_a_person_reads_it(returncode: int, text: str) -> None:
    assert describe_exit(returncode) == text


@pytest.mark.parametrize("flag", ["--restart-crashed", "--restart"])
def test_the_worker_runs_with_the_keepers_arguments_less_its_flag(flag: str) -> None:
    command = worker_command(["-v", "run", "--config=/x/worker.json", flag, "--quiet"])
    assert command == [sys.executable, "-m", "han_worker", "-v", "run", "--config=/x/worker.json", "--quiet"]


def test_the_cli_keeper_does_not_restart_a_worker_that_refuses_its_config(tmp_path: Path) -> None:
    config = tmp_path / "worker.json"
    config.write_text('{"mode": "pegasus", "queues": ["pose"], "no_such_key": 1}\n')
    config.chmod(0o600)
    result = subprocess.run(
        [sys.executable, "-m", "han_worker", "run", f"--config={config}", "--restart-crashed"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.count("no_such_key") == 1, result.stderr
    assert "not restarting it" in result.stderr


def test_run_help_explains_the_keeper(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        worker_main(["run", "--help"])
    assert "--restart-crashed" in capsys.readouterr().out
