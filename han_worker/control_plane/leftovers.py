"""The lock, pid and socket files a killed control plane leaves, and their removal once it is provably gone.

What each server leaves is its own business (:meth:`Service.lock_files`); whether its owner is gone is
ownership.py's. Only those files go, never data: a server recovers its data itself at the next start
(PostgreSQL replays its WAL, Valkey its append-only file, SeaweedFS its volumes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from han_worker.control_plane.services import Service

log = logging.getLogger(__name__)

SHARED_TMP = Path("/tmp")  # noqa: S108 (weed's fixed socket paths are there, whatever TMPDIR says)


class LeftoversInUse(RuntimeError):
    """A leftover file still guards something alive on this host; the message says what."""


def stale_seaweed_socket_ports(tmp: Path = SHARED_TMP) -> set[int]:
    """Ports named by SeaweedFS sockets left in /tmp (seaweedfs-s3-grpc-<port>.sock and the like).

    weed puts some unix sockets there whatever TMPDIR says and leaves them after it stops; one left by
    another user cannot be removed (sticky /tmp), and weed exits at start when its port's socket exists.
    So those ports are not picked."""
    return {port for port, _path in _seaweed_sockets(tmp)}


def seaweed_sockets_of(ports: Iterable[int], tmp: Path = SHARED_TMP) -> list[Path]:
    """Our own SeaweedFS sockets in ``tmp`` that name one of ``ports`` (another user's are not ours to
    remove, and the sticky /tmp would refuse anyway)."""
    wanted, uid = set(ports), os.getuid()
    return [path for port, path in _seaweed_sockets(tmp) if port in wanted and _owner(path) == uid]


def _seaweed_sockets(tmp: Path) -> list[tuple[int, Path]]:
    found = []
    for path in tmp.glob("seaweedfs-*.sock"):
        number = path.stem.rpartition("-")[2]
        if number.isdigit():
            found.append((int(number), path))
    return found


def _owner(path: Path) -> int | None:
    try:
        return path.lstat().st_uid
    except OSError:
        return None


def clear_leftovers(service: Service, *, same_host: bool, ports: Iterable[int]) -> list[Path]:
    """Remove what a gone ``service`` left: its lock files, and on the host it ran on, its /tmp sockets for
    ``ports`` (the ports it had). Refused (LeftoversInUse) while this host still uses what they guard."""
    if same_host:
        in_use = service.leftovers_in_use()
        if in_use is not None:
            raise LeftoversInUse(f"{service.name}: {in_use}")
    candidates = service.lock_files() + (seaweed_sockets_of(ports) if same_host else [])
    removed = [path for path in candidates if _remove(path)]
    if removed:
        log.info("%s: removed what a stopped server left: %s", service.name, ", ".join(map(str, removed)))
    return removed


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
