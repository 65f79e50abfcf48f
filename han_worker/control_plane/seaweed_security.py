"""SeaweedFS's ``security.toml``: its internal ports answer only the control plane's own components.

SeaweedFS's master, volume server and filer listen on the node's loopback, which every user of a shared
node can reach. Measured with weed 4.48 as an unprivileged local user without credentials, they listed,
wrote and deleted the lab's objects, showed the topology, and the S3 gateway's gRPC port accepted a new
admin identity. JWT keys alone close neither the master's HTTP API nor any gRPC port (the master's
``Assign`` even hands out a write token), so every port gets mutual TLS: gRPC (``[grpc.*]``) and HTTP
(``[https.*]`` with ``ca``, which makes a client certificate required), and weed's own clients present one
(``[grpc.client]``, ``[https.client]``). The JWT keys stay as a second layer. The S3 gateway itself is not
changed: it authenticates every request with the access keys.

Everything here is made again at every start (a new authority whose key is never written, new
certificates, new JWT keys): none of it leaves the node or is shared with anyone, so a restart rotates it
and nothing has to be shipped or kept. A rotation (``han-control-plane rotate``) also renews the JWT keys,
which weed reloads with the identities on SIGHUP; its certificates change at the next start.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

from han_worker.control_plane.pki import Authority, write_private_file

log = logging.getLogger(__name__)

SECURITY_DIR = "security"  # in SeaweedFS's data directory
SECURITY_FILE = "security.toml"
# Each component's certificate is used both to serve and to dial the others; "client" is for the clients
# weed runs inside the S3 gateway and the filer.
COMPONENTS = ("master", "volume", "filer", "s3", "client")
SERVERS_OVER_HTTPS = ("master", "volume", "filer")
JWT_LIFETIME_S = 10  # weed's default: a token authorises one upload or read right after it was issued
JWT_SECTIONS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")


def write_security_config(directory: Path, addresses: Sequence[str]) -> Path:
    """Replace ``directory`` (0700) with a fresh authority's certificates, JWT keys and ``security.toml``
    for components reachable on ``addresses``; returns the directory, for weed's ``-config_dir``."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    authority = Authority("han control plane: SeaweedFS internal")
    write_private_file(directory / "ca.crt", authority.cert_pem)
    for component in COMPONENTS:
        issued = authority.issue(f"seaweed-{component}", ["localhost", f"seaweed-{component}"], addresses)
        write_private_file(directory / f"{component}.crt", issued.cert_pem)
        write_private_file(directory / f"{component}.key", issued.key_pem)
    write_private_file(directory / SECURITY_FILE, security_toml(directory).encode())
    log.debug("wrote SeaweedFS's security configuration in %s", directory)
    return directory


def renew_jwt_keys(directory: Path) -> bool:
    """New JWT keys in ``directory``'s ``security.toml``, the certificates unchanged; weed reloads them on
    SIGHUP (a rotation sends it). False when there is no configuration there (a control plane from before)."""
    if not (directory / SECURITY_FILE).is_file():
        return False
    write_private_file(directory / SECURITY_FILE, security_toml(directory).encode())
    return True


def security_toml(directory: Path) -> str:
    """The configuration, naming the files of ``directory``; new random JWT keys at every call."""
    sections: list[tuple[str, dict[str, object]]] = [
        (name, {"key": secrets.token_urlsafe(32), "expires_after_seconds": JWT_LIFETIME_S})
        for name in JWT_SECTIONS
    ]
    sections += [("access", {"ui": False}), ("filer.expose_directory_metadata", {"enabled": False})]
    sections.append(("grpc", {"ca": str(directory / "ca.crt")}))
    sections += [(f"grpc.{component}", _pair(directory, component)) for component in COMPONENTS]
    https_client = {"enabled": True, **_pair(directory, "client"), "ca": str(directory / "ca.crt")}
    sections.append(("https.client", https_client))
    sections += [
        (f"https.{component}", {**_pair(directory, component), "ca": str(directory / "ca.crt")})
        for component in SERVERS_OVER_HTTPS
    ]
    return "# Written by han-control-plane at each start; made again at the next.\n\n" + "\n".join(
        _section(name, values) for name, values in sections
    )


def _pair(directory: Path, component: str) -> dict[str, object]:
    return {"cert": str(directory / f"{component}.crt"), "key": str(directory / f"{component}.key")}


def _section(name: str, values: dict[str, object]) -> str:
    lines = [f"[{name}]"]
    for key, value in values.items():
        # A JSON string is a valid TOML basic string; booleans and integers read the same in both.
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"
