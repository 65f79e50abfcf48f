"""Where the control plane keeps its files, under one state directory on the shared filesystem.

The next Slurm job (or the Mac's direct launch) finds the data where the last one left it.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = "~/.han/control-plane"


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def endpoints_file(self) -> Path:
        return self.root / "endpoints.json"

    @property
    def credentials_file(self) -> Path:
        return self.root / "credentials.json"

    @property
    def metrics_password_file(self) -> Path:
        """/metrics's basic-auth password alone (0600), for a Prometheus ``basic_auth.password_file``."""
        return self.root / "metrics-password"

    @property
    def metrics_ca_file(self) -> Path:
        """The authorities of /metrics's certificate (PEM), for a Prometheus ``tls_config.ca_file``."""
        return self.root / "metrics-ca.pem"

    @property
    def metrics_targets_file(self) -> Path:
        """The default Prometheus ``file_sd`` target file: where /metrics is now (rewritten at each start)."""
        return self.root / "metrics-targets.json"

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets.json"

    @property
    def previous_secrets_file(self) -> Path:
        """The secrets a rotation replaces, kept until it retires them (han-control-plane rotate)."""
        return self.root / "secrets.previous.json"

    @property
    def rotation_lock_file(self) -> Path:
        return self.root / "rotation.lock"

    @property
    def lock_file(self) -> Path:
        return self.root / "supervisor.lock"

    @property
    def keeper_lock_file(self) -> Path:
        """Held by ``run --restart-crashed``'s keeper for its lifetime (control_plane/keeper.py)."""
        return self.root / "keeper.lock"

    @property
    def owner_file(self) -> Path:
        """Who holds (or last held) the state directory: host, pids, Slurm job (see ownership.py)."""
        return self.root / "owner.json"

    @property
    def failure_file(self) -> Path:
        """Why the last supervisor could not start or stopped on a crash; removed once one publishes."""
        return self.root / "failure.json"

    @property
    def epoch_file(self) -> Path:
        return self.root / "epoch"

    @property
    def job_script_file(self) -> Path:
        """The batch script of the Slurm launch mode (rendered by the control_plane role, not by Python)."""
        return self.root / "control-plane.sbatch"

    @property
    def data_root(self) -> Path:
        """The parent of every service's data directory."""
        return self.root / "data"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def data_dir(self, service: str) -> Path:
        return self.data_root / service

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    @property
    def scalers_dir(self) -> Path:
        """The elastic pools' registration files (``<pool>.json``) and their scalers' logs (scalers.py)."""
        return self.root / "scalers"

    def run_dir(self) -> Path:
        return self.root / "run"

    def make_dirs(self) -> None:
        for directory in (self.root, self.data_root, self.logs_dir, self.run_dir(), self.scalers_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.chmod(0o700)


def pick_free_ports(
    address: str, count: int, exclude: Iterable[int] = (), also_free_on: Iterable[str] = ()
) -> list[int]:
    """Ports that are free on ``address`` now (cluster nodes are shared with other users' services), and
    on each of ``also_free_on`` too: where a service binds the same port on another address (SeaweedFS's
    internal listeners on the loopback), a port taken there would make it exit at start.

    All sockets stay open until every port is chosen, so the same port is never handed out twice.
    """
    excluded, others = set(exclude), [other for other in also_free_on if other != address]
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = _bound(address, 0)
            sockets.append(sock)
            port = int(sock.getsockname()[1])
            if port in excluded or port in ports:
                continue
            held = _held_on(others, port)
            if held is not None:
                sockets.extend(held)
                ports.append(port)
    finally:
        for sock in sockets:
            sock.close()
    return ports


def _bound(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock


def _held_on(addresses: list[str], port: int) -> list[socket.socket] | None:
    """``port`` bound on every one of ``addresses`` (held until the caller closes them); None when it is
    taken on one of them."""
    held: list[socket.socket] = []
    for address in addresses:
        try:
            held.append(_bound(address, port))
        except OSError:
            for sock in held:
                sock.close()
            return None
    return held


def running_pid(layout: Layout) -> int | None:
    """The pid of the supervisor holding the state directory's lock, or None when none does.

    The lock is the one source of truth: the process that holds it is running and wrote its pid there.
    """
    return lock_holder(layout.lock_file)


def keeper_pid(layout: Layout) -> int | None:
    """The pid of the keeper (``run --restart-crashed``) holding its lock, or None when none does: between
    a supervisor's death and its restart, the keeper is what runs."""
    return lock_holder(layout.keeper_lock_file)


def lock_holder(lock_file: Path) -> int | None:
    """The pid written in ``lock_file`` while a process holds its flock; None when none holds it."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = lock_file.read_text().strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
