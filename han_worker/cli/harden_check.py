"""``han-worker harden-check``: its flags, its --help text, and its exit codes."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
from pathlib import Path

from han_worker.cli.commands import summary
from han_worker.cli.options import path_argument, positive_seconds
from han_worker.control_plane.hardening.checker import CheckConfig, run_checks
from han_worker.control_plane.hardening.listen import AddressPolicy, make_policy
from han_worker.control_plane.hardening.report import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    FAIL,
    HardeningInputError,
    format_table,
)
from han_worker.control_plane.layout import DEFAULT_STATE_DIR
from han_worker.fields import shown

log = logging.getLogger(__name__)

DEFAULT_ENV_DIR = "~/.han/env"

# --help's text: what the package docstring says, in plain words (argparse prints it as it is).
DESCRIPTION = (
    "Verify the hardening of the control plane running on this host (read-only; run it as the control "
    "plane's user). Prints one row per check with pass, fail or warn: listen (every port binds the private "
    "address), auth (no credentials and minioadmin are refused by Redis, PostgreSQL and S3), mode (state, "
    "data, endpoints, credentials and secrets files are ours and private), leak (no secret in the process "
    "list, the environment, logs or the Slurm job), pg-hba, redis-config, s3-config and secrets (no weak "
    "authentication). Secret values are compared, never printed. Exit 0 when nothing failed, 1 when a "
    "check failed, 2 on bad input."
)


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "harden-check",
        help=summary("harden-check"),
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(handler=handle)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _add_location_arguments(parser)
    _add_policy_arguments(parser)
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=5.0,
        metavar="SECONDS",
        help="deadline of each connection attempt (default 5)",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    return parser


def _add_location_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=path_argument,
        default=Path(DEFAULT_STATE_DIR),
        metavar="DIR",
        help=f"the control plane's state directory (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--env-dir",
        type=path_argument,
        default=Path(DEFAULT_ENV_DIR),
        metavar="DIR",
        help=f"the env its programs run from (default {DEFAULT_ENV_DIR})",
    )


def _add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bind-address",
        action="append",
        default=[],
        metavar="IP",
        help="the configured private address (repeatable)",
    )
    parser.add_argument(
        "--bind-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="the configured private network (repeatable)",
    )
    parser.add_argument(
        "--allow-any-address",
        action="store_true",
        help="a bind to 0.0.0.0 or :: is a warning, not a failure (the operator asked for it)",
    )


def _checked_inputs(args: argparse.Namespace) -> tuple[AddressPolicy, Path]:
    """The address policy and the state directory, or HardeningInputError naming the flag."""
    _refuse_odd_addresses(args)
    policy = make_policy(args.bind_address, args.bind_network, args.allow_any_address)
    state_dir = Path(args.state_dir).expanduser()
    if not state_dir.is_dir():
        raise HardeningInputError(f"--state-dir: {state_dir} is not a directory")
    return policy, state_dir


def _refuse_odd_addresses(args: argparse.Namespace) -> None:
    """What make_policy would take but no service binds: zone ids (free text after %) and multicast."""
    for flag, values in (("--bind-address", args.bind_address), ("--bind-network", args.bind_network)):
        for value in values:
            if "%" in value:
                raise HardeningInputError(
                    f"{flag}: {shown(value)} has a zone id (%...); give a plain address"
                )
            if _is_multicast(value):
                raise HardeningInputError(f"{flag}: {value} is multicast, not a service's address")


def _is_multicast(text: str) -> bool:
    try:
        return ipaddress.ip_network(text, strict=False).is_multicast
    except ValueError:  # not an address at all: make_policy says so
        return False


def handle(args: argparse.Namespace) -> int:
    try:
        policy, state_dir = _checked_inputs(args)
    except HardeningInputError as exc:
        print(f"han-worker harden-check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    env_dir = Path(args.env_dir).expanduser()
    rows = run_checks(CheckConfig(state_dir=state_dir, env_dir=env_dir, policy=policy, timeout=args.timeout))
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=1))
    else:
        print(format_table(rows))
    failed = [row for row in rows if row.result == FAIL]
    log.debug("%d checks, %d failed", len(rows), len(failed))
    return EXIT_FAILED if failed else EXIT_OK
