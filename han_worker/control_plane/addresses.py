"""Which local address to bind: on a cluster the node is only known once Slurm has placed the job."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import subprocess

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def interface_addresses() -> list[str]:
    """This machine's addresses: from ``ip -j address`` (Linux), else from its host name's records."""
    try:
        result = subprocess.run(
            ["ip", "-j", "address", "show"], capture_output=True, text=True, timeout=10, check=True
        )
        return [
            str(info["local"])
            for interface in json.loads(result.stdout)
            for info in interface.get("addr_info", [])
            if "local" in info
        ]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        log.debug("ip -j address failed (%s); using the host name's addresses", exc)
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)})


def local_address_in(network: IPNetwork, candidates: list[str] | None = None) -> str | None:
    """The first local address inside ``network``; a one-address network names the address itself."""
    if network.num_addresses == 1:
        return str(network.network_address)
    for text in interface_addresses() if candidates is None else candidates:
        address = ipaddress.ip_address(text.split("%")[0])
        if address.version == network.version and address in network:
            return str(address)
    return None
