"""S3 over HTTPS only: the gateway's flags and certificate, and clients that trust the control plane's
authority and nothing else (the handshakes against a real gateway are in the integration tests)."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from han_worker.control_plane.admin_secrets import generate_secrets
from han_worker.control_plane.services import SeaweedS3Service, s3_tls_flags
from han_worker.selection.checks import s3_check, s3_client
from han_worker.selection.credentials import S3Credentials
from han_worker.selection.endpoints import ServiceEndpoint
from han_worker.selection.probes import CheckFailed
from han_worker.selection.tls import TLSConfigError, s3_ssl_context

ADDRESS = "127.0.0.10"
KEYS = S3Credentials("han-worker-key", "a-secret-key-of-the-worker", "han-artifacts")


def seaweed(tmp_path: Path) -> SeaweedS3Service:
    service = SeaweedS3Service(
        "s3", ADDRESS, 9000, tmp_path / "s3.log", server=Path("/opt/weed"), data_dir=tmp_path / "s3",
        secrets=generate_secrets(), internal_ports=(1, 2, 3, 4, 5, 6, 7),
    )  # fmt: skip
    service.prepare()
    return service


def flags(service: SeaweedS3Service) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in service.argv if arg.startswith("-s3") and "=" in arg)


def test_the_gateway_serves_https_on_its_published_port_and_opens_no_plain_http_port(tmp_path: Path) -> None:
    service = seaweed(tmp_path)
    options = flags(service)
    assert options["-s3.port"] == "9000"
    assert options["-s3.cert.file"] == str(tmp_path / "s3" / "server.crt")
    assert options["-s3.key.file"] == str(tmp_path / "s3" / "server.key")
    # Given, -s3.port.https would add an HTTPS port and leave -s3.port in plain HTTP (weed 4.48).
    assert not [arg for arg in service.argv if arg.startswith("-s3.port.https")]
    assert s3_tls_flags(Path("c"), Path("k")) == ["-s3.cert.file=c", "-s3.key.file=k"]


def test_the_gateways_certificate_names_the_bound_address_and_is_new_at_each_start(tmp_path: Path) -> None:
    service = seaweed(tmp_path)
    assert service.secrets is not None
    cert_file, key_file = tmp_path / "s3" / "server.crt", tmp_path / "s3" / "server.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_file.stat().st_mode) == 0o600
    first = x509.load_pem_x509_certificate(cert_file.read_bytes())
    first.verify_directly_issued_by(service.secrets.authority().cert)
    names = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == [ADDRESS]
    service.prepare()  # a restart: a new certificate from the authority the secrets file holds now
    assert x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number != first.serial_number


def test_the_context_trusts_the_control_planes_authority_only_and_checks_the_host() -> None:
    pem = generate_secrets().tls_ca_cert
    context = s3_ssl_context(pem, "credentials.json")
    trusted = context.get_ca_certs(binary_form=True)
    assert trusted == [ssl.PEM_cert_to_DER_cert(pem)], "the system's store must not be loaded"
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert s3_ssl_context(pem, "again") is context  # one per authority
    assert s3_ssl_context(generate_secrets().tls_ca_cert, "a new one") is not context


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        (
            "",
            r"credentials.json: no certificate authority \(field 'tls.ca_cert'\): S3 is reached over TLS only",
        ),
        ("no certificate at all", r"credentials.json: field 'tls.ca_cert' holds 0 PEM certificates"),
    ],
)
def test_no_usable_authority_means_no_client_never_plain_http(pem: str, message: str) -> None:
    with pytest.raises(TLSConfigError, match=message):
        s3_client(ServiceEndpoint(ADDRESS, 9000), KEYS, ca_cert=pem, origin="credentials.json", timeout=1)


def test_the_client_speaks_https_with_the_authoritys_context_and_verification_required() -> None:
    pem = generate_secrets().tls_ca_cert
    client = s3_client(ServiceEndpoint(ADDRESS, 9000), KEYS, ca_cert=pem, origin="c.json", timeout=1)
    assert client._base_url.is_https  # minio keeps no public view of it
    pool_options = client._http.connection_pool_kw  # type: ignore[attr-defined]
    assert pool_options["cert_reqs"] == "CERT_REQUIRED"
    assert pool_options["ssl_context"] is s3_ssl_context(pem, "c.json")


def test_the_check_without_an_authority_fails_naming_the_service_and_the_fix() -> None:
    check = s3_check(KEYS.access_key, KEYS.secret_key, KEYS.bucket, "", "/home/w/.han/mac-credentials.json")
    with pytest.raises(CheckFailed, match=r"^s3 127.0.0.10:9000: /home/w/.han/mac-credentials.json: no cert"):
        check(ServiceEndpoint(ADDRESS, 9000), 1)
