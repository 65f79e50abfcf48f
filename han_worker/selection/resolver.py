"""From a worker configuration to a chosen control plane with its credentials: the one resolver.

:class:`Selector` applies :func:`han_worker.selection.policy.select` to the configured Pegasus files and
Mac address, probing each with that control plane's own credentials. ``run``, ``submit``, ``wait``,
``status`` and ``endpoints`` all go through here, so they agree on which control plane is meant.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from han_worker.config import WorkerConfig, WorkerConfigError
from han_worker.selection.checks import worker_checks
from han_worker.selection.credentials import Credentials, CredentialsError, load_credentials_file
from han_worker.selection.endpoints import (
    Endpoints,
    EndpointsError,
    load_endpoints_file,
    mac_endpoints,
)
from han_worker.selection.policy import SelectionError, select
from han_worker.selection.probes import ProbeReport, ProbeResult, probe_all
from han_worker.selection.slurm_job import slurm_job_alive
from han_worker.selection.tls import ca_fingerprints

log = logging.getLogger(__name__)

_SOURCES = ("pegasus", "mac")
_SETTLE_POLL_SECONDS = 0.05
# Probe details that mean "these credentials are wrong": retrying with them will not help.
_AUTH_FAILURES = ("authentication failed", "SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied")


def refused_credentials(text: str) -> bool:
    """Whether a service's message says it refused the credentials (not that it was unreachable)."""
    return any(marker in text for marker in _AUTH_FAILURES)


def authentication_failures(results: Sequence[ProbeResult]) -> list[ProbeResult]:
    return [result for result in results if not result.ok and refused_credentials(result.detail)]


@dataclass(frozen=True)
class Choice:
    """A selected control plane with the credentials that go with it."""

    source: str
    endpoints: Endpoints
    credentials: Credentials
    reason: str
    probes: tuple[ProbeResult, ...] = ()

    @property
    def epoch(self) -> int:
        return self.endpoints.epoch

    def describe(self) -> str:
        services = ", ".join(f"{name} {svc.address}" for name, svc in self.endpoints.services.items())
        return f"{self.source} (epoch {self.epoch}: {services})"


JobAlive = Callable[[str], "bool | None"]


def check_same_authority(endpoints: Endpoints, credentials: Credentials, origin: str) -> None:
    """Refuse credentials whose certificate authority is not the one the endpoints file names: they belong
    to another control plane (or an older one), and its servers could not be verified with them."""
    if endpoints.tls_ca_sha256 is None:
        return
    carried = ca_fingerprints(credentials.tls_ca_cert)
    if endpoints.tls_ca_sha256 not in carried:
        shown = " and ".join(f"{fingerprint[:16]}..." for fingerprint in carried)
        raise EndpointsError(
            f"{origin}: its certificate authority (SHA-256 {shown}) is not the one of the control "
            f"plane that published the endpoints file (tls_ca_sha256 {endpoints.tls_ca_sha256[:16]}...): "
            "copy the credentials.json published beside that endpoints file"
        )


