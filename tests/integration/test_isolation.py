"""No one in where they don't belong (issue 17): another user of the control plane's node, `nobody` here,
gets nothing from any of its ports without its secrets, while the workers' own keys still work.

SeaweedFS's master, volume server and filer listen on the node's loopback, which every user of a node
reaches: each must refuse plain HTTP, TLS without the control plane's client certificate and gRPC in clear
(the filer used to list, write and delete the lab's objects for anyone). Redis must want a password,
PostgreSQL too over TCP, and its unix socket must be out of reach.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from han_worker.control_plane.layout import Layout
from han_worker.control_plane.services import valkey_socket
from tests.conftest import REPO
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import RunningControlPlane, start_control_plane, weed_ports

# Only services this module starts itself: `make test` runs it beside the tests that share the testbed.
pytestmark = pytest.mark.self_contained

PROBE = REPO / "tests" / "integration" / "nobody_probe.py"


@pytest.fixture(scope="module")
def control_plane(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[RunningControlPlane]:
    running = start_control_plane(unprivileged_env, workdir / "cp")
    yield running
    running.stop()


def as_nobody(env: UnprivilegedEnv, targets: dict[str, object]) -> list[dict[str, object]]:
    argv = [
        "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--",
        "env", "-i", "HOME=/nonexistent", str(env.bin_dir / "python"), str(PROBE), json.dumps(targets),
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return list(json.loads(result.stdout))


def test_another_user_of_the_node_gets_nothing_from_any_port(
    control_plane: RunningControlPlane, unprivileged_env: UnprivilegedEnv
) -> None:
    layout = Layout(control_plane.state_dir)
    postgres, redis = control_plane.service("postgres"), control_plane.service("redis")
    targets = {
        "internal": weed_ports(control_plane),
        "redis": [redis.host, redis.port],
        "postgres": [postgres.host, postgres.port],
        "postgres_socket": str(layout.run_dir() / f".s.PGSQL.{postgres.port}"),
        "valkey_socket": str(valkey_socket(layout)),
        "bucket": control_plane.worker_credentials().s3.bucket,
    }
    results = as_nobody(unprivileged_env, targets)
    answered = [result for result in results if result["answered"]]
    assert answered == [], json.dumps(answered, indent=1)
    requests = {(result["target"], result["request"]) for result in results}
    assert len(requests) == len(targets["internal"]) * 17 + 5  # type: ignore[arg-type]
    for name in ("postgres socket", "valkey socket"):
        socket_refusal = next(result for result in results if result["target"] == name)
        assert "PermissionError" in str(socket_refusal["detail"]), socket_refusal


def test_the_lab_objects_are_as_they_were_and_the_workers_key_still_works(
    control_plane: RunningControlPlane, unprivileged_env: UnprivilegedEnv
) -> None:
    _ledger, _redis, s3 = control_plane.link_parts()
    bucket = control_plane.worker_credentials().s3.bucket
    s3.put_object(bucket, "isolation/kept.txt", io.BytesIO(b"the lab's photo"), 15)
    as_nobody(
        unprivileged_env,
        {"internal": weed_ports(control_plane), "redis": ["127.0.0.1", 1], "postgres": ["127.0.0.1", 1],
         "postgres_socket": "/nonexistent", "valkey_socket": "/nonexistent", "bucket": bucket},
    )  # fmt: skip
    names = {item.object_name for item in s3.list_objects(bucket, recursive=True)}
    assert "nobody-was-here.txt" not in names
    assert "isolation/kept.txt" in names  # what nobody tried to delete is there
    assert s3.get_object(bucket, "isolation/kept.txt").read() == b"the lab's photo"
