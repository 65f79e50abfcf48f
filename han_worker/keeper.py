"""Keep one child process running for the length of an allocation: restart it when it is killed or crashes.

The keeper is the process Slurm (or an operator) started; the program it keeps is its child. It forwards
SIGTERM and SIGINT (Slurm's walltime warning, a drain, Ctrl-C) to the child and ends with it, and restarts a
child that ended any other way, after a backoff, unless the child's exit code is one it declares final (a
refusal a restart would meet again, a give-up already retried inside). A budget of restarts within a window
ends the keeper with the reason rather than spinning on a child that dies at once.

Two programs use it: ``han-worker run --restart-crashed`` (worker/keeper.py) and ``han-control-plane run
--restart-crashed`` (control_plane/keeper.py); each says which of its exit codes are final. The keeper holds
no connection and no secret: the child runs with the keeper's arguments (less the keeper's flag) and
environment, and its output goes where the keeper's goes.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED = 0, 1
FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGBREAK")  # SIGBREAK: Ctrl-Break on Windows
KEEPER_FLAG = "--restart-crashed"


@dataclass(frozen=True)
class RestartPolicy:
    """How often a child may die before its keeper gives up: ``max_restarts`` within ``window_seconds``.

    The n-th restart in a row waits ``backoff_seconds[n]`` (the last value once past the end), so a child
    killed once is back within a second and one that keeps dying does not hammer what it talks to."""

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


def without_keeper_flag(keeper_argv: Sequence[str]) -> list[str]:
    """The keeper's arguments less ``--restart-crashed`` (or the abbreviation argparse accepted for it)."""
    return [arg for arg in keeper_argv if not (len(arg) > 2 and KEEPER_FLAG.startswith(arg))]


class Keeper:
    """Runs ``command`` as ``child_name`` until it ends for good.

    ``final_exits`` maps each exit code that ends the keeper (with that code) to why a restart would not
    help; 0 is always final (the child ended by itself). Any other exit, a signal included, is restarted
    as ``policy`` allows."""

    def __init__(
        self,
        command: Sequence[str],
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        child_name: str = "child",
        final_exits: Mapping[int, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.policy = policy or RestartPolicy()
        self.clock = clock
        self.child_name = child_name
        self.final_exits = dict(final_exits or {})
        self.stopping = threading.Event()
        self.restarts: deque[float] = deque()
        self._child: subprocess.Popen[bytes] | None = None
        self._stop_signal: int | None = None

    def request_stop(self, signum: int, _frame: object = None) -> None:
        """Forward the signal: the child stops cleanly and exits, and the keeper ends with it."""
        log.info("received %s: passing it to the %s", signal.Signals(signum).name, self.child_name)
        self._stop_signal = signum
        self.stopping.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    def install_signal_handlers(self) -> None:
        for name in FORWARDED_SIGNALS:
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), self.request_stop)

    def run(self) -> int:
        while True:
            returncode = self._run_once()
            verdict = self.verdict(returncode)
            if verdict is not None:
                return verdict
            delay = self.policy.backoff(len(self.restarts) - 1)
            log.warning(
                "the %s ended (%s); restarting it in %gs (restart %d of at most %d within %gs)",
                self.child_name, describe_exit(returncode), delay, len(self.restarts),
                self.policy.max_restarts, self.policy.window_seconds,
            )  # fmt: skip
            if self.stopping.wait(delay):
                return EXIT_OK

    def _run_once(self) -> int:
        self._child = subprocess.Popen(self.command, stdin=subprocess.DEVNULL)
        log.info("started the %s (pid %d)", self.child_name, self._child.pid)
        if self.stopping.is_set() and self._stop_signal is not None:  # a stop that came while it started
            self._child.send_signal(self._stop_signal)
        while True:
            try:
                return self._child.wait()
            except InterruptedError:  # pragma: no cover (PEP 475 retries; kept for old interpreters)
                continue

    def verdict(self, returncode: int) -> int | None:
        """The keeper's exit code, or None to restart the child."""
        if self.stopping.is_set():
            log.info("the %s ended after the stop (%s)", self.child_name, describe_exit(returncode))
            if self._stop_signal is not None and returncode == -self._stop_signal:
                return EXIT_OK  # it had no handler yet (it was starting): the signal ended it, as asked
            return returncode if returncode >= 0 else EXIT_FAILED
        if returncode == EXIT_OK:
            log.info("the %s ended by itself (exit code 0)", self.child_name)
            return EXIT_OK
        if returncode in self.final_exits:
            log.error(
                "the %s ended with exit code %d (%s); not restarting it",
                self.child_name, returncode, self.final_exits[returncode],
            )  # fmt: skip
            return returncode
        return self._restart_allowed(returncode)

    def _restart_allowed(self, returncode: int) -> int | None:
        now = self.clock()
        while self.restarts and now - self.restarts[0] > self.policy.window_seconds:
            self.restarts.popleft()
        if len(self.restarts) >= self.policy.max_restarts:
            log.error(
                "the %s ended (%s) after %d restarts within %gs; giving up",
                self.child_name, describe_exit(returncode), len(self.restarts), self.policy.window_seconds,
            )  # fmt: skip
            return EXIT_FAILED
        self.restarts.append(now)
        return None
