"""``han-worker endpoints`` through han_worker.cli.worker_main: the worker's own choice, from its flags,
variables and ``--config`` file (the authenticated probes against real services are in
tests/integration/test_endpoints_choice.py)."""

from __future__ import annotations

import io
import json
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from han_worker.cli import worker_main
from han_worker.private_files import write_private_json
from han_worker.selection.endpoints import parse_endpoints, write_endpoints_file
from tests.fake_windows import FAKE_MAC_CREDENTIALS as CREDENTIALS

ENV = ("CONTROL_PLANE_MODE", "HAN_ENDPOINTS_FILE", "MAC_LAN_IP", "HAN_WORKER_QUEUES")
PORTS = {"postgres": 15432, "redis": 16379, "s3": 19000}
WHERE = "Pegasus endpoints (epoch 3, node c0042)"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def closed_port() -> int:
    unused = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    unused.bind(("127.0.0.1", 0))
    port: int = unused.getsockname()[1]
    unused.close()
    return port


def write_pegasus(directory: Path, ports: dict[str, int], **overrides: object) -> Path:
    """An endpoints file with the workers' credentials.json beside it, as a control plane publishes them."""
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
    path = directory / "endpoints.json"
    write_endpoints_file(path, parse_endpoints(doc, str(path)))
    write_private_json(directory / "credentials.json", CREDENTIALS)
    return path


@pytest.fixture
def pegasus_file(tmp_path: Path) -> Path:
    return write_pegasus(tmp_path / "cp", PORTS)


@pytest.fixture
def mac_credentials(tmp_path: Path) -> Path:
    path = tmp_path / "mac" / "credentials.json"
    write_private_json(path, CREDENTIALS)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = worker_main(["endpoints", "--probe-timeout", "0.5", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_pegasus_mode_with_a_valid_pegasus(capsys: pytest.CaptureFixture[str], pegasus_file: Path) -> None:
    code, out, err = run(capsys, "--mode", "pegasus", "--endpoints-file", str(pegasus_file), "--no-probe")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "source: pegasus",
        "postgres: 127.0.0.1:15432",
        "redis: 127.0.0.1:16379",
        "s3: 127.0.0.1:19000",
        f"reason: {WHERE} are valid (not probed)",
    ]


def test_pegasus_mode_without_a_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "home" / ".han" / "control-plane" / "endpoints.json"
    code, out, err = run(capsys, "--mode", "pegasus")  # the worker's default path, under $HOME
    assert (code, out) == (2, "")
    assert err == f"han-worker endpoints: {missing}: does not exist\n"


def test_pegasus_mode_without_the_workers_credentials_exits_2(
    capsys: pytest.CaptureFixture[str], pegasus_file: Path
) -> None:
    (pegasus_file.parent / "credentials.json").unlink()
    code, _out, err = run(capsys, "--mode", "pegasus", "--endpoints-file", str(pegasus_file), "--no-probe")
    assert code == 2
    assert err == f"han-worker endpoints: {pegasus_file.parent / 'credentials.json'}: does not exist\n"


def test_pegasus_mode_with_dead_services_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    dead = {"postgres": closed_port(), "redis": closed_port(), "s3": closed_port()}
    path = write_pegasus(tmp_path / "cp", dead)
    code, _out, err = run(capsys, "--mode", "pegasus", "--endpoints-file", str(path))
    assert code == 2
    assert err.startswith(
        f"han-worker endpoints: {WHERE}: unhealthy: postgres 127.0.0.1:{dead['postgres']}: FAILED"
    )
    assert f"redis 127.0.0.1:{dead['redis']}: FAILED" in err


def test_pegasus_mode_refuses_a_writable_file(capsys: pytest.CaptureFixture[str], pegasus_file: Path) -> None:
    pegasus_file.chmod(0o666)
    code, _out, err = run(capsys, "--mode", "pegasus", "--endpoints-file", str(pegasus_file))
    assert code == 2
    assert err == (
        f"han-worker endpoints: {pegasus_file}: is writable by group or others (mode 0666); "
        f"run chmod go-w {pegasus_file}\n"
    )


def test_auto_falls_back_to_the_mac_when_pegasus_is_expired(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, mac_credentials: Path
) -> None:
    path = write_pegasus(
        tmp_path / "cp", PORTS, started_at="2020-01-01T00:00:00Z", expires_at="2020-01-01T12:00:00Z"
    )
    code, out, err = run(
        capsys, "--endpoints-file", str(path), "--mac-host", "192.0.2.7", "--mac-port", "redis=16380",
        "--mac-credentials-file", str(mac_credentials), "--no-probe",
    )  # fmt: skip
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:4] == [
        "source: mac",
        "postgres: 192.0.2.7:5432",
        "redis: 192.0.2.7:16380",
        "s3: 192.0.2.7:9000",
    ]
    assert lines[4].startswith(f"reason: Pegasus skipped: {path}: expired at 2020-01-01T12:00:00Z (now ")
    assert lines[4].endswith("; using the Mac at 192.0.2.7 (not probed)")


