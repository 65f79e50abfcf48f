"""The Isaac Lab backend, run on Linux against a stand-in for the training command.

Isaac Lab needs Windows and an NVIDIA GPU, so these tests call the backend's ``run()`` directly with a
fake trainer: a small Python script with the flags of Isaac Lab's train scripts that prints like one
and writes checkpoint files where rsl_rl does. What they show is the backend's own behaviour (argv and
parameters, log streaming, checkpoints, exit codes, stopping a process tree) on the POSIX path; the
Windows branch of stopping is only checked for the calls it makes (last test), not run.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from han_worker.backends import UnsupportedQueue, backends_for_queues, isaaclab
from han_worker.backends.base import JobContext, JobFailed, JobResult
from han_worker.backends.isaaclab import IsaacLabTeacherPPO
from han_worker.store.artifacts import check_name

FAKE_TRAINER = '''\
"""Stand-in for Isaac Lab's train.py (rsl_rl): same flags, prints like it, writes checkpoints like it."""
import argparse, os, pathlib, signal, subprocess, sys, time

parser = argparse.ArgumentParser()
parser.add_argument("--task", default="Fake-Task-v0")
parser.add_argument("--num_envs", type=int, default=16)
parser.add_argument("--max_iterations", type=int, default=3)
parser.add_argument("--seed", type=int, default=42)
parser.add_argument("--headless", action="store_true")
# Only the stand-in has these: how the tests make it fail, hang or hide from a polite stop.
parser.add_argument("--exit-code", type=int, default=0)
parser.add_argument("--seconds-per-iteration", type=float, default=0.0)
parser.add_argument("--ignore-sigterm", action="store_true")
parser.add_argument("--child-pid-file")
parser.add_argument("--no-checkpoints", action="store_true")
args = parser.parse_args()

if args.ignore_sigterm:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if args.child_pid_file:  # a child of its own, as isaaclab.bat starts Isaac Sim's python
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    pathlib.Path(args.child_pid_file).write_text(str(child.pid))
print(f"[INFO] task={args.task} num_envs={args.num_envs} seed={args.seed} headless={args.headless}")
print(f"[INFO] cwd={os.getcwd()} job={os.environ.get('HAN_JOB_ID')} run_dir={os.environ.get('HAN_RUN_DIR')}")
print(f"[INFO] worker secret visible: {os.environ.get('HAN_S3_SECRET_KEY')}")
print("[Warning] this line goes to stderr", file=sys.stderr)
run = pathlib.Path("logs", "rsl_rl", args.task, "2025-01-01_00-00-00")
run.mkdir(parents=True)
for iteration in range(args.max_iterations):
    print(f"Learning iteration {iteration}/{args.max_iterations}")  # no flush: PYTHONUNBUFFERED must do it
    if not args.no_checkpoints:
        (run / f"model_{iteration}.pt").write_bytes(b"fake checkpoint %d" % iteration)
    time.sleep(args.seconds_per_iteration)
