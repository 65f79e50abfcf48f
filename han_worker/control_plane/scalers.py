"""The elastic pools' scalers, run by the control plane's supervisor (issue 20).

A pool is registered by a file in the control plane's state directory, ``scalers/<pool>.json`` (role
``pegasus_worker`` writes it in elastic mode and removes it in fixed mode or when stopping)::

    {"schema": 1, "config": "/home/u/.han/worker/config/worker.json",
     "pool": "/home/u/.han/worker/config/pool.json", "state": "/home/u/.han/worker/run/scaler-state.json",
     "resume": "3f1c..."}

The supervisor runs one ``han-worker scale --config ... --pool ... --state ...`` per valid file, as a child of
its own with its output appended to ``scalers/<pool>.log``: a scaler moves with the control plane (a walltime
rollover's successor starts it again from the same files; its state file, not its memory, says which worker
jobs are on their way, so a restart submits nothing twice). Each watch tick of the supervisor calls
:meth:`Scalers.tick`, which never blocks: it starts the scalers of new files, restarts one that exited (with
a back-off), and stops, with SIGTERM (a scaler ends between two of its ticks), the scaler of a file that was
removed or changed, or whose pool or config file changed: the new one starts once the old one has exited,
never two on one state file. A file that cannot be used is logged once, naming the file and the problem, and
its scaler is stopped; the control plane goes on.

``resume`` (optional) is the pool's version as the role wrote it: when it differs from the one a scaler last
ran with (``scalers/<pool>.resumed``), the scaler starts with ``--resume`` (a changed pool file is the
operator's fix of what paused the pool); a restart or a rollover with the same version does not resume.
While a scaler runs, ``scalers/<pool>.running`` says where (pid, node, start): the role waits for it to go
after removing the registration, before it drains the workers, so that no worker job is submitted meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from han_worker import processes
from han_worker.fields import FieldReader
from han_worker.private_files import (
    TrustedFileError,
    read_trusted_json,
    write_private_json,
    write_private_text,
)

log = logging.getLogger(__name__)

SCHEMA = 1
KEYS = frozenset({"schema", "config", "pool", "state", "resume"})
REQUIRED = ("schema", "config", "pool", "state")
NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
# A scaler that exits is started again after these pauses in a row; one that ran STEADY_S starts them over.
# Exit 2 (an input the scaler refused: its pool or config file) waits the longest: only a fix helps.
RESTART_BACKOFF_S = (1.0, 5.0, 15.0, 60.0)
STEADY_S = 60.0
# SIGTERM ends a scaler after its tick in flight and its wait between ticks (up to tick_seconds, 300 at most).
STOP_TIMEOUT_S = 30.0
EXIT_BAD_INPUT = 2
# What a scaler needs of the supervisor's environment: where programs are, who it is. Nothing else goes to it
# (the supervisor's environment is a Slurm job's; the scaler's sbatch runs with a plain one anyway).
ENVIRONMENT_KEYS = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR")

Clock = Callable[[], float]


class RegistrationError(ValueError):
    """A registration file cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Registration:
    """One pool's scaler: what ``han-worker scale`` takes, from ``origin`` (``scalers/<name>.json``)."""

    name: str
    config: Path
    pool: Path
    state: Path
    origin: Path
    resume: str = ""

    def argv(self, program: Sequence[str], *, resume: bool = False) -> list[str]:
        flags = [f"--config={self.config}", f"--pool={self.pool}", f"--state={self.state}"]
        return [*program, "scale", *flags, *(["--resume"] if resume else [])]

    @property
    def log_file(self) -> Path:
        return self.origin.with_suffix(".log")

    @property
    def running_file(self) -> Path:
        return self.origin.with_suffix(".running")

    @property
    def resumed_file(self) -> Path:
        return self.origin.with_suffix(".resumed")

    def resumed_version(self) -> str | None:
        """The pool's version its scaler last ran with (None before the first)."""
        try:
            return self.resumed_file.read_text().strip()
        except OSError:
            return None


