"""The lookup han.infra.control_plane reads its Pegasus document and the Mac's host through the same door as
the worker: hostile JSON or a host that names no server fails the play with the reason, never a traceback."""

from __future__ import annotations

from typing import Any

import pytest
from ansible.errors import AnsibleError
from ansible.plugins.loader import lookup_loader
from hypothesis import given

from tests.unit.hostile_values import HOSTILE, HOSTILE_HOSTS, HOSTILE_JSON

MAC_PORTS = {"postgres": 15432, "redis": 16379, "s3": 19000}


@pytest.fixture(scope="module")
def control_plane_lookup() -> Any:
    lookup = lookup_loader.get(
        "han.infra.control_plane"
    )  # the collection loader: tests/unit/plugins/conftest.py
    assert lookup is not None
    return lookup


@HOSTILE
@given(hostile=HOSTILE_JSON)
def test_a_hostile_pegasus_document_fails_naming_it(control_plane_lookup: Any, hostile: str) -> None:
    with pytest.raises(AnsibleError, match=r"^control plane \(pegasus mode\): .*Pegasus endpoints: "):
        control_plane_lookup.run([], mode="pegasus", pegasus_endpoints='{"schema": ' + hostile + "}")


@HOSTILE
@given(host=HOSTILE_HOSTS.filter(str.strip))
def test_a_mac_host_that_names_no_server_fails_naming_it(control_plane_lookup: Any, host: str) -> None:
    with pytest.raises(AnsibleError, match=r"^control plane \(mac mode\): Mac endpoints: field 'host'"):
        control_plane_lookup.run([], mode="mac", mac_host=host, mac_ports=MAC_PORTS)
