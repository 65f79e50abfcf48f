"""Keep a worker running for the length of its allocation: restart it when it is killed or crashes.

A Slurm array task whose worker is the batch process ends when that worker dies (FAILED, exit 0:9 after a
SIGKILL), and the array serves on with fewer workers until its successor starts. With ``han-worker run
--restart-crashed`` the keeper is the batch process instead: it forwards SIGTERM and SIGINT (Slurm's
walltime warning, a drain, Ctrl-C) to the worker and ends with it, and restarts a worker that ended any other
way, after a backoff. A budget of restarts within a window ends the task with the reason rather than spinning
on a worker that crashes at once; a worker that exits 2 (its configuration, a queue it cannot serve, refused
credentials) is not restarted at all, as a restart would meet the same refusal.

The keeper holds no connection and no secret: it runs ``python -m han_worker run ...`` with its own
arguments and environment, and the worker's output goes where the keeper's goes (the task's Slurm log).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGBREAK")  # SIGBREAK: Ctrl-Break on Windows


@dataclass(frozen=True)
class RestartPolicy:
    """How often a worker may die before its keeper gives up: ``max_restarts`` within ``window_seconds``.

    The n-th restart in a row waits ``backoff_seconds[n]`` (the last value once past the end), so a worker
    killed once is back within a second and one that keeps dying does not hammer the control plane."""

    max_restarts: int = 5
    window_seconds: float = 600.0
    backoff_seconds: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0)

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.window_seconds <= 0 or not self.backoff_seconds:
            raise ValueError(f"invalid restart policy: {self}")

    def backoff(self, restarts_in_window: int) -> float:
        return self.backoff_seconds[min(restarts_in_window, len(self.backoff_seconds) - 1)]


def describe_exit(returncode: int) -> str:
    """``exit code 1`` or ``killed by SIGKILL`` (Popen reports a signal as a negative code)."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


KEEPER_FLAG = "--restart-crashed"


def worker_command(keeper_argv: Sequence[str]) -> list[str]:
    """The worker the keeper runs: this interpreter's ``han_worker`` with the keeper's own arguments less
    ``--restart-crashed`` (or the abbreviation argparse accepted for it)."""
    arguments = [arg for arg in keeper_argv if not (len(arg) > 2 and KEEPER_FLAG.startswith(arg))]
    return [sys.executable, "-m", "han_worker", *arguments]


class Keeper:
    def __init__(
        self,
        command: Sequence[str],
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.command = list(command)
        self.policy = policy or RestartPolicy()
        self.clock = clock
        self.stopping = threading.Event()
        self.restarts: deque[float] = deque()
        self._worker: subprocess.Popen[bytes] | None = None
        self._stop_signal: int | None = None

    def request_stop(self, signum: int, _frame: object = None) -> None:
        """Forward the signal: the worker drains and exits, and the keeper ends with it."""
        log.info("received %s: passing it to the worker, which drains", signal.Signals(signum).name)
        self._stop_signal = signum
        self.stopping.set()
        worker = self._worker
        if worker is not None and worker.poll() is None:
            worker.send_signal(signum)

    def install_signal_handlers(self) -> None:
        for name in FORWARDED_SIGNALS:
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), self.request_stop)

    def run(self) -> int:
        while True:
            returncode = self._run_worker_once()
            verdict = self._verdict(returncode)
            if verdict is not None:
                return verdict
            delay = self.policy.backoff(len(self.restarts) - 1)
            log.warning(
                "the worker ended (%s); restarting it in %gs (restart %d of at most %d within %gs)",
                describe_exit(returncode), delay, len(self.restarts), self.policy.max_restarts,
                self.policy.window_seconds,
            )  # fmt: skip
            if self.stopping.wait(delay):
                return EXIT_OK

    def _run_worker_once(self) -> int:
        self._worker = subprocess.Popen(self.command, stdin=subprocess.DEVNULL)
        log.info("started the worker (pid %d)", self._worker.pid)
        if self.stopping.is_set() and self._stop_signal is not None:  # a stop that came while it started
            self._worker.send_signal(self._stop_signal)
        while True:
            try:
                return self._worker.wait()
            except InterruptedError:  # pragma: no cover (PEP 475 retries; kept for old interpreters)
                continue

    def _verdict(self, returncode: int) -> int | None:
        """The keeper's exit code, or None to restart the worker."""
        if self.stopping.is_set():
            log.info("the worker ended after the stop (%s)", describe_exit(returncode))
            if self._stop_signal is not None and returncode == -self._stop_signal:
                return EXIT_OK  # it had no handler yet (it was starting): the signal ended it, as asked
            return returncode if returncode >= 0 else EXIT_FAILED
        if returncode == EXIT_OK:
            log.info("the worker ended by itself (exit code 0)")
            return EXIT_OK
        if returncode == EXIT_USAGE:
            log.error("the worker refused to run (exit code 2: see its message above); not restarting it")
            return EXIT_USAGE
        now = self.clock()
        while self.restarts and now - self.restarts[0] > self.policy.window_seconds:
            self.restarts.popleft()
        if len(self.restarts) >= self.policy.max_restarts:
            log.error(
                "the worker ended (%s) after %d restarts within %gs; giving up",
                describe_exit(returncode), len(self.restarts), self.policy.window_seconds,
            )  # fmt: skip
            return EXIT_FAILED
        self.restarts.append(now)
        return None


def keep(keeper_argv: Sequence[str], policy: RestartPolicy | None = None) -> int:
    """Run ``han-worker KEEPER_ARGV`` without the keeper's flag, restarted as the policy allows."""
    keeper = Keeper(worker_command(keeper_argv), policy)
    keeper.install_signal_handlers()
    return keeper.run()
