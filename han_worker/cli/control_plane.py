"""``han-control-plane`` sub-commands: argument parsing, validation and exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import logging
import os
from pathlib import Path

from han_worker.control_plane import launch, rotation
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
    _add_run_arguments(run_parser)
    run_parser.set_defaults(handler=_run)

    start_parser = commands.add_parser(
        "start",
        help="direct launch mode: run in the background; return once the endpoints are published",
        description="Start `run` as a background process unless one runs on this state directory.",
    )
    _add_run_arguments(start_parser)
    start_parser.add_argument("--wait", type=float, default=120.0, metavar="SECONDS", help="(default: 120)")
    start_parser.set_defaults(handler=_start)

    stop_parser = commands.add_parser(
        "stop", help="SIGTERM the background supervisor and wait until it is down"
    )
    _add_state_dir(stop_parser)
    stop_parser.add_argument("--wait", type=float, default=120.0, metavar="SECONDS", help="(default: 120)")
    stop_parser.set_defaults(handler=_stop)

    status_parser = commands.add_parser(
        "status", help="is a supervisor running here, and are its endpoints published"
    )
    _add_state_dir(status_parser)
    status_parser.add_argument("--json", action="store_true", help="print the status as JSON")
    status_parser.set_defaults(handler=_status)

    init_parser = commands.add_parser(
        "init-secrets", help="create secrets.json with fresh random credentials unless it exists"
    )
    _add_state_dir(init_parser)
    init_parser.set_defaults(handler=_init_secrets)

    rotate_parser = commands.add_parser(
        "rotate",
        help="rotate every credential of the running control plane (begin; then --retire the old ones)",
        description=(
            "Begin: record new secrets, make every service accept them beside the old ones where it can "
            "(PostgreSQL cannot: open sessions keep working, new ones need the new password) and publish the "
            "workers' new credentials file; workers move to it between two jobs. --retire: once every "
            "registered worker uses the new generation, remove the old credentials and check that each is "
            "refused. Run on the control plane's node, as its user. Either phase can be run again after a "
            "failure; it resumes. Prints a JSON report (names and generations, never a secret)."
        ),
    )
    _add_state_dir(rotate_parser)
    rotate_parser.add_argument("--retire", action="store_true", help="phase 2: retire the old credentials")
    rotate_parser.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS",
        help="deadline of each connection to a service (default: 10)",
    )  # fmt: skip
    rotate_parser.add_argument(
        "--wait-workers", type=float, default=300.0, metavar="SECONDS",
        help="--retire: how long to wait for every worker to use the new credentials (default: 300)",
    )  # fmt: skip
    rotate_parser.set_defaults(handler=_rotate)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    _add_state_dir(parser)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--bind", metavar="ADDR",
        help="the node's private address every service binds to (0.0.0.0 only with --allow-any-address)",
    )  # fmt: skip
    where.add_argument(
        "--bind-network", metavar="CIDR",
        help="bind the node's own address inside this network (a Slurm job learns its node only at start)",
    )  # fmt: skip
    parser.add_argument("--allow-any-address", action="store_true", help="permit --bind 0.0.0.0 or ::")
    parser.add_argument("--source", choices=("pegasus", "mac"), default="pegasus", help="written to the file")
    parser.add_argument(
        "--launch-mode", choices=("slurm", "direct"), default="direct",
        help="slurm: a batch job (job id and walltime end are published); direct: a background process",
    )  # fmt: skip
    parser.add_argument(
        "--port", action="append", default=[], metavar="SERVICE=PORT",
        help="a fixed port for postgres, redis or s3 (the Mac's are in the inventory); others are free ones",
    )  # fmt: skip
    parser.add_argument(
        "--client-network", action="append", default=[], metavar="CIDR",
        help="network that may log in to PostgreSQL (default: 127.0.0.0/8 for loopback --bind, else ADDR/32)",
    )  # fmt: skip
    parser.add_argument("--start-timeout", type=float, default=90.0, metavar="SECONDS")


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
        name, _equals, value = item.partition("=")
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


def _run_argv(config: SupervisorConfig) -> list[str]:
    """The validated configuration as ``run`` arguments, for the background process."""
    argv = ["--bind", config.address, "--source", config.source, "--launch-mode", config.launch_mode]
    argv += ["--start-timeout", str(config.start_timeout), "--allow-any-address"]  # the address is checked
    argv += [f"--port={name}={port}" for name, port in config.ports.items()]
    argv += [f"--client-network={network}" for network in config.client_networks]
    return argv


def _start(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
        started = launch.start(Layout(config.state_dir), _run_argv(config), timeout=args.wait)
    except (UsageError, launch.BackgroundError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE if isinstance(exc, UsageError) else 1
    print("started" if started else "already running")
    return 0


def _stop(args: argparse.Namespace) -> int:
    try:
        stopped = launch.stop(Layout(args.state_dir.expanduser()), timeout=args.wait)
    except launch.BackgroundError as exc:
        log.error("%s", exc)
        return 1
    print("stopped" if stopped else "not running")
    return 0


def _status(args: argparse.Namespace) -> int:
    current = launch.status(Layout(args.state_dir.expanduser()))
    if args.json:
        print(json.dumps(dataclasses.asdict(current)))
    else:
        state = "running" if current.running else "not running"
        published = f", endpoints published (epoch {current.epoch})" if current.published else ""
        print(f"{state}{f' (pid {current.pid})' if current.pid else ''}{published}")
    return 0


def _init_secrets(args: argparse.Namespace) -> int:
    layout = Layout(args.state_dir.expanduser())
    layout.make_dirs()
    try:
        _secrets, created = ensure_secrets(layout.secrets_file)
    except SecretsError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    print(f"{'created' if created else 'kept existing'} {layout.secrets_file}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        log.error("--timeout: must be more than 0 seconds, not %s", args.timeout)
        return EXIT_USAGE
    if not args.wait_workers >= 0:
        log.error("--wait-workers: must be 0 seconds or more, not %s", args.wait_workers)
        return EXIT_USAGE
    layout = Layout(args.state_dir.expanduser())
    try:
        if args.retire:
            report = rotation.retire(layout, args.timeout, args.wait_workers)
        else:
            report = rotation.begin(layout, args.timeout)
    except (rotation.RotationError, SecretsError) as exc:
        log.error("rotation: %s", exc)
        return 1
    print(json.dumps(report.to_dict()))
    return 0
