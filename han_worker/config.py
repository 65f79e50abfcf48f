"""The worker's configuration: a JSON file the Ansible roles render, overridden by flags and environment.

Precedence, highest first: command-line flags, environment variables (the runbook's names:
``CONTROL_PLANE_MODE``, ``HAN_WORKER_QUEUES``, ``HAN_ENDPOINTS_FILE``, ``MAC_LAN_IP``), the file, defaults.
Every error names where the bad value came from: the file and its field, the flag or the variable.

The file (every key optional; unknown keys are refused, they are typos)::

    {"mode": "auto", "queues": ["pose"],
     "pegasus": {"endpoints_file": "~/.han/control-plane/endpoints.json",
                 "credentials_file": "~/.han/control-plane/credentials.json"},
     "mac": {"host": "192.0.2.10", "ports": {"postgres": 15432, "redis": 16379, "s3": 19000},
             "credentials_file": "~/.han/mac-credentials.json"},
     "spool_dir": "~/.han/spool", "lease_seconds": 30, "heartbeat_seconds": 10,
     "probe_interval_seconds": 5, "probe_timeout_seconds": 2, "flap_threshold": 3, "max_attempts": 3,
     "drain_grace_seconds": 30, "reconcile_seconds": 30,
     "deployed_selection": {"source": "pegasus", "reason": "Pegasus endpoints (epoch 3, ...) are valid"}}

``deployed_selection`` records what the play that deployed the worker chose, and why; it is logged at
start and nothing else: the worker selects its control plane again, with the same code, when it runs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from han_worker.fields import FieldReader, json_type_name
from han_worker.private_files import TrustedFileError, read_trusted_json
from han_worker.selection.endpoints import DEFAULT_MAC_PORTS, REQUIRED_SERVICES
from han_worker.selection.policy import MODES

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
}
COUNTS: Mapping[str, tuple[int, int]] = {"flap_threshold": (3, 1), "max_attempts": (3, 1)}
_TOP_KEYS = frozenset(
    {"mode", "queues", "pegasus", "mac", "spool_dir", "deployed_selection", *SECONDS, *COUNTS}
)
SOURCES = ("pegasus", "mac")


class WorkerConfigError(ValueError):
    """The configuration cannot be used; the message names the file and field, the flag or the variable."""


@dataclass(frozen=True)
class MacSettings:
    host: str
    ports: Mapping[str, int]
    credentials_file: Path | None


@dataclass(frozen=True)
class DeployedSelection:
    """What the deploying play chose (informational: the worker selects again at run time)."""

    source: str
    reason: str


@dataclass(frozen=True)
class Overrides:
    """What the command line says; None means "not given"."""

    mode: str | None = None
    queues: str | None = None


@dataclass(frozen=True)
class WorkerConfig:
    mode: str
    queues: tuple[str, ...]
    endpoints_file: Path
    pegasus_credentials_file: Path | None  # None: credentials.json beside the endpoints file
    mac: MacSettings | None
    spool_dir: Path
    lease_seconds: float
    heartbeat_seconds: float
    probe_interval_seconds: float
    probe_timeout_seconds: float
    drain_grace_seconds: float
    reconcile_seconds: float
    flap_threshold: int
    max_attempts: int
    origin: str = field(compare=False)  # the file, or "defaults"
    deployed_selection: DeployedSelection | None = None

    @property
    def credentials_file(self) -> Path:
        """The Pegasus control plane's credentials file."""
        return self.pegasus_credentials_file or self.endpoints_file.parent / "credentials.json"


def parse_queues(text: str, origin: str) -> tuple[str, ...]:
    """``"pose, noop"`` -> ``("pose", "noop")``; refuses empty names and an empty list."""
    names = [name.strip() for name in text.split(",")]
    if not text.strip() or not all(names):
        raise WorkerConfigError(f"{origin}: {text!r} is not a comma-separated list of queue names")
    return tuple(dict.fromkeys(names))


def _seconds(fields: FieldReader, key: str) -> float:
    default, minimum = SECONDS[key]
    value = fields.data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        fields.fail(key, f" must be a number of seconds, not {json_type_name(value)}")
    if not math.isfinite(value) or value < minimum:
        fields.fail(key, f": {value} must be a finite number of seconds >= {minimum:g}")
    return float(value)


def _count(fields: FieldReader, key: str) -> int:
    default, minimum = COUNTS[key]
    return fields.integer(key, minimum) if key in fields.data else default


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
    return MacSettings(mac.string("host"), ports, _path(mac, "credentials_file", None))


def _deployed_selection(fields: FieldReader) -> DeployedSelection | None:
    if "deployed_selection" not in fields.data:
        return None
    record = fields.child("deployed_selection")
    _refuse_unknown(record, frozenset({"source", "reason"}), "")
    source = record.string("source")
    if source not in SOURCES:
        record.fail("source", f": {source!r} is not one of {', '.join(SOURCES)}")
    return DeployedSelection(source, record.string("reason"))


def _from_file(path: Path) -> WorkerConfig:
    try:
        data = read_trusted_json(path)
    except TrustedFileError as exc:
        raise WorkerConfigError(f"--config: {exc}") from exc
    return parse_worker_config(data, str(path))


