"""Weak authentication in the configuration: pg_hba.conf lines, Redis ACL users, weak secrets."""

from __future__ import annotations

import hashlib

from han_worker.control_plane.admin_secrets import KNOWN_DEFAULTS
from han_worker.control_plane.hardening.config import (
    acl_rows,
    plain_text_hba_lines,
    weak_hba_lines,
    weak_secret_fields,
)
from han_worker.control_plane.hardening.report import FAIL, PASS, Row
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
