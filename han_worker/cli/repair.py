"""``han-worker cancel | requeue``: stopping a job or a batch's jobs, and running finished ones again.

Exit codes as the other commands (han_worker/cli/options.py): 0 done, including a cancel of a job that had
already finished (it says so and changes nothing); 1 the control plane could not be reached; 2 bad input (the
message names the job id or the flag: not a UUID, no such job, a requeue of a job that has not finished, has
succeeded or is not in the --state asked for; a --batch that is not in the ledger).
"""

from __future__ import annotations

import argparse
import json
import logging

from han_worker import client
from han_worker.cli.jobs import one_of_job_and_batch, run_connected
from han_worker.cli.options import EXIT_OK, Commands, add_command, add_job_or_batch, fail
from han_worker.config import WorkerConfig
from han_worker.store.ledger import REQUEUEABLE
from han_worker.store.link import Link

log = logging.getLogger(__name__)

CANCEL_HELP = """\
A queued job is cancelled at once and never runs. A running job's worker learns of the cancel at its next
heartbeat, asks the backend to stop, and records the attempt and the job cancelled (a backend that does not
stop is left behind after 5 s; the worker goes on with its next job). A job that finishes before the cancel
reaches it keeps its result. A finished job is left as it is: exit 0, saying how it had finished.
With --batch ID, every job of the batch, in one statement: its waiting jobs cancelled, its running ones asked
to stop, its finished ones left as they are.

"""
REQUEUE_HELP = f"""\
The job is queued again with a fresh budget of its max_attempts (the attempts made so far stay in its
history, see han-worker show) and added to its queue. Exit 2 when it has not finished (its state is named),
has succeeded, or is not in a --state given (default: any of {", ".join(REQUEUEABLE)}).
With --batch ID, every job of the batch in those states, in one statement (the others are left as they are).

"""


def add_parsers(commands: Commands[argparse.ArgumentParser]) -> None:
    for add in (_add_cancel, _add_requeue):
        add(commands)


def _add_cancel(commands: Commands[argparse.ArgumentParser]) -> None:
    cancel = add_command(commands, "cancel", CANCEL_HELP)
    add_job_or_batch(cancel, "cancel a batch's jobs instead: the id submit printed")
    cancel.add_argument("--json", action="store_true", help="print what the cancel did as JSON")
    cancel.set_defaults(handler=_cancel)


def _add_requeue(commands: Commands[argparse.ArgumentParser]) -> None:
    requeue = add_command(commands, "requeue", REQUEUE_HELP)
    add_job_or_batch(requeue, "requeue a batch's jobs instead: the id submit printed")
    requeue.add_argument(
        "--state", dest="states", action="append", default=[], choices=REQUEUEABLE, metavar="STATE",
        help=f"only if the job is in this state, repeatable: {', '.join(REQUEUEABLE)} (default: any of them)",
    )  # fmt: skip
    requeue.set_defaults(handler=_requeue)


def _cancel(args: argparse.Namespace) -> int:
    try:
        job_id = one_of_job_and_batch(args.job, args.batch)
    except client.RequestError as exc:
        return fail("cancel", exc)
    if args.batch is not None:
        return run_connected(args, lambda link, _config: _cancel_batch(link, args))

    def work(link: Link, _config: WorkerConfig) -> int:
        result = client.cancel(link, job_id)
        print(json.dumps(result.to_dict(), indent=2) if args.json else client.format_cancel(result))
        return EXIT_OK

    return run_connected(args, work)


def _cancel_batch(link: Link, args: argparse.Namespace) -> int:
    result = client.cancel_batch(link, args.batch)
    print(json.dumps(result.to_dict(), indent=2) if args.json else client.format_batch_cancel(result))
    return EXIT_OK


def _requeue(args: argparse.Namespace) -> int:
    try:
        job_id = one_of_job_and_batch(args.job, args.batch)
    except client.RequestError as exc:
        return fail("requeue", exc)
    if args.batch is not None:
        return run_connected(args, lambda link, _config: _requeue_batch(link, args))

    def work(link: Link, _config: WorkerConfig) -> int:
        previous = client.requeue(link, job_id, args.states or REQUEUEABLE)
        print(f"job {job_id} requeued (it was {previous})")
        return EXIT_OK

    return run_connected(args, work)


def _requeue_batch(link: Link, args: argparse.Namespace) -> int:
    count = client.requeue_batch(link, args.batch, args.states or REQUEUEABLE)
    print(f"batch {args.batch}: {count} job(s) requeued")
    return EXIT_OK
