"""Isaac Lab teacher PPO training (job kind ``isaaclab_teacher_ppo``, queue ``gpu``, Windows only).

The backend runs the training command the worker is configured with, streams its output line by line
to the job's log and to ``train.log``, and uploads the checkpoints the run wrote. It runs no shell.

Configuration, from the worker's environment (the Windows worker role sets it):

- ``HAN_ISAACLAB_COMMAND`` (required): the command as a JSON list of strings (an argv, never a shell
  string), with absolute paths, e.g. ``["C:\\\\IsaacLab\\\\isaaclab.bat", "-p",
  "C:\\\\IsaacLab\\\\scripts\\\\reinforcement_learning\\\\rsl_rl\\\\train.py", "--headless"]``.
- ``HAN_ISAACLAB_CHECKPOINTS`` (optional): a JSON list of glob patterns, relative to the run directory,
  naming the files to upload; default ``["**/*.pt", "**/*.pth"]``.
- ``HAN_ISAACLAB_STOP_GRACE_S`` (optional): seconds between asking the run to stop and killing it;
  default 30.

Parameters of a job, each optional and validated (an unknown one fails the job), appended to the command
as Isaac Lab's train scripts spell them: ``task`` (``--task``, a registered task id such as
``Isaac-Velocity-Rough-Anymal-C-v0``), ``num_envs`` (``--num_envs``, 1 to 65,536), ``max_iterations``
(``--max_iterations``, 1 to 1,000,000), ``seed`` (``--seed``, 0 to 2**31 - 1).

The command runs in the job's run directory (``<workdir>/run``): Isaac Lab's train scripts write
``logs/<library>/<experiment>/<time>/`` under the current directory, so its checkpoints land there. It
gets the worker's environment without the worker's own ``HAN_*`` settings, plus ``HAN_JOB_ID`` and
``HAN_RUN_DIR``.

Outputs: ``train.log`` and every file matching the checkpoint patterns, named ``run__<path under the run
directory, with __ for />`` (an output name is one file name: it is also a file in the worker's spool).
Summary: ``exit_code``, ``checkpoints``, ``last_checkpoint``, ``log_lines``, ``elapsed_s`` and the
parameters given. A non-zero exit, or a run that leaves no checkpoint, fails the job with the
last lines of its log. When the worker drains, the run is asked to stop (CTRL_BREAK to its process group
on Windows, SIGTERM to its session elsewhere), killed with its whole process tree after the grace period,
and the attempt ends with :class:`InterruptedError`, so that the job runs again later.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from han_worker.backends.base import WINDOWS, JobContext, JobFailed, JobResult
from han_worker.fields import decode_json, shown

log = logging.getLogger(__name__)

COMMAND_VAR = "HAN_ISAACLAB_COMMAND"
CHECKPOINTS_VAR = "HAN_ISAACLAB_CHECKPOINTS"
STOP_GRACE_VAR = "HAN_ISAACLAB_STOP_GRACE_S"
DEFAULT_CHECKPOINTS = ("**/*.pt", "**/*.pth")
DEFAULT_STOP_GRACE_S = 30.0
LOG_OUTPUT = "train.log"
RUN_DIR = "run"

_POLL_S = 0.2
_KILL_WAIT_S = 30.0
_DRAIN_S = 10.0  # how long the log may still flow after the command exits (its children may hold the pipe)
_MAX_LINE = 64 * 1024  # longer lines are split rather than held in memory whole
_TAIL_LINES = 20
# Starts with a letter or digit, so that it cannot pass for an option; none of the characters cmd.exe
# interprets, because on Windows a .bat command line goes through cmd.exe even without a shell.
_TASK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


class ConfigError(ValueError):
    """The worker's Isaac Lab configuration is missing or wrong: a fault of the worker, not of the job."""


@dataclass(frozen=True)
class _Config:
    command: tuple[str, ...]
    checkpoints: tuple[str, ...]
    stop_grace_s: float


@dataclass(frozen=True)
class _IntParam:
    flag: str
    low: int
    high: int


_INT_PARAMS = {
    "num_envs": _IntParam("--num_envs", 1, 65_536),
    "max_iterations": _IntParam("--max_iterations", 1, 1_000_000),
    "seed": _IntParam("--seed", 0, 2**31 - 1),
}
KNOWN_PARAMS = ("task", *_INT_PARAMS)


