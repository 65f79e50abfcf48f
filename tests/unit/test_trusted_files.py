"""han_worker.private_files, han_worker.fields and han_worker.selection.credentials, on real files with real modes and owners."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from han_worker.private_files import (
    TrustedFileError,
    UntrustedFileError,
    check_trusted,
    read_trusted_json,
    write_private_json,
)
from han_worker.selection.credentials import CredentialsError, load_credentials_file, parse_credentials
from tests.fake_windows import FAKE_CA_CERT

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


@pytest.fixture
def private_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "control-plane"
    directory.mkdir()
    directory.chmod(0o700)
    return directory


def make_file(directory: Path, mode: int, text: str = "{}", name: str = "endpoints.json") -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(mode)
    return path


def refusal(path: Path, *, secret: bool = False) -> str:
    with pytest.raises(UntrustedFileError) as caught:
        check_trusted(path, secret=secret)
    return str(caught.value)


def test_a_private_file_in_a_private_directory_is_trusted(private_dir: Path) -> None:
    path = make_file(private_dir, 0o600)
    assert check_trusted(path) == path
    assert check_trusted(str(path), secret=True) == path


def test_a_readable_but_not_writable_file_is_trusted_when_not_secret(private_dir: Path) -> None:
    assert check_trusted(make_file(private_dir, 0o644)).name == "endpoints.json"


def test_missing_file(private_dir: Path) -> None:
    assert refusal(private_dir / "nope.json") == f"{private_dir}/nope.json: does not exist"


def test_directory_is_not_a_regular_file(private_dir: Path) -> None:
    (private_dir / "sub").mkdir(mode=0o700)
    assert refusal(private_dir / "sub") == f"{private_dir}/sub: is not a regular file"


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_group_or_world_writable_file(private_dir: Path, mode: int) -> None:
    path = make_file(private_dir, mode)
    assert refusal(path) == (
        f"{path}: is writable by group or others (mode {mode:04o}); run chmod go-w {path}"
    )


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_group_or_world_writable_directory(private_dir: Path, mode: int) -> None:
    path = make_file(private_dir, 0o600)
    private_dir.chmod(mode)
    assert refusal(path) == (
        f"{path}: directory {private_dir} is writable by group or others (mode {mode:04o}); "
        f"run chmod go-w {private_dir}"
    )


def test_symlink_into_an_unsafe_directory_is_refused(tmp_path: Path, private_dir: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    target = make_file(shared, 0o600)
    link = private_dir / "endpoints.json"
    link.symlink_to(target)
    assert refusal(link) == (
        f"{link}: directory {shared} is writable by group or others (mode 0777); run chmod go-w {shared}"
    )


@needs_root
def test_file_owned_by_another_user(private_dir: Path) -> None:
    path = make_file(private_dir, 0o600)
    os.chown(path, NOBODY, NOBODY)
    assert refusal(path) == f"{path}: is owned by uid {NOBODY}, not by us (uid {os.getuid()})"


@needs_root
def test_directory_owned_by_another_user(private_dir: Path) -> None:
    path = make_file(private_dir, 0o600)
    os.chown(private_dir, NOBODY, NOBODY)
    assert refusal(path) == f"{path}: directory {private_dir} is owned by uid {NOBODY}, not by us or root"


def test_secret_file_readable_by_others_is_refused(private_dir: Path) -> None:
    path = make_file(private_dir, 0o644, name="credentials.json")
    assert refusal(path, secret=True) == (
        f"{path}: holds secrets but is accessible to group or others (mode 0644); run chmod 600 {path}"
    )
    path.chmod(0o640)
    assert "(mode 0640)" in refusal(path, secret=True)


# -- reading and writing JSON --------------------------------------------------------------------


def test_read_trusted_json(private_dir: Path) -> None:
    path = make_file(private_dir, 0o600, '{"schema": 1, "node": "c0042"}')
    assert read_trusted_json(path) == {"schema": 1, "node": "c0042"}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"[1, 2]", "must hold a JSON object, not array"),
        (b'"text"', "must hold a JSON object, not str"),
        (
            b"{nope",
            "not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        (b'{"node": "\xff"}', "not valid UTF-8: invalid start byte at byte 10"),
    ],
)
def test_read_trusted_json_refuses_bad_content(private_dir: Path, content: bytes, problem: str) -> None:
    path = private_dir / "endpoints.json"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(TrustedFileError) as caught:
        read_trusted_json(path)
    assert str(caught.value) == f"{path}: {problem}"


def test_read_trusted_json_checks_trust_first(private_dir: Path) -> None:
    path = make_file(private_dir, 0o666)
    with pytest.raises(UntrustedFileError, match="is writable by group or others"):
        read_trusted_json(path)


def test_write_private_json_creates_a_private_directory_and_file(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".han" / "control-plane" / "endpoints.json"
    old_umask = os.umask(0o002)  # a lax umask must not leak into the modes
    try:
        write_private_json(path, {"schema": 1})
    finally:
        os.umask(old_umask)
    assert json.loads(path.read_text()) == {"schema": 1}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for directory in (path.parent, path.parent.parent, path.parent.parent.parent):
        assert (directory.name, stat.S_IMODE(directory.stat().st_mode)) == (directory.name, 0o700)
    assert sorted(p.name for p in path.parent.iterdir()) == ["endpoints.json"]
    assert check_trusted(path, secret=True) == path


# -- credentials ---------------------------------------------------------------------------------

CREDENTIALS = {
    "schema": 1,
    "postgres": {"user": "han", "password": "pg-s3cret-1", "database": "han"},
    "redis": {"user": "worker", "password": "redis-s3cret-2"},
    "s3": {"access_key": "han-worker", "secret_key": "s3-s3cret-3", "bucket": "han-jobs"},
    "tls": {"ca_cert": FAKE_CA_CERT},
}
SECRETS = ("pg-s3cret-1", "redis-s3cret-2", "s3-s3cret-3")


def test_load_credentials_file(private_dir: Path) -> None:
    path = make_file(private_dir, 0o600, json.dumps(CREDENTIALS), name="credentials.json")
    credentials = load_credentials_file(path)
    assert (credentials.postgres.user, credentials.postgres.password, credentials.postgres.database) == (
        "han",
        "pg-s3cret-1",
        "han",
    )
    assert (credentials.redis.user, credentials.redis.password) == ("worker", "redis-s3cret-2")
    assert (credentials.s3.access_key, credentials.s3.secret_key, credentials.s3.bucket) == (
        "han-worker",
        "s3-s3cret-3",
        "han-jobs",
    )


def test_credentials_repr_shows_no_secret() -> None:
    credentials = parse_credentials(CREDENTIALS, "test")
    for text in (repr(credentials), str(credentials), repr(credentials.redis), f"{credentials.s3}"):
        assert not [secret for secret in SECRETS if secret in text], text
    assert "user='worker'" in repr(credentials)


def test_credentials_readable_by_others_are_refused(private_dir: Path) -> None:
    path = make_file(private_dir, 0o644, json.dumps(CREDENTIALS), name="credentials.json")
    with pytest.raises(CredentialsError) as caught:
        load_credentials_file(path)
    assert str(caught.value) == (
        f"{path}: holds secrets but is accessible to group or others (mode 0644); run chmod 600 {path}"
    )
    assert isinstance(caught.value.__cause__, UntrustedFileError)


@pytest.mark.parametrize(
    ("section", "key", "value", "problem"),
    [
        ("redis", "password", None, "field 'redis.password' must be a string, not null"),
        ("s3", "bucket", "", "field 's3.bucket' must not be empty"),
        (None, "schema", 2, "unknown schema 2 (this worker reads schema 1)"),
        (None, "postgres", "han:pw@db", "field 'postgres' must be an object, not str"),
    ],
)
def test_credentials_bad_fields(section: str | None, key: str, value: object, problem: str) -> None:
    data = json.loads(json.dumps(CREDENTIALS))
    (data[section] if section else data)[key] = value
    with pytest.raises(CredentialsError) as caught:
        parse_credentials(data, "/home/p/.han/control-plane/credentials.json")
    assert str(caught.value) == f"/home/p/.han/control-plane/credentials.json: {problem}"


def test_credentials_missing_field_does_not_echo_secrets() -> None:
    data = json.loads(json.dumps(CREDENTIALS))
    del data["postgres"]["database"]
    with pytest.raises(CredentialsError) as caught:
        parse_credentials(data, "creds")
    assert str(caught.value) == "creds: field 'postgres.database' is missing"
