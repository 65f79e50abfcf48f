"""Keep the supervisor running for the length of the job: ``han-control-plane run --restart-crashed``.

A supervisor killed with SIGKILL (its services die with it: they get its death signal, or the same kill)
leaves a control plane that nothing brings back until the next Slurm job, if one is queued. With the
keeper as the batch process, the supervisor is its child: SIGTERM and SIGINT (Slurm's walltime warning,
scancel, Ctrl-C) are passed on and the keeper ends with it; a supervisor that was killed, or ended in a way
it does not report, is started again after a backoff (han_worker/keeper.py). The new supervisor takes over
as any successor does (takeover.py): its dead predecessor ran on this host and its pids are gone, so the
stale lock files are cleared, and it publishes the next epoch.

The supervisor's own exit codes that end the keeper (supervisor.py), because a restart would repeat them:

- 1 (EXIT_START_FAILED): the start was already tried START_ATTEMPTS times within the supervisor, or refused
  outright (a predecessor that cannot be proved gone); the reason is in ``status``;
- 2: bad flags or an unusable state directory;
- 3 (EXIT_CHILD_DIED): a service crashed too often, or could not be restarted in place; stopped cleanly on
  purpose, with the reason in ``status``.

The keeper holds ``keeper.lock`` in the state directory while it runs, so that ``start`` and ``stop`` (the
direct launch mode, launch.py) see it between a supervisor's death and its restart.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from han_worker.control_plane.layout import Layout
from han_worker.control_plane.supervisor import (
    EXIT_CHILD_DIED,
    EXIT_START_FAILED,
    SupervisorError,
    exclusive_lock,
)
from han_worker.keeper import Keeper, RestartPolicy, without_keeper_flag

log = logging.getLogger(__name__)

EXIT_USAGE = 2
FINAL_EXITS = {
    EXIT_START_FAILED: "it could not start after its own retries: see `han-control-plane status`",
    EXIT_USAGE: "it refused its flags or its state directory",
    EXIT_CHILD_DIED: "a service kept crashing, so it stopped on purpose: see `han-control-plane status`",
}


def supervisor_command(keeper_argv: Sequence[str]) -> list[str]:
    """The supervisor the keeper runs: this interpreter's ``han_worker.control_plane`` with the keeper's own
    arguments less ``--restart-crashed``."""
    return [sys.executable, "-m", "han_worker.control_plane", *without_keeper_flag(keeper_argv)]


class SupervisorKeeper(Keeper):
    """The keeper of one supervisor: 0, 1, 2 and 3 are final; a supervisor killed by a signal (or ended
    by anything else) is started again."""

    def __init__(self, command: Sequence[str], policy: RestartPolicy | None = None) -> None:
        super().__init__(command, policy, child_name="supervisor", final_exits=FINAL_EXITS)


def keep(layout: Layout, keeper_argv: Sequence[str], policy: RestartPolicy | None = None) -> int:
    """Run ``han-control-plane KEEPER_ARGV`` without the keeper's flag, restarted as the policy allows."""
    layout.make_dirs()
    try:
        with exclusive_lock(layout.keeper_lock_file):
            keeper = SupervisorKeeper(supervisor_command(keeper_argv), policy)
            keeper.install_signal_handlers()
            return keeper.run()
    except SupervisorError as exc:
        log.error("%s", exc)
        return EXIT_START_FAILED
