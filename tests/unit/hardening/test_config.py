"""Weak authentication in the configuration: pg_hba.conf lines, Redis ACL users, weak secrets."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from han_worker.control_plane.admin_secrets import KNOWN_DEFAULTS
from han_worker.control_plane.hardening.config import (
    acl_rows,
    plain_text_hba_lines,
    redis_listen_rows,
    weak_hba_lines,
    weak_secret_fields,
)
from han_worker.control_plane.hardening.report import FAIL, PASS, Row
from han_worker.control_plane.layout import Layout
from han_worker.control_plane.services import hba_lines

# -- configuration -------------------------------------------------------------------------------------

HBA = """\
# Written by han-control-plane at every start; edits are overwritten.
local all all scram-sha-256
host all all 127.0.0.0/8 scram-sha-256
host all all 10.0.0.0 255.0.0.0 md5
hostssl all postgres 192.0.2.0/24 trust   # temporary
local replication all password
host all all ::1/128 scram-sha-256 clientcert=verify-full
"""


def test_weak_hba_lines_names_trust_md5_and_password() -> None:
    assert weak_hba_lines(HBA) == [(4, "md5"), (5, "trust"), (6, "password")]
    assert weak_hba_lines(HBA.split("host all all 10.", maxsplit=1)[0]) == []


def _hash(password: str) -> str:
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def test_acl_rows_pass_for_the_supervisors_configuration() -> None:
    acl = [
        "user default off resetchannels -@all",
        f"user han_admin on {_hash('a-long-random-admin-pw')} ~* &* +@all",
        f"user han_worker on {_hash('a-long-random-worker-pw')} resetchannels ~han:* &han:* +@all -@admin",
    ]
    assert acl_rows(acl, "redis x") == [Row("redis-config", "redis x user default", PASS, "disabled (off)")]


def test_acl_rows_fail_for_default_on_nopass_and_a_minioadmin_password() -> None:
    acl = [
        "user default on nopass ~* &* +@all",
        f"user intruder on {_hash('minioadmin')} ~* +@all",
        "user lazy on nopass ~* +@all",
        f"user parked off {_hash('minioadmin')} ~*",  # disabled: cannot log in
    ]
    rows = acl_rows(acl, "redis x")
    assert all(row.result == FAIL for row in rows)
    details = {row.target: row.detail for row in rows if "nopass" not in row.detail}
    assert details["redis x user default"] == "enabled: clients need no user name"
    assert details["redis x user intruder"] == "password is the known default 'minioadmin'"
    assert any(row.target == "redis x user lazy" and "nopass" in row.detail for row in rows)
    assert not any("parked" in row.target for row in rows)


def test_acl_rows_fail_when_default_is_missing() -> None:
    assert acl_rows([], "redis x") == [Row("redis-config", "redis x user default", FAIL, "not in ACL LIST")]


def test_weak_secret_fields() -> None:
    secrets = {"a password": "minioadmin", "b secret": "sixteen-chars-ok", "c password": "short-pw"}
    assert weak_secret_fields(secrets) == [
        "a password is a known default",
        "c password has 8 characters (< 16)",
    ]


def test_known_defaults_match_the_supervisors_list() -> None:
    """The checks judge with the supervisor's own list: every default it refuses is weak here too."""
    for password in sorted(KNOWN_DEFAULTS):
        assert weak_secret_fields({"x password": password}) == ["x password is a known default"]
        (row,) = acl_rows(["user default off", f"user u on {_hash(password)} ~*"], "redis x")[1:]
        assert row.detail == f"password is the known default {password!r}"


def test_plain_text_hba_lines_name_host_and_hostnossl_lines() -> None:
    assert plain_text_hba_lines(HBA) == [(3, "host"), (4, "host"), (7, "host")]
    assert plain_text_hba_lines("hostnossl all all 0.0.0.0/0 scram-sha-256\n") == [(1, "hostnossl")]
    # What the supervisor writes: local and hostssl only.
    assert plain_text_hba_lines(hba_lines(("127.0.0.0/8", "192.168.1.0/24"))) == []


# -- Valkey's listeners -------------------------------------------------------------------------------


def _valkey_settings(socket_path: Path, port: str = "0", perm: str = "700") -> dict[str, str]:
    return {"port": port, "unixsocket": str(socket_path), "unixsocketperm": perm}


def _layout_with_run_dir(tmp_path: Path, mode: int = 0o700) -> Layout:
    layout = Layout(tmp_path / "state")
    layout.make_dirs()
    layout.run_dir().chmod(mode)
    return layout


def test_valkey_on_its_private_socket_only_passes(tmp_path: Path) -> None:
    layout = _layout_with_run_dir(tmp_path)
    settings = _valkey_settings(layout.run_dir() / "valkey.sock")
    rows = redis_listen_rows("redis h:1", settings, layout, os.getuid())
    assert [row.result for row in rows] == [PASS, PASS, PASS], rows


def test_valkey_on_a_tcp_port_of_its_own_fails_naming_it(tmp_path: Path) -> None:
    layout = _layout_with_run_dir(tmp_path)
    settings = _valkey_settings(layout.run_dir() / "valkey.sock", port="6379")
    row = redis_listen_rows("redis h:1", settings, layout, os.getuid())[0]
    assert (row.target, row.result) == ("redis h:1 port", FAIL)
    assert "TCP port 6379" in row.detail


@pytest.mark.parametrize(
    ("mode", "perm", "failing"),
    [
        (0o755, "700", "mode"),  # others may enter the socket's directory
        (0o700, "777", "redis-config"),  # the socket itself is open to everyone
        (0o700, "770", "redis-config"),
    ],
)
def test_an_opened_socket_or_directory_fails(tmp_path: Path, mode: int, perm: str, failing: str) -> None:
    layout = _layout_with_run_dir(tmp_path, mode)
    settings = _valkey_settings(layout.run_dir() / "valkey.sock", perm=perm)
    rows = redis_listen_rows("redis h:1", settings, layout, os.getuid())
    assert [row.check for row in rows if row.result == FAIL] == [failing], rows


def test_a_socket_outside_the_state_directory_or_none_fails(tmp_path: Path) -> None:
    layout = _layout_with_run_dir(tmp_path)
    outside = redis_listen_rows("redis h:1", _valkey_settings(tmp_path / "valkey.sock"), layout, os.getuid())
    assert [row.result for row in outside] == [PASS, FAIL, PASS]
    assert "outside" in outside[1].detail
    none = redis_listen_rows("redis h:1", {"port": "0", "unixsocket": ""}, layout, os.getuid())
    assert [row.result for row in none] == [PASS, FAIL]
