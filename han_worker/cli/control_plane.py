"""``han-control-plane`` sub-commands: argument parsing, validation and exit codes.

Exit codes: 0 done; 1 the control plane did not start, stop or rotate as asked (the message says why);
2 bad input (the message names the flag and the problem). Errors are one line on stderr,
``han-control-plane <command>: <message>``, as ``han-worker`` prints its own; never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import ipaddress
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from han_worker.cli.options import non_negative_seconds, path_argument, positive_seconds
from han_worker.control_plane import keeper, launch, rotation
from han_worker.control_plane.addresses import local_address_in
from han_worker.control_plane.admin_secrets import SecretsError, ensure_secrets
from han_worker.control_plane.layout import DEFAULT_STATE_DIR, Layout
from han_worker.control_plane.retention import INTERVAL_S, MAX_DAYS
from han_worker.control_plane.supervisor import SupervisorConfig, run
from han_worker.fields import shown

log = logging.getLogger(__name__)

SERVICES = ("postgres", "redis", "s3", "metrics")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
Handler = Callable[[argparse.Namespace], int]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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
    start_parser.add_argument(
        "--wait", type=positive_seconds, default=120.0, metavar="SECONDS",
        help="how long to wait for the endpoints to be published before giving up (default: 120)",
    )  # fmt: skip
    start_parser.set_defaults(handler=_start)

    stop_parser = commands.add_parser(
        "stop",
        help="SIGTERM the background supervisor and wait until it is down",
        description="Stop the supervisor that `start` left running on this state directory: SIGTERM (the "
        "services stop cleanly, the endpoints are marked stale), then wait until it has released its lock. "
        "Prints `stopped`, or `not running` when none runs there.",
    )
    _add_state_dir(stop_parser)
    stop_parser.add_argument(
        "--wait", type=non_negative_seconds, default=120.0, metavar="SECONDS",
        help="how long to wait for it to be down before exit 1 (default: 120)",
    )  # fmt: skip
    stop_parser.set_defaults(handler=_stop)

    status_parser = commands.add_parser(
        "status",
        help="is a supervisor running here, and are its endpoints published",
        description="Say whether a supervisor holds this state directory's lock (and its pid), whether "
        "its endpoints are published (and their epoch), and, while they are not, why the last supervisor "
        "could not start or stopped on a crash. Read-only.",
    )
    _add_state_dir(status_parser)
    status_parser.add_argument("--json", action="store_true", help="print the status as JSON")
    status_parser.set_defaults(handler=_status)

    init_parser = commands.add_parser(
        "init-secrets",
        help="create secrets.json with fresh random credentials unless it exists",
        description="Generate the control plane's secrets (0600, in the 0700 state directory) unless they "
        "exist; existing ones are checked and kept. `run` does the same at its start.",
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
        "--timeout", type=positive_seconds, default=10.0, metavar="SECONDS",
        help="deadline of each connection to a service (default: 10)",
    )  # fmt: skip
    rotate_parser.add_argument(
        "--wait-workers", type=non_negative_seconds, default=300.0, metavar="SECONDS",
        help="--retire: how long to wait for every worker to use the new credentials (default: 300)",
    )  # fmt: skip
    rotate_parser.set_defaults(handler=_rotate)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    _add_state_dir(parser)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--bind", metavar="ADDR",
        help="the node's private address every service binds to, and the one the endpoints file publishes",
    )  # fmt: skip
    where.add_argument(
        "--bind-network", metavar="CIDR",
        help="bind the node's own address inside this network (a Slurm job learns its node only at start)",
    )  # fmt: skip
    parser.add_argument("--source", choices=("pegasus", "mac"), default="pegasus", help="written to the file")
    parser.add_argument(
        "--launch-mode", choices=("slurm", "direct"), default="direct",
        help="slurm: a batch job (job id and walltime end are published); direct: a background process",
    )  # fmt: skip
    parser.add_argument(
        "--port", action="append", default=[], metavar="SERVICE=PORT",
        help="a fixed port for postgres, redis, s3 or metrics (the Mac's are in the inventory); others are "
        "free ones",
    )  # fmt: skip
    parser.add_argument(
        "--client-network", action="append", default=[], metavar="CIDR",
        help="network that may log in to PostgreSQL (default: 127.0.0.0/8 for loopback --bind, else ADDR/32)",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-targets-file", type=path_argument, metavar="PATH",
        help="where to write Prometheus's file_sd target for /metrics at each start (default: "
        "metrics-targets.json in the state directory)",
    )  # fmt: skip
    parser.add_argument(
        "--start-timeout", type=positive_seconds, default=90.0, metavar="SECONDS",
        help="how long each service may take to answer before the start is given up (default: 90)",
    )  # fmt: skip
    parser.add_argument(
        "--retention-days", type=retention_days, default=0, metavar="DAYS",
        help="purge the jobs finished more than DAYS days ago, and their objects, every --retention-interval "
        f"(the first a few minutes after the start); 0 keeps every job (default: 0; at most {MAX_DAYS})",
    )  # fmt: skip
    parser.add_argument(
        "--retention-interval", type=positive_seconds, default=INTERVAL_S, metavar="SECONDS",
        help=f"how often --retention-days purges (default: {INTERVAL_S:g})",
    )  # fmt: skip
    parser.add_argument(
        "--restart-crashed", action="store_true",
        help="run the supervisor as a child process and start it again when it is killed (not when it exits "
        "0, 1, 2 or 3: stopped, start given up, bad input, crash loop), up to 5 times in 10 minutes; SIGTERM "
        "and SIGINT are passed on to it: for a Slurm job, which should not end with its supervisor",
    )  # fmt: skip


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir", type=path_argument,
        default=Path(os.environ.get("HAN_CONTROL_PLANE_DIR", DEFAULT_STATE_DIR)),
        help=f"data, logs, secrets, endpoints (default: $HAN_CONTROL_PLANE_DIR, else {DEFAULT_STATE_DIR})",
    )  # fmt: skip


def retention_days(text: str) -> int:
    """argparse type: whole days from 0 (keep every job) to a century."""
    if not (text.isascii() and text.isdigit() and len(text) <= 6) or int(text) > MAX_DAYS:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a whole number of days from 0 to {MAX_DAYS}")
    return int(text)


class UsageError(ValueError):
    """A flag's value is wrong; the message names the flag."""


