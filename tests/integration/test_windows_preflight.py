"""playbooks/windows_worker.yml against FAKE WinRM endpoints (tests/fake_windows): the preflight's messages.

No Windows host can run here. Each fake on 127.0.0.30 fails the way one broken WinRM setup does (a closed
port, a dropped connection, wrong credentials, the wrong scheme, not WinRM at all, a self-signed
certificate), and one answers just enough WS-Management for win_ping. The real playbook runs against all of
them in one inventory; each host must stop at the preflight with its one message, and the fake that answers
must get past it (to the first task that needs a real Windows, which the fake refuses by name).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ansible_env, run_ansible
from tests.fake_windows import FAKE_MAC_CREDENTIALS
from tests.fake_windows.servers import FAKE_PASSWORD, FakeWindowsHost, running_fakes

pytestmark = (
    pytest.mark.own_names
)  # the testbed under its own names: beside the inventory lane (tests/run_lanes.sh)

PLAYBOOK = "playbooks/windows_worker.yml"
WINRM_FAILURE_TASK = "Fail with what to check when WinRM does not work."
# FAKE credentials for the Mac's control plane: they must pass the role's checks and never be printed.
SECRETS = (
    FAKE_PASSWORD,
    "fake-postgres-password-1234",
    "fake-redis-password-12345678",
    "fake-s3-secret-key-1234567",
)
# What each kind of failure must say, besides the host's name and the endpoint.
EXPECTED = {
    "unreachable": "does not answer",
    "authentication": "refused the login",
    "transport": "does not speak WinRM",
    "certificate": "failed verification",
}


@pytest.fixture(scope="module")
def fake_windows() -> Iterator[tuple[dict[str, FakeWindowsHost], Path]]:
    with (
        tempfile.TemporaryDirectory(prefix="fake-windows-") as scratch,
        running_fakes(Path(scratch)) as hosts,
    ):
        yield hosts, Path(scratch)


def write_inventory(directory: Path, hosts: dict[str, FakeWindowsHost], **role_vars: Any) -> Path:
    """A temporary inventory: the fakes in group windows_gpu, with a Mac the role accepts."""
    group_vars = {
        "windows_worker_mac_host": "127.0.0.20",
        "windows_worker_mac_ports": {"postgres": 15432, "redis": 16379, "s3": 19000},
        "windows_worker_mac_credentials": FAKE_MAC_CREDENTIALS,
        **role_vars,
    }
    windows_gpu = {"hosts": {name: host.inventory_vars() for name, host in hosts.items()}, "vars": group_vars}
    inventory = {"all": {"children": {"windows_gpu": windows_gpu}}}
    path = Path(tempfile.mkstemp(prefix="fake-windows-", suffix=".json", dir=directory)[1])
    path.write_text(json.dumps(inventory))
    return path


def run_playbook(inventory: Path, *args: str, json_output: bool = True) -> subprocess.CompletedProcess[str]:
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json") if json_output else ansible_env()
    return run_ansible("ansible-playbook", "-i", str(inventory), PLAYBOOK, *args, env=env)


def task_results(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Task name -> host -> result, from the json callback."""
    report = json.loads(result.stdout)
    tasks: dict[str, dict[str, dict[str, Any]]] = {}
    for play in report["plays"]:
        for task in play["tasks"]:
            name = task["task"]["name"].removeprefix("han.infra.windows_worker : ")
            tasks.setdefault(name, {}).update(task["hosts"])
    return tasks


def assert_no_secret(text: str) -> None:
    assert not [secret for secret in SECRETS if secret in text], "a secret was printed"


@pytest.fixture(scope="module")
def full_run(fake_windows: tuple[dict[str, FakeWindowsHost], Path]) -> dict[str, dict[str, dict[str, Any]]]:
    hosts, scratch = fake_windows
    result = run_playbook(write_inventory(scratch, hosts))
    assert result.returncode != 0
    assert_no_secret(result.stdout + result.stderr)
    return task_results(result)


@pytest.mark.parametrize(
    "name",
    [
        "fake-windows-closed-port", "fake-windows-dropped", "fake-windows-silent", "fake-windows-unresolvable",
        "fake-windows-wrong-password", "fake-windows-ntlm-on-basic-only", "fake-windows-not-winrm",
        "fake-windows-garbage", "fake-windows-https-to-http", "fake-windows-http-to-https", "fake-windows-self-signed",
    ],
)  # fmt: skip
def test_each_broken_winrm_gets_its_one_message(
    name: str,
    fake_windows: tuple[dict[str, FakeWindowsHost], Path],
    full_run: dict[str, dict[str, dict[str, Any]]],
) -> None:
    host = fake_windows[0][name]
    outcome = full_run[WINRM_FAILURE_TASK][name]
    assert outcome.get("failed") is True
    message = outcome["msg"]
    endpoint = f"{host.scheme}://{host.address}:{host.port}/wsman"
    assert message.startswith(f"{name}: "), message
    assert endpoint in message
    assert EXPECTED[host.expected] in message, message
    # Nothing else touched a host whose WinRM does not work.
    assert name not in full_run.get("Ask the venv's base Python for its version.", {})


