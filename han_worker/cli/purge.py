"""``han-worker purge``: deleting finished jobs and their objects once they are old enough.

Exit codes as the other commands (han_worker/cli/options.py): 0 done (also when nothing was old enough); 1 the
control plane could not be reached or failed meanwhile (what was deleted stays deleted, what was journaled
the next purge finishes), or the object store refused to delete some objects (they stay journaled); 2 bad
input (the message names --older-than).
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import timedelta

from han_worker import client
from han_worker.cli.jobs import run_connected
from han_worker.cli.options import EXIT_FAILED, EXIT_OK, Commands, add_command
from han_worker.config import WorkerConfig
from han_worker.store.link import Link
from han_worker.store.retention import parse_duration

log = logging.getLogger(__name__)

PURGE_HELP = """\
Deletes every job that finished (succeeded, failed, dead, cancelled, timed out) more than DURATION ago by the
ledger's clock: its ledger rows (its attempts, and its batch once the batch has no job left) and every object
the ledger records for it, inputs and outputs (an object another job still records is kept). A job that has
not finished is never touched. DURATION: a whole number and d, h or m (30d, 12h, 90m). Run --dry-run first:
it deletes nothing and prints what would go. A purge that is interrupted leaves no ledger row pointing at a
missing object; the next purge finishes it.

"""


def older_than_argument(text: str) -> timedelta:
    """argparse type: a purge's age (``30d``, ``12h``, ``90m``), above 0."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parsers(commands: Commands[argparse.ArgumentParser]) -> None:
    purge = add_command(commands, "purge", PURGE_HELP)
    purge.add_argument(
        "--older-than", type=older_than_argument, required=True, metavar="DURATION",
        help="jobs that finished more than this long ago: 30d, 12h, 90m",
    )  # fmt: skip
    purge.add_argument("--dry-run", action="store_true", help="delete nothing; print what would be deleted")
    purge.add_argument("--json", action="store_true", help="print the figures as JSON (for scripts)")
    purge.set_defaults(handler=_purge)


def _purge(args: argparse.Namespace) -> int:
    def work(link: Link, _config: WorkerConfig) -> int:
        report = client.purge(link, args.older_than, dry_run=args.dry_run)
        print(json.dumps(report.to_dict(), indent=2) if args.json else client.format_purge(report))
        return EXIT_FAILED if report.failed else EXIT_OK

    return run_connected(args, work)
