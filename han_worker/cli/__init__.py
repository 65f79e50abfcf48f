"""Command-line entry points: ``han-worker`` and ``han-control-plane``.

Each sub-command lives in its own module; this file only wires argparse and exit codes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from han_worker import __version__
from han_worker.cli import endpoints as endpoints_cli
from han_worker.cli import harden_check
from han_worker.cli import jobs as jobs_cli
from han_worker.cli import purge as purge_cli
from han_worker.cli import queues as queues_cli
from han_worker.cli import repair as repair_cli
from han_worker.cli import results as results_cli
from han_worker.cli import scale as scale_cli
from han_worker.cli import top as top_cli

log = logging.getLogger(__name__)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    return parser


def build_worker_parser() -> argparse.ArgumentParser:
    parser = _base_parser(
        "han-worker",
        "The han lab worker: selects a control plane (Pegasus or the Mac) and runs jobs from its queues.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    endpoints_cli.add_parser(commands)
    jobs_cli.add_parsers(commands)
    results_cli.add_parsers(commands)
    repair_cli.add_parsers(commands)
    purge_cli.add_parser(commands)
    queues_cli.add_parser(commands)
    scale_cli.add_parser(commands)
    top_cli.add_parser(commands)
    harden_check.add_parser(commands)
    return parser


def build_control_plane_parser() -> argparse.ArgumentParser:
    parser = _base_parser(
        "han-control-plane",
        "Supervisor of the han control plane (PostgreSQL, Redis, S3): starts the services, waits until "
        "they are healthy, publishes the endpoints file and stops them cleanly on SIGTERM.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Imported here: the control plane's modules (supervisor, services, their clients) take ~0.45 s to import,
    # which every han-worker command (a batch submission takes ~0.3 s) would otherwise pay.
    from han_worker.cli import control_plane as control_plane_cli  # noqa: PLC0415

    control_plane_cli.add_parsers(commands)
    return parser


def worker_main(argv: Sequence[str] | None = None) -> int:
    args = build_worker_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `run --restart-crashed` runs again
    _configure_logging(args.verbose)
    return int(args.handler(args))


def control_plane_main(argv: Sequence[str] | None = None) -> int:
    args = build_control_plane_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `run --restart-crashed` runs again
    _configure_logging(args.verbose)
    return int(args.handler(args))
