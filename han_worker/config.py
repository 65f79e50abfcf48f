"""The worker's configuration: a JSON file the Ansible roles render, overridden by flags and environment.

This is the one place where precedence is decided, for every command (``run``, ``submit``, ``wait``,
``status``, ``endpoints``): command-line flags, then environment variables (the runbook's names:
``CONTROL_PLANE_MODE``, ``HAN_WORKER_QUEUES``, ``HAN_ENDPOINTS_FILE``, ``MAC_LAN_IP``), then the file,
then defaults. Every error names where the bad value came from: the file and its field, the flag or the
variable.

The file (every key optional; unknown keys are refused, they are typos)::

    {"mode": "auto", "queues": ["pose"],
     "pegasus": {"endpoints_file": "~/.han/control-plane/endpoints.json",
                 "credentials_file": "~/.han/control-plane/credentials.json", "check_slurm_job": true},
     "mac": {"host": "192.0.2.10", "ports": {"postgres": 15432, "redis": 16379, "s3": 19000},
             "credentials_file": "~/.han/mac-credentials.json"},
     "spool_dir": "~/.han/spool", "lease_seconds": 30, "heartbeat_seconds": 10,
     "probe_interval_seconds": 5, "probe_timeout_seconds": 2, "flap_threshold": 3, "max_attempts": 3,
     "drain_grace_seconds": 30, "reconcile_seconds": 30, "idle_timeout_seconds": 0,
     "job_timeouts": {"pose": 600}}

``job_timeouts``: job kind -> seconds a job of that kind may run (from its claim) before it is stopped and
its attempt recorded ``timed_out``; a job's own ``submit --timeout`` wins. A kind not named has no limit.

``idle_timeout_seconds``: a worker with nothing to do for this long leaves by itself (exit 0), so that an
elastic Slurm job gives its GPU back when the queue is empty; 0 (the default) never leaves.

``pegasus.check_slurm_job``: before choosing Pegasus, ask Slurm (``squeue``) whether the endpoints
file's job still runs; for workers on the cluster, where Slurm answers (elsewhere Slurm is not asked).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from han_worker.fields import INT4_MAX, MAX_JSON_BYTES, FieldReader, shown, text_problem
from han_worker.private_files import TrustedFileError, parse_json_object, read_trusted_json
from han_worker.selection.endpoints import DEFAULT_MAC_PORTS, REQUIRED_SERVICES, EndpointsError, check_host
from han_worker.selection.policy import MODES, mac_required

log = logging.getLogger(__name__)

DEFAULT_ENDPOINTS_FILE = "~/.han/control-plane/endpoints.json"
DEFAULT_SPOOL_DIR = "~/.han/spool"
# name -> (default, minimum): seconds may be fractions (tests use short leases), counts are integers.
SECONDS: Mapping[str, tuple[float, float]] = {
    "lease_seconds": (30.0, 0.5),
    "heartbeat_seconds": (10.0, 0.1),
    "probe_interval_seconds": (5.0, 0.1),
    "probe_timeout_seconds": (2.0, 0.1),
    "drain_grace_seconds": (30.0, 0.0),
    "reconcile_seconds": (30.0, 0.5),
    "idle_timeout_seconds": (0.0, 0.0),  # 0: never leave
}
COUNTS: Mapping[str, tuple[int, int]] = {"flap_threshold": (3, 1), "max_attempts": (3, 1)}
_TOP_KEYS = frozenset({"mode", "queues", "pegasus", "mac", "spool_dir", "job_timeouts", *SECONDS, *COUNTS})
STDIN = Path(
    "-"
)  # --config -: the configuration comes on standard input (a role checks it before writing it)


class WorkerConfigError(ValueError):
    """The configuration cannot be used; the message names the file and field, the flag or the variable."""


@dataclass(frozen=True)
class MacSettings:
    host: str
    ports: Mapping[str, int]
    credentials_file: Path | None


@dataclass(frozen=True)
class Overrides:
    """What the command line says; None means "not given"."""

    mode: str | None = None
    queues: str | None = None
    endpoints_file: Path | None = None
    credentials_file: Path | None = None
    mac_host: str | None = None
    mac_ports: Mapping[str, int] | None = None
    mac_credentials_file: Path | None = None
    probe_timeout_seconds: float | None = None


@dataclass(frozen=True)
class WorkerConfig:
    mode: str
    queues: tuple[str, ...]
    endpoints_file: Path
    pegasus_credentials_file: Path | None  # None: credentials.json beside the endpoints file
    check_slurm_job: bool
    mac: MacSettings | None
    spool_dir: Path
    lease_seconds: float
    heartbeat_seconds: float
    probe_interval_seconds: float
    probe_timeout_seconds: float
    drain_grace_seconds: float
    idle_timeout_seconds: float
    reconcile_seconds: float
    flap_threshold: int
    max_attempts: int
    origin: str = field(compare=False)  # the file, or "defaults"
    job_timeouts: Mapping[str, float] = field(default_factory=dict)  # kind -> seconds; absent: no limit

    @property
    def credentials_file(self) -> Path:
        """The Pegasus control plane's credentials file."""
        return self.pegasus_credentials_file or self.endpoints_file.parent / "credentials.json"


