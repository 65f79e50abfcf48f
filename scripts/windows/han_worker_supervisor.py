"""Keep han-worker running on the Windows GPU workstation: restart it, rotate its log, drain it on request.

Both ways of starting the Windows worker run this file with the same settings, so they run the same worker
with the same configuration: the scheduled task that roles/windows_worker registers, and
run_gpu_worker.ps1 (the runbook's manual path)::

    python.exe han_worker_supervisor.py --settings C:\\ProgramData\\han-worker\\config\\supervisor.json

The settings file (JSON, rendered by the role; no secret in it, only paths)::

    {"worker_argv": ["...\\Scripts\\han-worker.exe", "run", "--config", "...\\worker.json"],
     "environment": {"HAN_ISAACLAB_COMMAND": "[...]"},   # added to the worker's environment
     "log_file": "...\\logs\\worker.log", "log_max_bytes": 10485760, "log_backups": 5,
     "stop_file": "...\\run\\stop", "pid_file": "...\\run\\supervisor.pid",
     "stop_timeout_seconds": 120, "restart_delay_seconds": 5, "restart_delay_max_seconds": 300}

- The worker's output (stdout and stderr) goes to ``log_file``, rotated at ``log_max_bytes`` into
  ``worker.log.1`` ... ``worker.log.N`` (logging's RotatingFileHandler): nothing is truncated.
- When the worker exits on its own it is started again after a delay that doubles up to the maximum
  (reset after ten quiet minutes). Task Scheduler's own restart only covers a task that failed to start.
- Drain: when ``stop_file`` appears (the role's ``state=stopped`` writes it), or this process gets Ctrl-C,
  Ctrl-Break or SIGTERM, the worker is asked to drain (CTRL_BREAK_EVENT to its process group on Windows,
  SIGTERM elsewhere) and killed after ``stop_timeout_seconds``; then this process exits 0.
- One supervisor per installation: a second one exits 3 at once, naming the first one's pid.

Standard library only: it runs with the worker's venv Python before anything else is known to work.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

EXIT_OK, EXIT_SETTINGS, EXIT_ALREADY_RUNNING = 0, 2, 3
QUIET_RUN_RESETS_DELAY_S = 600.0
_POLL_S = 0.5
_LOCK_OFFSET = 1 << 20
WINDOWS = os.name == "nt"


class SettingsError(ValueError):
    """The settings file cannot be used; the message names the file and the field."""


class AlreadyRunning(RuntimeError):
    """Another supervisor holds this installation's pid file."""


@dataclass(frozen=True)
class Settings:
    worker_argv: tuple[str, ...]
    environment: Mapping[str, str]
    log_file: Path
    log_max_bytes: int
    log_backups: int
    stop_file: Path
    pid_file: Path
    stop_timeout_seconds: float
    restart_delay_seconds: float
    restart_delay_max_seconds: float


class _Fields:
    """Typed access to the decoded settings; every error names the file and the field."""

    def __init__(self, data: object, origin: Path) -> None:
        if not isinstance(data, dict):
            raise SettingsError(f"{origin}: must hold a JSON object")
        self.data, self.origin = data, origin

    def fail(self, name: str, what: str) -> SettingsError:
        return SettingsError(f"{self.origin}: field {name!r} must be {what}")

    def path(self, name: str) -> Path:
        value = self.data.get(name)
        if not isinstance(value, str) or not value:
            raise self.fail(name, "a path")
        return Path(value)

    def number(self, name: str, minimum: float) -> float:
        value = self.data.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise self.fail(name, f"a number >= {minimum:g}")
        return float(value)

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.data.get(name)
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(item, str) and item for item in value)
        ):
            raise self.fail(name, "a non-empty list of non-empty strings")
        return tuple(value)

    def environment(self, name: str) -> dict[str, str]:
        value = self.data.get(name, {})
        if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
            raise self.fail(name, "an object of strings")
        return dict(value)


def load_settings(path: Path) -> Settings:
    try:
        fields = _Fields(json.loads(path.read_text(encoding="utf-8")), path)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{path}: cannot be read as JSON: {exc}") from exc
    return Settings(
        worker_argv=fields.strings("worker_argv"),
        environment=fields.environment("environment"),
        log_file=fields.path("log_file"),
        log_max_bytes=int(fields.number("log_max_bytes", 1024)),
        log_backups=int(fields.number("log_backups", 1)),
        stop_file=fields.path("stop_file"),
        pid_file=fields.path("pid_file"),
        stop_timeout_seconds=fields.number("stop_timeout_seconds", 0),
        restart_delay_seconds=fields.number("restart_delay_seconds", 0.1),
        restart_delay_max_seconds=fields.number("restart_delay_max_seconds", 0.1),
    )