def parse_worker_config(data: Mapping[str, object], origin: str) -> WorkerConfig:
    """Validate one decoded configuration document; an empty one gives the defaults."""
    fields = FieldReader(data, origin, WorkerConfigError)
    _refuse_unknown(fields, _TOP_KEYS, "")
    if "pegasus" in data:
        pegasus = fields.child("pegasus")
    else:
        pegasus = FieldReader({}, origin, WorkerConfigError, prefix="pegasus.")
    _refuse_unknown(pegasus, frozenset({"endpoints_file", "credentials_file"}), "")
    mode = fields.string("mode") if "mode" in data else "auto"
    if mode not in MODES:
        fields.fail("mode", f": {mode!r} is not one of {', '.join(MODES)}")
    return WorkerConfig(
        mode=mode,
        queues=_file_queues(fields),
        endpoints_file=_path(pegasus, "endpoints_file", DEFAULT_ENDPOINTS_FILE) or Path(),
        pegasus_credentials_file=_path(pegasus, "credentials_file", None),
        mac=_mac(fields),
        spool_dir=_path(fields, "spool_dir", DEFAULT_SPOOL_DIR) or Path(),
        lease_seconds=_seconds(fields, "lease_seconds"),
        heartbeat_seconds=_seconds(fields, "heartbeat_seconds"),
        probe_interval_seconds=_seconds(fields, "probe_interval_seconds"),
        probe_timeout_seconds=_seconds(fields, "probe_timeout_seconds"),
        drain_grace_seconds=_seconds(fields, "drain_grace_seconds"),
        reconcile_seconds=_seconds(fields, "reconcile_seconds"),
        flap_threshold=_count(fields, "flap_threshold"),
        max_attempts=_count(fields, "max_attempts"),
        origin=origin,
        deployed_selection=_deployed_selection(fields),
    )


def _mode(config: WorkerConfig, overrides: Overrides, env: Mapping[str, str]) -> str:
    for origin, value in (("--mode", overrides.mode), ("CONTROL_PLANE_MODE", env.get("CONTROL_PLANE_MODE"))):
        if value is not None and value.strip():
            if value.strip() not in MODES:
                raise WorkerConfigError(f"{origin}: {value!r} is not one of {', '.join(MODES)}")
            return value.strip()
    return config.mode


def _queues(config: WorkerConfig, overrides: Overrides, env: Mapping[str, str]) -> tuple[str, ...]:
    if overrides.queues is not None:
        return parse_queues(overrides.queues, "--queues")
    if env.get("HAN_WORKER_QUEUES", "").strip():
        return parse_queues(env["HAN_WORKER_QUEUES"], "HAN_WORKER_QUEUES")
    return config.queues


def _mac_override(config: WorkerConfig, env: Mapping[str, str]) -> MacSettings | None:
    host = env.get("MAC_LAN_IP", "").strip()
    if not host:
        return config.mac
    if config.mac is None:
        return MacSettings(host, dict(DEFAULT_MAC_PORTS), None)
    return replace(config.mac, host=host)


def _check_complete(config: WorkerConfig, *, need_queues: bool) -> None:
    in_file = "--config FILE" if config.origin == "defaults" else config.origin
    if need_queues and not config.queues:
        raise WorkerConfigError(
            f"no queues to serve: pass --queues, set HAN_WORKER_QUEUES or put 'queues' in {in_file}"
        )
    if config.mode == "mac" and config.mac is None:
        raise WorkerConfigError(f"mode mac needs the Mac's address: set MAC_LAN_IP or mac.host in {in_file}")
    if config.mode != "pegasus" and config.mac is not None and config.mac.credentials_file is None:
        raise WorkerConfigError(
            f"mode {config.mode} may use the Mac at {config.mac.host}, but its control plane's credentials "
            f"are unknown: field 'mac.credentials_file' is missing in {in_file}"
        )


def load_worker_config(
    path: Path | None, overrides: Overrides, env: Mapping[str, str], *, need_queues: bool = False
) -> WorkerConfig:
    """The file at ``path`` (if any) with the command line and the environment applied on top."""
    config = parse_worker_config({}, "defaults") if path is None else _from_file(path.expanduser())
    env_endpoints = env.get("HAN_ENDPOINTS_FILE", "").strip()
    config = replace(
        config,
        mode=_mode(config, overrides, env),
        queues=_queues(config, overrides, env),
        endpoints_file=Path(env_endpoints).expanduser() if env_endpoints else config.endpoints_file,
        mac=_mac_override(config, env),
    )
    _check_complete(config, need_queues=need_queues)
    if config.deployed_selection is not None:
        log.info(
            "deployed for the %s control plane (%s); selecting again now in %s mode",
            config.deployed_selection.source,
            config.deployed_selection.reason,
            config.mode,
        )
    if config.heartbeat_seconds >= config.lease_seconds:
        log.warning(
            "heartbeat_seconds %g >= lease_seconds %g: other workers will reclaim jobs while they run",
            config.heartbeat_seconds,
            config.lease_seconds,
        )
    return config