def parse_queues(text: str, origin: str) -> tuple[str, ...]:
    """``"pose, noop"`` -> ``("pose", "noop")``; refuses empty names and an empty list."""
    names = [name.strip() for name in text.split(",")]
    if not text.strip() or not all(names):
        raise WorkerConfigError(f"{origin}: {shown(text)} is not a comma-separated list of queue names")
    return tuple(dict.fromkeys(names))


def _seconds(fields: FieldReader, key: str) -> float:
    default, minimum = SECONDS[key]
    return fields.seconds(key, default, minimum)


def _count(fields: FieldReader, key: str) -> int:
    default, minimum = COUNTS[key]
    # max_attempts lands in the ledger's integer column: a larger one would fail every submission.
    return fields.integer(key, minimum, INT4_MAX) if key in fields.data else default


def _path(fields: FieldReader, key: str, default: str | None) -> Path | None:
    if key not in fields.data:
        return None if default is None else Path(default).expanduser()
    return Path(fields.string(key)).expanduser()


def _refuse_unknown(fields: FieldReader, known: frozenset[str], where: str) -> None:
    unknown = sorted(set(fields.data) - known)
    if unknown:
        raise WorkerConfigError(
            f"{fields.origin}: unknown field(s) {', '.join(fields.name(key) for key in unknown)}{where} "
            f"(known: {', '.join(sorted(known))})"
        )


def _file_queues(fields: FieldReader) -> tuple[str, ...]:
    value = fields.data.get("queues", [])
    if not isinstance(value, list) or not all(isinstance(name, str) and name.strip() for name in value):
        fields.fail("queues", " must be a list of queue names (non-empty strings)")
    return tuple(dict.fromkeys(name.strip() for name in value))


def _job_timeouts(fields: FieldReader) -> dict[str, float]:
    """``job_timeouts``: an object of job kind -> seconds, each above 0 and at most MAX_SECONDS."""
    if "job_timeouts" not in fields.data:
        return {}
    given = fields.child("job_timeouts")
    timeouts = {}
    for kind in given.data:
        problem = text_problem(kind) if kind.strip() else "must not be empty"
        if problem is not None:
            fields.fail("job_timeouts", f": kind {shown(kind)} {problem}")
        seconds = given.seconds(kind, 0.0, 0.0)
        if seconds <= 0:
            given.fail(kind, f": {shown(seconds)} must be a number of seconds > 0")
        timeouts[kind] = seconds
    return timeouts


def _mac(fields: FieldReader) -> MacSettings | None:
    if "mac" not in fields.data:
        return None
    mac = fields.child("mac")
    _refuse_unknown(mac, frozenset({"host", "ports", "credentials_file"}), "")
    ports = dict(DEFAULT_MAC_PORTS)
    if "ports" in mac.data:
        given = mac.child("ports")
        _refuse_unknown(given, frozenset(REQUIRED_SERVICES), "")
        ports.update({name: given.integer(name, 1, 65535) for name in given.data})
    host = mac.string("host")
    try:
        check_host(host)
    except EndpointsError as exc:
        mac.fail("host", f": {exc}")
    return MacSettings(host, ports, _path(mac, "credentials_file", None))


