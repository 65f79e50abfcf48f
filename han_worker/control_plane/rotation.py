"""Rotate every credential of a running control plane in two phases, with no lost job.

``begin`` (``han-control-plane rotate``) records the next generation of secrets, then makes each
service accept it beside the old one, then publishes the workers' new share:

- PostgreSQL: ``ALTER ROLE ... PASSWORD`` for the superuser and the worker. A role has one password,
  so the old one stops working for *new* sessions at once; open sessions are not affected, and a
  worker that reconnects reads the credentials file again.
- Redis: a second password for the admin and the worker user (ACL users may have several).
- S3 (SeaweedFS): a second key pair for each identity, in the identities file it re-reads on SIGHUP.

Workers notice the new credentials file at their next health check and reconnect between two jobs
(:meth:`han_worker.worker.loop.Worker.monitor_tick`); each reports its generation in the registry.

``retire`` (``han-control-plane rotate --retire``) waits until every registered worker uses the new
generation, removes the old Redis passwords and S3 keys, checks that every old credential is refused,
and only then forgets the old secrets.

Each phase can be run again after a failure: the new secrets are written to ``secrets.json`` (and the
old ones kept in ``secrets.previous.json``) before any service changes, a second run finishes what the
first began, and a supervisor that restarts meanwhile sets the recorded superuser password itself.
It must run on the control plane's node (it sends SIGHUP to SeaweedFS) as the control plane's user.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from han_worker.control_plane.admin_secrets import ControlPlaneSecrets, load_secrets, trusted_authorities
from han_worker.control_plane.layout import Layout
from han_worker.control_plane.metrics_server import publish_prometheus_files
from han_worker.control_plane.seaweed_security import SECURITY_DIR, renew_jwt_keys
from han_worker.control_plane.services import (
    STUNNEL_CONFIG,
    TLS_REFRESH_ENV,
    certificate_sites,
    identities_file,
    s3_identities,
    set_password,
    write_server_certificate,
)
from han_worker.private_files import write_private_json
from han_worker.selection.checks import postgres_check, redis_check, s3_check, worker_checks
from han_worker.selection.credentials import Credentials, CredentialsError, load_credentials_file
from han_worker.selection.endpoints import (
    Endpoints,
    EndpointsError,
    ServiceEndpoint,
    load_endpoints_file,
    write_endpoints_file,
)
from han_worker.selection.probes import Check, CheckFailed
from han_worker.selection.redis_tls import tls_redis
from han_worker.selection.tls import ca_fingerprint, ca_fingerprints, postgres_tls
from han_worker.store.queues import WORKER_PREFIX

log = logging.getLogger(__name__)

REGISTRY_FIELD = "credentials_generation"  # what each worker reports (Worker.registry_fields)
_AUTH_REFUSALS = ("WRONGPASS", "authentication failed", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                  "AccessDenied", "invalid username-password")  # fmt: skip


class RotationError(RuntimeError):
    """A rotation cannot go on; the message says what to do. Running it again resumes it."""


@dataclass
class RotationReport:
    """What a phase did, for people and for Ansible: never a secret, only names and generations."""

    phase: str
    generation: int
    changed: bool = False
    steps: list[str] = field(default_factory=list)

    def step(self, text: str) -> None:
        log.info("%s", text)
        self.steps.append(text)

    def apply(self, done: str | None) -> None:
        """Record a change that was made (``done`` says which), or nothing when none was needed."""
        if done is not None:
            self.step(done)
            self.changed = True

    def to_dict(self) -> dict[str, object]:
        return {
            "phase": self.phase,
            "generation": self.generation,
            "changed": self.changed,
            "steps": self.steps,
        }


@contextmanager
def _rotation_lock(layout: Layout) -> Iterator[None]:
    fd = os.open(layout.rotation_lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RotationError(f"{layout.rotation_lock_file}: another rotation is running") from None
        yield
    finally:
        os.close(fd)


def _live_endpoints(layout: Layout) -> Endpoints:
    """The published endpoints of a serving control plane: rotation changes live services only."""
    try:
        endpoints = load_endpoints_file(layout.endpoints_file)
    except EndpointsError as exc:
        raise RotationError(
            f"the control plane is not serving ({exc}); start it, then rotate (secrets are applied to live "
            "services)"
        ) from exc
    return endpoints


def _previous(layout: Layout) -> ControlPlaneSecrets | None:
    path = layout.previous_secrets_file
    return load_secrets(path) if path.exists() else None


# -- begin -------------------------------------------------------------------------------------------------


def begin(layout: Layout, timeout: float) -> RotationReport:
    """Phase 1: the next generation works everywhere, the old one still works where a service allows."""
    with _rotation_lock(layout):
        endpoints = _live_endpoints(layout)
        current, previous = load_secrets(layout.secrets_file), _previous(layout)
        report = RotationReport("begin", current.generation)
        if previous is None or previous.generation >= current.generation:
            previous = current  # not started, or stopped before the new secrets were recorded
            write_private_json(layout.previous_secrets_file, previous.to_dict())
            current = previous.rotated()
            write_private_json(layout.secrets_file, current.to_dict())
            report.generation, report.changed = current.generation, True
            report.step(f"recorded generation {current.generation} (generation {previous.generation} kept)")
        else:
            report.step(f"resuming the rotation to generation {current.generation}")
        services, trust = endpoints.services, _trust(current, previous)
        # Valkey and SeaweedFS take a second password, so they go first. A PostgreSQL role has one:
        # from its ALTER ROLE until the workers' file is rewritten, a client holding the old file is
        # refused. Publishing right after it keeps that window to milliseconds, and han-worker's
        # clients re-read the file when refused (connection.Selector.choose_after_refusal).
        report.apply(_redis_add(services["redis"], current, previous, trust, timeout))
        plane = LivePlane(layout, endpoints, trust, timeout)
        report.apply(_s3_apply(plane, [current, previous]))
        report.apply(_postgres_begin(services["postgres"], current, previous, trust, timeout))
        # The workers' share trusts both authorities: the servers keep the old one's certificates until
        # the retire phase, which switches them once every worker holds this file.
        credentials = current.worker_credentials(also_trusted=previous.tls_ca_cert)
        report.apply(_publish_credentials(layout, credentials))
        # /metrics accepts both passwords from here on (it re-reads secrets.json): Prometheus gets the new.
        report.apply(_publish_prometheus_files(endpoints, layout, current, previous))
        _check_works(endpoints, credentials, timeout)
        return report


def _publish_prometheus_files(
    endpoints: Endpoints, layout: Layout, current: ControlPlaneSecrets, previous: ControlPlaneSecrets | None
) -> str | None:
    """The /metrics password and authorities for Prometheus, where the control plane serves /metrics."""
    if endpoints.metrics is None:  # a supervisor from before /metrics
        return None
    changed = publish_prometheus_files(layout, current, previous)
    return f"wrote {' and '.join(changed)} for Prometheus" if changed else None


def _publish_credentials(layout: Layout, credentials: Credentials) -> str | None:
    """Write the workers' credentials file unless it holds exactly ``credentials`` already."""
    published = layout.credentials_file
    try:
        unchanged = load_credentials_file(published) == credentials
    except CredentialsError:
        unchanged = False
    if unchanged:
        return None
    write_private_json(published, credentials.to_dict())
    trusted = len(ca_fingerprints(credentials.tls_ca_cert))
    return (
        f"published the workers' generation {credentials.generation} in {published} "
        f"({trusted} certificate authorit{'ies' if trusted > 1 else 'y'})"
    )


