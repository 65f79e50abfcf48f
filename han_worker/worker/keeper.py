"""Keep a worker running for the length of its allocation: restart it when it is killed or crashes.

A Slurm array task whose worker is the batch process ends when that worker dies (FAILED, exit 0:9 after a
SIGKILL), and the array serves on with fewer workers until its successor starts. With ``han-worker run
--restart-crashed`` the keeper (han_worker/keeper.py) is the batch process instead: it forwards SIGTERM and
SIGINT (Slurm's walltime warning, a drain, Ctrl-C) to the worker and ends with it, and restarts a worker that
ended any other way, after a backoff, within a budget. A worker that exits 2 (its configuration, a queue it
cannot serve, refused credentials) is not restarted at all, as a restart would meet the same refusal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

from han_worker.keeper import EXIT_FAILED, EXIT_OK, Keeper, RestartPolicy, describe_exit, without_keeper_flag

EXIT_USAGE = 2
# The exits a restart would meet again.
FINAL_EXITS = {EXIT_USAGE: "it refused to run: see its message above"}

__all__ = [
    "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "RestartPolicy", "WorkerKeeper", "describe_exit", "keep",
    "worker_command",
]  # fmt: skip


def worker_command(keeper_argv: Sequence[str]) -> list[str]:
    """The worker the keeper runs: this interpreter's ``han_worker`` with the keeper's own arguments less
    ``--restart-crashed``."""
    return [sys.executable, "-m", "han_worker", *without_keeper_flag(keeper_argv)]


class WorkerKeeper(Keeper):
    """The keeper of one worker: exit 2 is final, anything else but 0 is restarted."""

    def __init__(
        self,
        command: Sequence[str],
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(command, policy, clock, child_name="worker", final_exits=FINAL_EXITS)


def keep(keeper_argv: Sequence[str], policy: RestartPolicy | None = None) -> int:
    """Run ``han-worker KEEPER_ARGV`` without the keeper's flag, restarted as the policy allows."""
    keeper = WorkerKeeper(worker_command(keeper_argv), policy)
    keeper.install_signal_handlers()
    return keeper.run()
