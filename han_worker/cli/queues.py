"""``han-worker queues``: which queues a worker on this machine can serve, and which backends run them.

``--check LIST`` answers the one question a deploying play needs before it submits workers: can a worker
here serve these queues? It asks exactly what ``han-worker run`` asks at its start (the platform, and
whether each backend's dependencies import), so exit 0 means the worker will not refuse them, and exit 2
comes with the same reason the worker would stop with (e.g. that training is Windows-only).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from han_worker.backends import UnsupportedQueue, load_backends, worker_platform
from han_worker.cli.commands import summary
from han_worker.config import WorkerConfigError, parse_queues
from han_worker.worker.loop import backends_to_serve

log = logging.getLogger(__name__)

EXIT_OK, EXIT_REFUSED = 0, 2


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "queues",
        help=summary("queues"),
        description="List every registered backend's queue and whether a worker on this machine can serve "
        "it; with --check, exit 2 with the reason when one of the given queues cannot be served here.",
    )
    parser.add_argument(
        "--check",
        metavar="LIST",
        help="comma-separated queues to check (exit 2 with the reason when one cannot be served here)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run)


def servable_queues(platform: str) -> dict[str, list[str]]:
    """Every queue some backend serves -> the job kinds a worker serving ``platform`` runs from it."""
    table: dict[str, list[str]] = {}
    for backend in load_backends().values():
        kinds = table.setdefault(backend.queue, [])
        if platform in backend.platforms:
            kinds.append(backend.name)
    return {queue: sorted(kinds) for queue, kinds in sorted(table.items())}


def check(text: str) -> tuple[str, ...]:
    """The queues in ``text``; raises WorkerConfigError or UnsupportedQueue with the reason."""
    queues = parse_queues(text, "--check")
    try:
        backends_to_serve(queues)
    except UnsupportedQueue as exc:
        raise UnsupportedQueue(f"--check: {exc}") from exc
    return queues


def run(args: argparse.Namespace) -> int:
    try:  # HAN_WORKER_STANDIN_PLATFORM counts here as it does for `han-worker run`
        platform = worker_platform().serves
        if args.check is not None:
            queues = check(args.check)
    except (WorkerConfigError, UnsupportedQueue) as exc:
        print(f"han-worker queues: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.check is not None:
        result: object = {"platform": platform, "queues": list(queues), "ok": True}
        print(json.dumps(result) if args.json else f"ok: {', '.join(queues)} can be served here")
        return EXIT_OK
    table = servable_queues(platform)
    if args.json:
        print(json.dumps({"platform": platform, "queues": table}))
        return EXIT_OK
    for queue, kinds in table.items():
        print(f"{queue}: {', '.join(kinds) if kinds else 'not on ' + platform}")
    return EXIT_OK