def rotating_log(settings: Settings, *, console: bool = False) -> logging.Logger:
    settings.log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        settings.log_file, maxBytes=settings.log_max_bytes, backupCount=settings.log_backups, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(message)s"))  # the worker's lines carry their own timestamps
    logger = logging.getLogger(f"han-worker-supervisor:{settings.log_file}")
    logger.handlers[:] = [handler, logging.StreamHandler(sys.stdout)] if console else [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def say(log: logging.Logger, message: str) -> None:
    log.info("%s supervisor: %s", time.strftime("%Y-%m-%d %H:%M:%S"), message)


@contextlib.contextmanager
def single_instance(pid_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``pid_file`` (holding our pid) while the supervisor runs."""
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    handle = pid_file.open("a+", encoding="ascii")
    try:
        _lock(handle)
    except OSError:
        handle.seek(0)
        other = handle.read().strip() or "?"
        handle.close()
        raise AlreadyRunning(
            f"another supervisor (pid {other}) already runs this worker ({pid_file})"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def _lock(handle: IO[str]) -> None:
    if WINDOWS:
        import msvcrt  # noqa: PLC0415 - Windows only

        # Windows locks are mandatory: lock a byte far past the pid, so that others can still read it.
        handle.seek(_LOCK_OFFSET)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
    else:
        import fcntl  # noqa: PLC0415 - POSIX only

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.environment, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    group = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if WINDOWS else {"start_new_session": True}
    return subprocess.Popen(
        settings.worker_argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, **group,  # type: ignore[arg-type]
    )  # fmt: skip


def copy_output(worker: subprocess.Popen[bytes], log: logging.Logger) -> threading.Thread:
    def pump() -> None:
        assert worker.stdout is not None
        for raw in worker.stdout:
            log.info("%s", raw.decode("utf-8", errors="replace").rstrip("\r\n"))

    thread = threading.Thread(target=pump, name="worker-output", daemon=True)
    thread.start()
    return thread


def drain(worker: subprocess.Popen[bytes], timeout: float, log: logging.Logger) -> int:
    """Ask the worker to drain, wait ``timeout``, then kill it; its exit code."""
    say(log, f"asking han-worker (pid {worker.pid}) to drain; killed after {timeout:g}s")
    with contextlib.suppress(OSError):
        worker.send_signal(signal.CTRL_BREAK_EVENT if WINDOWS else signal.SIGTERM)  # type: ignore[attr-defined]
    try:
        return worker.wait(timeout)
    except subprocess.TimeoutExpired:
        say(log, f"han-worker did not stop within {timeout:g}s: killing it")
        worker.kill()
        return worker.wait()


class Supervisor:
    def __init__(self, settings: Settings, log: logging.Logger) -> None:
        self.settings, self.log = settings, log
        self.stop = threading.Event()

    def stop_requested(self) -> bool:
        if self.settings.stop_file.exists():
            self.stop.set()
        return self.stop.is_set()

    def wait(self, seconds: float, worker: subprocess.Popen[bytes] | None = None) -> None:
        """Until ``seconds`` passed, a stop is requested or ``worker`` exited."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.stop_requested():
            if worker is not None and worker.poll() is not None:
                return
            self.stop.wait(min(_POLL_S, max(0.0, deadline - time.monotonic())))

    def run_once(self) -> str | None:
        """Run the worker until it exits (say how) or a stop is requested (drain it; None)."""
        try:
            worker = start_worker(self.settings)
        except OSError as exc:
            return f"han-worker cannot be started: {exc}"
        say(self.log, f"started han-worker (pid {worker.pid}): {' '.join(self.settings.worker_argv)}")
        output = copy_output(worker, self.log)
        self.wait(float("inf"), worker)
        if worker.poll() is not None:
            output.join(5)
            return f"han-worker exited with code {worker.returncode}"
        code = drain(worker, self.settings.stop_timeout_seconds, self.log)
        output.join(5)
        say(self.log, f"han-worker stopped with exit code {code}")
        return None

    def run(self) -> int:
        self.settings.stop_file.unlink(missing_ok=True)  # a stop request from an earlier run is spent
        delay = self.settings.restart_delay_seconds
        while not self.stop_requested():
            started = time.monotonic()
            outcome = self.run_once()
            if outcome is None:
                break
            if time.monotonic() - started > QUIET_RUN_RESETS_DELAY_S:
                delay = self.settings.restart_delay_seconds
            say(self.log, f"{outcome}; starting it again in {delay:g}s")
            self.wait(delay)
            delay = min(delay * 2, self.settings.restart_delay_max_seconds)
        self.settings.stop_file.unlink(missing_ok=True)
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--settings", type=Path, required=True, help="the settings file the role renders")
    parser.add_argument("--console", action="store_true", help="also show the worker's output here")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.settings)
        with single_instance(settings.pid_file):
            log = rotating_log(settings, console=args.console)
            supervisor = Supervisor(settings, log)
            for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
                if hasattr(signal, name):
                    signal.signal(getattr(signal, name), lambda _signum, _frame: supervisor.stop.set())
            return supervisor.run()
    except SettingsError as exc:
        print(f"han_worker_supervisor: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    except AlreadyRunning as exc:
        print(f"han_worker_supervisor: {exc}", file=sys.stderr)
        return EXIT_ALREADY_RUNNING


if __name__ == "__main__":
    sys.exit(main())
