"""The worker's configuration file, and the flags and variables that override it (no service needed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from han_worker.config import Overrides, WorkerConfig, WorkerConfigError, load_worker_config, parse_queues

FULL = {
    "mode": "pegasus",
    "queues": ["pose", "noop"],
    "pegasus": {"endpoints_file": "~/cp/endpoints.json", "credentials_file": "/etc/han/credentials.json"},
    "mac": {"host": "192.0.2.10", "ports": {"redis": 16379}, "credentials_file": "~/.han/mac.json"},
    "spool_dir": "/var/spool/han",
    "lease_seconds": 20,
    "heartbeat_seconds": 2.5,
    "probe_interval_seconds": 3,
    "probe_timeout_seconds": 1.5,
    "flap_threshold": 4,
    "max_attempts": 5,
    "drain_grace_seconds": 0,
    "reconcile_seconds": 60,
    "idle_timeout_seconds": 300,
}


@pytest.fixture(autouse=True)
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write(tmp_path: Path, document: object, mode: int = 0o600) -> Path:
    path = tmp_path / "worker.json"
    path.write_text(json.dumps(document))
    path.chmod(mode)
    return path


def load(path: Path | None, env: dict[str, str] | None = None, **overrides: str) -> WorkerConfig:
    return load_worker_config(path, Overrides(**overrides), env or {})


def test_without_a_file_the_defaults_apply(home: Path):
    config = load(None)
    assert (config.mode, config.queues, config.mac) == ("auto", (), None)
    assert config.endpoints_file == home / ".han/control-plane/endpoints.json"
    assert config.credentials_file == home / ".han/control-plane/credentials.json"
    assert config.spool_dir == home / ".han/spool"
    assert (config.lease_seconds, config.heartbeat_seconds, config.max_attempts) == (30.0, 10.0, 3)


def test_every_field_is_read(tmp_path: Path, home: Path):
    config = load(write(tmp_path, FULL))
    assert (config.mode, config.queues) == ("pegasus", ("pose", "noop"))
    assert config.endpoints_file == home / "cp/endpoints.json"
    assert config.credentials_file == Path("/etc/han/credentials.json")
    assert config.mac is not None
    assert (config.mac.host, config.mac.credentials_file) == ("192.0.2.10", home / ".han/mac.json")
    assert config.mac.ports == {"postgres": 5432, "redis": 16379, "s3": 9000}
    assert config.spool_dir == Path("/var/spool/han")
    assert (config.lease_seconds, config.heartbeat_seconds, config.probe_timeout_seconds) == (20, 2.5, 1.5)
    assert (config.flap_threshold, config.max_attempts, config.drain_grace_seconds) == (4, 5, 0)
    assert config.idle_timeout_seconds == 300
    assert config.origin == str(tmp_path / "worker.json")


def test_flags_beat_the_environment_which_beats_the_file(tmp_path: Path):
    path = write(tmp_path, FULL)
    env = {"CONTROL_PLANE_MODE": "mac", "HAN_WORKER_QUEUES": "gpu", "HAN_ENDPOINTS_FILE": "/x/e.json",
           "MAC_LAN_IP": "192.0.2.99"}  # fmt: skip
    from_env = load(path, env)
    assert (from_env.mode, from_env.queues, from_env.endpoints_file) == ("mac", ("gpu",), Path("/x/e.json"))
    assert from_env.mac is not None
    assert (from_env.mac.host, from_env.mac.ports["redis"]) == ("192.0.2.99", 16379)  # ports kept
    from_flags = load(path, env, mode="auto", queues="pose, noop ,pose")
    assert (from_flags.mode, from_flags.queues) == ("auto", ("pose", "noop"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lease": 3}, "field(s) lease (known: "),
        ({"pegasus": {"endpoint_file": "x"}}, "field(s) pegasus.endpoint_file (known: check_slurm_job, "),
        (
            {"pegasus": {"check_slurm_job": "yes"}},
            "field 'pegasus.check_slurm_job' must be true or false, not str",
        ),
        ({"mac": {"host": "my mac", "credentials_file": "x"}}, "field 'mac.host': 'my mac' is neither an IP"),
        ({"mode": "cloud"}, "field 'mode': 'cloud' is not one of auto, pegasus, mac"),
        ({"queues": "pose"}, "field 'queues' must be a list of queue names"),
        ({"queues": ["pose", ""]}, "field 'queues' must be a list of queue names"),
        ({"lease_seconds": "30"}, "field 'lease_seconds' must be a number of seconds, not str"),
        ({"lease_seconds": True}, "field 'lease_seconds' must be a number of seconds, not bool"),
        ({"heartbeat_seconds": 0}, "field 'heartbeat_seconds': 0 must be a finite number of seconds >= 0.1"),
        (
            {"drain_grace_seconds": -1},
            "field 'drain_grace_seconds': -1 must be a finite number of seconds >= 0",
        ),
        (
            {"idle_timeout_seconds": -5},
            "field 'idle_timeout_seconds': -5 must be a finite number of seconds >= 0",
        ),
        ({"flap_threshold": 0}, "field 'flap_threshold': 0 is less than 1"),
        ({"max_attempts": 2.5}, "field 'max_attempts' must be an integer, not number"),
        ({"spool_dir": ""}, "field 'spool_dir' must not be empty"),
        ({"mac": {"ports": {"redis": 1}}}, "field 'mac.host' is missing"),
        (
            {"mac": {"host": "h", "ports": {"redis": 70000}}},
            "field 'mac.ports.redis': 70000 is out of range 1-65535",
        ),
        ({"mac": {"host": "h", "ports": {"api": 80}}}, "field(s) mac.ports.api (known: postgres, redis, s3)"),
        ({"pegasus": []}, "field 'pegasus' must be an object, not array"),
    ],
)
def test_every_bad_field_is_named_with_the_file(tmp_path: Path, change: dict[str, object], message: str):
    path = write(tmp_path, {**FULL, **change})
    with pytest.raises(WorkerConfigError) as error:
        load(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_a_config_file_others_could_write_is_refused(tmp_path: Path):
    path = write(tmp_path, FULL, mode=0o666)
    with pytest.raises(WorkerConfigError, match=r"^--config: .*is writable by group or others \(mode 0666\)"):
        load(path)


def test_a_missing_config_file_is_refused(tmp_path: Path):
    with pytest.raises(WorkerConfigError, match=r"^--config: .*nothing\.json: does not exist"):
        load(tmp_path / "nothing.json")


@pytest.mark.parametrize(
    ("env", "overrides", "message"),
    [
        ({"CONTROL_PLANE_MODE": "cloud"}, {}, "CONTROL_PLANE_MODE: 'cloud' is not one of auto, pegasus, mac"),
        ({}, {"mode": "cloud"}, "--mode: 'cloud' is not one of"),
        ({}, {"queues": "pose,,noop"}, "--queues: 'pose,,noop' is not a comma-separated list of queue names"),
        ({"HAN_WORKER_QUEUES": " , "}, {}, "HAN_WORKER_QUEUES: ' , ' is not a comma-separated list"),
    ],
)
def test_bad_flags_and_variables_are_named(env: dict[str, str], overrides: dict[str, str], message: str):
    with pytest.raises(WorkerConfigError, match=message):
        load(None, env, **overrides)


def test_a_worker_needs_queues():
    with pytest.raises(
        WorkerConfigError, match="no queues to serve: pass --queues, set HAN_WORKER_QUEUES or"
    ):
        load_worker_config(None, Overrides(), {}, need_queues=True)


def test_the_mac_needs_its_credentials_unless_mode_is_pegasus(tmp_path: Path):
    without = {**FULL, "mac": {"host": "192.0.2.10"}}
    assert load(write(tmp_path, without)).mode == "pegasus"
    with pytest.raises(
        WorkerConfigError, match=r"credentials are unknown: .* mac.credentials_file in .*worker.json"
    ):
        load(write(tmp_path, without), mode="auto")
    with pytest.raises(
        WorkerConfigError,
        match=r"mode mac needs the Mac's address: pass --mac-host, set MAC_LAN_IP or put mac\.host",
    ):
        load(None, mode="mac")


def test_every_selection_flag_beats_its_variable_and_the_file(tmp_path: Path, home: Path):
    path = write(tmp_path, {**FULL, "pegasus": {**FULL["pegasus"], "check_slurm_job": True}})  # type: ignore[dict-item]
    env = {"HAN_ENDPOINTS_FILE": "/x/e.json", "MAC_LAN_IP": "192.0.2.99"}
    flags = Overrides(
        endpoints_file=Path("~/flag/e.json"), credentials_file=Path("/flag/c.json"), mac_host="mac.lan",
        mac_ports={"s3": 19001}, mac_credentials_file=Path("/flag/mac.json"), probe_timeout_seconds=0.7,
    )  # fmt: skip
    config = load_worker_config(path, flags, env)
    assert (config.endpoints_file, config.credentials_file) == (home / "flag/e.json", Path("/flag/c.json"))
    assert config.check_slurm_job is True
    assert config.mac is not None
    assert (config.mac.host, config.mac.credentials_file) == ("mac.lan", Path("/flag/mac.json"))
    assert config.mac.ports == {"postgres": 5432, "redis": 16379, "s3": 19001}  # the file's redis port kept
    assert config.probe_timeout_seconds == 0.7


def test_a_heartbeat_slower_than_the_lease_is_allowed_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.WARNING):
        config = load(write(tmp_path, {**FULL, "heartbeat_seconds": 60}))
    assert config.heartbeat_seconds == 60
    assert "other workers will reclaim jobs while they run" in caplog.text


def test_parse_queues_keeps_order_and_drops_repeats():
    assert parse_queues("pose, noop,pose", "x") == ("pose", "noop")
    with pytest.raises(WorkerConfigError, match=r"^x: '' is not"):
        parse_queues("", "x")
