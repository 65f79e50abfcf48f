"""``han-control-plane run`` and ``han-control-plane init-secrets``: argument parsing and validation."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path

from han_worker.control_plane.addresses import local_address_in
from han_worker.control_plane.admin_secrets import SecretsError, ensure_secrets
from han_worker.control_plane.layout import DEFAULT_STATE_DIR, Layout
from han_worker.control_plane.supervisor import SupervisorConfig, run

log = logging.getLogger(__name__)

SERVICES = ("postgres", "redis", "s3")
EXIT_USAGE = 2


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run_parser = commands.add_parser(
        "run",
        help="start PostgreSQL, Redis and S3, publish the endpoints file, stop cleanly on SIGTERM",
        description="Run the control plane in the foreground until SIGTERM or SIGINT.",
    )
    _add_state_dir(run_parser)
    where = run_parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--bind", metavar="ADDR",
        help="the node's private address every service binds to (0.0.0.0 only with --allow-any-address)",
    )  # fmt: skip
    where.add_argument(
        "--bind-network", metavar="CIDR",
        help="bind the node's own address inside this network (a Slurm job learns its node only at start)",
    )  # fmt: skip
    run_parser.add_argument("--allow-any-address", action="store_true", help="permit --bind 0.0.0.0 or ::")
    run_parser.add_argument(
        "--source", choices=("pegasus", "mac"), default="pegasus", help="written to the file"
    )
    run_parser.add_argument(
        "--launch-mode", choices=("slurm", "direct"), default="direct",
        help="slurm: a batch job (job id and walltime end are published); direct: a background process",
    )  # fmt: skip
    run_parser.add_argument(
        "--port", action="append", default=[], metavar="SERVICE=PORT",
        help="a fixed port for postgres, redis or s3 (the Mac's are in the inventory); others are free ones",
    )  # fmt: skip
    run_parser.add_argument(
        "--client-network", action="append", default=[], metavar="CIDR",
        help="network that may log in to PostgreSQL (default: 127.0.0.0/8 for loopback --bind, else ADDR/32)",
    )  # fmt: skip
    run_parser.add_argument("--start-timeout", type=float, default=90.0, metavar="SECONDS")
    run_parser.set_defaults(handler=_run)

    init_parser = commands.add_parser(
        "init-secrets", help="create secrets.json with fresh random credentials unless it exists"
    )
    _add_state_dir(init_parser)
    init_parser.set_defaults(handler=_init_secrets)


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir", type=Path, default=Path(os.environ.get("HAN_CONTROL_PLANE_DIR", DEFAULT_STATE_DIR)),
        help=f"data, logs, secrets, endpoints (default: $HAN_CONTROL_PLANE_DIR, else {DEFAULT_STATE_DIR})",
    )  # fmt: skip


class UsageError(ValueError):
    """A flag's value is wrong; the message names the flag."""


def _bind_address(args: argparse.Namespace) -> str:
    if args.bind is not None:
        return _address(args.bind, args.allow_any_address)
    try:
        network = ipaddress.ip_network(args.bind_network, strict=False)
    except ValueError:
        raise UsageError(
            f"--bind-network: {args.bind_network!r} is not a network (e.g. 10.1.0.0/16)"
        ) from None
    found = local_address_in(network)
    if found is None:
        raise UsageError(f"--bind-network {network}: this machine has no address in it")
    return _address(found, args.allow_any_address)


def _address(text: str, allow_any: bool) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise UsageError(f"--bind: {text!r} is not an IP address") from None
    if address.is_unspecified and not allow_any:
        raise UsageError(
            f"--bind: {text} would listen on every interface; pass --allow-any-address to mean it"
        )
    return str(address)


def _ports(items: list[str]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in SERVICES:
            raise UsageError(f"--port {item}: service must be one of {', '.join(SERVICES)}")
        if not value.isdigit() or not 1 <= int(value) <= 65535:
            raise UsageError(f"--port {item}: port must be a number from 1 to 65535")
        ports[name] = int(value)
    if len(set(ports.values())) != len(ports):
        raise UsageError("--port: two services cannot share a port")
    return ports


def _networks(items: list[str], address: str) -> tuple[str, ...]:
    if not items:
        return ("127.0.0.0/8",) if ipaddress.ip_address(address).is_loopback else (f"{address}/32",)
    networks = []
    for item in items:
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise UsageError(f"--client-network: {item!r} is not a network (e.g. 10.1.0.0/16)") from None
    return tuple(networks)


def _config(args: argparse.Namespace) -> SupervisorConfig:
    address = _bind_address(args)
    if args.start_timeout <= 0:
        raise UsageError("--start-timeout: must be more than 0 seconds")
    return SupervisorConfig(
        state_dir=args.state_dir.expanduser(),
        address=address,
        source=args.source,
        launch_mode=args.launch_mode,
        ports=_ports(args.port),
        client_networks=_networks(args.client_network, address),
        start_timeout=args.start_timeout,
    )


def _run(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
    except UsageError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    if config.launch_mode == "slurm" and not os.environ.get("SLURM_JOB_ID"):
        log.error("--launch-mode slurm: SLURM_JOB_ID is not set; run it inside a Slurm batch job")
        return EXIT_USAGE
    try:
        return run(config)
    except SecretsError as exc:
        log.error("%s", exc)
        return EXIT_USAGE


def _init_secrets(args: argparse.Namespace) -> int:
    layout = Layout(args.state_dir.expanduser())
    layout.make_dirs()
    try:
        _, created = ensure_secrets(layout.secrets_file)
    except SecretsError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    print(f"{'created' if created else 'kept existing'} {layout.secrets_file}")
    return 0
