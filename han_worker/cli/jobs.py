"""``han-worker submit | wait | status``: argument parsing, validation and exit codes.

Exit codes: 0 done; 1 the job failed (wait) or the control plane could not be reached; 2 bad input or
an unusable configuration (the message names the flag, the file and field, or the variable); 3 wait
timed out. Roles and drills branch on these, so none of them ends in a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from han_worker import batches, client
from han_worker.cli.options import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Commands,
    add_command,
    add_job_or_batch,
    fail,
    load_config,
    path_argument,
    positive_count,
    positive_seconds,
)
from han_worker.cli.progress import Ticker
from han_worker.config import WorkerConfig, WorkerConfigError
from han_worker.scaling.scaler import StateFileError, describe_state, format_state
from han_worker.selection.endpoints import EndpointsError
from han_worker.store.artifacts import ArtifactError
from han_worker.store.link import SERVICE_ERRORS, ConnectError, Link, describe

log = logging.getLogger(__name__)

SUBMIT_HELP = """\
--input FILE, repeated, gives the files of one job. --input DIR (a folder: its files, not its subfolders or
hidden files) or --input GLOB (a quoted pattern such as 'photos/*.jpg'; ** crosses folders) submits a batch
instead: one job per file, given alone. It prints the batch id; progress goes to stderr. Every file is read
before anything is sent (an empty folder, a pattern matching nothing, an unreadable file, a link out of the
folder: exit 2, nothing submitted). Run the same command again after an interruption: the batch's ids derive
from the kind, the params and the files' contents, so nothing is submitted or uploaded twice.

"""
WAIT_HELP = """\
Exit 0 if the job succeeded (its result is printed), 1 if it failed, is dead, was cancelled or timed out
(the error is printed), 3 if it has not finished within --timeout. With --batch ID: progress on stderr (a bar
on a terminal, a line every 5 s otherwise), then the batch's last line; exit 0 if every job succeeded, 1 if
one did not (failed, dead, cancelled, timed out), 3 if some have not finished within --timeout.

