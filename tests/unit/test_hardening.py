"""The pure parts of ``han_worker.hardening``: parsers on real output, classifiers, file modes on real files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from han_worker import hardening
from han_worker.cli import worker_main
from han_worker.control_plane.admin_secrets import KNOWN_DEFAULTS
from han_worker.hardening import (
    ACCEPTED,
    FAIL,
    PASS,
    REFUSED,
    UNREACHABLE,
    WARN,
    Attempt,
    HardeningInputError,
    Listener,
    Row,
    acl_rows,
    classify_http_status,
    classify_postgres_error,
    classify_redis_reply,
    find_leaks,
    format_table,
    listener_rows,
    make_policy,
    mode_row,
    parse_ss,
    process_tree,
    scan_file_for_leaks,
    secret_values,
    weak_hba_lines,
    weak_secret_fields,
    writable_by_others,
)

# `ss -l -n -p -t -u` on the testbed (as root), with its header; the IPv6 and UDP lines are ss's own formats.
SS_OUTPUT = """\
Netid State  Recv-Q Send-Q Local Address:Port  Peer Address:PortProcess
tcp   LISTEN 0      4096      127.0.0.10:37433      0.0.0.0:*    users:(("weed",pid=7929,fd=89))
tcp   LISTEN 0      4096       127.0.0.1:37433      0.0.0.0:*    users:(("weed",pid=7929,fd=90))
tcp   LISTEN 0      4096       127.0.0.1:48355      0.0.0.0:*    users:(("weed",pid=7929,fd=8))
tcp   LISTEN 0      511       127.0.0.10:39965      0.0.0.0:*    users:(("valkey-server",pid=7928,fd=8))
tcp   LISTEN 0      200       127.0.0.10:33955      0.0.0.0:*    users:(("postgres",pid=7927,fd=6))
tcp   LISTEN 0      4096         0.0.0.0:6817       0.0.0.0:*    users:(("slurmctld",pid=5370,fd=10))
tcp   LISTEN 0      128          0.0.0.0:2024       0.0.0.0:*
tcp   LISTEN 0      4096            [::]:6817          [::]:*    users:(("slurmctld",pid=5370,fd=11))
tcp   LISTEN 0      511                *:8080             *:*    users:(("python3",pid=900,fd=3),("python3",pid=901,fd=3))
udp   UNCONN 0      0      127.0.0.53%lo:53         0.0.0.0:*    users:(("resolved",pid=77,fd=12))
"""

POLICY = make_policy([], ["127.0.0.10/32"], allow_any=False)
PUBLISHED = {33955: "postgres", 39965: "redis", 37433: "s3"}


def test_parse_ss_reads_addresses_ports_and_processes() -> None:
    listeners = parse_ss(SS_OUTPUT)
    assert len(listeners) == 10
    assert listeners[0] == Listener("tcp", "127.0.0.10", 37433, (7929,), ("weed",))
    assert Listener("tcp", "0.0.0.0", 2024, (), ()) in listeners
    assert Listener("tcp", "::", 6817, (5370,), ("slurmctld",)) in listeners
    assert Listener("tcp", "*", 8080, (900, 901), ("python3",)) in listeners
    assert Listener("udp", "127.0.0.53", 53, (77,), ("resolved",)) in listeners


def test_parse_ss_without_header_or_netid_column() -> None:
    text = 'LISTEN 0 128 127.0.0.20:2222 0.0.0.0:* users:(("sshd",pid=5440,fd=3))\n\n'
    assert parse_ss(text) == [Listener("tcp", "127.0.0.20", 2222, (5440,), ("sshd",))]


def _rows_for(address: str, port: int, policy: hardening.AddressPolicy = POLICY) -> list[Row]:
    return listener_rows([Listener("tcp", address, port, (1,), ("weed",))], PUBLISHED, policy)


def test_listeners_on_the_private_address_pass_and_loopback_is_one_warning() -> None:
    ours = [item for item in parse_ss(SS_OUTPUT) if item.pids == (7929,) or item.port in PUBLISHED]
    rows = listener_rows(ours, PUBLISHED, POLICY)
    assert [row.result for row in rows] == [PASS, PASS, PASS, WARN]
    assert rows[0].target == "tcp 127.0.0.10:33955"
    assert "postgres" in rows[0].detail
    assert "internal, unauthenticated, reachable by other users of the node" in rows[-1].detail
    assert "37433 (weed)" in rows[-1].detail
    assert "48355 (weed)" in rows[-1].detail


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "*"])
def test_a_bind_to_every_interface_fails_and_names_the_setting(address: str) -> None:
    (row,) = _rows_for(address, 39965)
    assert row.result == FAIL
    assert "redis" in row.detail
    assert "every interface" in row.detail
    assert "harden_check_allow_any_address" in row.detail


def test_every_interface_is_a_warning_when_the_operator_allows_it() -> None:
    (row,) = _rows_for("0.0.0.0", 39965, make_policy(["127.0.0.10"], [], allow_any=True))
    assert row.result == WARN
    assert "allowed" in row.detail


@pytest.mark.parametrize("address", ["127.0.0.20", "192.0.2.7", "::1"])
def test_another_address_fails(address: str) -> None:
    (row,) = _rows_for(address, 40000)
    assert row.result == FAIL
    assert "neither the private address (127.0.0.10/32) nor 127.0.0.1" in row.detail
    assert "not in the endpoints file" in row.detail


def test_an_explicit_bind_address_is_the_private_address() -> None:
    policy = make_policy(["127.0.0.20"], [], allow_any=False)
    assert _rows_for("127.0.0.20", 16379, policy)[0].result == PASS
    assert _rows_for("127.0.0.21", 16379, policy)[0].result == FAIL


@pytest.mark.parametrize(
    ("addresses", "networks", "message"),
    [
        ([], [], "--bind-address or --bind-network"),
        (["not-an-ip"], [], "--bind-address"),
        ([], ["10.0.0.0/33"], "--bind-network"),
        (["0.0.0.0"], [], "every interface"),
        ([], ["0.0.0.0/0"], "every interface"),
    ],
)
def test_bad_policy_inputs_are_refused(addresses: list[str], networks: list[str], message: str) -> None:
    with pytest.raises(HardeningInputError, match=message):
        make_policy(addresses, networks, allow_any=False)


def test_process_tree_follows_children_only() -> None:
    parents = {10: 1, 11: 10, 12: 10, 13: 11, 20: 1, 21: 20}
    assert process_tree(10, parents) == {10, 11, 12, 13}
    assert process_tree(99, parents) == {99}


# -- secrets -------------------------------------------------------------------------------------------

SECRETS = {
    "schema": 1,
    "postgres": {"superuser": "han_owner", "superuser_password": "pg-owner-secret-0001", "database": "han"},
    "redis": {"admin_user": "han_admin", "admin_password": "redis-admin-secret-02"},
    "s3": {"root_access_key": "han-root-1", "root_secret_key": "s3-root-secret-00003", "bucket": "b"},
}


def test_secret_values_takes_passwords_and_secret_keys_only() -> None:
    found = secret_values({"secrets.json": SECRETS, "credentials.json": {"redis": {"password": "short"}}})
    assert found == {
        "secrets.json postgres.superuser_password": "pg-owner-secret-0001",
        "secrets.json redis.admin_password": "redis-admin-secret-02",
        "secrets.json s3.root_secret_key": "s3-root-secret-00003",
    }  # "short" is under the length at which a match could be chance


def test_find_leaks_names_the_field_never_the_value() -> None:
    secrets = secret_values({"secrets.json": SECRETS})
    leaks = find_leaks(b"valkey-server --requirepass redis-admin-secret-02\0", secrets)
    assert leaks == ["secrets.json redis.admin_password"]
    assert find_leaks("nothing here", secrets) == []
    assert all("secret-0" not in name for name in leaks)


def test_scan_file_finds_a_secret_split_across_chunks(tmp_path: Path) -> None:
    secrets = {"x": "0123456789abcdef"}
    log = tmp_path / "s3.log"
    log.write_bytes(b"a" * 10 + b"0123456789abcdef" + b"b" * 10)
    assert scan_file_for_leaks(log, secrets, chunk_size=16) == ["x"]
    log.write_bytes(b"a" * 100)
    assert scan_file_for_leaks(log, secrets, chunk_size=16) == []


def test_weak_secret_fields() -> None:
    secrets = {"a password": "minioadmin", "b secret": "sixteen-chars-ok", "c password": "short-pw"}
    assert weak_secret_fields(secrets) == [
        "a password is a known default",
        "c password has 8 characters (< 16)",
    ]


def test_known_defaults_match_the_supervisors_list() -> None:
    assert set(hardening.KNOWN_DEFAULT_PASSWORDS) == set(KNOWN_DEFAULTS)


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


# -- connection outcomes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (b"-NOAUTH Authentication required.\r\n", REFUSED),
        (b"-WRONGPASS invalid username-password pair or user is disabled.\r\n", REFUSED),
        (b"+PONG\r\n", ACCEPTED),
        (b"+OK\r\n", ACCEPTED),
        (b"", UNREACHABLE),
        (b"HTTP/1.1 400 Bad Request\r\n", UNREACHABLE),
    ],
)
def test_classify_redis_reply(reply: bytes, outcome: str) -> None:
    assert classify_redis_reply(reply)[0] == outcome


@pytest.mark.parametrize(
    ("message", "outcome"),
    [
        (
            'connection to server at "127.0.0.10", port 5432 failed: fe_sendauth: no password supplied',
            REFUSED,
        ),
        ('... failed: FATAL:  password authentication failed for user "postgres"', REFUSED),
        ('FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "x", database "postgres"', REFUSED),
        ('FATAL:  database "postgres" does not exist', ACCEPTED),
        ('connection to server at "127.0.0.10", port 1 failed: Connection refused', UNREACHABLE),
        ("timeout expired", UNREACHABLE),
    ],
)
def test_classify_postgres_error(message: str, outcome: str) -> None:
    result, detail = classify_postgres_error(message)
    assert result == outcome
    assert "connection to server" not in detail
    assert "FATAL" not in detail


@pytest.mark.parametrize(
    ("status", "outcome"), [(200, ACCEPTED), (204, ACCEPTED), (403, REFUSED), (401, REFUSED)]
)
def test_classify_http_status(status: int, outcome: str) -> None:
    assert classify_http_status(status)[0] == outcome


def test_attempt_rows() -> None:
    refused = Attempt("redis", "h:1", "no credentials", REFUSED, "NOAUTH").row()
    accepted = Attempt("s3", "h:2", "anonymous list buckets", ACCEPTED, "HTTP 200").row()
    silent = Attempt("postgres", "h:3", "postgres/no password", UNREACHABLE, "Connection refused").row()
    assert (refused.result, accepted.result, silent.result) == (PASS, FAIL, FAIL)
    assert accepted.detail == "ACCEPTED: HTTP 200"
    assert accepted.target == "s3 h:2 anonymous list buckets"
    assert silent.detail.startswith("cannot verify")


# -- file modes ----------------------------------------------------------------------------------------


def test_mode_row_on_real_files(tmp_path: Path) -> None:
    uid = os.getuid()
    secret = tmp_path / "credentials.json"
    secret.write_text("{}")
    secret.chmod(0o600)
    assert mode_row(secret, uid, private=True, directory=False).result == PASS
    secret.chmod(0o644)
    row = mode_row(secret, uid, private=True, directory=False)
    assert row.result == FAIL
    assert "mode 0644 gives group/others access (want 0600)" in row.detail
    assert "owned by uid" in mode_row(secret, uid + 1, private=True, directory=False).detail
    assert mode_row(tmp_path / "missing", uid, private=True).detail == "does not exist"
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    assert "want 0700" in mode_row(state, uid, private=True, directory=True).detail
    assert "is not a directory" in mode_row(secret, uid, private=True, directory=True).detail
    link = tmp_path / "link"
    link.symlink_to(secret)
    assert "symbolic link" in mode_row(link, uid, private=True, directory=False).detail


def test_env_tree_not_writable_by_others(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text("")
    assert writable_by_others(tmp_path) == (0, [])
    (tmp_path / "bin").chmod(0o775)
    (tmp_path / "bin" / "python").chmod(0o666)
    count, examples = writable_by_others(tmp_path)
    assert count == 2
    assert any(example.endswith("python (0666)") for example in examples)
    assert mode_row(tmp_path / "bin", os.getuid(), private=False).result == FAIL


def test_format_table() -> None:
    table = format_table([Row("listen", "tcp 0.0.0.0:1", FAIL, "every interface")]).splitlines()
    assert table == [
        "check  | target        | result | detail",
        "listen | tcp 0.0.0.0:1 | fail   | every interface",
    ]


# -- command line --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--bind-address or --bind-network"),
        (["--bind-address", "0.0.0.0"], "every interface"),
        (["--bind-network", "nonsense"], "--bind-network"),
        (["--bind-address", "127.0.0.10", "--timeout", "0"], "--timeout"),
        (["--bind-address", "127.0.0.10", "--state-dir", "/nonexistent/han"], "--state-dir"),
    ],
)
def test_cli_refuses_bad_input_with_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert worker_main(["harden-check", *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_on_an_empty_state_directory_fails_and_prints_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    code = hardening.main(
        ["--state-dir", str(state), "--env-dir", str(tmp_path), "--bind-address", "127.0.0.10", "--json"]
    )
    rows = json.loads(capsys.readouterr().out)
    assert code == 1
    assert {"check", "target", "result", "detail"} == set(rows[0])
    failed = {(row["check"], row["target"]) for row in rows if row["result"] == FAIL}
    assert ("control-plane", f"{state}/endpoints.json") in failed
    assert ("mode", f"{state}/credentials.json") in failed
    assert ("control-plane", f"{state}/supervisor.lock") in failed
