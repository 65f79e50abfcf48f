"""What crosses the wire (issue 17): a packet capture on the loopback while a worker takes a pose job from a
control plane it reaches as the Mac's (mode ``mac``: host, ports and a copy of the credentials, as the Pegasus
workers and the Windows worker do when Pegasus is down). The capture must hold no credential, no Redis
command, no SQL, no S3 request in clear and no byte of the photo or of its landmarks, while it does hold the
photo's size in encrypted bytes and a TLS handshake on every connection to the control plane.

So that the test can tell a leak when there is one, it sends one credential in clear itself, to a listener of
its own on the same address, and asserts that the capture finds it there, and only there.

The capture covers the control plane's address (127.0.0.73, no other test uses it) and SeaweedFS's internal
ports on the node's 127.0.0.1 (the S3 gateway's traffic to the filer and the volume server). Unix sockets are
not on the wire.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import matplotlib.cbook
import pytest

from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    han_worker,
    output_body,
    start_control_plane,
    start_worker,
    wait_for,
    weed_ports,
    worker_settings,
    write_private_file,
)
from tests.integration.packet_capture import Capture, Stream, Tcpdump, is_tls_client_hello

pytestmark = pytest.mark.self_contained

ADDRESS = "127.0.0.73"  # no other test or benchmark uses it
POSTGRES_SSL_REQUEST = bytes.fromhex("0000000804d2162f")  # libpq asks for TLS before anything else
# The capture, the stream of the test's own leak, the photo's and the landmarks' bytes, the published ports.
CapturedJob = tuple[Capture, Stream, bytes, dict[str, int]]
IN_CLEAR = {
    "Redis": (b"XREADGROUP", b"XACK", b"HELLO", b"AUTH", b"EVALSHA", b"han:"),
    "PostgreSQL": (b"SCRAM-SHA-256", b"SELECT ", b"UPDATE ", b"han_worker\x00", b"client_encoding"),
    "S3": (b"HTTP/1.1", b"X-Amz-", b"han-artifacts", b"Authorization"),
    "the landmarks": (b'"landmarks"', b'"visibility"'),
}


@pytest.fixture(scope="module")
def control_plane(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[RunningControlPlane]:
    running = start_control_plane(unprivileged_env, workdir / "cp", address=ADDRESS)
    yield running
    running.shutdown()


class LeakControl:
    """A listener of the test's own on the control plane's address, to which the test sends a secret in clear."""

    def __init__(self) -> None:
        self.server = socket.create_server((ADDRESS, 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        connection, _address = self.server.accept()
        with connection:
            while connection.recv(65536):
                pass

    def send(self, data: bytes) -> None:
        with socket.create_connection((ADDRESS, self.port), timeout=5) as client:
            client.sendall(data)
        self.thread.join(10)
        self.server.close()


def secret_strings(*documents: object) -> set[bytes]:
    """Every password and key in the documents (S3 access keys included; names and certificates are public)."""
    found: set[bytes] = set()

    def walk(value: object, name: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, str(key))
        elif isinstance(value, str) and name.endswith(("password", "key")) and len(value) >= 8:
            found.add(value.encode())

    for document in documents:
        walk(document, "")
    assert len(found) >= 8, "the documents' passwords and keys were found"
    return found


def windows_of(data: bytes, count: int = 16, width: int = 48) -> list[bytes]:
    """``count`` slices of ``data`` spread over its length: any of them on the wire means the data was."""
    step = max(1, (len(data) - width) // count)
    return [data[offset : offset + width] for offset in range(0, len(data) - width, step)][:count]


@pytest.fixture(scope="module")
def pose_job_on_the_wire(
    unprivileged_env: UnprivilegedEnv, workdir: Path, control_plane: RunningControlPlane
) -> CapturedJob:
    """A pose job done by a worker in mode mac, captured from before the worker connects until it left."""
    env, services = unprivileged_env, control_plane.endpoints["services"]
    ports = {name: int(services[name]["port"]) for name in ("postgres", "redis", "s3")}  # type: ignore[index]
    mac = {
        "host": ADDRESS,
        "ports": ports,
        "credentials_file": str(control_plane.state_dir / "credentials.json"),
    }
    worker_config = workdir / "wire-worker.json"
    client_config = workdir / "wire-client.json"
    write_private_file(env, worker_config, json.dumps(worker_settings(
        None, workdir / "spool-wire-worker", mode="mac", mac=mac, queues=["pose"])))  # fmt: skip
    write_private_file(env, client_config, json.dumps(worker_settings(
        None, workdir / "spool-wire-client", mode="mac", mac=mac)))  # fmt: skip
    photo = workdir / "person.jpg"
    shutil.copyfile(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), photo)
    shutil.chown(photo, env.user, env.user)
    internal = " or ".join(
        f"port {port}" for address, port in weed_ports(control_plane) if address == "127.0.0.1"
    )
    tcpdump = Tcpdump(workdir / "wire.pcap", f"host {ADDRESS} or (host 127.0.0.1 and ({internal}))")
    leak, control = LeakControl(), control_plane.worker_credentials().redis.password.encode()
    try:
        leak.send(b"AUTH han_worker " + control + b"\r\n")
        worker = start_worker(env, worker_config)
        try:
            wait_for(lambda: "serving pose" in worker.output() or worker.process.poll() is not None, 60,
                     "the worker to serve pose")  # fmt: skip
            assert worker.process.poll() is None, worker.output()
            submitted = han_worker(env, "submit", "--config", str(client_config), "--kind", "pose",
                                   "--input", str(photo))  # fmt: skip
            assert submitted.returncode == 0, submitted.stderr
            job = submitted.stdout.strip()
            waited = han_worker(
                env, "wait", "--config", str(client_config), job, "--timeout", "120", timeout=150
            )
            assert waited.returncode == 0, waited.stdout + waited.stderr + worker.output()
        finally:
            worker.stop()
    finally:
        capture = tcpdump.stop()
    ledger = control_plane.ledger()
    try:
        record = ledger.job(job)
        assert record is not None
        assert record.outputs is not None
        _ledger, _redis, s3 = control_plane.link_parts()
        [name] = [name for name in record.outputs if name.endswith(".json")]
        bucket = control_plane.worker_credentials().s3.bucket
        landmarks_body = output_body(ledger, s3, bucket, record, name)  # in the ledger: over its TLS
    finally:
        ledger.close()
    [control_stream] = [stream for stream in capture.payloads if stream.destination == (ADDRESS, leak.port)]
    return capture, control_stream, photo.read_bytes() + landmarks_body, ports


def test_the_capture_sees_a_secret_sent_in_clear_and_tls_on_every_connection(
    pose_job_on_the_wire: CapturedJob, control_plane: RunningControlPlane
) -> None:
    capture, control_stream, _data, ports = pose_job_on_the_wire
    password = control_plane.worker_credentials().redis.password.encode()
    assert capture.streams_holding(password) == [control_stream], "the control leak is found, and only there"
    for name, port in ports.items():
        payloads = capture.to_port(port)
        assert payloads, f"no connection to {name} ({port}) was captured"
        for payload in payloads:
            hello = payload[len(POSTGRES_SSL_REQUEST) :] if name == "postgres" else payload
            if name == "postgres":
                assert payload.startswith(POSTGRES_SSL_REQUEST), payload[:16]
            assert is_tls_client_hello(hello), (
                f"{name}: a connection that does not start with TLS: {payload[:16]!r}"
            )
    to_and_from_s3 = sum(len(data) for stream, data in capture.payloads.items() if ports["s3"] in
                         (stream.source[1], stream.destination[1]))  # fmt: skip
    assert to_and_from_s3 > len(_data) // 2, "the photo went through S3, encrypted"


def test_no_credential_command_request_or_image_byte_in_clear(
    pose_job_on_the_wire: CapturedJob, control_plane: RunningControlPlane
) -> None:
    capture, control_stream, data, _ports = pose_job_on_the_wire
    secrets = json.loads((control_plane.state_dir / "secrets.json").read_text())
    seen: list[str] = []
    for secret in secret_strings(control_plane.credentials, secrets):
        seen += [f"a secret ({len(secret)} characters) in {stream}" for stream in capture.streams_holding(secret)
                 if stream != control_stream]  # fmt: skip
    for what, needles in IN_CLEAR.items():
        for needle in needles:
            seen += [f"{what}: {needle!r} in {stream}" for stream in capture.streams_holding(needle)
                     if stream != control_stream]  # fmt: skip
    for window in windows_of(data):
        seen += [
            f"bytes of the photo or its landmarks in {stream}" for stream in capture.streams_holding(window)
        ]
    assert seen == [], "\n".join(sorted(set(seen)))