def _from_file(path: Path, stdin: TextIO) -> WorkerConfig:
    try:
        if path == STDIN:
            return parse_worker_config(_read_stdin(stdin), "--config -")
        data = read_trusted_json(path)
    except TrustedFileError as exc:
        raise WorkerConfigError(f"--config: {exc}") from exc
    return parse_worker_config(data, str(path))


def _read_stdin(stdin: TextIO) -> dict[str, object]:
    origin = "--config - (standard input)"
    try:
        text = stdin.read(MAX_JSON_BYTES + 1)  # no more than the limit: stdin can be endless
    except UnicodeDecodeError as exc:
        raise TrustedFileError(f"{origin}: not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise TrustedFileError(f"{origin}: cannot be read: {exc.strerror or exc}") from None
    return parse_json_object(text, origin)


def parse_worker_config(data: Mapping[str, object], origin: str) -> WorkerConfig:
    """Validate one decoded configuration document; an empty one gives the defaults."""
    fields = FieldReader(data, origin, WorkerConfigError)
    _refuse_unknown(fields, _TOP_KEYS, "")
    if "pegasus" in data:
        pegasus = fields.child("pegasus")
    else:
        pegasus = FieldReader({}, origin, WorkerConfigError, prefix="pegasus.")
    _refuse_unknown(pegasus, frozenset({"endpoints_file", "credentials_file", "check_slurm_job"}), "")
    mode = fields.string("mode") if "mode" in data else "auto"
    if mode not in MODES:
        fields.fail("mode", f": {mode!r} is not one of {', '.join(MODES)}")
    return WorkerConfig(
        mode=mode,
        queues=_file_queues(fields),
        endpoints_file=_path(pegasus, "endpoints_file", DEFAULT_ENDPOINTS_FILE) or Path(),
        pegasus_credentials_file=_path(pegasus, "credentials_file", None),
        check_slurm_job=pegasus.boolean("check_slurm_job", default=False),
        mac=_mac(fields),
        spool_dir=_path(fields, "spool_dir", DEFAULT_SPOOL_DIR) or Path(),
        lease_seconds=_seconds(fields, "lease_seconds"),
        heartbeat_seconds=_seconds(fields, "heartbeat_seconds"),
        probe_interval_seconds=_seconds(fields, "probe_interval_seconds"),
        probe_timeout_seconds=_seconds(fields, "probe_timeout_seconds"),
        drain_grace_seconds=_seconds(fields, "drain_grace_seconds"),
        idle_timeout_seconds=_seconds(fields, "idle_timeout_seconds"),
        reconcile_seconds=_seconds(fields, "reconcile_seconds"),
        flap_threshold=_count(fields, "flap_threshold"),
        max_attempts=_count(fields, "max_attempts"),
        origin=origin,
        job_timeouts=_job_timeouts(fields),
    )


def _mode(config: WorkerConfig, overrides: Overrides, env: Mapping[str, str]) -> str:
    for origin, value in (("--mode", overrides.mode), ("CONTROL_PLANE_MODE", env.get("CONTROL_PLANE_MODE"))):
        if value is not None and value.strip():
            if value.strip() not in MODES:
                raise WorkerConfigError(f"{origin}: {shown(value)} is not one of {', '.join(MODES)}")
            return value.strip()
    return config.mode


def _queues(config: WorkerConfig, overrides: Overrides, env: Mapping[str, str]) -> tuple[str, ...]:
    if overrides.queues is not None:
        return parse_queues(overrides.queues, "--queues")
    if env.get("HAN_WORKER_QUEUES", "").strip():
        return parse_queues(env["HAN_WORKER_QUEUES"], "HAN_WORKER_QUEUES")
    return config.queues


def _path_override(flag: Path | None, env: Mapping[str, str], variable: str) -> Path | None:
    if flag is not None:
        return flag.expanduser()
    value = env.get(variable, "").strip() if variable else ""
    return Path(value).expanduser() if value else None


def _mac_host(overrides: Overrides, env: Mapping[str, str]) -> tuple[str, str] | None:
    """The Mac's address from ``--mac-host`` or ``MAC_LAN_IP``, with where it came from."""
    for origin, value in (("--mac-host", overrides.mac_host), ("MAC_LAN_IP", env.get("MAC_LAN_IP"))):
        if value is not None and value.strip():
            try:
                return check_host(value.strip()), origin
            except EndpointsError as exc:
                raise WorkerConfigError(f"{origin}: {exc}") from exc
    return None


def _mac_override(config: WorkerConfig, overrides: Overrides, env: Mapping[str, str]) -> MacSettings | None:
    given = _mac_host(overrides, env)
    mac = config.mac
    if given is not None:
        mac = (
            MacSettings(given[0], dict(DEFAULT_MAC_PORTS), None)
            if mac is None
            else replace(mac, host=given[0])
        )
    if mac is None:
        if overrides.mac_ports or overrides.mac_credentials_file:
            raise WorkerConfigError(
                "--mac-port and --mac-credentials-file need the Mac's address: pass --mac-host, set "
                "MAC_LAN_IP or put mac.host in the --config file"
            )
        return None
    ports = {**mac.ports, **(overrides.mac_ports or {})}
    unknown = sorted(set(ports) - set(REQUIRED_SERVICES))
    if unknown:
        raise WorkerConfigError(
            f"--mac-port: unknown service {', '.join(unknown)} (known: {', '.join(REQUIRED_SERVICES)})"
        )
    credentials = overrides.mac_credentials_file
    return replace(
        mac, ports=ports, credentials_file=credentials.expanduser() if credentials else mac.credentials_file
    )


def _check_complete(config: WorkerConfig, *, need_queues: bool) -> None:
    in_file = "--config FILE" if config.origin == "defaults" else config.origin
    if need_queues and not config.queues:
        raise WorkerConfigError(
            f"no queues to serve: pass --queues, set HAN_WORKER_QUEUES or put 'queues' in {in_file}"
        )
    if mac_required(config.mode) and config.mac is None:
        raise WorkerConfigError(
            f"mode {config.mode} needs the Mac's address: pass --mac-host, set MAC_LAN_IP or put mac.host in "
            f"{in_file}"
        )
    if config.mode != "pegasus" and config.mac is not None and config.mac.credentials_file is None:
        raise WorkerConfigError(
            f"mode {config.mode} may use the Mac at {config.mac.host}, but its control plane's credentials "
            f"are unknown: pass --mac-credentials-file or put mac.credentials_file in {in_file}"
        )


def _apply(config: WorkerConfig, overrides: Overrides, env: Mapping[str, str]) -> WorkerConfig:
    """Flags, then the environment, over what the file (or the defaults) said."""
    endpoints_file = _path_override(overrides.endpoints_file, env, "HAN_ENDPOINTS_FILE")
    credentials_file = _path_override(overrides.credentials_file, env, "")
    timeout = overrides.probe_timeout_seconds
    return replace(
        config,
        mode=_mode(config, overrides, env),
        queues=_queues(config, overrides, env),
        endpoints_file=endpoints_file or config.endpoints_file,
        pegasus_credentials_file=credentials_file or config.pegasus_credentials_file,
        mac=_mac_override(config, overrides, env),
        probe_timeout_seconds=config.probe_timeout_seconds if timeout is None else timeout,
    )


def load_worker_config(
    path: Path | None,
    overrides: Overrides,
    env: Mapping[str, str],
    *,
    need_queues: bool = False,
    stdin: TextIO | None = None,
) -> WorkerConfig:
    """The file at ``path`` (if any; ``-`` is standard input) with the command line and the environment
    applied on top, checked for completeness."""
    config = (
        parse_worker_config({}, "defaults")
        if path is None
        else _from_file(path.expanduser(), stdin or sys.stdin)
    )
    config = _apply(config, overrides, env)
    _check_complete(config, need_queues=need_queues)
    if config.heartbeat_seconds >= config.lease_seconds:
        log.warning(
            "heartbeat_seconds %g >= lease_seconds %g: other workers will reclaim jobs while they run",
            config.heartbeat_seconds,
            config.lease_seconds,
        )
    return config
