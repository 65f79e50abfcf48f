"""Taking over the state directory from the previous supervisor: wait until it is provably gone, clear what
its services left, record ourselves as the owner.

The judgement is ownership.py's, the files leftovers.py's; this is the sequence, run under the state
directory's lock before any service starts, and again at each retried start (which then judges its own
earlier attempt).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

from han_worker import processes
from han_worker.control_plane import ownership
from han_worker.control_plane.layout import Layout
from han_worker.control_plane.leftovers import LeftoversInUse, clear_leftovers
from han_worker.control_plane.services import Service
from han_worker.selection.slurm_job import slurm_job_alive

log = logging.getLogger(__name__)

PREDECESSOR_POLL_S = 2.0


class PredecessorNotGone(RuntimeError):
    """The previous owner is not provably gone (or its record is unreadable); ``final`` when waiting or
    trying again cannot change that."""

    def __init__(self, message: str, *, final: bool) -> None:
        super().__init__(message)
        self.final = final


@dataclass
class Takeover:
    """One supervisor (``current``) about to start ``services`` on ``layout``'s state directory."""

    layout: Layout
    current: ownership.Owner
    services: list[Service]
    timeout: float
    stopping: threading.Event

    def run(self) -> ownership.Owner:
        """Judge the recorded owner, clear what its services left once it is gone, and record ``current``
        with the ports of the services (their processes follow as they start); the owner as recorded."""
        try:
            previous = ownership.read_owner(self.layout.owner_file)
        except ownership.OwnerRecordError as exc:
            raise PredecessorNotGone(
                f"{exc}; remove it once no control plane runs on this state directory", final=True
            ) from exc
        if previous is not None:
            verdict = self.wait_until_gone(previous)
            log.info("previous owner of %s: %s", self.layout.root, verdict.reason)
            self._clear(previous, verdict.same_host)
        owner = self.current
        for service in self.services:
            owner = owner.with_service(service.name, ownership.ServiceMark(None, service.ports))
        ownership.write_owner(self.layout.owner_file, owner)
        return owner

    def _clear(self, previous: ownership.Owner, same_host: bool) -> None:
        for service in self.services:
            recorded = previous.services.get(service.name)
            try:
                clear_leftovers(service, same_host=same_host, ports=recorded.ports if recorded else ())
            except LeftoversInUse as exc:
                raise PredecessorNotGone(str(exc), final=False) from exc

    def wait_until_gone(self, previous: ownership.Owner) -> ownership.Verdict:
        """The verdict on ``previous`` once it is gone, waiting up to the timeout while it may still go (its
        services exiting after its death signal, its Slurm job COMPLETING while Slurm kills it)."""
        began, said = time.monotonic(), ""
        while True:
            verdict = judge(previous, self.current)
            if verdict.gone:
                return verdict
            where = f"{self.layout.owner_file}: {verdict.reason}"
            if verdict.final:
                raise PredecessorNotGone(where, final=True)
            if time.monotonic() - began > self.timeout or self.stopping.is_set():
                raise PredecessorNotGone(f"{where} (waited {self.timeout:.0f}s)", final=False)
            if where != said:
                log.info("waiting for the previous owner to be gone: %s", where)
                said = where
            if verdict.same_host:
                finish_orphans(previous, self.services, time.monotonic() - began)
            self.stopping.wait(PREDECESSOR_POLL_S)


def judge(previous: ownership.Owner, current: ownership.Owner) -> ownership.Verdict:
    """:func:`ownership.judge_owner` with the facts gathered: this host's processes, or Slurm's word."""
    same_host = previous.host == current.host
    running = ownership.still_running(previous) if same_host else []
    # Slurm is asked only where the host cannot answer, and not about our own job (a requeue of it).
    job = previous.slurm_job_id
    asks_slurm = not same_host and job is not None and job != current.slurm_job_id
    slurm_alive = slurm_job_alive(job) if asks_slurm and job is not None else None
    return ownership.judge_owner(previous, current, running, slurm_alive)


def finish_orphans(previous: ownership.Owner, services: list[Service], waited: float) -> None:
    """Do what a dead supervisor would have done at its stop: SIGKILL a service of its still running here
    once that service's stop grace has passed (it got its stop signal when its supervisor died, see
    _die_with_parent). SeaweedFS would otherwise wait out its filer's 15 s; only a service recorded by a
    supervisor that no longer runs, the very process (pid and start time), is killed."""
    if processes.is_running(previous.supervisor):
        return
    graces = {service.name: service.stop_grace for service in services}
    for name, recorded in previous.services.items():
        grace = graces.get(name)
        process = recorded.process
        if grace is None or waited < grace or process is None or not processes.is_running(process):
            continue
        log.info(
            "%s (pid %d) outlived its supervisor by %.0fs: killing it, as planned", name, process.pid, waited
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