@dataclass(frozen=True)
class IsaacLabTeacherPPO:
    """Trains a teacher policy with PPO in Isaac Lab, on the Windows GPU worker."""

    name: str = "isaaclab_teacher_ppo"
    queue: str = "gpu"
    platforms: frozenset[str] = field(default_factory=lambda: frozenset({WINDOWS}))

    def unavailable(self) -> str | None:
        try:
            config = load_config(os.environ)
        except ConfigError as exc:
            return str(exc)
        program = config.command[0]
        if shutil.which(program) is None and not Path(program).is_file():
            return f"{COMMAND_VAR}: the program {program!r} is not found"
        return None

    def run(self, context: JobContext) -> JobResult:
        args = training_args(context.params)  # first: a bad parameter fails before anything starts
        config = load_config(os.environ)
        run_dir = context.workdir / RUN_DIR
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path = context.workdir / LOG_OUTPUT
        started = time.monotonic()
        with log_path.open("w", encoding="utf-8", buffering=1) as log_file:  # line-buffered: tail-able
            exit_code, pump = _run_training(config, [*config.command, *args], run_dir, log_file, context)
        tail = "\n".join(pump.tail)
        if exit_code != 0:
            raise JobFailed(f"training command exited with code {exit_code}; last lines of its log:\n{tail}")
        checkpoints = _find_checkpoints(run_dir, config.checkpoints)
        if not checkpoints:
            raise JobFailed(
                f"training finished but left no checkpoint matching {list(config.checkpoints)} "
                f"under its run directory; last lines of its log:\n{tail}"
            )
        outputs = {LOG_OUTPUT: log_path, **checkpoints}
        last = max(checkpoints, key=lambda name: checkpoints[name].stat().st_mtime)
        summary: dict[str, object] = {
            "exit_code": exit_code,
            "checkpoints": len(checkpoints),
            "last_checkpoint": last,
            "log_lines": pump.lines,
            "elapsed_s": round(time.monotonic() - started, 1),
            **{name: context.params[name] for name in KNOWN_PARAMS if name in context.params},
        }
        return JobResult(summary=summary, outputs=outputs)


def load_config(environ: Mapping[str, str]) -> _Config:
    command = _json_strings(environ, COMMAND_VAR, required=True)
    patterns = _json_strings(environ, CHECKPOINTS_VAR, required=False) or DEFAULT_CHECKPOINTS
    raw_grace = environ.get(STOP_GRACE_VAR, "").strip() or str(DEFAULT_STOP_GRACE_S)
    try:
        grace = float(raw_grace)
    except ValueError:
        grace = -1.0
    if not 0 <= grace <= 3600:
        raise ConfigError(f"{STOP_GRACE_VAR} must be a number of seconds from 0 to 3600, not {raw_grace!r}")
    return _Config(command=command, checkpoints=patterns, stop_grace_s=grace)


def _json_strings(environ: Mapping[str, str], var: str, *, required: bool) -> tuple[str, ...]:
    raw = environ.get(var, "").strip()
    if not raw:
        if required:
            raise ConfigError(f"{var} is not set: it must give the Isaac Lab training command as a JSON list")
        return ()
    try:
        value = decode_json(raw, var, ConfigError)
    except ConfigError:
        value = None
    if not isinstance(value, list) or not value or not all(isinstance(item, str) and item for item in value):
        raise ConfigError(
            f'{var} must be a JSON list of non-empty strings, like ["a", "b"]; it is {shown(raw)}'
        )
    return tuple(value)


def training_args(params: Mapping[str, object]) -> list[str]:
    """The command-line options for the job's parameters, each checked."""
    unknown = sorted(set(params) - set(KNOWN_PARAMS))
    if unknown:
        raise JobFailed(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(KNOWN_PARAMS)}")
    args: list[str] = []
    if "task" in params:
        task = params["task"]
        if not isinstance(task, str) or not _TASK.fullmatch(task):
            raise JobFailed(
                f"param 'task' must be a task id of letters, digits and _ . : - (such as "
                f"Isaac-Velocity-Rough-Anymal-C-v0), not {task!r}"
            )
        args += ["--task", task]
    for name, spec in _INT_PARAMS.items():
        if name in params:
            value = params[name]
            if isinstance(value, bool) or not isinstance(value, int) or not spec.low <= value <= spec.high:
                raise JobFailed(
                    f"param {name!r} must be a whole number from {spec.low} to {spec.high}, not {value!r}"
                )
            args += [spec.flag, str(value)]
    return args


def _child_environment(context: JobContext, run_dir: Path) -> dict[str, str]:
    # The worker's own settings (HAN_*) may include secrets; the training has no use for them.
    env = {name: value for name, value in os.environ.items() if not name.upper().startswith("HAN_")}
    env.update(
        HAN_JOB_ID=context.job_id,
        HAN_RUN_DIR=str(run_dir),
        PYTHONUNBUFFERED="1",  # without it a Python trainer's output reaches the pipe in blocks, not lines
        PYTHONIOENCODING="utf-8",  # else Windows' console code page, which cannot encode every character
    )
    return env


