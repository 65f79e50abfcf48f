"""Runbook step 2 on the testbed, the Mac's part: the control_plane role in direct mode on "the Mac".

Apart from test_control_plane_role.py (whose Slurm control planes have their own names, state directories and
ports) because this one starts and stops the inventory's Mac control plane, which the drill and the worker
tests use: it runs in the inventory lane (tests/run_lanes.sh).
"""

from __future__ import annotations

from tests.integration.conftest import MAC, recap, ssh
from tests.integration.test_control_plane_role import bootstrapped, control_plane, read_json

__all__ = ["bootstrapped"]  # the module's autouse fixture: this checkout's env on both machines


def test_the_mac_runs_the_same_role_in_direct_mode() -> None:
    try:
        started = control_plane("-e", "control_plane_hosts=mac")
        assert started.returncode == 0, started.stdout[-3000:]
        assert "(direct launch)" in started.stdout
        endpoints = read_json(MAC, "~/.han/control-plane/endpoints.json")
        assert endpoints["source"] == "mac"
        assert endpoints["slurm_job_id"] is None
        ports = {name: service["port"] for name, service in endpoints["services"].items()}  # type: ignore[union-attr]
        assert ports == {"postgres": 15432, "redis": 16379, "s3": 19000}, "the inventory's fixed ports"
        assert recap(control_plane("-e", "control_plane_hosts=mac"), "mac-laptop")["changed"] == 0
        # The client configuration the role writes: the Mac's clients use it as it is (no secret in it).
        home = ssh(MAC, "echo $HOME").stdout.strip()
        assert read_json(MAC, "~/.han/client.json") == {
            "mode": "mac",
            "mac": {
                "host": "127.0.0.20",
                "ports": ports,
                "credentials_file": f"{home}/.han/control-plane/credentials.json",
            },
        }
        assert ssh(MAC, "stat -c %a ~/.han/client.json").stdout.strip() == "600"
        status = ssh(MAC, "~/.han/env/bin/han-worker status --config ~/.han/client.json")
        assert status.returncode == 0, status.stderr
        assert "mac" in status.stdout
    finally:
        stopped = control_plane("-e", "control_plane_hosts=mac", "-e", "state=stopped")
    assert stopped.returncode == 0, stopped.stdout[-3000:]
    assert recap(stopped, "mac-laptop")["changed"] == 1
    assert read_json(MAC, "~/.han/control-plane/endpoints.json")["stale"] is True
