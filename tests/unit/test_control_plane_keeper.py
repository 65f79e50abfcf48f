"""The keeper of `han-control-plane run --restart-crashed`: which supervisor exits end it, which restart it."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
from pathlib import Path

import pytest

from han_worker.cli import control_plane_main
from han_worker.control_plane.keeper import SupervisorKeeper, keep, supervisor_command
from han_worker.control_plane.layout import Layout, keeper_pid
from han_worker.control_plane.supervisor import EXIT_CHILD_DIED, EXIT_OK, EXIT_START_FAILED
from han_worker.keeper import RestartPolicy

FAST = RestartPolicy(max_restarts=3, window_seconds=60.0, backoff_seconds=(0.01,))

# A stand-in supervisor: each run appends a line to RUNS, then ends as the n-th entry of PLAN says
# (kill: SIGKILL itself, else that exit code).
STAND_IN = """
import os, signal, sys
runs, plan = sys.argv[1], sys.argv[2].split(",")
n = len(open(runs).read().splitlines()) + 1 if os.path.exists(runs) else 1
action = plan[min(n, len(plan)) - 1]
with open(runs, "a") as f:
    f.write(f"{os.getpid()}\\n")
if action == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(int(action))
"""


def keeper_of(tmp_path: Path, *plan: str) -> tuple[SupervisorKeeper, Path]:
    runs = tmp_path / "runs"
    return SupervisorKeeper([sys.executable, "-c", STAND_IN, str(runs), ",".join(plan)], FAST), runs


def runs_of(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


@pytest.mark.parametrize(
    ("returncode", "why"),
    [
        (EXIT_OK, "ended by itself"),
        (EXIT_START_FAILED, "could not start after its own retries"),
        (2, "refused its flags"),
        (EXIT_CHILD_DIED, "a service kept crashing"),
    ],
    ids=["stopped", "start given up", "bad input", "crash loop"],
)
def test_the_supervisors_own_verdicts_are_final(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, returncode: int, why: str
) -> None:
    caplog.set_level(logging.INFO)
    keeper, _runs = keeper_of(tmp_path)
    assert keeper.verdict(returncode) == returncode
    assert why in caplog.text
    assert not keeper.restarts


@pytest.mark.parametrize("returncode", [-signal.SIGKILL, -signal.SIGSEGV, -signal.SIGTERM, 4, 120])
def test_a_killed_supervisor_or_one_ending_unexplained_is_restarted(tmp_path: Path, returncode: int) -> None:
    """SIGTERM included: sent to the supervisor alone (not through its keeper) while it had no handler yet."""
    keeper, _runs = keeper_of(tmp_path)
    assert keeper.verdict(returncode) is None
    assert len(keeper.restarts) == 1


def test_a_supervisor_killed_twice_comes_back_until_it_gives_up_itself(tmp_path: Path) -> None:
    keeper, runs = keeper_of(tmp_path, "kill", "kill", str(EXIT_CHILD_DIED))
    assert keeper.run() == EXIT_CHILD_DIED
    assert runs_of(runs) == 3


def test_a_supervisor_that_keeps_being_killed_exhausts_the_budget(tmp_path: Path) -> None:
    keeper, runs = keeper_of(tmp_path, "kill")
    assert keeper.run() == EXIT_START_FAILED
    assert runs_of(runs) == FAST.max_restarts + 1


@pytest.mark.parametrize("flag", ["--restart-crashed", "--restart"])
def test_the_supervisor_runs_with_the_keepers_arguments_less_its_flag(flag: str) -> None:
    command = supervisor_command(["-v", "run", "--bind", "127.0.0.1", flag, "--state-dir=/x"])
    assert command == [
        sys.executable, "-m", "han_worker.control_plane", "-v", "run", "--bind", "127.0.0.1", "--state-dir=/x"
    ]  # fmt: skip


def test_one_keeper_per_state_directory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    layout = Layout(tmp_path / "state")
    layout.make_dirs()
    fd = os.open(layout.keeper_lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        assert keeper_pid(layout) == 4242
        assert keep(layout, ["run", "--bind", "127.0.0.1", "--restart-crashed"]) == EXIT_START_FAILED
    finally:
        os.close(fd)
    assert "another han-control-plane is running on this state directory" in caplog.text
    assert keeper_pid(layout) is None


def test_bad_flags_are_refused_once_by_the_keeper_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    code = control_plane_main(["run", "--state-dir", str(state), "--bind", "0.0.0.0", "--restart-crashed"])
    assert code == 2
    assert capsys.readouterr().err.count("--bind: 0.0.0.0 would listen on every interface") == 1
    assert not state.exists(), "a refusal touches no file"
