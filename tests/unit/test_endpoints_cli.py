"""``han-worker endpoints`` through han_worker.cli.worker_main, probing real loopback sockets."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from han_worker.cli import worker_main
from han_worker.selection.endpoints import parse_endpoints, write_endpoints_file

ENV = ("CONTROL_PLANE_MODE", "HAN_ENDPOINTS_FILE", "MAC_LAN_IP")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def ports() -> Iterator[dict[str, int]]:
    """postgres, redis and s3 listening on 127.0.0.1 (never accepted: the backlog answers the probe)."""
    servers = []
    for _attempt in range(3):
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        servers.append(server)
    yield {name: s.getsockname()[1] for name, s in zip(("postgres", "redis", "s3"), servers, strict=True)}
    for server in servers:
        server.close()


def closed_port() -> int:
    unused = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    unused.bind(("127.0.0.1", 0))
    port: int = unused.getsockname()[1]
    unused.close()
    return port


def write_pegasus(path: Path, ports: dict[str, int], **overrides: object) -> Path:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    doc: dict[str, object] = {
        "schema": 1,
        "source": "pegasus",
        "epoch": 3,
        "slurm_job_id": "4242",
        "node": "c0042",
        "started_at": (now - timedelta(hours=1)).isoformat(),
        "expires_at": (now + timedelta(hours=11)).isoformat(),
        "services": {name: {"host": "127.0.0.1", "port": port} for name, port in ports.items()},
    }
    doc.update(overrides)
    write_endpoints_file(path, parse_endpoints(doc, str(path)))
    return path


def mac_port_args(ports: dict[str, int]) -> list[str]:
    return [arg for name, port in ports.items() for arg in ("--mac-port", f"{name}={port}")]


@pytest.fixture
def pegasus_file(tmp_path: Path, ports: dict[str, int]) -> Path:
    return write_pegasus(tmp_path / "cp" / "endpoints.json", ports)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = worker_main(["endpoints", "--probe-timeout", "0.5", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_pegasus_mode_with_a_healthy_pegasus(
    capsys: pytest.CaptureFixture[str], pegasus_file: Path, ports: dict[str, int]
) -> None:
    code, out, err = run(capsys, "--mode", "pegasus", "--endpoints-file", str(pegasus_file))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:4] == [
        "source: pegasus",
        f"postgres: 127.0.0.1:{ports['postgres']}",
        f"redis: 127.0.0.1:{ports['redis']}",
        f"s3: 127.0.0.1:{ports['s3']}",
    ]
    assert lines[4] == "reason: Pegasus endpoints (epoch 3, node c0042) are valid and healthy"
    assert lines[5] == f"probe: postgres 127.0.0.1:{ports['postgres']}: ok (TCP connect ok)"


def test_pegasus_mode_without_a_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "home" / ".han" / "control-plane" / "endpoints.json"
    code, out, err = run(capsys, "--mode", "pegasus")  # the default path, under $HOME
    assert (code, out) == (2, "")
    assert err == f"han-worker endpoints: {missing}: does not exist\n"


def test_pegasus_mode_with_dead_services_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    dead = {"postgres": closed_port(), "redis": closed_port(), "s3": closed_port()}
    path = write_pegasus(tmp_path / "cp" / "endpoints.json", dead)
    code, _out, err = run(capsys, "--mode", "pegasus", "--endpoints-file", str(path))
    assert code == 2
    assert err.startswith(
        "han-worker endpoints: Pegasus endpoints (epoch 3, node c0042): unhealthy: "
        f"postgres 127.0.0.1:{dead['postgres']}: FAILED (connection refused); "
    )


def test_pegasus_mode_refuses_a_writable_file(capsys: pytest.CaptureFixture[str], pegasus_file: Path) -> None:
    pegasus_file.chmod(0o666)
    code, _out, err = run(capsys, "--mode", "pegasus", "--endpoints-file", str(pegasus_file))
    assert code == 2
    assert err == (
        f"han-worker endpoints: {pegasus_file}: is writable by group or others (mode 0666); "
        f"run chmod go-w {pegasus_file}\n"
    )


def test_auto_falls_back_to_the_mac_when_pegasus_is_expired(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, ports: dict[str, int]
) -> None:
    path = write_pegasus(
        tmp_path / "cp" / "endpoints.json",
        ports,
        started_at="2020-01-01T00:00:00Z",
        expires_at="2020-01-01T12:00:00Z",
    )
    code, out, err = run(
        capsys, "--endpoints-file", str(path), "--mac-host", "127.0.0.1", *mac_port_args(ports)
    )
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "source: mac"
    reason = next(line for line in out.splitlines() if line.startswith("reason: "))
    assert reason.startswith(f"reason: Pegasus skipped: {path}: expired at 2020-01-01T12:00:00Z (now ")
    assert reason.endswith("; the Mac at 127.0.0.1 is healthy")


def test_auto_json_uses_the_first_healthy_mac(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, ports: dict[str, int]
) -> None:
    monkeypatch.setenv("CONTROL_PLANE_MODE", "auto")
    # 127.0.0.2 is loopback too, but nothing listens there: the probe is refused.
    hosts = ["--mac-host", "127.0.0.2", "--mac-host", "127.0.0.1"]
    code, out, _err = run(capsys, "--json", *hosts, *mac_port_args(ports))
    assert code == 0
    selection = json.loads(out)
    assert selection["source"] == "mac"
    assert selection["endpoints"]["node"] == "127.0.0.1"
    assert selection["endpoints"]["services"]["redis"] == {"host": "127.0.0.1", "port": ports["redis"]}
    assert [(p["service"], p["ok"]) for p in selection["probes"]] == [
        ("postgres", True),
        ("redis", True),
        ("s3", True),
    ]
    assert "does not exist" in selection["reason"]


def test_mac_mode_from_the_environment_without_probe(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTROL_PLANE_MODE", "mac")
    monkeypatch.setenv("MAC_LAN_IP", "192.168.1.20")
    code, out, _err = run(capsys, "--no-probe")
    assert code == 0
    assert out.splitlines() == [
        "source: mac",
        "postgres: 192.168.1.20:5432",
        "redis: 192.168.1.20:6379",
        "s3: 192.168.1.20:9000",
        "reason: mode mac always uses the Mac; using the Mac at 192.168.1.20 (not probed)",
    ]


def test_endpoints_file_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, pegasus_file: Path
) -> None:
    monkeypatch.setenv("HAN_ENDPOINTS_FILE", str(pegasus_file))
    code, out, _err = run(capsys, "--mode", "pegasus", "--no-probe")
    assert code == 0
    assert "reason: Pegasus endpoints (epoch 3, node c0042) are valid (not probed)" in out.splitlines()


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        (
            {"CONTROL_PLANE_MODE": "primary"},
            [],
            "CONTROL_PLANE_MODE: 'primary' is not one of auto, pegasus, mac",
        ),
        ({}, ["--mode", "auto"], "mode auto needs the Mac's LAN address: set MAC_LAN_IP or pass --mac-host"),
        ({}, ["--mode", "mac"], "mode mac needs the Mac's LAN address: set MAC_LAN_IP or pass --mac-host"),
        (
            {},
            ["--mac-host", "not a host!"],
            "--mac-host: 'not a host!' is neither an IP address nor a host name",
        ),
        (
            {"MAC_LAN_IP": "mac-.lan"},
            [],
            "MAC_LAN_IP: 'mac-.lan' is neither an IP address nor a host name",
        ),
        (
            {},
            ["--mac-host", "10.0.0.2", "--mac-port", "redis"],
            "--mac-port: 'redis' is not SERVICE=PORT (e.g. redis=6380)",
        ),
        (
            {},
            ["--mac-host", "10.0.0.2", "--mac-port", "redis=99999"],
            "Mac endpoints for 10.0.0.2: field 'ports.redis': 99999 is out of range 1-65535",
        ),
    ],
)
def test_invalid_inputs_exit_2_with_the_reason(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    args: list[str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(capsys, "--no-probe", *args)
    assert (code, out) == (2, "")
    assert err == f"han-worker endpoints: {message}\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--probe-timeout", "0"], "argument --probe-timeout: '0' must be a finite number of seconds > 0"),
        (
            ["--probe-timeout", "nan"],
            "argument --probe-timeout: 'nan' must be a finite number of seconds > 0",
        ),
        (["--probe-timeout", "soon"], "argument --probe-timeout: 'soon' is not a number of seconds"),
        (["--mode", "primary"], "argument --mode: invalid choice: 'primary'"),
    ],
)
def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as caught:
        worker_main(["endpoints", *args])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_help_explains_each_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        worker_main(["endpoints", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out if line.startswith(("  pegasus ", "  mac ", "  auto "))] == [
        "pegasus",
        "mac",
        "auto",
    ]
    assert (
        "  pegasus  use the Pegasus endpoints file; exit 2 with the reason when it is missing or unusable"
        in out
    )