def parse_registration(data: dict[str, object], origin: Path) -> Registration:
    fields = FieldReader(data, str(origin), RegistrationError)
    unknown = sorted(set(data) - KEYS)
    if unknown:
        known = ", ".join(sorted(KEYS))
        raise RegistrationError(f"{origin}: unknown field(s) {', '.join(unknown)} (known: {known})")
    if fields.integer("schema", 0, 1_000_000) != SCHEMA:
        fields.fail("schema", f": {data['schema']} is not {SCHEMA}, the one this han-control-plane reads")
    name = origin.stem
    if not name or not set(name) <= NAME_CHARACTERS or name.startswith("."):
        raise RegistrationError(
            f"{origin}: the file's name must be <pool>.json, with letters, digits, '.', '_' and '-' in <pool>"
        )
    config, pool, state = (_absolute_path(fields, key) for key in ("config", "pool", "state"))
    resume = _one_line(fields, "resume") if "resume" in data else ""
    return Registration(name, config, pool, state, origin, resume)


def _one_line(fields: FieldReader, key: str) -> str:
    text = fields.string(key)
    if any(character in text for character in "\n\r") or len(text) > 4096:
        fields.fail(key, " must be one line of at most 4096 characters")
    return text


def _absolute_path(fields: FieldReader, key: str) -> Path:
    path = Path(_one_line(fields, key))
    if not path.is_absolute():
        fields.fail(key, f": {str(path)!r} is not an absolute path")
    return path


def load_registration(path: Path) -> Registration:
    try:
        data = read_trusted_json(path)
    except TrustedFileError as exc:
        raise RegistrationError(str(exc)) from exc
    return parse_registration(data, path)


Fingerprint = tuple[object, ...]


def fingerprint(registration: Registration) -> Fingerprint:
    """What the scaler read when it started: its registration, and the pool and config files as they are (a
    change of either makes the supervisor start the scaler again; the state file is the scaler's own)."""
    files = (registration.origin, registration.pool, registration.config)
    return (registration, *(_file_version(path) for path in files))


