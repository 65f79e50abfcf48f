"""The lookup han.infra.control_plane, loaded through Ansible's lookup loader, over real loopback sockets."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from ansible.errors import AnsibleError
from ansible.plugins.loader import lookup_loader

from tests.conftest import run_ansible


@pytest.fixture(scope="module")
def control_plane_lookup() -> Any:
    # The collection loader was installed by tests/unit/plugins/conftest.py.
    lookup = lookup_loader.get("han.infra.control_plane")
    assert lookup is not None, "the lookup plugin was not found through the collection"
    return lookup


def pegasus_document(**changes: object) -> dict[str, object]:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    document: dict[str, object] = {
        "schema": 1,
        "source": "pegasus",
        "epoch": 4,
        "slurm_job_id": "81",
        "node": "gpu-node-7",
        "started_at": (now - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
        "expires_at": (now + timedelta(hours=11)).isoformat().replace("+00:00", "Z"),
        "stale": False,
        "services": {name: {"host": "127.0.0.10", "port": port} for name, port in
                     (("postgres", 40001), ("redis", 40002), ("s3", 40003))},
    }  # fmt: skip
    document.update(changes)
    return document


MAC = {"mac_host": "127.0.0.20", "mac_ports": {"postgres": 15432, "redis": 16379, "s3": 19000}}


def test_pegasus_mode_uses_a_valid_pegasus_document(control_plane_lookup: Any) -> None:
    [choice] = control_plane_lookup.run([], mode="pegasus", pegasus_endpoints=pegasus_document(), **MAC)
    assert choice["source"] == "pegasus"
    assert choice["endpoints"]["epoch"] == 4
    assert "valid" in choice["reason"]


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (
            {"pegasus_endpoints": None, "pegasus_endpoints_error": "endpoints.json: does not exist"},
            "does not exist",
        ),
        ({"pegasus_endpoints": pegasus_document(stale=True)}, "marked stale"),
        (
            {
                "pegasus_endpoints": pegasus_document(
                    started_at="2019-12-31T12:00:00Z", expires_at="2020-01-01T00:00:00Z"
                )
            },
            "expired at 2020-01-01",
        ),
        (
            {"pegasus_endpoints": pegasus_document(), "pegasus_job_alive": False},
            "Slurm job 81 is no longer running",
        ),
        ({"pegasus_endpoints": pegasus_document(schema=2)}, "unknown schema 2"),
        ({"pegasus_endpoints": "{not json"}, "not valid JSON"),
    ],
)
def test_pegasus_mode_fails_with_the_reason(
    control_plane_lookup: Any, arguments: dict[str, Any], reason: str
) -> None:
    with pytest.raises(AnsibleError) as error:
        control_plane_lookup.run([], mode="pegasus", **arguments, **MAC)
    assert str(error.value).startswith("control plane (pegasus mode): ")
    assert reason in str(error.value)


def test_auto_mode_falls_back_to_the_mac_and_says_why(control_plane_lookup: Any) -> None:
    [choice] = control_plane_lookup.run(
        [], mode="auto", pegasus_endpoints=pegasus_document(stale=True), **MAC
    )
    assert choice["source"] == "mac"
    assert choice["endpoints"]["services"]["redis"] == {"host": "127.0.0.20", "port": 16379}
    assert choice["reason"].startswith(
        "Pegasus skipped: Pegasus endpoints (epoch 4, node gpu-node-7): marked stale"
    )


def test_mac_mode_ignores_a_valid_pegasus(control_plane_lookup: Any) -> None:
    [choice] = control_plane_lookup.run([], mode="mac", pegasus_endpoints=pegasus_document(), **MAC)
    assert choice["source"] == "mac"


def test_unknown_mode_is_refused(control_plane_lookup: Any) -> None:
    with pytest.raises(AnsibleError, match="mode"):
        control_plane_lookup.run([], mode="cloud", **MAC)


@pytest.fixture
def listening_services() -> Iterator[dict[str, int]]:
    sockets = []
    ports = {}
    for name in ("postgres", "redis", "s3"):
        sock = socket.socket()
        sock.bind(("127.0.0.10", 0))
        sock.listen()
        sockets.append(sock)
        ports[name] = sock.getsockname()[1]
    yield ports
    for sock in sockets:
        sock.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.10", 0))
        return int(sock.getsockname()[1])


def test_auto_mode_probes_pegasus_and_falls_back_when_its_ports_are_closed(
    control_plane_lookup: Any, listening_services: dict[str, int]
) -> None:
    closed = {name: {"host": "127.0.0.10", "port": closed_port()} for name in ("postgres", "redis", "s3")}
    [choice] = control_plane_lookup.run(
        [], mode="auto", pegasus_endpoints=pegasus_document(services=closed), probe=True, probe_timeout=1.0,
        mac_host="127.0.0.10", mac_ports=listening_services,
    )  # fmt: skip
    assert choice["source"] == "mac"
    assert "connection refused" in choice["reason"]
    assert {probe["ok"] for probe in choice["probes"]} == {True}


def test_the_play_fails_naming_the_reason(tmp_path: Any) -> None:
    playbook = tmp_path / "choose.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.debug:\n"
        "        msg: \"{{ lookup('han.infra.control_plane', mode='pegasus', pegasus_endpoints=none,"
        " pegasus_endpoints_error='endpoints.json: does not exist', mac_host='127.0.0.20') }}\"\n"
    )
    result = run_ansible("ansible-playbook", "-i", "localhost,", "-c", "local", str(playbook))
    assert result.returncode == 2
    assert "control plane (pegasus mode): endpoints.json: does not exist" in result.stdout
