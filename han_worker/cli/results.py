"""``han-worker jobs | show | fetch``: seeing jobs and taking their results home.

Exit codes as the other commands (han_worker/cli/options.py): 0 done; 1 the control plane could not be
reached, or an output in the object store does not match the SHA-256 the ledger recorded; 2 bad input (the
message names the flag or the job id: not a UUID, no such job, an output directory that cannot be written).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter

from han_worker import client
from han_worker.cli.jobs import one_of_job_and_batch, run_connected
from han_worker.cli.options import (
    EXIT_FAILED,
    EXIT_OK,
    Commands,
    add_command,
    add_job_or_batch,
    batch_id_argument,
    count_up_to,
    fail,
    path_argument,
)
from han_worker.config import WorkerConfig
from han_worker.store.artifacts import ArtifactError
from han_worker.store.ledger import STATUSES
from han_worker.store.link import Link

log = logging.getLogger(__name__)

JOBS_HELP = """\
The newest jobs first, at most --limit of them. AGE is the time since submission.

"""
SHOW_HELP = """\
Exit 2 when JOB is not a job id or the ledger holds no such job.

"""
FETCH_HELP = """\
Each output is written as DIR/NAME through a temporary file in DIR, renamed once its size and SHA-256 match
what the ledger recorded. A file already there with the right SHA-256 is kept; one with another is replaced.
So a fetch can be run again after an interruption. Exit 1 naming the object when the object store holds
other bytes than the ledger recorded (nothing is written for it). With --batch ID: each succeeded job's
outputs go to DIR/<its input's path in the batch's folder>/ (DIR/photo1.jpg/landmarks.json), 8 at a time;
exit 1 after fetching the others when some jobs have no outputs (not finished, failed or dead).

"""


def add_parsers(commands: Commands[argparse.ArgumentParser]) -> None:
    for add in (_add_jobs, _add_show, _add_fetch):
        add(commands)


def _add_jobs(commands: Commands[argparse.ArgumentParser]) -> None:
    jobs = add_command(commands, "jobs", JOBS_HELP)
    jobs.add_argument(
        "--state", dest="states", action="append", default=[], choices=STATUSES, metavar="STATE",
        help=f"only jobs in this state, repeatable: {', '.join(STATUSES)} (default: all)",
    )  # fmt: skip
    jobs.add_argument("--kind", help="only jobs of this kind (a registered backend, e.g. pose, sleep)")
    jobs.add_argument("--batch", type=batch_id_argument, metavar="ID", help="only jobs of this batch")
    jobs.add_argument(
        "--limit", type=count_up_to(client.MAX_JOBS_LIMIT), default=client.JOBS_LIMIT, metavar="N",
        help=f"jobs to list, 1 to {client.MAX_JOBS_LIMIT} (default: {client.JOBS_LIMIT})",
    )  # fmt: skip
    jobs.add_argument("--json", action="store_true", help="print the jobs' ledger records as a JSON list")
    jobs.set_defaults(handler=_jobs)


def _add_show(commands: Commands[argparse.ArgumentParser]) -> None:
    show = add_command(commands, "show", SHOW_HELP)
    show.add_argument("job", metavar="JOB", help="the job id that submit printed")
    show.add_argument("--json", action="store_true", help="print the job and its attempts as JSON")
    show.set_defaults(handler=_show)


def _add_fetch(commands: Commands[argparse.ArgumentParser]) -> None:
    fetch = add_command(commands, "fetch", FETCH_HELP)
    add_job_or_batch(fetch, "fetch every succeeded job of a batch instead, each into DIR/<its input's path>/")
    fetch.add_argument(
        "--output", required=True, type=path_argument, metavar="DIR",
        help="the directory to write the outputs in (made when missing)",
    )  # fmt: skip
    fetch.set_defaults(handler=_fetch)


def _jobs(args: argparse.Namespace) -> int:
    try:  # everything that can be checked without a control plane is checked first
        if args.kind is not None:
            client.queue_of(args.kind)
    except client.RequestError as exc:
        return fail("jobs", exc)

    def work(link: Link, _config: WorkerConfig) -> int:
        records = client.jobs(link, args.states, args.kind, args.limit, args.batch)
        if args.json:
            print(json.dumps([record.to_dict() for record in records], indent=2, default=str))
        else:
            print(client.format_jobs(records))
        return EXIT_OK

    return run_connected(args, work)


def _show(args: argparse.Namespace) -> int:
    try:
        job_id = client.check_job_id(args.job)
    except client.RequestError as exc:
        return fail("show", exc)

    def work(link: Link, _config: WorkerConfig) -> int:
        detail = client.show(link, job_id)
        if args.json:
            print(json.dumps(detail.to_dict(), indent=2, default=str))
        else:
            print(client.format_job(detail))
        return EXIT_OK

    return run_connected(args, work)


def _fetch_batch(link: Link, args: argparse.Namespace) -> int:
    try:
        fetched = client.fetch_batch(link, args.batch, args.output)
    except ArtifactError as exc:  # the object store's bytes are not the ledger's: not the input's fault
        return fail("fetch", exc, EXIT_FAILED)
    for item in fetched.files:
        print(client.format_fetched(item))
    if fetched.without_outputs:
        statuses = Counter(status for _job_id, status in fetched.without_outputs)
        listed = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
        missing = len(fetched.without_outputs)
        hint = f"han-worker jobs --batch {args.batch} --state STATE lists them"
        return fail(
            "fetch", f"{missing} job(s) of batch {args.batch} have no outputs ({listed}): {hint}", EXIT_FAILED
        )
    return EXIT_OK


def _fetch(args: argparse.Namespace) -> int:
    try:
        job_id = one_of_job_and_batch(args.job, args.batch)
        client.check_output_dir(args.output)
    except client.RequestError as exc:
        return fail("fetch", exc)
    if args.batch is not None:
        return run_connected(args, lambda link, _config: _fetch_batch(link, args))

    def work(link: Link, _config: WorkerConfig) -> int:
        try:
            fetched = client.fetch(link, job_id, args.output)
        except ArtifactError as exc:  # the object store's bytes are not the ledger's: not the input's fault
            return fail("fetch", exc, EXIT_FAILED)
        for item in fetched:
            print(client.format_fetched(item))
        return EXIT_OK

    return run_connected(args, work)