class Selector:
    """The runbook's modes over the configured Pegasus files and Mac address.

    ``probe=False`` chooses without connecting (what a play does where the services cannot be reached);
    ``job_alive`` asks Slurm about the Pegasus job when the configuration says to (``check_slurm_job``).
    """

    def __init__(
        self, config: WorkerConfig, *, probe: bool = True, job_alive: JobAlive = slurm_job_alive
    ) -> None:
        self.config = config
        self.probing = probe
        self.job_alive = job_alive
        self.mac: Endpoints | None = None
        self.mac_credentials: Credentials | None = None
        if config.mode != "pegasus" and config.mac is not None and config.mac.credentials_file is not None:
            try:
                self.mac = mac_endpoints(config.mac.host, config.mac.ports)
                self.mac_credentials = load_credentials_file(config.mac.credentials_file)
            except (EndpointsError, CredentialsError) as exc:
                raise WorkerConfigError(f"{config.origin}: field 'mac': {exc}") from exc

    def probe(self, endpoints: Endpoints, credentials: Credentials) -> ProbeReport:
        return probe_all(endpoints, worker_checks(credentials), self.config.probe_timeout_seconds)

    def credentials_on_disk(self, source: str) -> Credentials | None:
        """``source``'s credentials file as it is now (a rotation rewrites it); None if unreadable."""
        if source == "pegasus":
            path = self.config.credentials_file
        elif self.config.mac is not None and self.config.mac.credentials_file is not None:
            path = self.config.mac.credentials_file
        else:
            return None
        try:
            return load_credentials_file(path)
        except CredentialsError as exc:  # being replaced, or broken: the next check reads it again
            log.debug("reading %s: %s", path, exc)
            return None

    def _refresh_mac_credentials(self) -> None:
        if self.mac is not None:
            self.mac_credentials = self.credentials_on_disk("mac") or self.mac_credentials

    def load_pegasus(self) -> tuple[Endpoints, Credentials]:
        """The Pegasus endpoints and credentials, both trust-checked; EndpointsError says why not."""
        endpoints = load_endpoints_file(self.config.endpoints_file)
        try:
            credentials = load_credentials_file(self.config.credentials_file)
        except CredentialsError as exc:
            raise EndpointsError(str(exc)) from exc
        check_same_authority(endpoints, credentials, str(self.config.credentials_file))
        return endpoints, credentials

    def _pegasus_job_alive(self, pegasus: Endpoints | EndpointsError | None) -> bool | None:
        if (
            not self.config.check_slurm_job
            or not isinstance(pegasus, Endpoints)
            or pegasus.slurm_job_id is None
        ):
            return None
        return self.job_alive(pegasus.slurm_job_id)

    def choose(self) -> Choice:
        """Select as the mode says; raises SelectionError (mode pegasus) with the reason."""
        self._refresh_mac_credentials()
        pegasus: Endpoints | EndpointsError | None = None
        pegasus_credentials = None
        if self.config.mode != "mac":
            try:
                pegasus, pegasus_credentials = self.load_pegasus()
            except EndpointsError as exc:
                pegasus = exc

        def probe(endpoints: Endpoints) -> ProbeReport:
            credentials = pegasus_credentials if endpoints is pegasus else self.mac_credentials
            assert credentials is not None  # select() probes only endpoints that came with credentials
            return self.probe(endpoints, credentials)

        macs = [] if self.mac is None else [self.mac]
        selection = select(
            self.config.mode,
            pegasus=pegasus,
            mac=macs,
            probe=probe if self.probing else None,
            job_alive=self._pegasus_job_alive(pegasus),
        )
        credentials = pegasus_credentials if selection.endpoints is pegasus else self.mac_credentials
        assert credentials is not None
        return Choice(selection.source, selection.endpoints, credentials, selection.reason, selection.probes)

    def choose_after_refusal(self, settle_seconds: float) -> Choice:
        """choose(); when a service refused the credentials and a credentials file changes within
        ``settle_seconds``, choose again with the new file.

        A rotation sets PostgreSQL's new password an instant before it publishes the file (a role has
        one password), so a client that read the old file in between is refused once."""
        files_before = {source: self.credentials_on_disk(source) for source in _SOURCES}
        try:
            choice = self.choose()
        except SelectionError as exc:
            if not refused_credentials(str(exc)):
                raise
            failure: SelectionError | None = exc
        else:
            # In auto mode a refused Pegasus is skipped for the Mac, and its refusal is in the reason.
            if not authentication_failures(choice.probes) and not refused_credentials(choice.reason):
                return choice
            failure = None
        deadline = time.monotonic() + settle_seconds
        while time.monotonic() < deadline:
            if any(self.credentials_on_disk(source) != files_before[source] for source in _SOURCES):
                log.info("a credentials file changed after a refusal (a rotation): choosing again")
                return self.choose()
            time.sleep(_SETTLE_POLL_SECONDS)
        if failure is not None:
            raise failure
        return choice

    def pegasus_problem(self) -> str | None:
        """Why Pegasus cannot be used right now (file or probe), or None when it is healthy."""
        try:
            endpoints, credentials = self.load_pegasus()
        except EndpointsError as exc:
            return str(exc)
        report = self.probe(endpoints, credentials)
        return None if report.healthy else "; ".join(str(result) for result in report.failures)
