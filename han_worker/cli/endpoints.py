"""``han-worker endpoints``: show which control plane a worker would use here, and why.

Exit 0 with the choice on stdout; exit 2 with the reason on stderr when mode ``pegasus`` cannot be
satisfied or an input is invalid (roles and drills branch on that, so no traceback for these).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from han_worker.selection.checks import worker_checks
from han_worker.selection.credentials import Credentials, CredentialsError, load_credentials_file
from han_worker.selection.endpoints import Endpoints, EndpointsError, load_endpoints_file, mac_endpoints
from han_worker.selection.policy import MODES, Probe, Selection, select
from han_worker.selection.probes import ProbeReport, probe_all, tcp_probe

log = logging.getLogger(__name__)

DEFAULT_ENDPOINTS_FILE = "~/.han/control-plane/endpoints.json"
EXIT_UNUSABLE = 2
_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")

MODES_HELP = """\
modes (as in the runbook):
  pegasus  use the Pegasus endpoints file; exit 2 with the reason when it is missing or unusable
  mac      always use the Mac's LAN endpoints, even when their probe fails
  auto     use Pegasus when its endpoints file is valid and healthy, otherwise fall back to the Mac
"""


@dataclass(frozen=True)
class Request:
    mode: str
    endpoints_file: Path
    mac_hosts: tuple[str, ...]
    mac_ports: Mapping[str, int]
    probe_timeout: float | None  # None: do not probe
    pegasus_credentials: Credentials | None
    mac_credentials: Credentials | None


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "endpoints",
        help="show which control plane (Pegasus or the Mac) this machine would use, and why",
        description="Select the control plane exactly as a worker does and print the choice.",
        epilog=MODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--mode", choices=MODES, help="selection mode (default: $CONTROL_PLANE_MODE, else auto)"
    )
    parser.add_argument(
        "--endpoints-file",
        type=Path,
        metavar="PATH",
        help=f"Pegasus endpoints file (default: $HAN_ENDPOINTS_FILE, else {DEFAULT_ENDPOINTS_FILE})",
    )
    parser.add_argument(
        "--credentials-file",
        type=Path,
        metavar="PATH",
        help="the Pegasus control plane's credentials: probe with them (PING, SELECT 1, bucket) rather than "
        "only connect (default: credentials.json beside the endpoints file, when it exists)",
    )
    parser.add_argument(
        "--mac-credentials-file",
        type=Path,
        metavar="PATH",
        help="the Mac control plane's credentials, to probe it the same way",
    )
    parser.add_argument(
        "--mac-host",
        action="append",
        metavar="ADDR",
        help="the Mac's LAN address, repeatable: the first healthy one wins (default: $MAC_LAN_IP)",
    )
    parser.add_argument(
        "--mac-port",
        action="append",
        default=[],
        metavar="SERVICE=PORT",
        help="a Mac service on a non-default port, repeatable (defaults: postgres=5432 redis=6379 s3=9000)",
    )
    parser.add_argument(
        "--probe-timeout",
        type=positive_seconds,
        default=2.0,
        metavar="SECONDS",
        help="overall deadline of the probes (default: 2.0)",
    )
    parser.add_argument("--no-probe", action="store_true", help="do not connect to any service")
    parser.add_argument("--json", action="store_true", help="print the selection as JSON")
    parser.set_defaults(handler=run)
    return parser


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds above 0."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds > 0")
    return seconds


def _check_host(host: str, origin: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.rstrip(".").split(".")
        if len(host) > 253 or not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels):
            raise EndpointsError(f"{origin}: {host!r} is neither an IP address nor a host name") from None
    return host


def _mac_ports(items: Sequence[str]) -> dict[str, int]:
    ports = {}
    for item in items:
        service, sep, port = item.partition("=")
        if not sep or not (port.isascii() and port.isdigit()):
            raise EndpointsError(f"--mac-port: {item!r} is not SERVICE=PORT (e.g. redis=6380)")
        ports[service] = int(port)
    return ports


def _mac_hosts(args: argparse.Namespace, mode: str) -> tuple[str, ...]:
    if args.mac_host:
        return tuple(_check_host(host, "--mac-host") for host in args.mac_host)
    env_host = os.environ.get("MAC_LAN_IP", "").strip()
    if env_host:
        return (_check_host(env_host, "MAC_LAN_IP"),)
    if mode == "pegasus":
        return ()
    raise EndpointsError(f"mode {mode} needs the Mac's LAN address: set MAC_LAN_IP or pass --mac-host")


def resolve_request(args: argparse.Namespace) -> Request:
    """Turn options and their environment defaults into one validated request."""
    mode = args.mode or os.environ.get("CONTROL_PLANE_MODE", "").strip() or "auto"
    if mode not in MODES:
        raise EndpointsError(f"CONTROL_PLANE_MODE: {mode!r} is not one of {', '.join(MODES)}")
    env_file = os.environ.get("HAN_ENDPOINTS_FILE", "").strip()
    endpoints_file = args.endpoints_file or Path(env_file or DEFAULT_ENDPOINTS_FILE)
    return Request(
        mode=mode,
        endpoints_file=endpoints_file.expanduser(),
        mac_hosts=_mac_hosts(args, mode),
        mac_ports=_mac_ports(args.mac_port),
        probe_timeout=None if args.no_probe else args.probe_timeout,
        pegasus_credentials=_credentials(
            _pegasus_credentials_file(args, endpoints_file), "--credentials-file"
        ),
        mac_credentials=_credentials(args.mac_credentials_file, "--mac-credentials-file"),
    )


def _credentials(path: Path | None, origin: str) -> Credentials | None:
    if path is None:
        return None
    try:
        return load_credentials_file(path.expanduser())
    except CredentialsError as exc:
        raise EndpointsError(f"{origin}: {exc}") from exc


def _pegasus_credentials_file(args: argparse.Namespace, endpoints_file: Path) -> Path | None:
    if args.credentials_file is not None:
        return Path(args.credentials_file)
    beside = endpoints_file.expanduser().parent / "credentials.json"
    return beside if beside.exists() else None


def _probe(request: Request, pegasus: Endpoints | EndpointsError | None) -> Probe | None:
    """Authenticated checks where credentials are known, else a TCP connect, all under one deadline."""
    timeout = request.probe_timeout
    if timeout is None:
        return None

    def probe(endpoints: Endpoints) -> ProbeReport:
        credentials = request.pegasus_credentials if endpoints is pegasus else request.mac_credentials
        if credentials is None:
            return tcp_probe(endpoints, timeout=timeout)
        return probe_all(endpoints, worker_checks(credentials), timeout)

    return probe


def choose(request: Request) -> Selection:
    macs = [mac_endpoints(host, request.mac_ports) for host in request.mac_hosts]
    pegasus: Endpoints | EndpointsError | None = None
    if request.mode != "mac":
        try:
            pegasus = load_endpoints_file(request.endpoints_file)
        except EndpointsError as exc:
            pegasus = exc
    return select(request.mode, pegasus=pegasus, mac=macs, probe=_probe(request, pegasus))


def _print_selection(selection: Selection) -> None:
    endpoints = selection.endpoints
    print(f"source: {selection.source}")
    for name, service in endpoints.services.items():
        print(f"{name}: {service.address}")
    print(f"reason: {selection.reason}")
    for result in selection.probes:
        print(f"probe: {result}")


def run(args: argparse.Namespace) -> int:
    try:
        selection = choose(resolve_request(args))
    except EndpointsError as exc:
        print(f"han-worker endpoints: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    log.debug("selected %s: %s", selection.source, selection.reason)
    if args.json:
        print(json.dumps(selection.to_dict(), indent=2))
    else:
        _print_selection(selection)
    return 0
