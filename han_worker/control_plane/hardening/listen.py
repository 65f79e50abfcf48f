"""Where the control plane listens: ``ss`` output parsed, and each address judged against the policy.

Every port of the supervisor's process tree must bind the configured private address, or the node's
loopback for SeaweedFS's internal ports (every user of the node reaches those: the ``open`` check knocks on
each, :mod:`~han_worker.control_plane.hardening.open_ports`); 0.0.0.0 or ``::`` fails unless the operator
allowed it.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from han_worker.control_plane.hardening.report import FAIL, PASS, WARN, HardeningInputError, Row

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

INTERNAL_ADDRESS = ipaddress.ip_address("127.0.0.1")
SS_ARGV = ("ss", "-H", "-l", "-n", "-p", "-t", "-u")
_SS_PROCESS = re.compile(r'\("([^"]*)",pid=(\d+),fd=\d+\)')
_SS_NETIDS = frozenset({"tcp", "udp", "raw", "u_str", "u_dgr", "u_seq"})


@dataclass(frozen=True)
class Listener:
    protocol: str
    address: str  # as ss prints it, without brackets or %interface: 0.0.0.0, ::, *, 127.0.0.1
    port: int
    pids: tuple[int, ...]
    programs: tuple[str, ...]

    @property
    def endpoint(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"

    @property
    def who(self) -> str:
        return ",".join(self.programs) or "?"


def parse_ss(text: str) -> list[Listener]:
    """Listeners from ``ss -H -l -n -p -t -u`` (with or without its header line and Netid column)."""
    listeners = (_parse_ss_line(line) for line in text.splitlines())
    return [listener for listener in listeners if listener is not None]


def _parse_ss_line(line: str) -> Listener | None:
    fields = line.split()
    if not fields or fields[0] in {"Netid", "State"}:
        return None
    protocol = "tcp"
    if fields[0] in _SS_NETIDS:
        protocol, fields = fields[0], fields[1:]
    if protocol not in {"tcp", "udp"} or len(fields) < 4:
        return None
    host, _colon, port_text = fields[3].rpartition(":")  # State Recv-Q Send-Q Local Peer [Process]
    if not port_text.isdigit():
        return None  # a wildcard port (*) is not a listener of ours
    processes = _SS_PROCESS.findall(line)
    return Listener(
        protocol=protocol,
        address=host.removeprefix("[").removesuffix("]").split("%")[0],
        port=int(port_text),
        pids=tuple(sorted({int(pid) for _name, pid in processes})),
        programs=tuple(sorted({name for name, _pid in processes})),
    )


@dataclass(frozen=True)
class AddressPolicy:
    """The private address(es) the control plane may bind, as the inventory configures them."""

    addresses: frozenset[IPAddress] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    allow_any: bool = False

    def is_private(self, address: IPAddress) -> bool:
        return address in self.addresses or any(
            address.version == network.version and address in network for network in self.networks
        )

    def describe(self) -> str:
        parts = [str(a) for a in sorted(self.addresses, key=str)] + [str(n) for n in self.networks]
        return ", ".join(parts) or "nothing configured"


def make_policy(addresses: Sequence[str], networks: Sequence[str], allow_any: bool) -> AddressPolicy:
    try:
        parsed_addresses = frozenset(ipaddress.ip_address(text) for text in addresses)
    except ValueError as exc:
        raise HardeningInputError(f"--bind-address: {exc}") from None
    try:
        parsed_networks = tuple(ipaddress.ip_network(text, strict=False) for text in networks)
    except ValueError as exc:
        raise HardeningInputError(f"--bind-network: {exc}") from None
    if not parsed_addresses and not parsed_networks:
        raise HardeningInputError("give the configured private address: --bind-address or --bind-network")
    if any(a.is_unspecified for a in parsed_addresses) or any(n.prefixlen == 0 for n in parsed_networks):
        raise HardeningInputError(
            "--bind-address/--bind-network: every interface is not a private address; "
            "use --allow-any-address to accept a bind to 0.0.0.0 or ::"
        )
    return AddressPolicy(parsed_addresses, parsed_networks, allow_any)


def parse_ip(text: str) -> IPAddress | None:
    """An address as ss or the endpoints file writes it; ss's ``*`` is every interface."""
    if text == "*":
        return ipaddress.ip_address("::")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def listener_rows(
    listeners: Sequence[Listener], published: Mapping[int, str], policy: AddressPolicy
) -> list[Row]:
    """Classify the control plane's listeners; ``published`` maps the endpoints file's ports to services."""
    rows: list[Row] = []
    internal: list[Listener] = []
    for listener in sorted(listeners, key=lambda item: (item.port, item.address)):
        if parse_ip(listener.address) == INTERNAL_ADDRESS and not policy.is_private(INTERNAL_ADDRESS):
            internal.append(listener)
        else:
            rows.append(_listener_row(listener, published.get(listener.port), policy))
    if internal:
        ports = ", ".join(f"{item.port} ({item.who})" for item in internal)
        detail = f"internal, on the node's loopback (each must refuse without credentials: 'open'): {ports}"
        rows.append(Row("listen", "tcp 127.0.0.1 (internal)", PASS, detail))
    return rows


