"""The control plane's certificate authority: made once with the secrets, kept across loads and rotations,
shipped (certificate only) with the workers' credentials; and what clients do with it."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from han_worker.control_plane.admin_secrets import (
    SecretsError,
    ensure_secrets,
    generate_secrets,
    load_secrets,
    parse_secrets,
    serving_generation,
    trusted_authorities,
)
from han_worker.control_plane.pki import Authority
from han_worker.control_plane.services import PostgresService, hba_lines, node_names
from han_worker.private_files import write_private_json
from han_worker.selection import tls
from han_worker.selection.credentials import CredentialsError, parse_credentials
from han_worker.selection.endpoints import EndpointsError, mac_endpoints
from han_worker.selection.resolver import check_same_authority
from han_worker.selection.tls import TLSConfigError, ca_file, ca_fingerprint, postgres_tls

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    return directory


def test_new_secrets_hold_a_certificate_authority_that_survives_a_reload(state_dir: Path) -> None:
    secrets, created = ensure_secrets(state_dir / "secrets.json")
    assert created
    again, created_again = ensure_secrets(state_dir / "secrets.json")
    assert not created_again
    assert (again.tls_ca_cert, again.tls_ca_key) == (secrets.tls_ca_cert, secrets.tls_ca_key)
    assert stat.S_IMODE((state_dir / "secrets.json").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(secrets.tls_ca_cert.encode())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_secrets_file_from_before_tls_gets_an_authority_once(state_dir: Path) -> None:
    path = state_dir / "secrets.json"
    document = generate_secrets().to_dict()
    del document["tls"]
    write_private_json(path, document)
    assert not load_secrets(path).tls_ca_cert
    upgraded, created = ensure_secrets(path)
    assert not created
    assert upgraded.tls_ca_cert
    assert json.loads(path.read_text())["tls"]["ca_cert"] == upgraded.tls_ca_cert
    assert ensure_secrets(path)[0].tls_ca_key == upgraded.tls_ca_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_rotation_makes_a_new_authority_and_the_workers_trust_both_until_it_retires() -> None:
    secrets = generate_secrets()
    rotated = secrets.rotated()
    assert rotated.tls_ca_cert != secrets.tls_ca_cert
    assert rotated.tls_ca_key != secrets.tls_ca_key
    rotated.authority()  # its key belongs to its certificate
    mid_rotation = rotated.worker_credentials(also_trusted=secrets.tls_ca_cert).to_dict()
    assert tls.ca_fingerprints(mid_rotation["tls"]["ca_cert"]) == [  # type: ignore[index]
        ca_fingerprint(rotated.tls_ca_cert),
        ca_fingerprint(secrets.tls_ca_cert),
    ]
    assert parse_credentials(mid_rotation, "c.json").tls_ca_cert == mid_rotation["tls"]["ca_cert"]  # type: ignore[index]
    document = rotated.worker_credentials().to_dict()
    assert document["tls"] == {"ca_cert": rotated.tls_ca_cert}
    for key in (secrets.tls_ca_key, rotated.tls_ca_key):
        assert key not in json.dumps(mid_rotation)
        assert key not in repr(rotated)
    assert "ca_key" not in repr(secrets)


def test_the_servers_show_the_previous_authority_until_the_rotation_retires() -> None:
    secrets = generate_secrets()
    rotated = secrets.rotated()
    assert serving_generation(rotated, secrets) is secrets
    assert serving_generation(rotated, None) is rotated
    assert tls.ca_fingerprints(trusted_authorities(rotated, secrets)) == [
        ca_fingerprint(rotated.tls_ca_cert),
        ca_fingerprint(secrets.tls_ca_cert),
    ]
    assert trusted_authorities(secrets, secrets) == secrets.tls_ca_cert  # one copy of each


def test_a_key_that_does_not_belong_to_the_certificate_is_refused() -> None:
    document = generate_secrets().to_dict()
    document["tls"]["ca_key"] = Authority("another").key_pem.decode()  # type: ignore[index]
    with pytest.raises(
        SecretsError, match=r"field 'tls.ca_cert' and 'ca_key' are not a certificate authority"
    ):
        parse_secrets(document, "secrets.json")


def test_the_server_certificate_names_the_bound_address_and_chains_to_the_authority() -> None:
    authority = generate_secrets().authority()
    issued = authority.issue("postgres", node_names(), ["127.0.0.10"])
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.10"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    cert.verify_directly_issued_by(authority.cert)


def test_pg_hba_serves_tcp_with_tls_only() -> None:
    lines = [
        line for line in hba_lines(("127.0.0.0/8", "10.1.2.3/16")).splitlines() if not line.startswith("#")
    ]
    assert lines == [
        "local all all scram-sha-256",
        "hostssl all all 127.0.0.0/8 scram-sha-256",
        "hostssl all all 10.1.0.0/16 scram-sha-256",
    ]


def test_credentials_without_an_authority_are_refused_naming_the_file_and_the_fix() -> None:
    document = generate_secrets().worker_credentials().to_dict()
    del document["tls"]
    with pytest.raises(CredentialsError) as refused:
        parse_credentials(document, "/home/w/.han/mac-credentials.json")
    message = str(refused.value)
    assert message.startswith("/home/w/.han/mac-credentials.json: field 'tls' is missing")
    assert "copy the credentials.json" in message
    # Role control_plane's wait stops at once on these words (a restart is the only fix), so they must stay.
    [wait] = yaml.safe_load((REPOSITORY / "roles/control_plane/tasks/wait_published.yml").read_text())
    assert wait["vars"]["_control_plane_predates_tls"] in message


def test_credentials_with_something_else_than_one_or_two_certificates_are_refused() -> None:
    document = generate_secrets().worker_credentials().to_dict()
    document["tls"] = {"ca_cert": "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n"}
    with pytest.raises(CredentialsError, match=r"field 'tls.ca_cert' is not valid base64 PEM"):
        parse_credentials(document, "credentials.json")
    document["tls"] = {"ca_cert": "no certificate at all"}
    with pytest.raises(CredentialsError, match="holds 0 PEM certificates, expected 1 to 2"):
        parse_credentials(document, "credentials.json")
    document["tls"] = {"ca_cert": "".join(generate_secrets().tls_ca_cert for _each in range(3))}
    with pytest.raises(CredentialsError, match="holds 3 PEM certificates, expected 1 to 2"):
        parse_credentials(document, "credentials.json")


def test_a_bundle_gets_its_own_file_holding_both_authorities() -> None:
    first, second = generate_secrets().tls_ca_cert, generate_secrets().tls_ca_cert
    bundle = tls.authority_bundle(first, second)
    assert ca_file(bundle) not in {ca_file(first), ca_file(second)}
    assert ca_file(bundle).read_text() == bundle == first + second
    assert tls.pinned_context(bundle).cert_store_stats()["x509_ca"] == 2


def test_clients_verify_full_against_a_private_copy_of_the_authority() -> None:
    pem = generate_secrets().tls_ca_cert
    options = postgres_tls(pem, "credentials.json")
    assert options.startswith("sslmode=verify-full sslrootcert='")
    assert options.endswith("' gssencmode=disable")
    path = ca_file(pem)
    assert path.read_text() == pem
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ca_file(pem) == path  # written once per process


def test_a_shared_directory_someone_else_could_enter_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(tls, "_directory", [])
    monkeypatch.setattr(tls, "_files", {})
    squatted = tmp_path / f"han-ca-{os.getuid()}"
    squatted.mkdir(mode=0o755)
    squatted.chmod(0o755)
    path = ca_file(generate_secrets().tls_ca_cert)
    assert path.parent != squatted
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_the_users_own_directory_is_reused_across_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pem = generate_secrets().tls_ca_cert
    for _process in range(2):
        monkeypatch.setattr(tls, "_directory", [])
        monkeypatch.setattr(tls, "_files", {})
        path = ca_file(pem)
        assert path == tmp_path / f"han-ca-{os.getuid()}" / f"{ca_fingerprint(pem)}.pem"
        assert path.read_text() == pem
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_no_authority_means_no_connection_never_plain_text() -> None:
    with pytest.raises(TLSConfigError, match=r"credentials.json: no certificate authority"):
        postgres_tls("", "credentials.json")


def test_endpoints_and_credentials_of_different_control_planes_are_refused() -> None:
    ours, theirs = generate_secrets(), generate_secrets()
    endpoints = mac_endpoints("127.0.0.20")
    check_same_authority(
        endpoints, theirs.worker_credentials(), "c.json"
    )  # no fingerprint: nothing to compare
    published = type(endpoints)(**{**endpoints.__dict__, "tls_ca_sha256": ca_fingerprint(ours.tls_ca_cert)})
    check_same_authority(published, ours.worker_credentials(), "c.json")
    with pytest.raises(EndpointsError, match=r"c.json: its certificate authority .* is not the one"):
        check_same_authority(published, theirs.worker_credentials(), "c.json")
    # Mid-rotation the workers hold the new authority and ours, which the endpoints file still names.
    check_same_authority(published, theirs.worker_credentials(also_trusted=ours.tls_ca_cert), "c.json")


def test_postgres_is_configured_for_tls_with_a_fresh_certificate_at_each_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "PG_VERSION").write_text("18\n")  # an existing cluster: prepare() does not run initdb
    secrets = generate_secrets()
    service = PostgresService(
        "postgres", "127.0.0.10", 5432, tmp_path / "postgres.log", data_dir=data, socket_dir=tmp_path,
        secrets=secrets, client_networks=("127.0.0.0/8",),
    )  # fmt: skip
    service.prepare()
    settings = dict(arg.split("=", 1) for arg in service.argv if "=" in arg and not arg.startswith("/"))
    assert settings["ssl"] == "on"
    assert settings["ssl_min_protocol_version"] == "TLSv1.2"
    assert settings["ssl_cert_file"] == str(data / "server.crt")
    assert stat.S_IMODE((data / "server.key").stat().st_mode) == 0o600
    first = (data / "server.crt").read_bytes()
    x509.load_pem_x509_certificate(first).verify_directly_issued_by(secrets.authority().cert)
    assert "hostssl all all 127.0.0.0/8 scram-sha-256" in (data / "pg_hba.conf").read_text()
    service.prepare()
    assert (data / "server.crt").read_bytes() != first