# The authorities (PEM) a rotation's clients verify the servers with, and where they come from.
Trust = tuple[str, str]


@dataclass(frozen=True)
class LivePlane:
    """The serving control plane a phase works on, and how its clients reach it."""

    layout: Layout
    endpoints: Endpoints
    trust: Trust
    timeout: float


def _trust(current: ControlPlaneSecrets, previous: ControlPlaneSecrets) -> Trust:
    """Both generations' authorities: until the retire phase switches them, the servers show certificates
    of the previous one; after it, of the current one."""
    if not current.tls_ca_cert or not previous.tls_ca_cert:
        raise RotationError(
            "the secrets file holds no certificate authority: its control plane was started by a version "
            "without TLS; restart it (the start adds one), then rotate"
        )
    return trusted_authorities(current, previous), "the control plane's secrets"


def _postgres_admin(
    endpoint: ServiceEndpoint, candidates: list[ControlPlaneSecrets], trust: Trust, timeout: float
) -> psycopg.Connection[tuple[object, ...]]:
    last: Exception | None = None
    for secrets in candidates:
        try:
            return psycopg.connect(
                postgres_tls(*trust),
                host=endpoint.host, port=endpoint.port, dbname="postgres",
                user=secrets.postgres_superuser, password=secrets.postgres_superuser_password,
                connect_timeout=max(1, round(timeout)), autocommit=True,
            )  # fmt: skip
        except psycopg.OperationalError as exc:
            last = exc
    raise RotationError(
        f"postgres {endpoint.address}: the superuser cannot log in with either generation: {last}"
    )


