"""Secret values found (and named, never shown) in process arguments, environments and files."""

from __future__ import annotations

from pathlib import Path

from han_worker.control_plane.hardening.leaks import _job_name_row, find_leaks, scan_file_for_leaks
from han_worker.control_plane.hardening.report import FAIL, PASS
from han_worker.control_plane.hardening.state import secret_values

# -- secrets -------------------------------------------------------------------------------------------

SECRETS = {
    "schema": 1,
    "postgres": {"superuser": "han_owner", "superuser_password": "pg-owner-secret-0001", "database": "han"},
    "redis": {"admin_user": "han_admin", "admin_password": "redis-admin-secret-02"},
    "s3": {"root_access_key": "han-root-1", "root_secret_key": "s3-root-secret-00003", "bucket": "b"},
}

FIXTURES = Path(__file__).parents[1] / "plugins" / "module_utils" / "fixtures"


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


def test_the_job_name_is_read_from_slurms_detailed_record_and_checked() -> None:
    record = (FIXTURES / "scontrol_job_running_details.txt").read_text()
    name = next(part.removeprefix("JobName=") for part in record.split() if part.startswith("JobName="))
    clean = _job_name_row("Slurm job 1", record, {"redis.password": "not-in-the-record-1234"})
    assert (clean.result, clean.detail) == (PASS, f"job name {name}")
    leaked = _job_name_row("Slurm job 1", record, {"s3.secret_key": name})
    assert leaked.result == FAIL
    assert name not in leaked.detail, "a row names the secret's field, never its value"
