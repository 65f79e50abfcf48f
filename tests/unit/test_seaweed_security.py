"""SeaweedFS's security configuration: a fresh authority, certificates and JWT keys at each start."""

from __future__ import annotations

import stat
from pathlib import Path

import tomllib
from cryptography import x509

from han_worker.control_plane.seaweed_security import (
    COMPONENTS,
    JWT_SECTIONS,
    renew_jwt_keys,
    write_security_config,
)


def read_toml(directory: Path) -> dict[str, object]:
    return tomllib.loads((directory / "security.toml").read_text())


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_port_gets_mutual_tls_and_every_file_is_private(tmp_path: Path) -> None:
    directory = write_security_config(tmp_path / "security", ["127.0.0.1", "127.0.0.10"])
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in directory.iterdir())
    config = read_toml(directory)
    grpc, https = config["grpc"], config["https"]
    assert isinstance(grpc, dict)
    assert isinstance(https, dict)
    assert grpc["ca"] == str(directory / "ca.crt")
    assert {name for name in grpc if name != "ca"} == set(COMPONENTS)
    for server in ("master", "volume", "filer"):  # with ca set, weed requires a client certificate
        assert https[server]["ca"] == str(directory / "ca.crt")
    assert https["client"]["enabled"] is True
    assert not (directory / "ca.key").exists(), "the authority's key is never written"


def test_each_certificate_is_the_authoritys_and_names_the_addresses(tmp_path: Path) -> None:
    directory = write_security_config(tmp_path / "security", ["127.0.0.1", "127.0.0.10"])
    authority = certificate(directory / "ca.crt")
    for component in COMPONENTS:
        leaf = certificate(directory / f"{component}.crt")
        leaf.verify_directly_issued_by(authority)
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {str(address) for address in names.get_values_for_type(x509.IPAddress)} == {
            "127.0.0.1",
            "127.0.0.10",
        }


def test_a_new_start_makes_everything_anew(tmp_path: Path) -> None:
    first = read_toml(write_security_config(tmp_path / "security", ["127.0.0.1"]))
    authority = (tmp_path / "security" / "ca.crt").read_bytes()
    (tmp_path / "security" / "left-over").write_text("from the last start")
    second = read_toml(write_security_config(tmp_path / "security", ["127.0.0.1"]))
    assert (tmp_path / "security" / "ca.crt").read_bytes() != authority
    assert not (tmp_path / "security" / "left-over").exists()
    for section in JWT_SECTIONS:
        key = section.split(".")
        old, new = first, second
        for part in key:
            old, new = old[part], new[part]  # type: ignore[index]
        assert old["key"] != new["key"]  # type: ignore[index]
        assert len(new["key"]) >= 40  # type: ignore[index]


def test_a_rotation_renews_the_jwt_keys_and_keeps_the_certificates(tmp_path: Path) -> None:
    assert renew_jwt_keys(tmp_path / "none") is False
    directory = write_security_config(tmp_path / "security", ["127.0.0.1"])
    before, authority = read_toml(directory), (directory / "ca.crt").read_bytes()
    assert renew_jwt_keys(directory) is True
    after = read_toml(directory)
    assert (directory / "ca.crt").read_bytes() == authority
    assert after["grpc"] == before["grpc"]
    assert after["jwt"]["signing"]["key"] != before["jwt"]["signing"]["key"]  # type: ignore[index]
    assert stat.S_IMODE((directory / "security.toml").stat().st_mode) == 0o600