def _listener_row(listener: Listener, service: str | None, policy: AddressPolicy) -> Row:
    """The row of one listener that is not on the internal address."""
    address = parse_ip(listener.address)
    label = f"{service} ({listener.who})" if service else f"{listener.who}, not in the endpoints file"
    target = f"{listener.protocol} {listener.endpoint}"
    if address is None:
        return Row("listen", target, FAIL, f"{label}: unparseable address {listener.address!r}")
    if address.is_unspecified and policy.allow_any:
        return Row(
            "listen", target, WARN, f"{label}: every interface, allowed (harden_check_allow_any_address)"
        )
    if address.is_unspecified:
        return Row(
            "listen",
            target,
            FAIL,
            f"{label}: binds every interface, not the private address "
            f"({policy.describe()}); set harden_check_allow_any_address only if that is meant",
        )
    if policy.is_private(address):
        return Row("listen", target, PASS, f"{label}: private address")
    return Row(
        "listen",
        target,
        FAIL,
        f"{label}: {address} is neither the private address ({policy.describe()}) nor 127.0.0.1",
    )


def published_address_rows(services: Mapping[str, tuple[str, int]], policy: AddressPolicy) -> list[Row]:
    """A failed row for each service the endpoints file publishes on an address that is not private."""
    rows = []
    for name, (host, _port) in sorted(services.items()):
        address = parse_ip(host)
        if address is None or not policy.is_private(address):
            rows.append(
                Row(
                    "listen",
                    f"{name} {host} (endpoints file)",
                    FAIL,
                    f"published address is not the private address ({policy.describe()})",
                )
            )
    return rows


class ListenersUnknown(RuntimeError):
    """``ss`` could not tell what listens; the message says why."""


def tree_listeners(tree: set[int]) -> list[Listener]:
    """The listeners of the supervisor's process ``tree``, from ``ss``."""
    result = subprocess.run(SS_ARGV, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise ListenersUnknown(f"ss exited {result.returncode}: {result.stderr.strip()}")
    return [item for item in parse_ss(result.stdout) if set(item.pids) & tree]


def listening_rows(
    ours: Sequence[Listener], services: Mapping[str, tuple[str, int]], policy: AddressPolicy, target: str
) -> list[Row]:
    """The listeners of the supervisor's process tree judged; published ports nobody listens on."""
    published = {port: name for name, (_host, port) in services.items()}
    rows = listener_rows(ours, published, policy)
    missing = sorted(set(published) - {item.port for item in ours})
    if missing:
        detail = f"published ports with no listener of the supervisor: {missing}"
        rows.append(Row("listen", target, FAIL, detail))
    return rows
