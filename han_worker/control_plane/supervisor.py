"""Run the control plane: start the services, gate on health, publish, watch, stop cleanly.

The endpoints file is the contract with every worker, so the supervisor publishes it only after each
service answered an authenticated probe with the workers' own credentials, and marks it stale before
anything stops: a worker never reads a fresh file that points at a dead service.

It starts over what a killed predecessor left (takeover.py, once ownership.py proves that one gone),
retries a failed start a few times within the job, restarts
a service that crashes while serving on the same address and ports, and records why it gave up
(incidents.py) for ``han-control-plane status``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from han_worker import processes
from han_worker.control_plane import ownership, takeover, walltime
from han_worker.control_plane.admin_secrets import (
    ControlPlaneSecrets,
    ensure_secrets,
    load_secrets,
    serving_generation,
)
from han_worker.control_plane.binaries import BinaryNotFound, find_binaries
from han_worker.control_plane.incidents import CrashHistory, clear_failure, record_failure
from han_worker.control_plane.layout import Layout, pick_free_ports
from han_worker.control_plane.leftovers import clear_leftovers, stale_seaweed_socket_ports
from han_worker.control_plane.metrics_server import (
    AcceptedPasswords,
    MetricsServer,
    Scrapes,
    ServerCertificate,
    publish_prometheus_files,
)
from han_worker.control_plane.retention import INTERVAL_S, RetentionLoop
from han_worker.control_plane.scalers import Scalers
from han_worker.control_plane.services import (
    CERTIFICATE_NAMES,
    SEAWEED_INTERNAL_ADDRESS,
    Placement,
    Service,
    build_services,
    write_server_certificate,
)
from han_worker.observe.successors import queued_successors
from han_worker.private_files import read_trusted_json, write_private_json
from han_worker.selection.checks import authenticated_probe, worker_checks
from han_worker.selection.credentials import Credentials
from han_worker.selection.endpoints import (
    SCHEMA,
    Endpoints,
    EndpointsError,
    ServiceEndpoint,
    parse_endpoints,
    write_endpoints_file,
)
from han_worker.selection.resolver import Choice
from han_worker.selection.tls import ca_fingerprint
from han_worker.store.link import Link, open_link

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_START_FAILED = 1
EXIT_CHILD_DIED = 3
SEAWEED_INTERNAL_PORTS = 7
PORTED_SERVICES = ("postgres", "redis", "s3", "metrics")  # each gets a free port unless one is given
METRICS_LINK_TIMEOUT_S = 5.0
RETENTION_LINK_TIMEOUT_S = 10.0
# A failed start (a port taken meanwhile, a predecessor's service still exiting) is tried again this many
# times in all, waiting these seconds between tries, before the job gives up.
START_ATTEMPTS = 3
START_BACKOFF_S = (2.0, 5.0)
# A crashed service is restarted in place up to this many times in a row before the crash counts as fatal.
RESTART_ATTEMPTS = 3
RESTART_BACKOFF_S = (0.5, 2.0)
# A service's exit is not taken for a crash before this: Slurm's scancel sends SIGTERM to every process of
# the job at once, so a service may exit a moment before the supervisor hears its own stop request.
STOP_RACE_S = 1.0
# A fatal line of glog (SeaweedFS: "F1202 05:05:25.585 master.go:212] ...") or a Go panic.
FATAL_LINE = re.compile(r"^(F\d{4} \d\d:\d\d:\d\d|panic: )")


class SupervisorError(RuntimeError):
    """The control plane cannot start or keep running; the message says why."""


class StartRefused(SupervisorError):
    """Starting is refused for a reason that trying again cannot change (a predecessor not provably gone)."""


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
    # Prometheus's file_sd target file, rewritten at each publication; None: Layout.metrics_targets_file.
    metrics_targets_file: Path | None = None
    retention_days: int = 0  # purge jobs finished more than this many days ago; 0: keep every job
    retention_interval: float = INTERVAL_S


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
            preexec_fn=processes.die_with_parent(self.service.stop_signal),  # noqa: PLW1509 (no threads yet)
        )
        log.info(
            "started %s (pid %d) on %s", self.service.name, self.process.pid, self.service.endpoint.address
        )

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def mark(self) -> ownership.ServiceMark:
        process = None if self.process is None else processes.mark_of(self.process.pid)
        return ownership.ServiceMark(process, self.service.ports)

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

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
        self.close_log()

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


def workers_share(secrets: ControlPlaneSecrets, previous: ControlPlaneSecrets | None) -> Credentials:
    """The credentials the workers get: mid-rotation they trust both authorities."""
    return secrets.worker_credentials(also_trusted=previous.tls_ca_cert if previous is not None else "")


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
        self.owner = ownership.this_supervisor(config.launch_mode)
        self.published: Endpoints | None = None
        self.metrics_port = 0  # chosen with the services' ports at each start
        self.metrics: MetricsServer | None = None
        self.retention: RetentionLoop | None = None
        self.scalers: Scalers | None = None

    def request_stop(self, signum: int, _frame: object = None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping.set()

    def run(self) -> int:
        self.layout.make_dirs()
        with exclusive_lock(self.layout.lock_file):
            # A supervisor killed with SIGKILL could not mark its file; do it before anything else.
            mark_stale(self.layout)
            secrets, _created = ensure_secrets(self.layout.secrets_file)
            try:
                self._start_with_retries(secrets)
                if self.stopping.is_set():
                    return EXIT_OK
                self._start_retention()
                self.scalers = Scalers(self.layout.scalers_dir)
                return self._watch()
            except (SupervisorError, BinaryNotFound) as exc:
                record_failure(self.layout, "start", str(exc))
                raise
            finally:
                mark_stale(self.layout)
                self._stop_all()

    # -- starting ------------------------------------------------------------------------------------------

    def _start_with_retries(self, secrets: ControlPlaneSecrets) -> None:
        """Start and publish, trying again after a failure: what fails at a start (a predecessor's service
        still exiting, a port taken meanwhile by another user) is often gone seconds later."""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_once(secrets)
                return
            except StartRefused:
                raise
            except SupervisorError as exc:
                self._stop_all()
                if attempt == START_ATTEMPTS or self.stopping.is_set():
                    raise SupervisorError(f"gave up after {attempt} attempt(s): {exc}") from exc
                pause = START_BACKOFF_S[min(attempt, len(START_BACKOFF_S)) - 1]
                log.warning(
                    "start attempt %d of %d failed: %s; next in %gs", attempt, START_ATTEMPTS, exc, pause
                )
                self.stopping.wait(pause)

    def _start_once(self, secrets: ControlPlaneSecrets) -> None:
        services = self._services(secrets)
        self._take_over(services)
        self._start(services)
        if not self.stopping.is_set():
            self._publish(secrets)
            clear_failure(self.layout)

    def _take_over(self, services: list[Service]) -> None:
        """Wait until the previous owner is provably gone, clear what its services left, record ourselves."""
        try:
            self.owner = takeover.Takeover(
                self.layout, self.owner, services, self.config.start_timeout, self.stopping
            ).run()
        except takeover.PredecessorNotGone as exc:
            raise (StartRefused if exc.final else SupervisorError)(str(exc)) from exc

    def _services(self, secrets: ControlPlaneSecrets) -> list[Service]:
        published = dict(self.config.ports)
        missing = [name for name in PORTED_SERVICES if name not in published]
        free = pick_free_ports(
            self.config.address,
            len(missing) + SEAWEED_INTERNAL_PORTS,
            exclude=[*published.values(), *stale_seaweed_socket_ports()],
            also_free_on=[SEAWEED_INTERNAL_ADDRESS],  # weed's internal listeners bind there
        )
        published.update(zip(missing, free, strict=False))
        self.metrics_port = published.pop("metrics")
        placement = Placement(
            self.config.address, published, tuple(free[len(missing) :]), self.config.client_networks
        )
        return build_services(self.layout, find_binaries(), secrets, placement, self._previous_secrets())

    def _previous_secrets(self) -> ControlPlaneSecrets | None:
        previous_file = self.layout.previous_secrets_file
        return load_secrets(previous_file) if previous_file.exists() else None

    def _start(self, services: list[Service]) -> None:
        for service in services:
            service.prepare()
        self.children = [Child(service) for service in services]
        for child in self.children:
            self._launch(child)
        deadline = time.monotonic() + self.config.start_timeout
        for child in self.children:
            self._wait_ready(child, deadline)
            if self.stopping.is_set():
                return
            child.service.bootstrap()

    def _launch(self, child: Child) -> None:
        """Start ``child`` and record its process, so that a successor can tell whether it outlived us."""
        child.start()
        self.owner = self.owner.with_service(child.service.name, child.mark())
        ownership.write_owner(self.layout.owner_file, self.owner)

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

    def _endpoints(
        self, epoch: int, secrets: ControlPlaneSecrets, previous: ControlPlaneSecrets | None
    ) -> Endpoints:
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
            services={
                child.service.name: child.service.endpoint
                for child in self.children
                if child.service.published
            },
            tls_ca_sha256=ca_fingerprint(serving_generation(secrets, previous).tls_ca_cert),
            metrics=ServiceEndpoint(self.config.address, self.metrics_port),
        )

    def _publish(self, secrets: ControlPlaneSecrets) -> None:
        # Mid-rotation the servers show the previous authority's certificates and the workers get both.
        previous = self._previous_secrets()
        credentials = workers_share(secrets, previous)
        endpoints = self._endpoints(next_epoch(self.layout), secrets, previous)
        self._probe_as_worker(credentials, endpoints)
        self._serve_metrics(endpoints, secrets, previous)
        write_private_json(self.layout.credentials_file, credentials.to_dict())
        write_endpoints_file(self.layout.endpoints_file, endpoints)
        self.published = endpoints
        self._publish_metrics_files(endpoints, secrets, previous)
        log.info(
            "published %s: epoch %d, %s",
            self.layout.endpoints_file,
            endpoints.epoch,
            ", ".join(f"{name} {svc.address}" for name, svc in endpoints.services.items()),
        )

    # -- /metrics -----------------------------------------------------------------------------------------

    def _serve_metrics(
        self, endpoints: Endpoints, secrets: ControlPlaneSecrets, previous: ControlPlaneSecrets | None
    ) -> None:
        """Listen on /metrics's port, with a certificate of the serving authority (as the other services),
        before the endpoints file names it."""
        assert endpoints.metrics is not None
        directory = self.layout.data_dir("metrics")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert_file, key_file = write_server_certificate(
            serving_generation(secrets, previous).authority(), CERTIFICATE_NAMES["metrics"],
            endpoints.metrics.host, directory,
        )  # fmt: skip
        passwords = AcceptedPasswords(self.layout.secrets_file, self.layout.previous_secrets_file)
        scrapes = Scrapes(lambda: self._metrics_link(endpoints), successors=queued_successors)
        try:
            certificate = ServerCertificate(cert_file, key_file)
            self.metrics = MetricsServer(
                endpoints.metrics.host, endpoints.metrics.port, certificate, passwords, scrapes
            )
        except OSError as exc:
            raise SupervisorError(f"/metrics cannot listen on {endpoints.metrics.address}: {exc}") from exc
        self.metrics.start()

    def _metrics_link(self, endpoints: Endpoints) -> Link:
        """A scrape's clients: the workers' share of the secrets file as it is now (a rotation changes it)."""
        return self._own_link(endpoints, "metrics", METRICS_LINK_TIMEOUT_S)

    def _own_link(self, endpoints: Endpoints, purpose: str, timeout: float) -> Link:
        """Clients of our own services with the workers' share of the secrets file as it is now (a rotation
        changes it)."""
        credentials = workers_share(load_secrets(self.layout.secrets_file), self._previous_secrets())
        choice = Choice(self.config.source, endpoints, credentials, f"the control plane's own {purpose}")
        return open_link(choice, timeout=timeout, name=f"han-control-plane {purpose}")

    # -- retention ----------------------------------------------------------------------------------------

    def _start_retention(self) -> None:
        """Purge old finished jobs in a thread of its own, when --retention-days asks for it."""
        endpoints = self.published
        if not self.config.retention_days or endpoints is None:
            return
        self.retention = RetentionLoop(
            self.config.retention_days,
            lambda: self._own_link(endpoints, "retention", RETENTION_LINK_TIMEOUT_S),
            self.config.retention_interval,
        )
        self.retention.start()

    def _stop_retention(self) -> None:
        if self.retention is not None:
            self.retention.stop()
            self.retention = None

    def _publish_metrics_files(
        self, endpoints: Endpoints, secrets: ControlPlaneSecrets, previous: ControlPlaneSecrets | None
    ) -> None:
        """What a lab's Prometheus needs: the password and the authorities (0600, beside the credentials), and
        where to scrape (file_sd), rewritten at each publication so that it follows the control plane."""
        assert endpoints.metrics is not None
        publish_prometheus_files(self.layout, secrets, previous)
        targets_file = self.config.metrics_targets_file or self.layout.metrics_targets_file
        write_private_json(targets_file, metrics_targets(endpoints))
        log.info("wrote /metrics's target %s to %s", endpoints.metrics.address, targets_file)

    def _stop_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None

    def _probe_as_worker(self, credentials: Credentials, endpoints: Endpoints) -> None:
        # The contract: published (or kept published) only while the workers' own credentials work on every
        # service.
        checks = worker_checks(credentials, str(self.layout.secrets_file))
        report = authenticated_probe(checks, timeout=10.0)(endpoints)
        if not report.healthy:
            failures = "; ".join(str(result) for result in report.failures)
            raise SupervisorError(f"services started but failed the worker probe: {failures}")

    # -- serving -------------------------------------------------------------------------------------------

    def _watch(self) -> int:
        crashes = CrashHistory()
        while not self.stopping.wait(0.5):
            self._tend_scalers()
            for child in self.children:
                code = child.exit_code()
                if code is None:
                    continue
                reason = self._heal(child, code, crashes)
                if reason is not None:
                    mark_stale(self.layout)
                    log.error("%s", reason)
                    record_failure(self.layout, "running", reason)
                    return EXIT_CHILD_DIED
        return EXIT_OK

    def _heal(self, child: Child, code: int, crashes: CrashHistory) -> str | None:
        """Restart a crashed service on its address and ports; the reason to stop instead, or None.

        The endpoints file stays published meanwhile, with the same epoch: the restarted service answers on
        the same address and port, so the file stays true, and a restart takes about 1 s (Valkey, PostgreSQL)
        or 4 s (SeaweedFS), which workers ride out with their own retries and flap threshold.
        Marking it stale would send every worker to the fallback control plane and back for one child's
        crash. It is marked stale (by the caller) only when the restart fails or the service crashes too
        often. The three services do not depend on one another (SeaweedFS's master, volume server, filer
        and S3 gateway are one ``weed server`` process, restarted as one), so the others keep serving."""
        name = child.service.name
        log.error(
            "%s exited with code %s while serving; its log %s ends:\n%s",
            name, code, child.service.log_file, child.log_tail(),
        )  # fmt: skip
        if self.stopping.wait(STOP_RACE_S):
            return None
        count = crashes.record(name, time.monotonic())
        if crashes.too_many(count):
            return (
                f"{name} exited with code {code}: {count} crashes within {crashes.window:.0f}s; "
                "stopping the control plane"
            )
        try:
            self._restart(child)
        except SupervisorError as exc:
            return f"{name} exited with code {code} and could not be restarted: {exc}"
        log.info("%s restarted on %s (crash %d within %.0fs)", name, child.service.endpoint.address, count,
                 crashes.window)  # fmt: skip
        return None

    def _restart(self, child: Child) -> None:
        last: Exception | None = None
        for attempt in range(1, RESTART_ATTEMPTS + 1):
            if self.stopping.is_set():
                return
            try:
                self._restart_once(child)
                return
            except Exception as exc:  # whatever keeps it from answering: try again, then give up with it
                last = exc
                child.stop(self.config.stop_timeout)
                if attempt < RESTART_ATTEMPTS:
                    pause = RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S)) - 1]
                    log.warning("restarting %s failed: %s; next try in %gs", child.service.name, exc, pause)
                    self.stopping.wait(pause)
        raise SupervisorError(f"{RESTART_ATTEMPTS} attempts failed, the last with: {last}")

    def _restart_once(self, child: Child) -> None:
        """Start ``child`` again on the same ports, as at a start: with the secrets file's current generation,
        after clearing what the dead process left (ours, and reaped: provably gone), ready, bootstrapped, and
        then the workers' probe on the published endpoints."""
        secrets, previous = load_secrets(self.layout.secrets_file), self._previous_secrets()
        service = child.service
        service.use_secrets(secrets, previous)
        child.close_log()
        service.prepare()
        clear_leftovers(service, same_host=True, ports=service.ports)
        self._launch(child)
        self._wait_ready(child, time.monotonic() + self.config.start_timeout)
        if self.stopping.is_set():
            return
        service.bootstrap()
        if self.published is not None:
            self._probe_as_worker(workers_share(secrets, previous), self.published)

    # -- the elastic pools' scalers ----------------------------------------------------------------------

    def _tend_scalers(self) -> None:
        """Start, restart and stop the scalers as their registration files say (scalers.py), between two
        looks at the services; nothing a scaler or its file does can stop the control plane."""
        if self.scalers is None:
            return
        try:
            self.scalers.tick()
        except Exception:
            log.exception("the scalers could not be tended; trying again at the next tick")

    def _stop_scalers(self) -> None:
        if self.scalers is not None:
            self.scalers.stop_all()
            self.scalers = None

    def _stop_all(self) -> None:
        self._stop_scalers()  # first: no worker job submitted to a control plane going away
        self._stop_retention()
        self._stop_metrics()
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
        self.children = []


def metrics_targets(endpoints: Endpoints) -> list[object]:
    """Prometheus's file_sd document for /metrics: one target, labelled with the control plane's source and
    epoch (strings, as Prometheus's labels are)."""
    assert endpoints.metrics is not None
    labels = {"source": endpoints.source, "epoch": str(endpoints.epoch)}
    return [{"targets": [endpoints.metrics.address], "labels": labels}]


def run(config: SupervisorConfig) -> int:
    supervisor = Supervisor(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, supervisor.request_stop)
    try:
        return supervisor.run()
    except (SupervisorError, BinaryNotFound) as exc:
        log.error("%s", exc)
        return EXIT_START_FAILED
