"""The example inventory takes its defaults from the runbook's environment variables."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ansible_env, run_ansible

# (environment variable, host, inventory variable, value when the variable is unset)
RUNBOOK_VARIABLES = [
    ("PEGASUS_HOST", "pegasus-login", "ansible_host", "pegasus.example.edu"),
    ("SSH_KEY", "pegasus-login", "ansible_ssh_private_key_file", "~/.ssh/id_ed25519"),
    ("SLURM_PARTITION", "pegasus-login", "pegasus_worker_slurm_partition", "RTXA6000"),
    ("SLURM_PARTITION", "pegasus-login", "control_plane_slurm_partition", "batch"),
    ("SLURM_TIME", "pegasus-login", "control_plane_slurm_time", "12:00:00"),
    ("HAN_WORKER_QUEUES", "pegasus-login", "pegasus_worker_queues", "pose"),
    ("PEGASUS_LAUNCH_MODE", "pegasus-login", "pegasus_worker_launch_mode", "slurm"),
    ("CONTROL_PLANE_MODE", "pegasus-login", "pegasus_worker_control_plane_mode", "auto"),
    ("WINDOWS_GPU_IP", "windows-gpu", "ansible_host", "192.0.2.20"),
    ("MAC_LAN_IP", "mac-laptop", "mac_lan_ip", "192.0.2.10"),
]


def inventory_value(host: str, variable: str, **environment: str) -> str:
    # The debug action runs on the controller: nothing connects to the example hosts.
    env = ansible_env(**environment)
    for name in {row[0] for row in RUNBOOK_VARIABLES}:
        if name not in environment:
            env.pop(name, None)
    env["ANSIBLE_LOAD_CALLBACK_PLUGINS"] = "1"
    env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.builtin.json"
    result = run_ansible(
        "ansible",
        "-i",
        "inventories/example",
        host,
        "-m",
        "ansible.builtin.debug",
        "-a",
        f"var={variable}",
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    plays = json.loads(result.stdout)["plays"]
    return str(plays[0]["tasks"][0]["hosts"][host][variable])


@pytest.mark.parametrize(("env_name", "host", "variable", "default"), RUNBOOK_VARIABLES)
def test_default_when_the_variable_is_unset(env_name: str, host: str, variable: str, default: str) -> None:
    assert inventory_value(host, variable) == default


@pytest.mark.parametrize(("env_name", "host", "variable", "default"), RUNBOOK_VARIABLES)
def test_the_environment_wins(env_name: str, host: str, variable: str, default: str) -> None:
    assert inventory_value(host, variable, **{env_name: "from-the-environment"}) == "from-the-environment"
