"""Run the control plane: start the services, gate on health, publish, watch, stop cleanly.

The endpoints file is the contract with every worker, so the supervisor publishes it only after each
service answered an authenticated probe with the workers' own credentials, and marks it stale before
anything stops: a worker never reads a fresh file that points at a dead service.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from han_worker.control_plane import walltime
from han_worker.control_plane.admin_secrets import ControlPlaneSecrets, ensure_secrets, load_secrets
from han_worker.control_plane.binaries import BinaryNotFound, find_binaries
from han_worker.control_plane.layout import Layout, pick_free_ports
from han_worker.control_plane.services import SEAWEED_INTERNAL_ADDRESS, Placement, Service, build_services
from han_worker.private_files import read_trusted_json, write_private_json
from han_worker.selection.checks import authenticated_probe, worker_checks
from han_worker.selection.endpoints import (
    SCHEMA,
    Endpoints,
    EndpointsError,
    parse_endpoints,
    write_endpoints_file,
)

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_START_FAILED = 1
EXIT_CHILD_DIED = 3
SEAWEED_INTERNAL_PORTS = 7
# A fatal line of glog (SeaweedFS: "F1202 05:05:25.585 master.go:212] ...") or a Go panic.
FATAL_LINE = re.compile(r"^(F\d{4} \d\d:\d\d:\d\d|panic: )")


class SupervisorError(RuntimeError):
    """The control plane cannot start or keep running; the message says why."""


@dataclass(frozen=True)
class SupervisorConfig:
    state_dir: Path
    address: str
    source: str
    launch_mode: str
    ports: dict[str, int]
    client_networks: tuple[str, ...]
    start_timeout: float = 90.0
    stop_timeout: float = 30.0


class Child:
    """One server process, started in the foreground with its output appended to its log."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._log: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.service.log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._log = self.service.log_file.open("ab")
        self.process = subprocess.Popen(
            self.service.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.service.cwd,
            env=self.service.env,
            # A terminal's Ctrl-C reaches the supervisor only, which then stops the services in order.
            start_new_session=True,
            preexec_fn=_die_with_parent(self.service.stop_signal),  # noqa: PLW1509 (no threads yet)
        )
        log.info(
            "started %s (pid %d) on %s", self.service.name, self.process.pid, self.service.endpoint.address
        )

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            grace = self.service.stop_grace
            self.process.send_signal(self.service.stop_signal)
            try:
                self.process.wait(timeout if grace is None else min(grace, timeout))
            except subprocess.TimeoutExpired:
                if grace is None:
                    log.warning("%s did not stop within %.0fs; killing it", self.service.name, timeout)
                else:
                    log.info("%s: killing it %gs after its stop signal, as planned", self.service.name, grace)
                self.process.kill()
                self.process.wait()
        log.info("%s stopped (exit code %s)", self.service.name, self.process.returncode)
        if self._log is not None:
            self._log.close()

    def log_tail(self) -> str:
        return log_tail(self.service.log_file)


