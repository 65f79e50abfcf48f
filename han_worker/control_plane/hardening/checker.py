"""Every check against one state directory, in order; a check that breaks becomes a failed row."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from han_worker.control_plane.hardening import auth, config, files, leaks, listen, open_ports
from han_worker.control_plane.hardening.listen import AddressPolicy, Listener, ListenersUnknown
from han_worker.control_plane.hardening.processes import NO_SUPERVISOR, Supervisor, list_processes
from han_worker.control_plane.hardening.report import FAIL, PASS, Row
from han_worker.control_plane.hardening.state import StateDocuments
from han_worker.control_plane.layout import Layout, running_pid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckConfig:
    state_dir: Path
    env_dir: Path
    policy: AddressPolicy
    timeout: float = 5.0
    uid: int = field(default_factory=os.getuid)


def where() -> str:
    """Where the checks run: a Slurm step sees the node of the job, a login node would not."""
    job, step = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID")
    inside = f" inside Slurm job {job} (step {step})" if job else ""
    return f"on {socket.gethostname()}{inside}"


def published_row(state: StateDocuments) -> Row:
    """Whether the endpoints file says the control plane runs, and what it publishes."""
    target = str(state.layout.endpoints_file)
    if state.endpoints is None:
        return Row("control-plane", target, FAIL, "missing or not JSON: nothing to check against")
    if state.endpoints.get("stale") is not False:
        return Row("control-plane", target, FAIL, "stale: the control plane is not running")
    names = ", ".join(f"{name} {host}:{port}" for name, (host, port) in sorted(state.services.items()))
    return Row("control-plane", target, PASS, f"published: {names}; checked {where()}")


def find_supervisor(layout: Layout) -> tuple[Supervisor, Row | None]:
    """The supervisor holding the state directory's lock and this host's processes; a failed row when it
    does not run here."""
    processes = list_processes()
    try:
        pid = running_pid(layout)
    except OSError as exc:
        supervisor = Supervisor(None, processes)
        return supervisor, Row("control-plane", str(layout.lock_file), FAIL, f"cannot read: {exc.strerror}")
    supervisor = Supervisor(pid, processes)
    if supervisor.visible:
        return supervisor, None
    state = "not running" if pid is None else f"pid {pid} not visible on this host"
    return supervisor, Row("control-plane", str(layout.lock_file), FAIL, f"supervisor {state}")


class Checker:
    """Runs every check against one state directory; each section turns surprises into a failed row."""

    def __init__(self, check_config: CheckConfig) -> None:
        self.config = check_config
        self.state = StateDocuments.read(Layout(check_config.state_dir))
        self.supervisor = NO_SUPERVISOR  # found by the first section; the later ones read it
        self.listeners: list[Listener] = []  # what the supervisor's processes listen on (listening)

    def sections(self) -> list[tuple[str, Callable[[], list[Row]]]]:
        """Each section's name (the check of its row if it breaks) and what it runs, in order."""
        state, timeout = self.state, self.config.timeout
        return [
            ("control_plane", self.control_plane),
            ("files", self.files),
            ("listening", self.listening),
            ("open_ports", lambda: open_ports.open_port_rows(self.listeners, timeout)),
            ("authentication", lambda: auth.authentication_rows(state, timeout)),
            ("redis_config", lambda: config.redis_config_rows(state, timeout, self.config.uid)),
            ("postgres_config", lambda: config.pg_hba_rows(state)),
            ("s3_config", lambda: config.s3_config_rows(state)),
            ("leaks", self.leaks),
            ("slurm", self.slurm),
        ]

    def run(self) -> list[Row]:
        rows: list[Row] = []
        for name, section in self.sections():
            try:
                rows.extend(section())
            except Exception as exc:  # a check that breaks must show up as a failure, not stop the others
                log.debug("check %s failed", name, exc_info=True)
                rows.append(
                    Row(name, str(self.state.layout.root), FAIL, f"check broke: {type(exc).__name__}")
                )
        return rows

    def control_plane(self) -> list[Row]:
        rows = [published_row(self.state)]
        rows.extend(listen.published_address_rows(self.state.services, self.config.policy))
        self.supervisor, not_running = find_supervisor(self.state.layout)
        return rows if not_running is None else [*rows, not_running]

    def files(self) -> list[Row]:
        uid = self.config.uid
        return [*files.state_dir_rows(self.state.layout, uid), *files.env_rows(self.config.env_dir, uid)]

    def listening(self) -> list[Row]:
        tree, target = self.supervisor.tree(), str(self.state.layout.root)
        if not tree:
            return [Row("listen", target, FAIL, "cannot verify: the supervisor is not running here")]
        try:
            self.listeners = listen.tree_listeners(tree)
        except ListenersUnknown as exc:
            return [Row("listen", "ss", FAIL, f"cannot verify: {exc}")]
        return listen.listening_rows(self.listeners, self.state.services, self.config.policy, target)

    def leaks(self) -> list[Row]:
        rows = config.secret_strength_rows(self.state)
        if not self.state.secrets:
            return rows
        return [
            *rows,
            *leaks.leak_rows(self.state.layout, self.state.secrets, self.supervisor, self.config.uid),
        ]

    def slurm(self) -> list[Row]:
        job = (self.state.endpoints or {}).get("slurm_job_id")
        if not isinstance(job, str) or not job.isdigit():
            return []
        return leaks.slurm_rows(job, self.state.secrets, self.supervisor)


def run_checks(check_config: CheckConfig) -> list[Row]:
    return Checker(check_config).run()
