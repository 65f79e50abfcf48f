"""Capture what Ansible and pywinrm really say when win_ping meets each FAKE WinRM endpoint.

    .venv/bin/python -m tests.fake_windows.capture      # rewrites tests/fake_windows/captured/*.txt

The files hold the ``msg`` of the win_ping result, exactly as the role's preflight receives it; the unit
tests of the winrm_error filter classify them. Ports and object addresses in them vary between runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.fake_windows.servers import FakeWindowsHost, running_fakes

CAPTURED = Path(__file__).with_name("captured")
REPO = Path(__file__).resolve().parents[2]


def write_inventory(path: Path, hosts: dict[str, FakeWindowsHost]) -> None:
    inventory = {"all": {"hosts": {name: host.inventory_vars() for name, host in hosts.items()}}}
    path.write_text(json.dumps(inventory, indent=2))


def win_ping_messages(inventory: Path) -> dict[str, str]:
    """Run ``ansible -m win_ping`` with the json callback; the ``msg`` of every failed or unreachable host."""
    env = {
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "PATH": str(Path(sys.executable).parent),
    }
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible"), "all", "-i", str(inventory), "-m", "ansible.windows.win_ping"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    report = json.loads(result.stdout)
    task = report["plays"][0]["tasks"][0]["hosts"]
    return {name: str(outcome.get("msg", "")) for name, outcome in task.items() if outcome.get("msg")}


def main() -> int:
    CAPTURED.mkdir(exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="fake-windows-") as scratch,
        running_fakes(Path(scratch)) as hosts,
    ):
        inventory = Path(scratch) / "fake-windows.json"
        write_inventory(inventory, hosts)
        for name, message in sorted(win_ping_messages(inventory).items()):
            (CAPTURED / f"{name}.txt").write_text(message + "\n")
            print(f"{name} ({hosts[name].expected}): {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