class _LogPump(threading.Thread):
    """Copies the run's output, line by line, to the log file and the job's log; keeps the last lines."""

    def __init__(self, stream: IO[bytes], log_file: IO[str], job_log: logging.Logger) -> None:
        super().__init__(
            name="isaaclab-log", daemon=True
        )  # daemon: a pipe held by an orphan cannot block exit
        self._stream = stream
        self._log_file = log_file
        self._job_log = job_log
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self.lines = 0

    def run(self) -> None:
        for raw in iter(lambda: self._stream.readline(_MAX_LINE), b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if self._log_file.closed:  # the job ended while an orphan of the run still writes: not ours
                return
            self._log_file.write(line + "\n")
            self._job_log.info("%s", line)
            self.tail.append(line[:500])
            self.lines += 1


def _run_training(
    config: _Config, argv: list[str], run_dir: Path, log_file: IO[str], context: JobContext
) -> tuple[int, _LogPump]:
    context.log.info("starting %s in %s", argv, run_dir)
    try:
        process = subprocess.Popen(
            argv,
            cwd=run_dir,
            env=_child_environment(context, run_dir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one stream keeps stdout and stderr lines in the order they came
            creationflags=_new_process_group_flag(),
            start_new_session=sys.platform != "win32",  # a process group to signal, POSIX only
        )
    except OSError as exc:  # the program vanished or cannot run: the worker's setup, not the job
        raise ConfigError(f"{COMMAND_VAR}: cannot start {argv[0]!r}: {exc}") from exc
    assert process.stdout is not None  # stdout=PIPE
    pump = _LogPump(process.stdout, log_file, context.log)
    pump.start()
    try:
        exit_code = _supervise(process, context.should_stop, config.stop_grace_s)
    except BaseException:
        _stop_tree(process, 0.0)  # the worker is going down or the attempt was interrupted
        pump.join(_DRAIN_S)
        raise
    pump.join(_DRAIN_S)
    if pump.is_alive():  # something the command started outlived it and still holds the pipe
        log.warning(
            "job %s: the training command exited but a process it started is still running", context.job_id
        )
        _kill_tree(process)
        pump.join(_DRAIN_S)
    return exit_code, pump


def _supervise(process: subprocess.Popen[bytes], should_stop: Callable[[], bool], grace_s: float) -> int:
    while True:
        try:
            return process.wait(timeout=_POLL_S)
        except subprocess.TimeoutExpired:
            pass
        if should_stop():
            _stop_tree(process, grace_s)
            raise InterruptedError(
                f"the worker is draining; the training run was stopped (exit {process.returncode})"
            )


def _new_process_group_flag() -> int:
    if sys.platform == "win32":
        # Its own process group: CTRL_BREAK then reaches the run and not the worker sharing its console.
        return subprocess.CREATE_NEW_PROCESS_GROUP
    return 0


def _stop_tree(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """Asks the run to stop, waits up to ``grace_s``, then kills what is left of its process tree."""
    if process.poll() is None and grace_s > 0:
        _interrupt(process)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning(
                "training (pid %s) still running %.0f s after the stop request; killing it",
                process.pid,
                grace_s,
            )
    _kill_tree(process)
    try:
        process.wait(timeout=_KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        log.error("training (pid %s) survived a kill", process.pid)


def _interrupt(process: subprocess.Popen[bytes]) -> None:
    try:
        if sys.platform == "win32":
            # Needs the console the worker shares with the run; without one this fails and the kill follows.
            process.send_signal(signal.CTRL_BREAK_EVENT)
        else:
            os.killpg(process.pid, signal.SIGTERM)
    except OSError as exc:
        log.warning("cannot ask training (pid %s) to stop: %s", process.pid, exc)


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    if sys.platform == "win32":
        # isaaclab.bat runs Isaac Sim's python.exe as a child of cmd.exe: killing cmd.exe alone would
        # leave the training holding the GPU. taskkill /T takes the tree, from the absolute system path.
        taskkill = Path(os.environ.get("SYSTEMROOT", r"C:\Windows"), "System32", "taskkill.exe")
        try:
            subprocess.run(
                [str(taskkill), "/T", "/F", "/PID", str(process.pid)],
                capture_output=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("taskkill of training (pid %s) failed: %s", process.pid, exc)
        if process.poll() is None:
            process.kill()
    else:
        with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
            os.killpg(process.pid, signal.SIGKILL)


def output_name(relative: Path) -> str:
    """``logs/rsl_rl/x/model_2.pt`` -> ``run__logs__rsl_rl__x__model_2.pt``: a plain file name, as artifacts
    must be, that still says where the file was."""
    return "__".join((RUN_DIR, *relative.parts))


def _find_checkpoints(run_dir: Path, patterns: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pattern in patterns:
        for path in sorted(run_dir.glob(pattern)):
            if path.is_file():
                found[output_name(path.relative_to(run_dir))] = path
    return found
