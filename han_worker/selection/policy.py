"""The choice between Pegasus and the Mac: the runbook's modes, as one pure function.

Modes, as the runbook defines them: ``pegasus`` requires a valid Pegasus endpoints file and fails
with the reason; ``mac`` always uses the Mac's LAN endpoints; ``auto`` tries Pegasus, then the Mac.
Used twice: by the Ansible lookup ``han.infra.control_plane`` on the controller and by every worker
(through :mod:`han_worker.selection.resolver`). Standard library only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from han_worker.selection.endpoints import Endpoints, EndpointsError, EndpointsGone, check_usable
from han_worker.selection.probes import ProbeReport, ProbeResult

log = logging.getLogger(__name__)

MODES = ("auto", "pegasus", "mac")


def mac_required(mode: str) -> bool:
    """The Mac rule: mode mac cannot choose without the Mac's address (auto falls back to it when known)."""
    return mode == "mac"


class SelectionError(EndpointsError):
    """Mode ``pegasus`` was asked for and the Pegasus control plane is not usable."""


class PegasusDown(SelectionError):
    """Pegasus's endpoints are well formed but its control plane is down right now (marked stale, expired,
    its Slurm job ended, a service not answering): a restart or the next job brings it back, so a worker
    about to serve waits for it rather than giving up (worker/loop.py)."""


Probe = Callable[[Endpoints], ProbeReport]


@dataclass(frozen=True)
class Selection:
    source: str
    endpoints: Endpoints
    reason: str
    probes: tuple[ProbeResult, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "reason": self.reason,
            "endpoints": self.endpoints.to_dict(),
            "probes": [result.to_dict() for result in self.probes],
        }


def _failures_text(report: ProbeReport) -> str:
    return "; ".join(str(result) for result in report.failures)


def _usable_pegasus(
    pegasus: Endpoints | EndpointsError | None, probe: Probe | None, job_alive: bool | None
) -> Selection:
    if pegasus is None:
        raise SelectionError("no Pegasus endpoints file was read")
    if isinstance(pegasus, EndpointsGone):
        raise PegasusDown(str(pegasus)) from pegasus
    if isinstance(pegasus, EndpointsError):
        raise SelectionError(str(pegasus)) from pegasus
    where = f"Pegasus endpoints (epoch {pegasus.epoch}, node {pegasus.node})"
    try:
        check_usable(pegasus, where)
    except EndpointsGone as exc:
        raise PegasusDown(str(exc)) from exc
    except EndpointsError as exc:
        raise SelectionError(str(exc)) from exc
    if job_alive is False:
        raise PegasusDown(f"{where}: Slurm job {pegasus.slurm_job_id} is no longer running")
    if probe is None:
        return Selection("pegasus", pegasus, f"{where} are valid (not probed)")
    report = probe(pegasus)
    if not report.healthy:
        raise PegasusDown(f"{where}: unhealthy: {_failures_text(report)}")
    return Selection("pegasus", pegasus, f"{where} are valid and healthy", report.results)


def _use_mac(macs: Sequence[Endpoints], probe: Probe | None, why: str) -> Selection:
    if not macs:
        raise SelectionError(f"{why}, and no Mac is configured to fall back to")
    if probe is None:
        return Selection("mac", macs[0], f"{why}; using the Mac at {macs[0].node} (not probed)")
    reports = [(mac, probe(mac)) for mac in macs]
    for mac, report in reports:
        if report.healthy:
            return Selection("mac", mac, f"{why}; the Mac at {mac.node} is healthy", report.results)
        log.debug("Mac candidate %s unhealthy: %s", mac.node, _failures_text(report))
    mac, report = reports[0]
    # The runbook's mac mode never fails: report the probe and let the worker retry its connections.
    why = f"{why}; using the Mac at {mac.node} although unhealthy: {_failures_text(report)}"
    return Selection("mac", mac, why, report.results)


def select(
    mode: str,
    *,
    pegasus: Endpoints | EndpointsError | None,
    mac: Endpoints | Sequence[Endpoints],
    probe: Probe | None = None,
    job_alive: bool | None = None,
) -> Selection:
    """Choose the control plane for ``mode``; see the module docstring for the modes.

    ``pegasus`` is what load_endpoints_file() returned or raised; ``mac`` one or several candidate
    Mac addresses, the first healthy one wins. ``job_alive`` None means "not known here".
    """
    if mode not in MODES:
        raise EndpointsError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    macs = (mac,) if isinstance(mac, Endpoints) else tuple(mac)
    if mode == "mac":
        return _use_mac(macs, probe, "mode mac always uses the Mac")
    try:
        return _usable_pegasus(pegasus, probe, job_alive)
    except SelectionError as exc:
        if mode == "pegasus":
            raise
        log.debug("Pegasus skipped: %s", exc)
        return _use_mac(macs, probe, f"Pegasus skipped: {exc}")


class FailoverGate:
    """Hysteresis: say "fail over" only after ``threshold`` failed health checks in a row.

    One lost packet must not move every worker to the other control plane and back. After a flip
    the count starts again, so the next flip needs ``threshold`` new failures.
    """

    def __init__(self, threshold: int) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ValueError(f"FailoverGate threshold must be an integer >= 1, not {threshold!r}")
        self.threshold = threshold
        self.failures = 0

    def observe(self, healthy: bool) -> bool:
        """Record one health check; True means switch control plane now."""
        if healthy:
            self.failures = 0
            return False
        self.failures += 1
        if self.failures < self.threshold:
            return False
        self.failures = 0
        return True
