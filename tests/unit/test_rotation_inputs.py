"""The pieces of credential rotation that need no running service: the next generation of secrets, the
generation field in both files, SeaweedFS's identities for two generations, and the worker noticing a
rotated credentials file. Rotation against live services is tests/integration/test_rotation.py."""

from __future__ import annotations

import dataclasses
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from han_worker.control_plane import rotation
from han_worker.control_plane.admin_secrets import SecretsError, generate_secrets, parse_secrets
from han_worker.control_plane.layout import Layout
from han_worker.control_plane.services import TLS_REFRESH_ENV, identities_file, s3_identities
from han_worker.private_files import write_private_json
from han_worker.selection.credentials import CredentialsError, parse_credentials
from han_worker.selection.endpoints import ServiceEndpoint
from han_worker.store.link import _s3_client
from tests.unit.test_worker_monitor import make_worker

SECRET_FIELDS = ("postgres_superuser_password", "postgres_password", "redis_admin_password", "redis_password",
                 "s3_root_access_key", "s3_root_secret_key", "s3_access_key", "s3_secret_key")  # fmt: skip
KEPT_FIELDS = ("postgres_superuser", "postgres_user", "postgres_database", "redis_admin_user", "redis_user",
               "s3_bucket")  # fmt: skip


def test_the_next_generation_changes_every_secret_and_keeps_every_name() -> None:
    first = generate_secrets()
    second = first.rotated()
    assert (first.generation, second.generation) == (1, 2)
    for name in SECRET_FIELDS:
        assert getattr(second, name) != getattr(first, name), name
    for name in KEPT_FIELDS:
        assert getattr(second, name) == getattr(first, name), name
    assert parse_secrets(second.to_dict(), "x") == second  # valid: lengths, names
    assert second.worker_credentials().generation == 2


def test_files_without_a_generation_are_generation_1() -> None:
    document = generate_secrets().to_dict()
    del document["generation"]
    assert parse_secrets(document, "x").generation == 1
    credentials = generate_secrets().worker_credentials().to_dict()
    del credentials["generation"]
    assert parse_credentials(credentials, "x").generation == 1


@pytest.mark.parametrize(("value", "problem"), [(0, "is less than 1"), ("2", "must be an integer, not str")])
def test_a_bad_generation_is_refused_naming_the_field(value: object, problem: str) -> None:
    secrets = dict(generate_secrets().to_dict(), generation=value)
    with pytest.raises(SecretsError, match=f"/s/secrets.json: field 'generation'.*{problem}"):
        parse_secrets(secrets, "/s/secrets.json")
    credentials = dict(generate_secrets().worker_credentials().to_dict(), generation=value)
    with pytest.raises(CredentialsError, match=f"/s/credentials.json: field 'generation'.*{problem}"):
        parse_credentials(credentials, "/s/credentials.json")


def test_seaweed_identities_hold_both_generations_during_a_rotation() -> None:
    old = generate_secrets()
    new = old.rotated()
    identities: Any = s3_identities([new, old])["identities"]
    root, worker = identities
    assert [c["accessKey"] for c in root["credentials"]] == [new.s3_root_access_key, old.s3_root_access_key]
    assert [c["accessKey"] for c in worker["credentials"]] == [new.s3_access_key, old.s3_access_key]
    assert worker["actions"] == ["Read:han-artifacts", "Write:han-artifacts", "List:han-artifacts",
                                 "Tagging:han-artifacts"]  # fmt: skip
    assert len(s3_identities([new])["identities"][0]["credentials"]) == 1  # type: ignore[index]


def test_the_worker_reconnects_when_its_credentials_file_was_rotated(tmp_path: Path) -> None:
    credentials_file = tmp_path / "cp" / "credentials.json"
    worker = make_worker(tmp_path, pegasus={"endpoints_file": str(tmp_path / "cp" / "endpoints.json"),
                                            "credentials_file": str(credentials_file)})  # fmt: skip
    secrets = generate_secrets()
    write_private_json(credentials_file, secrets.worker_credentials().to_dict())
    link: Any = SimpleNamespace(
        source="pegasus", choice=SimpleNamespace(credentials=secrets.worker_credentials())
    )
    assert not worker._credentials_rotated(link)  # the same credentials: nothing to do

    write_private_json(credentials_file, secrets.rotated().worker_credentials().to_dict())
    assert worker._credentials_rotated(link)
    assert worker._switch.is_set()
    assert "pegasus's credentials were rotated (generation 1 -> 2)" in worker._switch_reason


