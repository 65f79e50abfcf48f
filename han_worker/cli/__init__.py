"""Command-line entry points: ``han-worker`` and ``han-control-plane``.

Each sub-command lives in its own module (han_worker.cli.commands says which); this file only wires argparse
and exit codes, and imports only the module of the command being run.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Collection, Sequence

from han_worker import __version__
from han_worker.cli.commands import WORKER_COMMANDS

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


def build_worker_parser(whole: Collection[str] | None = None) -> argparse.ArgumentParser:
    """han-worker's parser: every sub-command whole, or only the commands ``whole`` names (and the others of
    their modules), the rest by name and summary: enough for --help and for an unknown command's error."""
    parser = _base_parser(
        "han-worker",
        "The han lab worker: selects a control plane (Pegasus or the Mac) and runs jobs from its queues.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = {entry.module for name, entry in WORKER_COMMANDS.items() if whole is None or name in whole}
    added: set[str] = set()
    for name, entry in WORKER_COMMANDS.items():
        if entry.module not in wanted:
            commands.add_parser(name, help=entry.summary)
        elif entry.module not in added:
            importlib.import_module(f"han_worker.cli.{entry.module}").add_parsers(commands)
            added.add(entry.module)
    return parser


def command_named(argv: Sequence[str]) -> str | None:
    """The sub-command argv runs: its first word that is not an option (han-worker's own options take no
    value), or None when there is none or it is not a command (argparse then says so, or prints --help)."""
    word = next((word for word in argv if not word.startswith("-")), None)
    return word if word in WORKER_COMMANDS else None


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
    words = list(sys.argv[1:] if argv is None else argv)
    command = command_named(words)
    args = build_worker_parser(whole=[command] if command else []).parse_args(words)
    args.argv = words  # what `run --restart-crashed` runs again
    _configure_logging(args.verbose)
    return int(args.handler(args))


def control_plane_main(argv: Sequence[str] | None = None) -> int:
    args = build_control_plane_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `run --restart-crashed` runs again
    _configure_logging(args.verbose)
    return int(args.handler(args))