def _file_version(path: Path) -> tuple[int, int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return (found.st_ino, found.st_size, found.st_mtime_ns)


def scale_program() -> list[str]:
    """``han-worker`` of the supervisor's own installation (the env's bin directory), else its module."""
    beside = Path(sys.executable).parent / "han-worker"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [sys.executable, "-m", "han_worker"]


def scaler_environment() -> dict[str, str]:
    return {key: os.environ[key] for key in ENVIRONMENT_KEYS if key in os.environ}


class ScalerProcess:
    """One running ``han-worker scale``, its output appended to the registration's log file."""

    def __init__(self, registration: Registration, program: Sequence[str], *, resume: bool = False) -> None:
        self.registration = registration
        registration.log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(registration.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._log: IO[bytes] | None = os.fdopen(fd, "ab")
        try:
            self.process = subprocess.Popen(
                registration.argv(program, resume=resume),
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                cwd=registration.origin.parent, env=scaler_environment(), start_new_session=True,
                # A supervisor killed outright (SIGKILL) takes its scalers with it: none outlives it.
                preexec_fn=processes.die_with_parent(signal.SIGTERM),  # noqa: PLW1509 (the main thread)
            )  # fmt: skip
        except OSError:
            self._log.close()
            raise
        self.stop_deadline: float | None = None
        try:
            write_private_json(registration.running_file, {
                "pid": self.process.pid, "node": socket.gethostname(), "started_at": round(time.time())
            })  # fmt: skip
        except OSError:  # a scaler nobody can see running is not left behind
            self.kill()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        code = self.process.poll()
        if code is not None:
            self.close_log()
        return code

    def terminate(self, deadline: float) -> None:
        if self.stop_deadline is None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.stop_deadline = deadline if self.stop_deadline is None else self.stop_deadline

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.close_log()

    def close_log(self) -> None:
        """After the process ended: its log closed, and the file that said it runs removed."""
        if self._log is not None:
            self._log.close()
            self._log = None
            self._forget_running()

    def _forget_running(self) -> None:
        """Remove the running file if it is this process's (a successor may have written its own)."""
        running = self.registration.running_file
        try:
            if json.loads(running.read_text()).get("pid") == self.process.pid:
                running.unlink()
        except (OSError, ValueError, AttributeError):
            pass


@dataclass
class Slot:
    """A registered pool: its scaler (None between a crash and its restart) and its restarts in a row."""

    registration: Registration
    version: Fingerprint
    process: ScalerProcess | None = None
    started_at: float = 0.0
    exits_in_a_row: int = 0
    start_after: float = 0.0


@dataclass
class Scalers:
    """The scalers of the registration files in ``directory`` (``<control-plane dir>/scalers``)."""

    directory: Path
    program: Sequence[str] = field(default_factory=scale_program)
    clock: Clock = time.monotonic
    stop_timeout: float = STOP_TIMEOUT_S
    slots: dict[Path, Slot] = field(default_factory=dict)
    retiring: list[ScalerProcess] = field(default_factory=list)
    problems: dict[Path, str] = field(default_factory=dict)  # what was logged of each unusable file

    def __post_init__(self) -> None:
        """What a supervisor killed outright left: files saying scalers run that died with it."""
        with contextlib.suppress(OSError):  # an unusable directory is said at the first tick
            for stale in self.directory.glob("*.running"):
                stale.unlink(missing_ok=True)

    def tick(self) -> None:
        """Bring the running scalers in line with the files, without waiting for any of them."""
        now = self.clock()
        wanted = self._read_registrations()
        for path in list(self.slots):
            slot = self.slots[path]
            if path not in wanted or wanted[path][1] != slot.version:
                why = "its file was removed or cannot be used" if path not in wanted else "its files changed"
                self._retire(self.slots.pop(path), why, now)
        self._reap_retiring(now)
        for path, (registration, version) in wanted.items():
            slot = self.slots.setdefault(path, Slot(registration, version))
            self._keep_running(slot, now)

    def running(self) -> dict[str, int]:
        """Pool name -> pid of its scaler, for those running."""
        return {slot.registration.name: slot.process.pid for slot in self.slots.values() if slot.process}

    # -- the files ------------------------------------------------------------------------------------

    def _read_registrations(self) -> dict[Path, tuple[Registration, Fingerprint]]:
        try:
            paths = sorted(path for path in self.directory.glob("*.json") if not path.name.startswith("."))
        except OSError as exc:
            self._problem(self.directory, f"{self.directory}: cannot be listed: {exc.strerror}")
            return {}
        wanted: dict[Path, tuple[Registration, Fingerprint]] = {}
        states: dict[Path, Path] = {}
        for path in paths:
            try:
                registration = load_registration(path)
                if registration.state in states:
                    raise RegistrationError(
                        f"{path}: field 'state': {registration.state} is the state file of "
                        f"{states[registration.state]} too; two scalers on one state file would submit twice"
                    )
            except RegistrationError as exc:
                self._problem(path, str(exc))
                continue
            states[registration.state] = path
            self.problems.pop(path, None)
            wanted[path] = (registration, fingerprint(registration))
        for gone in set(self.problems) - set(paths) - {self.directory}:
            del self.problems[gone]
        return wanted

    def _problem(self, path: Path, message: str) -> None:
        """Log what is wrong with a file once, not at every tick."""
        if self.problems.get(path) != message:
            log.error("scaler not run: %s", message)
            self.problems[path] = message

    # -- the processes ---------------------------------------------------------------------------------

    def _keep_running(self, slot: Slot, now: float) -> None:
        if slot.process is not None:
            code = slot.process.exit_code()
            if code is None:
                if now - slot.started_at >= STEADY_S:
                    self._steady(slot)
                return
            self._exited(slot, code, now)
        if now < slot.start_after or self._state_file_busy(slot.registration.state):
            return
        self._start(slot, now)

    def _steady(self, slot: Slot) -> None:
        """A scaler that ran STEADY_S: its back-off starts over, and it has resumed its pool if asked to."""
        slot.exits_in_a_row = 0
        registration = slot.registration
        if registration.resume and registration.resumed_version() != registration.resume:
            write_private_text(registration.resumed_file, f"{registration.resume}\n")

    def _exited(self, slot: Slot, code: int, now: float) -> None:
        slot.process = None
        slot.exits_in_a_row += 1
        steps = len(RESTART_BACKOFF_S)
        step = steps if code == EXIT_BAD_INPUT else min(slot.exits_in_a_row, steps)
        pause = RESTART_BACKOFF_S[step - 1]
        slot.start_after = now + pause
        log.error(
            "scaler %s exited with code %s (%d in a row); starting it again in %gs; its log %s ends:\n%s",
            slot.registration.name, code, slot.exits_in_a_row, pause, slot.registration.log_file,
            log_tail(slot.registration.log_file),
        )  # fmt: skip

    def _start(self, slot: Slot, now: float) -> None:
        registration = slot.registration
        recorded = registration.resumed_version()
        resume = bool(registration.resume) and recorded is not None and recorded != registration.resume
        if recorded is None and registration.resume:  # the first run of this pool: nothing to resume from
            write_private_text(registration.resumed_file, f"{registration.resume}\n")
        try:
            slot.process = ScalerProcess(registration, self.program, resume=resume)
        except OSError as exc:
            slot.exits_in_a_row += 1
            pause = RESTART_BACKOFF_S[min(slot.exits_in_a_row, len(RESTART_BACKOFF_S)) - 1]
            slot.start_after = now + pause
            log.error("scaler %s could not start: %s; next try in %gs", registration.name, exc, pause)
            return
        slot.started_at = now
        resuming = ", resuming its pool" if resume else ""
        log.info("started scaler %s (pid %d%s) from %s; its log: %s", registration.name, slot.process.pid,
                 resuming, registration.origin, registration.log_file)  # fmt: skip

    def _state_file_busy(self, state: Path) -> bool:
        """A scaler being stopped still uses ``state``: its successor waits for its end."""
        return any(process.registration.state == state for process in self.retiring)

    def _retire(self, slot: Slot, why: str, now: float) -> None:
        if slot.process is None:
            log.info("scaler %s: not run any more (%s)", slot.registration.name, why)
            return
        log.info("stopping scaler %s (pid %d): %s", slot.registration.name, slot.process.pid, why)
        slot.process.terminate(now + self.stop_timeout)
        self.retiring.append(slot.process)

    def _reap_retiring(self, now: float) -> None:
        for process in list(self.retiring):
            code = process.exit_code()
            if code is None and process.stop_deadline is not None and now >= process.stop_deadline:
                log.warning("scaler %s did not stop within %gs of SIGTERM; killing it",
                            process.registration.name, self.stop_timeout)  # fmt: skip
                process.kill()
                code = process.process.returncode
            if code is not None:
                log.info("scaler %s stopped (exit code %s)", process.registration.name, code)
                self.retiring.remove(process)

    def stop_all(self, timeout: float | None = None) -> None:
        """Stop every scaler (SIGTERM, then SIGKILL after ``timeout``) and wait for each: the supervisor's
        stop, before its services, so that no scaler submits a worker job to a control plane going away."""
        now = self.clock()
        for slot in self.slots.values():
            if slot.process is not None:
                self.retiring.append(slot.process)
        self.slots.clear()
        deadline = now + (self.stop_timeout if timeout is None else timeout)
        for process in self.retiring:
            process.terminate(deadline)
        while self.retiring:
            self._reap_retiring(self.clock())
            if self.retiring:
                time.sleep(0.1)


def log_tail(path: Path, lines: int = 10, window: int = 65536) -> str:
    """The last lines of a log, reading no more than its last ``window`` bytes (a scaler's log only grows)."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - window))
            return "\n".join(handle.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