def test_a_new_authority_in_the_credentials_file_reaches_the_s3_client_of_the_next_link(
    tmp_path: Path,
) -> None:
    credentials_file = tmp_path / "cp" / "credentials.json"
    worker = make_worker(tmp_path, pegasus={"endpoints_file": str(tmp_path / "cp" / "endpoints.json"),
                                            "credentials_file": str(credentials_file)})  # fmt: skip
    secrets = generate_secrets()
    link: Any = SimpleNamespace(
        source="pegasus", choice=SimpleNamespace(credentials=secrets.worker_credentials())
    )
    renewed = secrets.with_authority()  # same generation, same passwords, another authority
    write_private_json(credentials_file, renewed.worker_credentials().to_dict())
    assert worker._credentials_rotated(link)  # reconnect, as for PostgreSQL
    on_disk = worker.selector.credentials_on_disk("pegasus")
    assert on_disk is not None
    client: Any = _s3_client(ServiceEndpoint("127.0.0.10", 9000), on_disk, 2.0, "credentials.json")
    trusted = client._http.connection_pool_kw["ssl_context"].get_ca_certs(binary_form=True)
    assert trusted == [ssl.PEM_cert_to_DER_cert(renewed.tls_ca_cert)]


def test_a_half_written_credentials_file_is_not_a_rotation(tmp_path: Path) -> None:
    credentials_file = tmp_path / "cp" / "credentials.json"
    worker = make_worker(tmp_path, pegasus={"endpoints_file": str(tmp_path / "cp" / "endpoints.json"),
                                            "credentials_file": str(credentials_file)})  # fmt: skip
    secrets = generate_secrets()
    write_private_json(credentials_file, {"schema": 1})
    link: Any = SimpleNamespace(
        source="pegasus", choice=SimpleNamespace(credentials=secrets.worker_credentials())
    )
    assert not worker._credentials_rotated(link)
    assert not worker._switch.is_set()


def test_a_new_generation_alone_counts_as_new_credentials() -> None:
    # The worker compares whole Credentials: a rotation that kept a password would still be noticed.
    credentials = generate_secrets().worker_credentials()
    assert dataclasses.replace(credentials, generation=2) != credentials


@pytest.mark.parametrize("reloads", [True, False])
def test_retire_refuses_early_when_the_s3_gateway_cannot_reload_its_certificate(
    tmp_path: Path, reloads: bool
) -> None:
    """A SeaweedFS started by a version before certificate rotation (no refresh interval in its environment)
    would show the old authority's certificate for hours: the retire phase says to restart it first."""
    layout = Layout(tmp_path)
    identities = identities_file(layout.data_dir("s3"))
    environment = {"PATH": os.environ["PATH"], **({TLS_REFRESH_ENV: "2s"} if reloads else {})}
    argument = f"-s3.config={identities}"
    stand_in = subprocess.Popen(  # a process of ours started with weed's -s3.config argument, like weed
        [sys.executable, "-c", "import time; time.sleep(60)", argument], env=environment
    )
    try:
        # Until it has exec'd, the child's /proc entry still shows pytest's arguments.
        cmdline = Path(f"/proc/{stand_in.pid}/cmdline")
        deadline = time.monotonic() + 10
        while argument.encode() not in cmdline.read_bytes().split(b"\0") and time.monotonic() < deadline:
            time.sleep(0.01)
        if reloads:
            rotation._check_certificates_reloadable(layout)
        else:
            with pytest.raises(
                rotation.RotationError, match=rf"SeaweedFS \(pid {stand_in.pid}\) was started by"
            ):
                rotation._check_certificates_reloadable(layout)
    finally:
        stand_in.kill()
        stand_in.wait()