def _command(name: str) -> Callable[[Handler], Handler]:
    """Map a sub-command's errors to exit codes and one line on stderr."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def handle(args: argparse.Namespace) -> int:
            try:
                return handler(args)
            except (UsageError, SecretsError) as exc:
                return _fail(name, exc, EXIT_USAGE)
            except (launch.BackgroundError, rotation.RotationError) as exc:
                return _fail(name, exc, EXIT_FAILED)
            except OSError as exc:  # the state directory or a file in it cannot be used
                where = f"{exc.filename}: " if exc.filename else ""
                return _fail(name, f"{where}{exc.strerror or exc}", EXIT_USAGE)

        return handle

    return wrap


def _fail(command: str, message: object, code: int) -> int:
    print(f"han-control-plane {command}: {message}", file=sys.stderr)
    return code


def _state_layout(args: argparse.Namespace, *, must_exist: bool) -> Layout:
    """The --state-dir's layout, refused when it cannot be one: under a file, or missing where needed."""
    path = Path(args.state_dir).expanduser()
    existing = next((candidate for candidate in (path, *path.parents) if candidate.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == path else f"is under {existing}, which is a file"
        raise UsageError(f"--state-dir {path}: {where}, not a directory")
    if must_exist and not path.is_dir():
        raise UsageError(f"--state-dir {path}: does not exist (no control plane was started there)")
    return Layout(path)


def _network(text: str, flag: str) -> IPNetwork:
    # A zone id (fe80::%eth0/64) is free text after the %, newlines included, and would reach pg_hba.conf.
    try:
        if "%" in text:
            raise ValueError(text)
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise UsageError(
            f"{flag}: {shown(text)} is not a network without zone id (e.g. 10.1.0.0/16)"
        ) from None


def _bind_address(args: argparse.Namespace) -> str:
    if args.bind is not None:
        return _address(args.bind)
    network = _network(args.bind_network, "--bind-network")
    found = local_address_in(network)
    if found is None:
        raise UsageError(f"--bind-network {network}: this machine has no address in it")
    return _address(found)


def _address(text: str) -> str:
    try:
        if "%" in text:  # a zone id is free text; services take a plain address
            raise ValueError(text)
        address = ipaddress.ip_address(text)
    except ValueError:
        raise UsageError(f"--bind: {shown(text)} is not an IP address without zone id") from None
    if address.is_multicast:
        raise UsageError(f"--bind: {text} is a multicast address; a service binds a unicast one")
    if address.is_unspecified:  # published as the services' host, it would name no server a worker reaches
        raise UsageError(
            f"--bind: {text} would listen on every interface, and the endpoints file publishes the address "
            "bound, which must name this node: give its private address (or --bind-network)"
        )
    return str(address)


def _ports(items: list[str]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for item in items:
        name, _equals, value = item.partition("=")
        if name not in SERVICES:
            raise UsageError(f"--port {shown(item)}: service must be one of {', '.join(SERVICES)}")
        if not (value.isascii() and value.isdigit() and len(value) <= 5) or not 1 <= int(value) <= 65535:
            raise UsageError(f"--port {shown(item)}: port must be a number from 1 to 65535")
        ports[name] = int(value)
    if len(set(ports.values())) != len(ports):
        raise UsageError("--port: two services cannot share a port")
    return ports


def _networks(items: list[str], address: str) -> tuple[str, ...]:
    if not items:
        return ("127.0.0.0/8",) if ipaddress.ip_address(address).is_loopback else (f"{address}/32",)
    return tuple(str(_network(item, "--client-network")) for item in items)


def _config(args: argparse.Namespace) -> SupervisorConfig:
    address = _bind_address(args)
    ports, networks = _ports(args.port), _networks(args.client_network, address)
    layout = _state_layout(args, must_exist=False)  # after every flag: a refusal touches no file
    return SupervisorConfig(
        state_dir=layout.root,
        address=address,
        source=args.source,
        launch_mode=args.launch_mode,
        ports=ports,
        client_networks=networks,
        start_timeout=args.start_timeout,
        retention_days=args.retention_days,
        retention_interval=args.retention_interval,
        metrics_targets_file=(
            None
            if args.metrics_targets_file is None
            else Path(args.metrics_targets_file).expanduser().absolute()
        ),
    )


@_command("run")
def _run(args: argparse.Namespace) -> int:
    config = _config(args)
    if config.launch_mode == "slurm" and not os.environ.get("SLURM_JOB_ID"):
        raise UsageError("--launch-mode slurm: SLURM_JOB_ID is not set; run it inside a Slurm batch job")
    if args.restart_crashed:  # after every check: a refusal is said once, by the keeper itself
        return keeper.keep(Layout(config.state_dir), args.argv)
    return run(config)


def _run_argv(config: SupervisorConfig, restart_crashed: bool) -> list[str]:
    """The validated configuration as ``run`` arguments, for the background process."""
    argv = ["--bind", config.address, "--source", config.source, "--launch-mode", config.launch_mode]
    argv += ["--restart-crashed"] if restart_crashed else []
    argv += ["--start-timeout", str(config.start_timeout)]
    argv += [f"--port={name}={port}" for name, port in config.ports.items()]
    argv += [f"--client-network={network}" for network in config.client_networks]
    if config.metrics_targets_file is not None:
        argv += [f"--metrics-targets-file={config.metrics_targets_file}"]
    if config.retention_days:
        argv += [
            f"--retention-days={config.retention_days}",
            f"--retention-interval={config.retention_interval}",
        ]
    return argv


@_command("start")
def _start(args: argparse.Namespace) -> int:
    config = _config(args)
    started = launch.start(
        Layout(config.state_dir), _run_argv(config, args.restart_crashed), timeout=args.wait
    )
    print("started" if started else "already running")
    return EXIT_OK


@_command("stop")
def _stop(args: argparse.Namespace) -> int:
    stopped = launch.stop(_state_layout(args, must_exist=False), timeout=args.wait)
    print("stopped" if stopped else "not running")
    return EXIT_OK


@_command("status")
def _status(args: argparse.Namespace) -> int:
    current = launch.status(_state_layout(args, must_exist=False))
    if args.json:
        print(json.dumps(dataclasses.asdict(current)))
    else:
        state = "running" if current.running else "not running"
        published = f", endpoints published (epoch {current.epoch})" if current.published else ""
        kept = f", kept by pid {current.keeper_pid}" if current.keeper_pid else ""
        print(f"{state}{f' (pid {current.pid})' if current.pid else ''}{kept}{published}")
        if current.failure and not current.published:
            print(f"last failure: {current.failure}")
    return EXIT_OK


@_command("init-secrets")
def _init_secrets(args: argparse.Namespace) -> int:
    layout = _state_layout(args, must_exist=False)
    layout.make_dirs()
    _secrets, created = ensure_secrets(layout.secrets_file)
    print(f"{'created' if created else 'kept existing'} {layout.secrets_file}")
    return EXIT_OK


@_command("rotate")
def _rotate(args: argparse.Namespace) -> int:
    layout = _state_layout(args, must_exist=True)
    if args.retire:
        report = rotation.retire(layout, args.timeout, args.wait_workers)
    else:
        report = rotation.begin(layout, args.timeout)
    print(json.dumps(report.to_dict()))
    return EXIT_OK