def _postgres_begin(
    endpoint: ServiceEndpoint,
    current: ControlPlaneSecrets,
    previous: ControlPlaneSecrets,
    trust: Trust,
    timeout: float,
) -> str | None:
    superuser = postgres_check(
        current.postgres_superuser, current.postgres_superuser_password, "postgres", *trust
    )
    worker = postgres_check(
        current.postgres_user, current.postgres_password, current.postgres_database, *trust
    )
    if _accepted(superuser, endpoint, timeout) and _accepted(worker, endpoint, timeout):
        return None
    with _postgres_admin(endpoint, [current, previous], trust, timeout) as connection:
        set_password(connection, current.postgres_user, current.postgres_password)
        set_password(connection, current.postgres_superuser, current.postgres_superuser_password)
    return f"postgres {endpoint.address}: new passwords set (open sessions keep theirs)"


# -- Redis -------------------------------------------------------------------------------------------------


def _redis_admin(
    endpoint: ServiceEndpoint, candidates: list[ControlPlaneSecrets], trust: Trust, timeout: float
) -> redis.Redis:
    last: Exception | None = None
    for secrets in candidates:
        client = tls_redis(
            endpoint.host, endpoint.port, *trust, decode_responses=True,
            username=secrets.redis_admin_user, password=secrets.redis_admin_password,
            socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
        )  # fmt: skip
        try:
            client.ping()
        except redis.RedisError as exc:
            client.close()
            last = exc
            continue
        return client
    raise RotationError(
        f"redis {endpoint.address}: the admin user cannot log in with either generation: {last}"
    )


def _password_hashes(client: redis.Redis, user: str) -> set[str]:
    """The SHA-256 of each password ``user`` accepts (what ACL GETUSER shows instead of passwords)."""
    found: Mapping[str, object] = client.acl_getuser(user) or {}
    passwords = found.get("passwords") or []
    return {str(value) for value in passwords} if isinstance(passwords, list) else set()