(run / "params").mkdir()
(run / "params" / "env.yaml").write_text("num_envs: %d\\n" % args.num_envs)
print("Training done")
sys.exit(args.exit_code)
'''

BACKEND = IsaacLabTeacherPPO()


@pytest.fixture
def trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Configures the worker's environment to run the stand-in trainer, with extra argv if given."""
    script = tmp_path / "fake_isaaclab_train.py"
    script.write_text(FAKE_TRAINER)

    def configure(*extra: str, checkpoints: list[str] | None = None, grace_s: float | None = None) -> None:
        monkeypatch.setenv(
            isaaclab.COMMAND_VAR, json.dumps([sys.executable, str(script), "--headless", *extra])
        )
        if checkpoints is not None:
            monkeypatch.setenv(isaaclab.CHECKPOINTS_VAR, json.dumps(checkpoints))
        if grace_s is not None:
            monkeypatch.setenv(isaaclab.STOP_GRACE_VAR, str(grace_s))

    monkeypatch.delenv(isaaclab.CHECKPOINTS_VAR, raising=False)
    monkeypatch.delenv(isaaclab.STOP_GRACE_VAR, raising=False)
    monkeypatch.setenv("HAN_S3_SECRET_KEY", "not-for-the-trainer")
    configure()
    return configure


class Records(logging.Handler):
    """The lines the backend sent to the job's log, as they came."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run(
    tmp_path: Path,
    params: dict[str, object],
    should_stop: Callable[[], bool] = lambda: False,
    records: Records | None = None,
) -> tuple[JobResult, Records]:
    records = records or Records()
    job_log = logging.getLogger(f"test.isaaclab.{tmp_path.name}")
    job_log.addHandler(records)
    job_log.setLevel(logging.INFO)
    context = JobContext(
        job_id="job-7",
        kind="isaaclab_teacher_ppo",
        params=params,
        inputs={},
        scratch=tmp_path / "work",
        log=job_log,
        should_stop=should_stop,
    )
    try:
        return BACKEND.run(context), records
    finally:
        job_log.removeHandler(records)


def ends_soon(pid: int, timeout: float = 10.0) -> bool:
    """Whether the process is gone or a zombie within ``timeout`` (PID 1 here does not reap orphans).

    A SIGKILL is delivered asynchronously: a process of the killed group may live a moment longer.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in {"Z", "X"}:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# --- the platform ---------------------------------------------------------------------------------------


def test_a_linux_worker_refuses_the_gpu_queue_as_windows_only() -> None:
    with pytest.raises(
        UnsupportedQueue, match="isaaclab_teacher_ppo, which is Windows-only; this worker runs on linux"
    ):
        backends_for_queues(["gpu"], "linux")


def test_a_windows_worker_serves_the_gpu_queue() -> None:
    served = backends_for_queues(["gpu"], "windows")
    assert [backend.name for backend in served["gpu"]] == ["isaaclab_teacher_ppo"]
    assert served["gpu"][0].platforms == frozenset({"windows"})


# --- a run ----------------------------------------------------------------------------------------------


def test_a_run_streams_its_log_and_uploads_its_checkpoints(
    tmp_path: Path, trainer: Callable[..., None]
) -> None:
    result, records = run(
        tmp_path, {"task": "Isaac-Velocity-Rough-Anymal-C-v0", "num_envs": 64, "max_iterations": 3}
    )

    prefix = "run__logs__rsl_rl__Isaac-Velocity-Rough-Anymal-C-v0__2025-01-01_00-00-00"
    assert sorted(result.outputs) == [f"{prefix}__model_{i}.pt" for i in range(3)] + ["train.log"]
    assert result.outputs[f"{prefix}__model_2.pt"].read_bytes() == b"fake checkpoint 2"
    for name in result.outputs:  # every output passes the worker's own check of artifact names
        assert check_name(name, "output name") == name
    log_text = result.outputs["train.log"].read_text(encoding="utf-8")
    assert "[INFO] task=Isaac-Velocity-Rough-Anymal-C-v0 num_envs=64 seed=42 headless=True" in log_text
    assert "[Warning] this line goes to stderr" in log_text
    assert "Learning iteration 2/3" in log_text
    # The worker's secrets stay with the worker; the job's identity and run directory are given.
    assert "worker secret visible: None" in log_text
    assert f"job=job-7 run_dir={tmp_path / 'work' / 'run'}" in log_text
    assert f"cwd={tmp_path / 'work' / 'run'}" in log_text
    # Every line of the file went to the job's log too, in order.
    streamed = [line for line in records.lines if not line.startswith("starting ")]
    assert streamed == log_text.splitlines()
    assert result.summary["exit_code"] == 0
    assert result.summary["checkpoints"] == 3
    assert result.summary["last_checkpoint"] == f"{prefix}__model_2.pt"
    assert result.summary["log_lines"] == len(streamed)
    assert result.summary["task"] == "Isaac-Velocity-Rough-Anymal-C-v0"
    assert result.summary["num_envs"] == 64


def test_the_checkpoint_patterns_are_configurable(tmp_path: Path, trainer: Callable[..., None]) -> None:
    trainer(checkpoints=["**/params/*.yaml"])
    result, _log = run(tmp_path, {"num_envs": 8})
    assert sorted(result.outputs) == [
        "run__logs__rsl_rl__Fake-Task-v0__2025-01-01_00-00-00__params__env.yaml",
        "train.log",
    ]


def test_a_non_zero_exit_fails_the_job_with_the_last_lines(
    tmp_path: Path, trainer: Callable[..., None]
) -> None:
    trainer("--exit-code", "3")
    with pytest.raises(
        JobFailed, match=r"exited with code 3; last lines of its log:\n(.|\n)*Training done"
    ) as caught:
        run(tmp_path, {"max_iterations": 40})
    lines = str(caught.value).splitlines()
    assert len(lines) == 1 + isaaclab._TAIL_LINES
    assert lines[-2] == "Learning iteration 39/40"


def test_a_run_without_checkpoints_fails_the_job(tmp_path: Path, trainer: Callable[..., None]) -> None:
    trainer("--no-checkpoints")
    with pytest.raises(JobFailed, match=r"left no checkpoint matching \['\*\*/\*\.pt', '\*\*/\*\.pth'\]"):
        run(tmp_path, {})


# --- stopping ----------------------------------------------------------------------------------------------


def test_a_draining_worker_stops_the_run_and_its_children(
    tmp_path: Path, trainer: Callable[..., None]
) -> None:
    child_pid_file = tmp_path / "child.pid"
    trainer("--seconds-per-iteration", "30", "--child-pid-file", str(child_pid_file))
    records = Records()

    def should_stop() -> bool:  # once the first iteration has been streamed: the log flows while it runs
        return any(line.startswith("Learning iteration 0/") for line in records.lines)

    started = time.monotonic()
    with pytest.raises(InterruptedError, match="the worker is draining"):
        run(tmp_path, {"max_iterations": 100}, should_stop, records)
    assert time.monotonic() - started < 20
    assert ends_soon(int(child_pid_file.read_text()))


def test_a_run_that_ignores_the_stop_request_is_killed_after_the_grace_period(
    tmp_path: Path, trainer: Callable[..., None]
) -> None:
    child_pid_file = tmp_path / "child.pid"
    trainer(
        "--seconds-per-iteration",
        "30",
        "--ignore-sigterm",
        "--child-pid-file",
        str(child_pid_file),
        grace_s=1,
    )
    records = Records()
    started = time.monotonic()
    with pytest.raises(InterruptedError, match=r"the training run was stopped \(exit -9\)"):
        run(
            tmp_path,
            {"max_iterations": 100},
            lambda: any("Learning" in line for line in records.lines),
            records,
        )
    assert 1 <= time.monotonic() - started < 20
    assert ends_soon(int(child_pid_file.read_text()))


# --- configuration and parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"num_env": 4}, r"unknown parameter\(s\) num_env; known: task, num_envs, max_iterations, seed"),
        ({"num_envs": 0}, "'num_envs' must be a whole number from 1 to 65536, not 0"),
        ({"num_envs": True}, "'num_envs' must be a whole number from 1 to 65536, not True"),
        ({"max_iterations": "10"}, "'max_iterations' must be a whole number from 1 to 1000000, not '10'"),
        ({"seed": -1}, "'seed' must be a whole number from 0 to 2147483647, not -1"),
        ({"task": "--headless"}, "param 'task' must be a task id"),
        ({"task": "Isaac-Cartpole-v0 & calc.exe"}, "param 'task' must be a task id"),
        ({"task": 7}, "param 'task' must be a task id"),
    ],
)
def test_bad_parameters_fail_before_anything_runs(
    tmp_path: Path, trainer: Callable[..., None], params: dict[str, object], message: str
) -> None:
    with pytest.raises(JobFailed, match=message):
        run(tmp_path, params)
    assert not (tmp_path / "work" / "run").exists()


def test_parameters_become_the_train_scripts_options() -> None:
    params = {"task": "Isaac-Cartpole-v0", "seed": 0, "max_iterations": 5, "num_envs": 2}
    assert isaaclab.training_args(params) == [
        "--task", "Isaac-Cartpole-v0", "--num_envs", "2", "--max_iterations", "5", "--seed", "0",
    ]  # fmt: skip


def test_a_configured_worker_is_available(trainer: Callable[..., None]) -> None:
    assert BACKEND.unavailable() is None


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (None, "HAN_ISAACLAB_COMMAND is not set: it must give the Isaac Lab training command as a JSON list"),
        (
            "isaaclab.bat -p train.py --headless",
            "HAN_ISAACLAB_COMMAND must be a JSON list of non-empty strings",
        ),
        ('"isaaclab.bat"', "HAN_ISAACLAB_COMMAND must be a JSON list of non-empty strings"),
        ("[]", "HAN_ISAACLAB_COMMAND must be a JSON list of non-empty strings"),
        (
            '["/nonexistent/isaaclab.sh", "-p"]',
            "HAN_ISAACLAB_COMMAND: the program '/nonexistent/isaaclab.sh' is not found",
        ),
    ],
)
def test_a_misconfigured_worker_says_why(
    monkeypatch: pytest.MonkeyPatch, command: str | None, message: str
) -> None:
    if command is None:
        monkeypatch.delenv(isaaclab.COMMAND_VAR, raising=False)
    else:
        monkeypatch.setenv(isaaclab.COMMAND_VAR, command)
    reason = BACKEND.unavailable()
    assert reason is not None
    assert message in reason


@pytest.mark.parametrize("grace", ["soon", "-1", "7200"])
def test_a_bad_stop_grace_is_refused(
    trainer: Callable[..., None], monkeypatch: pytest.MonkeyPatch, grace: str
) -> None:
    monkeypatch.setenv(isaaclab.STOP_GRACE_VAR, grace)
    expected = f"HAN_ISAACLAB_STOP_GRACE_S must be a number of seconds from 0 to 3600, not {grace!r}"
    assert BACKEND.unavailable() == expected


# --- the Windows branch, simulated ---------------------------------------------------------------------------


class FakeWindowsProcess:
    """Records what the stop sequence does to a process that never exits by itself."""

    pid = 4242
    returncode: int | None = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.calls.append(("send_signal", sig))

    def wait(self, timeout: float) -> int:
        if self.returncode is None:
            raise subprocess.TimeoutExpired("training", timeout)
        return self.returncode

    def kill(self) -> None:
        self.calls.append(("kill", None))
        self.returncode = 1


def test_the_windows_stop_sequence_is_ctrl_break_then_taskkill_of_the_tree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only the calls are checked here: no Windows host can run them.
    ctrl_break = 1
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(signal, "CTRL_BREAK_EVENT", ctrl_break, raising=False)
    monkeypatch.setattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200, raising=False)
    monkeypatch.setenv("SYSTEMROOT", r"C:\Windows")
    process = FakeWindowsProcess()

    def fake_run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        process.calls.append(("run", argv))
        process.returncode = 1  # taskkill /F ends it
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(isaaclab.subprocess, "run", fake_run)

    assert isaaclab._new_process_group_flag() == 0x200
    isaaclab._stop_tree(process, 0.01)  # type: ignore[arg-type]

    taskkill = str(Path(r"C:\Windows", "System32", "taskkill.exe"))
    assert process.calls == [("send_signal", ctrl_break), ("run", [taskkill, "/T", "/F", "/PID", "4242"])]