def test_the_fake_that_answers_gets_past_the_preflight(
    full_run: dict[str, dict[str, dict[str, Any]]],
) -> None:
    assert full_run["Ping the host over WinRM."]["fake-windows-ok"].get("ping") == "pong"
    assert full_run[WINRM_FAILURE_TASK]["fake-windows-ok"].get("skipped") is True
    # The next task needs a real Windows; the fake says it is a fake, and the role says what it needed.
    python_check = full_run["Assert that the venv's base Python is 3.10 or later, with venv and ensurepip."]
    message = python_check["fake-windows-ok"]["msg"]
    assert message.startswith(
        "windows_worker_python: 'C:\\Program Files\\Python311\\python.exe' on fake-windows-ok"
    )
    assert "FAKE WinRM endpoint" in message


def test_winrm_check_alone_passes_against_the_fake_that_answers(
    fake_windows: tuple[dict[str, FakeWindowsHost], Path],
) -> None:
    hosts, scratch = fake_windows
    inventory = write_inventory(scratch, {"fake-windows-ok": hosts["fake-windows-ok"]})
    result = run_playbook(inventory, "--tags", "windows_worker_winrm", json_output=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fake-windows-ok            : ok=2    changed=0    unreachable=0    failed=0" in result.stdout


def test_check_mode_prints_the_same_message_and_no_secret(
    fake_windows: tuple[dict[str, FakeWindowsHost], Path],
) -> None:
    hosts, scratch = fake_windows
    inventory = write_inventory(
        scratch, {"fake-windows-wrong-password": hosts["fake-windows-wrong-password"]}
    )
    result = run_playbook(inventory, "--check", "-v", json_output=False)
    assert result.returncode == 2
    assert "fake-windows-wrong-password: WinRM at http://127.0.0.30:" in result.stdout
    assert "refused the login (HTTP 401, transport basic)" in result.stdout
    assert_no_secret(result.stdout + result.stderr)


@pytest.mark.parametrize(
    ("role_vars", "message"),
    [
        ({"windows_worker_queues": ["gpu", "cuda"]}, "windows_worker_queues must name one or more of gpu, pose"),
        ({"windows_worker_queues": []}, "windows_worker_queues must name one or more of gpu, pose"),
        ({"windows_worker_mac_host": "192.0.2.10"}, "windows_worker_mac_host must be the Mac's LAN address"),
        ({"windows_worker_mac_host": ""}, "windows_worker_mac_host must be the Mac's LAN address"),
        ({"windows_worker_mac_ports": {"postgres": 15432}}, "windows_worker_mac_ports must give the ports"),
        ({"windows_worker_isaaclab_command": []}, "windows_worker_isaaclab_command must be a non-empty list"),
        ({"windows_worker_isaaclab_command": ["isaaclab.bat", "-p"]}, "windows_worker_isaaclab_command must be"),
        ({"windows_worker_logon_type": "password"}, "'password' needs windows_worker_password"),
        ({"windows_worker_install_dir": "ProgramData\\han"}, "windows_worker_install_dir and windows_worker_python must"),
        ({"windows_worker_pip_packages": ["--index-url=https://evil.example"]}, "windows_worker_pip_packages and"),
        ({"windows_worker_environment": {"HAN_ISAACLAB_COMMAND": "x"}}, "leaves HAN_ISAACLAB_* to the role"),
        ({"windows_worker_options": {"mode": "pegasus"}}, "windows_worker_options takes lease_seconds"),
        ({"windows_worker_mac_credentials": {**FAKE_MAC_CREDENTIALS, "s3": {"access_key": "minioadmin",
          "secret_key": "minioadmin", "bucket": "b"}}}, "s3.access_key is a well-known default"),
        ({"state": "paused"}, "windows_worker_state"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_before_winrm_naming_the_variable(
    role_vars: dict[str, Any], message: str, fake_windows: tuple[dict[str, FakeWindowsHost], Path]
) -> None:
    hosts, scratch = fake_windows
    inventory = write_inventory(scratch, {"fake-windows-ok": hosts["fake-windows-ok"]}, **role_vars)
    result = run_playbook(inventory, json_output=False)
    assert result.returncode == 2
    assert message in result.stdout + result.stderr
    assert "Ping the host over WinRM." not in result.stdout
    assert_no_secret(result.stdout + result.stderr)