def _sha256(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def _redis_users(secrets: ControlPlaneSecrets) -> list[tuple[str, str]]:
    return [
        (secrets.redis_admin_user, secrets.redis_admin_password),
        (secrets.redis_user, secrets.redis_password),
    ]


def _redis_add(
    endpoint: ServiceEndpoint,
    current: ControlPlaneSecrets,
    previous: ControlPlaneSecrets,
    trust: Trust,
    timeout: float,
) -> str | None:
    client = _redis_admin(endpoint, [current, previous], trust, timeout)
    changed = False
    try:
        for user, password in _redis_users(current):
            if _sha256(password) not in _password_hashes(client, user):
                # ">" adds a password; the user's other passwords and rules stay as they are.
                client.execute_command("ACL", "SETUSER", user, f">{password}")  # type: ignore[no-untyped-call]
                changed = True
    finally:
        client.close()
    return f"redis {endpoint.address}: new passwords added beside the old ones" if changed else None


def _redis_remove(
    endpoint: ServiceEndpoint,
    current: ControlPlaneSecrets,
    previous: ControlPlaneSecrets,
    trust: Trust,
    timeout: float,
) -> str | None:
    client = _redis_admin(endpoint, [current], trust, timeout)
    changed = False
    try:
        for (user, old), (_same_user, new) in zip(_redis_users(previous), _redis_users(current), strict=True):
            if old != new and _sha256(old) in _password_hashes(client, user):
                # "!<hash>" removes a password by its hash: the old password need not be sent again.
                client.execute_command("ACL", "SETUSER", user, f"!{_sha256(old)}")  # type: ignore[no-untyped-call]
                changed = True
    finally:
        client.close()
    return f"redis {endpoint.address}: old passwords removed" if changed else None


# -- S3 (SeaweedFS) --------------------------------------------------------------------------------------


def _s3_apply(
    plane: LivePlane, generations: list[ControlPlaneSecrets], retired: ControlPlaneSecrets | None = None
) -> str | None:
    """Write the identities of ``generations`` and make SeaweedFS re-read them (SIGHUP); wait until the
    newest keys work and, when ``retired`` is given, its keys no longer do (the reload is asynchronous).

    Returns what it did, or None when SeaweedFS already held exactly these keys."""
    layout, endpoint, trust, timeout = (
        plane.layout,
        plane.endpoints.services["s3"],
        plane.trust,
        plane.timeout,
    )
    path = identities_file(layout.data_dir("s3"))
    wanted = s3_identities(generations)
    newest = generations[0]

    def settled() -> bool:
        accepts_new = _accepted(_s3_root_check(newest, trust), endpoint, timeout)
        return accepts_new and (
            retired is None or not _accepted(_s3_root_check(retired, trust), endpoint, timeout)
        )

    try:
        unchanged = json.loads(path.read_text()) == wanted
    except (OSError, ValueError):
        unchanged = False
    if unchanged and settled():
        return None
    write_private_json(path, wanted)
    renew_jwt_keys(layout.data_dir("s3") / SECURITY_DIR)  # reloaded with the identities
    pid = _seaweed_pid(path)
    os.kill(pid, signal.SIGHUP)
    _wait_until(
        settled, timeout, f"s3 {endpoint.address}: SeaweedFS (pid {pid}) did not reload its keys after SIGHUP"
    )
    held = ", ".join(str(secrets.generation) for secrets in generations)
    return f"s3 {endpoint.address}: SeaweedFS reloaded its identities; they hold generation(s) {held}"


def _seaweed_pid(identities: Path) -> int:
    """The SeaweedFS process of ours that reads ``identities`` (started with -s3.config=<it>)."""
    return _pid_reading(f"-s3.config={identities}".encode())


def _pid_reading(wanted: bytes) -> int:
    """The process of this user on this host with ``wanted`` as one of its arguments."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if wanted in argv:
            return int(entry.name)
    raise RotationError(
        f"no process of this user on this host was started with {wanted.decode()!r}: run the rotation on "
        "the control plane's node, as its user (harden.yml does, inside the Slurm job)"
    )


def _s3_root_check(secrets: ControlPlaneSecrets, trust: Trust) -> Check:
    return s3_check(secrets.s3_root_access_key, secrets.s3_root_secret_key, secrets.s3_bucket, *trust)


# -- retire ------------------------------------------------------------------------------------------------


def retire(layout: Layout, timeout: float, wait_workers: float) -> RotationReport:
    """Phase 2: once every worker uses the new generation, the old credentials stop working."""
    with _rotation_lock(layout):
        current, previous = load_secrets(layout.secrets_file), _previous(layout)
        report = RotationReport("retire", current.generation)
        if previous is None:
            report.step("no rotation in progress: nothing to retire")
            return report
        if previous.generation >= current.generation:
            raise RotationError(
                f"{layout.previous_secrets_file}: the rotation did not record its new secrets; run "
                "`han-control-plane rotate` (begin) again first"
            )
        endpoints = _live_endpoints(layout)
        services, trust = endpoints.services, _trust(current, previous)
        plane = LivePlane(layout, endpoints, trust, timeout)
        new_authority = current.tls_ca_cert != previous.tls_ca_cert
        if new_authority:
            _check_certificates_reloadable(layout)  # before anything changes
        _wait_for_workers(plane, current, wait_workers, report)
        report.apply(_redis_remove(services["redis"], current, previous, trust, timeout))
        report.apply(_s3_apply(plane, [current], retired=previous))
        still_accepted = _old_still_accepted(endpoints, previous, trust, timeout)
        if still_accepted:
            raise RotationError("old credentials are still accepted: " + "; ".join(still_accepted))
        report.step(f"every old credential (generation {previous.generation}) is refused")
        if new_authority:
            _retire_authority(plane, current, report)
        layout.previous_secrets_file.unlink()
        report.changed = True
        report.step(f"forgot generation {previous.generation}")
        return report


def _registered_generations(client: redis.Redis) -> dict[str, str]:
    """Worker id -> the credentials generation it reports (registry entries of dead workers expire)."""
    found = {}
    for key in client.scan_iter(match=f"{WORKER_PREFIX}*", count=100):
        entry = client.hgetall(key)
        if entry:
            found[str(key).removeprefix(WORKER_PREFIX)] = str(entry.get(REGISTRY_FIELD, "unknown"))
    return found


def _wait_for_workers(
    plane: LivePlane, current: ControlPlaneSecrets, wait: float, report: RotationReport
) -> None:
    deadline = time.monotonic() + wait
    client = _redis_admin(plane.endpoints.services["redis"], [current], plane.trust, plane.timeout)
    try:
        while True:
            behind = {
                w: g for w, g in _registered_generations(client).items() if g != str(current.generation)
            }
            if not behind:
                report.step(f"every registered worker uses generation {current.generation}")
                return
            if time.monotonic() >= deadline:
                listed = ", ".join(
                    f"{worker} (generation {generation})" for worker, generation in sorted(behind.items())
                )
                raise RotationError(
                    f"after {wait:g}s, {len(behind)} worker(s) still use older credentials: {listed}. "
                    "Nothing was retired; a worker moves between two jobs, so wait for its job (or stop "
                    "it), then run `rotate --retire` again"
                )
            time.sleep(1.0)
    finally:
        client.close()


def _old_still_accepted(
    endpoints: Endpoints, previous: ControlPlaneSecrets, trust: Trust, timeout: float
) -> list[str]:
    """Each old credential that a service still accepts, named (user and service, never the secret)."""
    old_worker = worker_checks(replace(previous.worker_credentials(), tls_ca_cert=trust[0]), trust[1])
    checks: list[tuple[str, str, Check]] = [
        ("postgres", previous.postgres_superuser,
         postgres_check(previous.postgres_superuser, previous.postgres_superuser_password, "postgres",
                        *trust)),
        ("postgres", previous.postgres_user, old_worker["postgres"]),
        ("redis", previous.redis_admin_user,
         redis_check(previous.redis_admin_user, previous.redis_admin_password, *trust)),
        ("redis", previous.redis_user, old_worker["redis"]),
        ("s3", previous.s3_root_access_key, _s3_root_check(previous, trust)),
        ("s3", previous.s3_access_key, old_worker["s3"]),
    ]  # fmt: skip
    accepted = []
    for service, user, check in checks:
        endpoint = endpoints.services[service]
        refused = _refusal(check, endpoint, timeout)
        if refused is None:
            accepted.append(f"{service} {endpoint.address} user {user}")
    return accepted


def _refusal(check: Check, endpoint: ServiceEndpoint, timeout: float) -> str | None:
    """The service's refusal of ``check``'s credentials, or None when it accepted them.

    Anything but an authentication refusal (a timeout, a crash) raises: it proves nothing."""
    try:
        check(endpoint, timeout)
    except CheckFailed as exc:
        if any(marker in str(exc) for marker in _AUTH_REFUSALS):
            return str(exc)
        raise RotationError(f"cannot tell whether an old credential is refused: {exc}") from None
    return None


def _accepted(check: Check, endpoint: ServiceEndpoint, timeout: float) -> bool:
    try:
        check(endpoint, timeout)
    except CheckFailed:
        return False
    return True


def _check_works(endpoints: Endpoints, credentials: Credentials, timeout: float) -> None:
    failures = _failures(endpoints, credentials, timeout)
    if failures:
        raise RotationError(f"the workers' new credentials do not work yet: {'; '.join(failures)}")


# -- the certificate authority ------------------------------------------------------------------------------


def _retire_authority(plane: LivePlane, current: ControlPlaneSecrets, report: RotationReport) -> None:
    """Switch every server to a certificate of the current authority, then name only it to the workers.

    Every registered worker holds both authorities by now (the begin phase published them together), so the
    switch breaks no connection, open or new. Order: the servers first, then the endpoints file's
    fingerprint, then the credentials file; each step can be repeated, so a retire that fails midway is run
    again (a supervisor that restarts meanwhile serves the previous authority again, as begin left it)."""
    layout, endpoints, timeout = plane.layout, plane.endpoints, plane.timeout
    only_current = current.worker_credentials()
    if not _works(endpoints, only_current, timeout):
        authority = current.authority()
        for site in certificate_sites(layout):
            endpoint = endpoints.metrics if site.service == "metrics" else endpoints.services[site.service]
            if endpoint is not None:  # /metrics re-reads its certificate files at its next connection
                write_server_certificate(authority, site.common_name, endpoint.host, site.directory)
        _reload_certificates(plane, current)
        _wait_until(
            lambda: _works(endpoints, only_current, timeout),
            timeout,
            lambda: (
                "the servers do not all show a certificate of the new authority after their reload: "
                + "; ".join(_failures(endpoints, only_current, timeout))
            ),
        )
        report.apply("every server shows a certificate of the new authority")
    fingerprint = ca_fingerprint(current.tls_ca_cert)
    if endpoints.tls_ca_sha256 != fingerprint:
        write_endpoints_file(layout.endpoints_file, replace(endpoints, tls_ca_sha256=fingerprint))
        report.apply(f"the endpoints file names the new authority (SHA-256 {fingerprint[:16]}...)")
    report.apply(_publish_credentials(layout, only_current))
    report.apply(_publish_prometheus_files(endpoints, layout, current, None))


def _check_certificates_reloadable(layout: Layout) -> None:
    """Refuse to retire when the S3 gateway would not re-read its certificate: a control plane started by a
    version before certificate rotation runs SeaweedFS without TLS_REFRESH_ENV (weed's default: every 5 h)."""
    pid = _seaweed_pid(identities_file(layout.data_dir("s3")))
    try:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError as exc:
        raise RotationError(f"cannot read SeaweedFS's environment (pid {pid}): {exc}") from None
    if not any(entry.startswith(f"{TLS_REFRESH_ENV}=".encode()) for entry in environment):
        raise RotationError(
            f"SeaweedFS (pid {pid}) was started by a version of the control plane that does not re-read its "
            "certificate, so its S3 gateway cannot switch to the new certificate authority: restart the "
            "control plane (playbooks/control_plane.yml -e state=stopped, then without; it serves the old "
            "authority until the retire phase), then run the retire phase again. Nothing was retired"
        )


def _works(endpoints: Endpoints, credentials: Credentials, timeout: float) -> bool:
    return not _failures(endpoints, credentials, timeout)


def _failures(endpoints: Endpoints, credentials: Credentials, timeout: float) -> list[str]:
    failures = []
    for service, check in worker_checks(credentials).items():
        try:
            check(endpoints.services[service], timeout)
        except CheckFailed as exc:
            failures.append(str(exc))
    return failures


def _reload_certificates(plane: LivePlane, current: ControlPlaneSecrets) -> None:
    """Make each server read its new certificate: PostgreSQL on a configuration reload, stunnel on SIGHUP,
    SeaweedFS's S3 gateway by itself (it re-reads its certificate every few seconds: TLS_REFRESH_INTERVAL)."""
    postgres = plane.endpoints.services["postgres"]
    with _postgres_admin(postgres, [current], plane.trust, plane.timeout) as connection:
        connection.execute("SELECT pg_reload_conf()")
    stunnel_config_file = plane.layout.data_dir("redis-tls") / STUNNEL_CONFIG
    os.kill(_pid_reading(str(stunnel_config_file).encode()), signal.SIGHUP)


def _wait_until(condition: Callable[[], bool], timeout: float, message: str | Callable[[], str]) -> None:
    """Wait for ``condition``; RotationError with ``message`` (or what it returns, asked then) on timeout."""
    deadline = time.monotonic() + max(timeout, 10.0)
    while not condition():
        if time.monotonic() >= deadline:
            raise RotationError(message if isinstance(message, str) else message())
        time.sleep(0.2)