def log_tail(path: Path, lines: int = 10) -> str:
    """The log's last lines, after the line that says why it died when that is further up (a Go program's
    fatal line comes before its goroutine dump, which fills the last lines)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    tail = text[-lines:]
    fatal = [line for line in text[:-lines] if FATAL_LINE.match(line)][-1:]
    return "\n".join([*fatal, *(["..."] if fatal else []), *tail])


def _die_with_parent(stop_signal: int) -> Callable[[], None] | None:
    """Ask Linux to send the child its stop signal if the supervisor dies without stopping it (SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def set_parent_death_signal() -> None:
        libc.prctl(pr_set_pdeathsig, stop_signal)

    return set_parent_death_signal


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """One supervisor per state directory: a second one would corrupt the data of the first."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SupervisorError(
                f"{path}: another han-control-plane is running on this state directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def mark_stale(layout: Layout) -> None:
    """Flag a published endpoints file as stale (idempotent; a missing or broken file is left alone)."""
    try:
        current = parse_endpoints(read_trusted_json(layout.endpoints_file), str(layout.endpoints_file))
    except (EndpointsError, ValueError):
        return
    if not current.stale:
        write_endpoints_file(layout.endpoints_file, replace(current, stale=True))
        log.info("marked %s stale (epoch %d)", layout.endpoints_file, current.epoch)


def stale_seaweed_socket_ports(tmp: Path = Path("/tmp")) -> set[int]:  # noqa: S108 (only read)
    """Ports named by SeaweedFS sockets left in /tmp (seaweedfs-s3-grpc-<port>.sock and the like).

    weed puts some unix sockets there whatever TMPDIR says and leaves them after it stops; one left by
    another user cannot be removed (sticky /tmp), and weed exits at start when its port's socket exists.
    So those ports are not picked."""
    ports = set()
    for path in tmp.glob("seaweedfs-*.sock"):
        number = path.stem.rpartition("-")[2]
        if number.isdigit():
            ports.add(int(number))
    return ports


def next_epoch(layout: Layout) -> int:
    try:
        previous = int(layout.epoch_file.read_text().strip())
    except (OSError, ValueError):
        previous = 0
    epoch = previous + 1
    layout.epoch_file.write_text(f"{epoch}\n")
    return epoch


class Supervisor:
    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.layout = Layout(config.state_dir)
        self.stopping = threading.Event()
        self.children: list[Child] = []

    def request_stop(self, signum: int, _frame: object = None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping.set()

    def run(self) -> int:
        self.layout.make_dirs()
        with exclusive_lock(self.layout.lock_file):
            # A supervisor killed with SIGKILL could not mark its file; do it before anything else.
            mark_stale(self.layout)
            secrets, _created = ensure_secrets(self.layout.secrets_file)
            services = self._services(secrets)
            try:
                self._start(services)
                if self.stopping.is_set():
                    return EXIT_OK
                self._publish(secrets)
                return self._watch()
            finally:
                mark_stale(self.layout)
                self._stop_all()

    def _services(self, secrets: ControlPlaneSecrets) -> list[Service]:
        published = dict(self.config.ports)
        missing = [name for name in ("postgres", "redis", "s3") if name not in published]
        free = pick_free_ports(
            self.config.address,
            len(missing) + SEAWEED_INTERNAL_PORTS,
            exclude=[*published.values(), *stale_seaweed_socket_ports()],
            also_free_on=[SEAWEED_INTERNAL_ADDRESS],  # weed's internal listeners bind there
        )
        published.update(zip(missing, free, strict=False))
        placement = Placement(
            self.config.address, published, tuple(free[len(missing) :]), self.config.client_networks
        )
        previous = (
            load_secrets(self.layout.previous_secrets_file)
            if self.layout.previous_secrets_file.exists()
            else None
        )
        return build_services(self.layout, find_binaries(), secrets, placement, previous)

    def _start(self, services: list[Service]) -> None:
        for service in services:
            service.prepare()
        self.children = [Child(service) for service in services]
        for child in self.children:
            child.start()
        deadline = time.monotonic() + self.config.start_timeout
        for child in self.children:
            self._wait_ready(child, deadline)
            child.service.bootstrap()

    def _wait_ready(self, child: Child, deadline: float) -> None:
        last_error = "no answer yet"
        while not self.stopping.is_set():
            code = child.exit_code()
            if code is not None:
                raise SupervisorError(
                    f"{child.service.name} exited with code {code} while starting; "
                    f"last lines of {child.service.log_file}:\n{child.log_tail()}"
                )
            try:
                child.service.ready(timeout=2.0)
            except Exception as exc:  # any client error means "not ready yet"
                last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            else:
                log.info("%s is ready", child.service.name)
                return
            if time.monotonic() > deadline:
                raise SupervisorError(
                    f"{child.service.name} did not become ready within {self.config.start_timeout:.0f}s: "
                    f"{last_error}"
                )
            time.sleep(0.2)

    def _endpoints(self, epoch: int) -> Endpoints:
        job_id = walltime.job_id() if self.config.launch_mode == "slurm" else None
        return Endpoints(
            schema=SCHEMA,
            source=self.config.source,
            epoch=epoch,
            slurm_job_id=job_id,
            node=walltime.node_name() or socket.gethostname(),
            started_at=datetime.now(timezone.utc).replace(microsecond=0),
            expires_at=walltime.job_end_time(job_id) if job_id else None,
            stale=False,
            services={child.service.name: child.service.endpoint for child in self.children},
        )

    def _publish(self, secrets: ControlPlaneSecrets) -> None:
        credentials = secrets.worker_credentials()
        endpoints = self._endpoints(next_epoch(self.layout))
        # The contract: published only once the workers' own credentials work on every service.
        report = authenticated_probe(worker_checks(credentials), timeout=10.0)(endpoints)
        if not report.healthy:
            failures = "; ".join(str(result) for result in report.failures)
            raise SupervisorError(f"services started but failed the worker probe: {failures}")
        write_private_json(self.layout.credentials_file, credentials.to_dict())
        write_endpoints_file(self.layout.endpoints_file, endpoints)
        log.info(
            "published %s: epoch %d, %s",
            self.layout.endpoints_file,
            endpoints.epoch,
            ", ".join(f"{name} {svc.address}" for name, svc in endpoints.services.items()),
        )

    def _watch(self) -> int:
        while not self.stopping.wait(0.5):
            for child in self.children:
                code = child.exit_code()
                if code is not None:
                    mark_stale(self.layout)
                    log.error(
                        "%s exited with code %s; stopping the control plane. Its log %s ends:\n%s",
                        child.service.name, code, child.service.log_file, child.log_tail(),
                    )  # fmt: skip
                    return EXIT_CHILD_DIED
        return EXIT_OK

    def _stop_all(self) -> None:
        stoppers = [
            threading.Thread(
                target=child.stop, args=(self.config.stop_timeout,), name=f"stop-{child.service.name}"
            )
            for child in self.children
        ]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()


def run(config: SupervisorConfig) -> int:
    supervisor = Supervisor(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, supervisor.request_stop)
    try:
        return supervisor.run()
    except (SupervisorError, BinaryNotFound) as exc:
        log.error("%s", exc)
        return EXIT_START_FAILED
