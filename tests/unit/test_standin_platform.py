"""The testbed's Windows STAND-IN: a Linux worker that plays the Windows GPU worker only when told to.

``HAN_WORKER_STANDIN_PLATFORM=windows`` lets a worker serve the Windows backends (queue ``gpu``) while it
records ``windows-standin`` (never ``windows``) in the ledger and the worker registry, and says so in a
WARNING at start; any other value stops ``han-worker run`` with exit 2, naming the variable. And
``playbooks/windows_standin.yml`` gives that worker what role ``windows_worker`` renders for Windows, with
only the Windows paths mapped: checked here on the play's own expressions, without a host.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader

from han_worker import cli
from han_worker.backends import (
    STANDIN_VAR,
    StandinPlatformError,
    UnsupportedQueue,
    WorkerPlatform,
    backends_for_queues,
    worker_platform,
)
from han_worker.config import Overrides, load_worker_config
from han_worker.selection.resolver import Selector
from han_worker.worker.loop import Identity, StartError, Worker, backends_to_serve
from tests.conftest import REPO
from tests.unit import role_templates

ROLE = REPO / "roles" / "windows_worker"
PLAYBOOK = REPO / "playbooks" / "windows_standin.yml"
HOST_VARS = REPO / "inventories" / "local" / "host_vars" / "windows-standin.yml"
MAC_GROUP_VARS = REPO / "inventories" / "local" / "group_vars" / "mac.yml"
INSTALL = "C:\\ProgramData\\han-worker"
VENV_HAN_WORKER = INSTALL + "\\venv\\Scripts\\han-worker.exe"
BAD_VALUES = ["linux", "Windows", "windows-standin", "darwin", "win32", "yes", "1"]


@pytest.fixture
def fake_trainer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Isaac Lab backend's configuration, pointing at the FAKE trainer, so that queue gpu can be served."""
    trainer = REPO / "tests" / "fake_windows" / "fake_isaaclab_train.py"
    monkeypatch.setenv("HAN_ISAACLAB_COMMAND", json.dumps([sys.executable, str(trainer), "--headless"]))


# -- the platform ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("environ", [{}, {STANDIN_VAR: ""}, {STANDIN_VAR: "  "}])
def test_without_the_variable_a_worker_is_what_it_runs_on(environ: dict[str, str]) -> None:
    assert worker_platform(environ) == WorkerPlatform("linux", "linux")
    assert not worker_platform(environ).standin


def test_the_windows_standin_serves_windows_and_records_windows_standin() -> None:
    platform = worker_platform({STANDIN_VAR: "windows"})
    assert (platform.serves, platform.recorded, platform.standin) == ("windows", "windows-standin", True)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_any_other_value_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(StandinPlatformError, match=rf"^HAN_WORKER_STANDIN_PLATFORM='{value}': a worker can only "
                       "stand in for windows"):  # fmt: skip
        worker_platform({STANDIN_VAR: value})


def test_a_real_windows_host_is_no_standin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    assert worker_platform({}) == WorkerPlatform("windows", "windows")
    with pytest.raises(StandinPlatformError, match="runs on windows itself and stands in for nothing"):
        worker_platform({STANDIN_VAR: "windows"})


def test_the_registry_accepts_queue_gpu_only_for_the_standin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STANDIN_VAR, raising=False)
    with pytest.raises(UnsupportedQueue, match="Windows-only; this worker runs on linux"):
        backends_for_queues(["gpu"])
    monkeypatch.setenv(STANDIN_VAR, "windows")
    served = backends_for_queues(["gpu", "pose"])
    assert [backend.name for backend in served["gpu"]] == ["isaaclab_teacher_ppo"]
    assert [backend.name for backend in served["pose"]] == ["pose"]
    monkeypatch.setenv(STANDIN_VAR, "linux")
    with pytest.raises(StandinPlatformError):  # an UnsupportedQueue: every caller refuses it with exit 2
        backends_for_queues(["pose"])


def test_the_worker_serves_gpu_as_the_standin(
    monkeypatch: pytest.MonkeyPatch, fake_trainer_env: None
) -> None:
    monkeypatch.setenv(STANDIN_VAR, "windows")
    assert sorted(backends_to_serve(["gpu", "noop"])) == ["fail", "isaaclab_teacher_ppo", "noop", "sleep"]
    monkeypatch.setenv(STANDIN_VAR, "Windows")
    with pytest.raises(StartError, match="HAN_WORKER_STANDIN_PLATFORM='Windows'"):
        backends_to_serve(["noop"])


# -- the worker: what it records, what it says -----------------------------------------------------------


def make_worker(tmp_path: Path) -> Worker:
    config_file = tmp_path / "worker.json"
    config_file.write_text(
        json.dumps({"mode": "pegasus", "queues": ["noop"], "spool_dir": str(tmp_path / "spool")})
    )
    config_file.chmod(0o600)
    config = load_worker_config(config_file, Overrides(), {})
    return Worker(config, backends_to_serve(config.queues), Selector(config))


def test_the_standin_records_windows_standin_in_the_ledger_and_the_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STANDIN_VAR, "windows")
    worker = make_worker(tmp_path)
    assert worker.identity.platform == "windows-standin"
    link: Any = SimpleNamespace(
        source="mac",
        choice=SimpleNamespace(epoch=3, reason="test", credentials=SimpleNamespace(generation=1)),
    )
    owner = worker._owner(link)  # what the ledger records for each attempt
    assert (owner.platform, owner.host, owner.worker_id) == (
        "windows-standin", worker.identity.host, worker.identity.worker_id
    )  # fmt: skip
    worker.link = link
    worker.link.ledger = SimpleNamespace(commits=0)
    assert worker.registry_fields()["platform"] == "windows-standin"