def test_json_says_the_choice_or_why_there_is_none(
    capsys: pytest.CaptureFixture[str], pegasus_file: Path, tmp_path: Path
) -> None:
    code, out, _err = run(
        capsys, "--json", "--mode", "pegasus", "--endpoints-file", str(pegasus_file), "--no-probe"
    )
    chosen = json.loads(out)
    assert (code, chosen["ok"], chosen["mode"], chosen["source"]) == (0, True, "pegasus", "pegasus")
    assert chosen["endpoints"]["services"]["redis"] == {"host": "127.0.0.1", "port": 16379}
    assert chosen["reason"] == f"{WHERE} are valid (not probed)"
    missing = tmp_path / "none" / "endpoints.json"
    code, out, err = run(capsys, "--json", "--mode", "pegasus", "--endpoints-file", str(missing))
    assert (code, json.loads(out)) == (2, {"ok": False, "error": f"{missing}: does not exist"})
    assert err == f"han-worker endpoints: {missing}: does not exist\n"


def test_mac_mode_from_the_environment_without_probe(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, mac_credentials: Path
) -> None:
    monkeypatch.setenv("CONTROL_PLANE_MODE", "mac")
    monkeypatch.setenv("MAC_LAN_IP", "192.168.1.20")
    code, out, _err = run(capsys, "--no-probe", "--mac-credentials-file", str(mac_credentials))
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
    assert f"reason: {WHERE} are valid (not probed)" in out.splitlines()


def worker_config(pegasus_file: Path, mac_credentials: Path, mode: str) -> dict[str, object]:
    return {
        "mode": mode,
        "queues": ["pose"],
        "pegasus": {"endpoints_file": str(pegasus_file)},
        "mac": {"host": "192.0.2.9", "ports": {"redis": 16390}, "credentials_file": str(mac_credentials)},
    }


def test_the_config_file_is_the_workers_and_flags_beat_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pegasus_file: Path, mac_credentials: Path
) -> None:
    config = tmp_path / "worker" / "worker.json"
    write_private_json(config, worker_config(pegasus_file, mac_credentials, "mac"))
    code, out, _err = run(capsys, "--config", str(config), "--no-probe")
    assert (code, out.splitlines()[:3]) == (
        0,
        ["source: mac", "postgres: 192.0.2.9:5432", "redis: 192.0.2.9:16390"],
    )
    code, out, _err = run(capsys, "--config", str(config), "--no-probe", "--mode", "auto")
    assert (code, out.splitlines()[0]) == (0, "source: pegasus")


def test_the_config_can_come_on_standard_input(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    pegasus_file: Path,
    mac_credentials: Path,
) -> None:
    document = json.dumps(worker_config(pegasus_file, mac_credentials, "pegasus"))
    monkeypatch.setattr("sys.stdin", io.StringIO(document))
    code, out, _err = run(capsys, "--config", "-", "--no-probe", "--json")
    assert (code, json.loads(out)["source"]) == (0, "pegasus")
    monkeypatch.setattr("sys.stdin", io.StringIO("[1, 2]"))
    code, _out, err = run(capsys, "--config", "-", "--no-probe")
    assert (code, err) == (
        2,
        "han-worker endpoints: --config: --config - (standard input): must hold a JSON object, not array\n",
    )


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        (
            {"CONTROL_PLANE_MODE": "primary"},
            [],
            "CONTROL_PLANE_MODE: 'primary' is not one of auto, pegasus, mac",
        ),
        (
            {},
            ["--mode", "mac"],
            "mode mac needs the Mac's address: pass --mac-host, set MAC_LAN_IP or put mac.host in --config FILE",
        ),
        (
            {},
            ["--mac-host", "10.0.0.2"],
            "mode auto may use the Mac at 10.0.0.2, but its control plane's credentials are unknown: "
            "pass --mac-credentials-file or put mac.credentials_file in --config FILE",
        ),
        (
            {},
            ["--mac-host", "not a host!"],
            "--mac-host: 'not a host!' is neither an IP address nor a host name",
        ),
        ({"MAC_LAN_IP": "mac-.lan"}, [], "MAC_LAN_IP: 'mac-.lan' is neither an IP address nor a host name"),
        (
            {},
            ["--mac-port", "redis=6380"],
            "--mac-port and --mac-credentials-file need the Mac's address: pass --mac-host, set MAC_LAN_IP or put mac.host in the --config file",
        ),
    ],
    ids=[
        "mode-variable",
        "mac-without-address",
        "mac-without-credentials",
        "bad-mac-host",
        "bad-mac-variable",
        "port-without-mac",
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
        (
            ["--mac-port", "redis"],
            "argument --mac-port: 'redis' is not SERVICE=PORT, port 1-65535 (e.g. redis=6380)",
        ),
        (
            ["--mac-port", "redis=99999"],
            "argument --mac-port: 'redis=99999' is not SERVICE=PORT, port 1-65535",
        ),
        (["--mac-port", "ftp=21"], "argument --mac-port: 'ftp=21': 'ftp' is not one of postgres, redis, s3"),
    ],
)
def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as caught:
        worker_main(["endpoints", *args])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_help_explains_each_mode_and_the_precedence(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        worker_main(["endpoints", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out if line.startswith(("  pegasus ", "  mac ", "  auto "))] == [
        "pegasus",
        "mac",
        "auto",
    ]
    assert '  --mode, else $CONTROL_PLANE_MODE, else the config file\'s "mode", else auto' in out