"""


STAGES = {"upload": "uploading inputs", "record": "recording jobs", "enqueue": "enqueueing jobs"}


def add_parsers(commands: Commands[argparse.ArgumentParser]) -> None:
    for add in (_add_submit, _add_wait, _add_status):
        add(commands)


def _add_submit(commands: Commands[argparse.ArgumentParser]) -> None:
    submit = add_command(commands, "submit", SUBMIT_HELP)
    submit.add_argument("--kind", required=True, help="job kind (a registered backend, e.g. pose, sleep)")
    submit.add_argument(
        "--input",
        action="append",
        default=[],
        type=path_argument,
        metavar="FILE|DIR|GLOB",
        help="an input file, repeatable (the files of one job); the backend sees it under its file name. A "
        "folder or a pattern: a batch, one job per file (see below)",
    )
    submit.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter, repeatable; VALUE is JSON when it parses as JSON (3, 2.5, true, [1,2]), "
        "else a string; quote it to force a string: KEY='\"3\"'",
    )
    submit.add_argument("--params-json", metavar="JSON", help="parameters as one JSON object; --param wins")
    submit.add_argument(
        "--max-attempts",
        type=positive_count,
        metavar="N",
        help="attempts before the job is dead (default: the config file's max_attempts, else 3)",
    )
    submit.add_argument(
        "--timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="stop the job after it ran this long and record it timed_out, retried while it has attempts "
        "left (default: the worker configuration's job_timeouts for its kind, else none)",
    )
    submit.set_defaults(handler=_submit)


def _add_wait(commands: Commands[argparse.ArgumentParser]) -> None:
    wait = add_command(commands, "wait", WAIT_HELP)
    add_job_or_batch(wait, "wait for a batch instead: the id submit printed")
    wait.add_argument(
        "--timeout",
        type=positive_seconds,
        default=3600.0,
        metavar="SECONDS",
        help="give up after this long and exit 3 (default: 3600)",
    )
    wait.add_argument(
        "--json", action="store_true", help="print the job's ledger record (a batch's progress) as JSON"
    )
    wait.set_defaults(handler=_wait)


def _add_status(commands: Commands[argparse.ArgumentParser]) -> None:
    status = add_command(commands, "status")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument(
        "--limit",
        type=positive_count,
        default=10,
        metavar="N",
        help="pending jobs, and dead or timed-out ones, to list (default: 10)",
    )
    scaler_help = "also show an elastic pool's scaler: its last decision and why (han-worker scale's --state)"
    status.add_argument("--scaler-state", type=path_argument, metavar="FILE", help=scaler_help)
    status.set_defaults(handler=_status)


def run_connected(args: argparse.Namespace, work: Callable[[Link, WorkerConfig], int]) -> int:
    """Select and connect as ``run`` would, run ``work``, map the errors to exit codes."""
    try:
        config = load_config(args)
        link = client.connect(config, name=f"han-worker {args.command}")
    except (WorkerConfigError, EndpointsError) as exc:
        return fail(args.command, exc)
    except ConnectError as exc:
        return fail(args.command, exc, EXIT_USAGE if exc.permanent else EXIT_FAILED)
    try:
        return work(link, config)
    except client.RequestError as exc:
        return fail(args.command, exc)
    except SERVICE_ERRORS as exc:  # gone (CONTROL_PLANE_ERRORS) or refusing: not the input's fault
        return fail(args.command, f"{link.source}: {describe(exc)}", EXIT_FAILED)
    finally:
        link.close()


def one_of_job_and_batch(job: str | None, batch: str | None) -> str:
    """The job id when JOB is given, else "" (``--batch`` is); RequestError unless exactly one is given."""
    if (job is None) == (batch is None):
        raise client.RequestError("JOB or --batch ID: give exactly one")
    return "" if job is None else client.check_job_id(job)


def _batch_source(inputs: list[Path]) -> Path | None:
    """The batch source among the ``--input`` values, if there is one; RequestError when it is not alone."""
    sources = [path for path in inputs if batches.is_batch_source(path)]
    if not sources:
        return None
    if len(inputs) > 1:
        raise client.RequestError(
            f"--input: {sources[0]} is a folder or a pattern (a batch: one job per file); "
            "give it alone, without another --input"
        )
    return sources[0]


def _submit(args: argparse.Namespace) -> int:
    try:  # everything that can be checked without a control plane is checked first
        client.queue_of(args.kind)
        params = client.parse_params(args.param, args.params_json)
        source = _batch_source(args.input)
        if source is not None:  # max_attempts is not part of the ids: the config's default is set later
            batch = client.plan_batch(source, args.kind, params, args.max_attempts or 1, timeout=args.timeout)
            return run_connected(args, lambda link, config: _submit_batch(link, config, args, batch))
        inputs = client.check_inputs(args.input)
    except client.RequestError as exc:
        return fail("submit", exc)

    def work(link: Link, config: WorkerConfig) -> int:
        max_attempts = args.max_attempts or config.max_attempts
        print(client.submit(link, args.kind, params, inputs, max_attempts, timeout=args.timeout))
        return EXIT_OK

    return run_connected(args, work)


def _submit_batch(link: Link, config: WorkerConfig, args: argparse.Namespace, batch: client.BatchPlan) -> int:
    batch = replace(batch, max_attempts=args.max_attempts or config.max_attempts)
    try:
        with Ticker() as ticker:
            done = client.submit_batch(
                link, batch, progress=lambda stage, count, total: ticker.update(STAGES[stage], count, total)
            )
    except ArtifactError as exc:  # the store refused to delete what a purge left of the batch: not the input
        return fail("submit", exc, EXIT_FAILED)
    except KeyboardInterrupt:
        again = "run the same command again: it resumes, and submits nothing twice"
        return fail(
            "submit",
            f"interrupted; batch {batch.batch_id} may be partly submitted: {again}",
            EXIT_INTERRUPTED,
        )
    print(done.batch_id)
    earlier = len(done.job_ids) - done.recorded
    print(
        f"batch {done.batch_id}: {len(done.job_ids)} jobs; inputs: {done.uploaded} uploaded, {done.kept} "
        f"already there; {done.recorded} jobs recorded now{f', {earlier} before' if earlier else ''}; "
        f"{done.enqueued} enqueued",
        file=sys.stderr,
    )
    return EXIT_OK


def _wait_batch(link: Link, args: argparse.Namespace) -> int:
    with Ticker() as ticker:
        progress = client.wait_batch(
            link, args.batch, args.timeout,
            on_progress=lambda seen: ticker.update(
                batches.format_progress_short(seen), seen.succeeded + seen.failed, seen.total,
                line=client.format_batch_progress(seen),
            ),
        )  # fmt: skip
    print(json.dumps(progress.to_dict(), indent=2) if args.json else client.format_batch_progress(progress))
    if not progress.finished:
        return fail(
            "wait", f"batch {progress.batch_id} has not finished after {args.timeout:g}s", EXIT_TIMEOUT
        )
    return EXIT_OK if progress.all_succeeded else EXIT_FAILED


def _wait(args: argparse.Namespace) -> int:
    try:
        job_id = one_of_job_and_batch(args.job, args.batch)
    except client.RequestError as exc:
        return fail("wait", exc)
    if args.batch is not None:
        return run_connected(args, lambda link, _config: _wait_batch(link, args))

    def work(link: Link, _config: WorkerConfig) -> int:
        record = client.wait(link, job_id, args.timeout)
        if record is None:
            return fail("wait", f"job {job_id} has not finished after {args.timeout:g}s", EXIT_TIMEOUT)
        if args.json:
            print(json.dumps(record.to_dict(), indent=2, default=str))
        else:
            detail = json.dumps(record.result) if record.status == "succeeded" else record.error
            print(f"{record.status}: {detail}")
        return EXIT_OK if record.status == "succeeded" else EXIT_FAILED

    return run_connected(args, work)


def _status(args: argparse.Namespace) -> int:
    scaler = None
    if args.scaler_state is not None:  # read before connecting: a bad file is the input's fault
        try:
            scaler = describe_state(args.scaler_state)
        except StateFileError as exc:
            return fail("status", f"--scaler-state: {exc}")

    shown = False

    def work(link: Link, _config: WorkerConfig) -> int:
        nonlocal shown
        report = client.status(link, args.limit)
        if args.json:
            print(
                json.dumps(
                    {**report.to_dict(), **({"scaler": scaler} if scaler else {})}, indent=2, default=str
                )
            )
        else:
            print(client.format_status(report) + (f"\n{format_state(scaler)}" if scaler else ""))
        shown = True
        return EXIT_OK

    code = run_connected(args, work)
    if scaler and not shown and not args.json:
        # The state file needs no control plane, and a pool that is not scaling is what one looks for when the
        # control plane is gone (nothing is scaled then): shown still, the exit code saying what failed.
        print(format_state(scaler))
    return code