def test_without_the_variable_the_worker_records_linux(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(STANDIN_VAR, raising=False)
    assert make_worker(tmp_path).identity.platform == "linux"


def test_the_standin_warns_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, restored_signals: None
) -> None:
    monkeypatch.setenv(STANDIN_VAR, "windows")
    worker = make_worker(tmp_path)
    worker.stopping.set()  # asked to stop before it connects: run() returns at once
    with caplog.at_level(logging.WARNING, logger="han_worker.worker.loop"):
        assert worker.run() == 0
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert warning.getMessage().startswith(
        "this worker is a STAND-IN for windows (HAN_WORKER_STANDIN_PLATFORM=windows): it runs on linux"
    )
    assert "records its platform as windows-standin" in warning.getMessage()


def test_a_real_worker_does_not_warn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, restored_signals: None
) -> None:
    monkeypatch.delenv(STANDIN_VAR, raising=False)
    worker = make_worker(tmp_path)
    worker.stopping.set()
    with caplog.at_level(logging.WARNING, logger="han_worker.worker.loop"):
        assert worker.run() == 0
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_identity_records_what_it_is_given() -> None:
    assert Identity.here("windows-standin").platform == "windows-standin"


@pytest.mark.parametrize("value", ["linux", "WINDOWS", "windows,linux"])
def test_han_worker_run_exits_2_naming_the_variable(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "worker.json"
    config.write_text(
        json.dumps({"mode": "pegasus", "queues": ["noop"], "spool_dir": str(tmp_path / "spool")})
    )
    config.chmod(0o600)
    monkeypatch.setenv(STANDIN_VAR, value)
    assert cli.worker_main(["run", "--config", str(config)]) == 2
    assert capsys.readouterr().err.startswith(f"han-worker run: HAN_WORKER_STANDIN_PLATFORM={value!r}: ")


# -- the playbook: what the role renders, with only the Windows paths mapped ------------------------------------


def to_standin(value: Any, standin_dir: str, env: str) -> Any:
    """The stand-in's mapping, written again independently of the play: the venv's han-worker.exe is the
    env's han-worker; a path under the install directory moves under the stand-in's, with / for \\."""
    if isinstance(value, str):
        if value == VENV_HAN_WORKER:
            return f"{env}/bin/han-worker"
        if value == INSTALL or value.startswith(INSTALL + "\\"):
            return standin_dir + value[len(INSTALL) :].replace("\\", "/")
        return value
    if isinstance(value, dict):
        return {key: to_standin(item, standin_dir, env) for key, item in value.items()}
    if isinstance(value, list):
        return [to_standin(item, standin_dir, env) for item in value]
    return value


def expected_standin_files(role_variables: dict[str, Any], home: str) -> tuple[Any, Any]:
    """worker.json and supervisor.json as the role renders them, mapped to the stand-in, plus its label."""
    config = json.loads(role_templates.render(role_variables, ROLE / "templates" / "worker.json.j2"))
    settings = json.loads(role_templates.render(role_variables, ROLE / "templates" / "supervisor.json.j2"))
    standin_dir, env = f"{home}/han-worker-standin", f"{home}/.han/env"
    mapped_settings = to_standin(settings, standin_dir, env)
    mapped_settings["environment"]["HAN_WORKER_STANDIN_PLATFORM"] = "windows"
    return to_standin(config, standin_dir, env), mapped_settings


def standin_role_variables(home: str) -> dict[str, Any]:
    """The role's defaults and vars with what the inventory gives the stand-in host and the Mac."""
    loader = DataLoader()
    host_vars = loader.load_from_file(str(HOST_VARS), trusted_as_template=True)
    mac = yaml.safe_load(MAC_GROUP_VARS.read_text())
    play = {
        "inventory_hostname": "windows-standin",
        "ansible_check_mode": False,
        "ansible_facts": {"user_dir": home},
        "hostvars": {
            "mac-laptop": {"mac_lan_ip": "127.0.0.20", "control_plane_ports": mac["control_plane_ports"]}
        },
    }
    return role_templates.role_variables(ROLE, play, dict(host_vars))


def test_the_play_maps_only_the_windows_paths_of_what_the_role_renders() -> None:
    home = "/home/winworker"
    variables = standin_role_variables(home)
    [play] = DataLoader().load_from_file(str(PLAYBOOK), trusted_as_template=True)
    variables.update({name: value for name, value in play["vars"].items() if name not in variables})
    mapped = role_templates.evaluate(variables, "_standin")
    config, settings = expected_standin_files(variables, home)
    assert mapped["config"] == config
    assert mapped["supervisor"] == settings
    text = json.dumps([mapped["config"], mapped["supervisor"], mapped["paths"]])
    assert "C:" not in text
    assert "\\\\" not in text  # a backslash, as JSON writes it
    assert ".exe" not in text
    assert settings["worker_argv"] == [f"{home}/.han/env/bin/han-worker", "run", "--config",
                                       f"{home}/han-worker-standin/config/worker.json"]  # fmt: skip
    assert (
        mapped["paths"]["pid_file"] == settings["pid_file"] == f"{home}/han-worker-standin/run/supervisor.pid"
    )
    assert config["mac"]["credentials_file"] == f"{home}/han-worker-standin/config/mac-credentials.json"
    # The stand-in's only other difference: the FAKE trainer in place of Isaac Lab.
    command = json.loads(settings["environment"]["HAN_ISAACLAB_COMMAND"])
    assert command == [
        "/usr/bin/python3",
        f"{home}/han-worker-standin/bin/fake_isaaclab_train.py",
        "--headless",
    ]
