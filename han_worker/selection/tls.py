"""TLS to a control plane's services: clients verify the server against that control plane's own authority.

Each control plane has its own certificate authority (han_worker.control_plane.tls_authority); its certificate
(public) travels to the workers inside their credentials file, by the same trusted path as their passwords.
Clients never fall back to plain text and never verify against the system's trust store: a server must show
a certificate that this authority issued for the address the client dialled.

libpq reads its root certificate from a file only, so the certificate is written once per process to a 0600
file in a private 0700 directory, removed at exit. Standard library only, like the rest of selection/.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END CERTIFICATE-----", re.ASCII
)
_lock = threading.Lock()
_files: dict[str, Path] = {}
_directory: list[Path] = []


class TLSConfigError(ValueError):
    """The certificate authority a client needs is missing or unusable; the message says what to do."""


def certificate_der(pem: str) -> bytes:
    """The DER bytes of the one PEM certificate in ``pem``; ValueError when there is not exactly one."""
    blocks = _PEM_CERTIFICATE.findall(pem)
    if len(blocks) != 1:
        raise ValueError(f"holds {len(blocks)} PEM certificates, expected exactly one")
    try:
        return base64.b64decode("".join(blocks[0].split()), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"is not valid base64 PEM: {exc}") from exc


def ca_fingerprint(pem: str) -> str:
    """The SHA-256 fingerprint of the authority's certificate (lowercase hex of its DER form)."""
    return hashlib.sha256(certificate_der(pem)).hexdigest()


def ca_file(pem: str) -> Path:
    """A file holding ``pem`` for libpq's ``sslrootcert``: private to this process, the same path for the
    same certificate, removed when the process exits."""
    fingerprint = ca_fingerprint(pem)
    with _lock:
        path = _files.get(fingerprint)
        if path is not None and path.exists():
            return path
        if not _directory:
            _directory.append(Path(tempfile.mkdtemp(prefix="han-ca-")))  # 0700, ours
            atexit.register(shutil.rmtree, _directory[0], ignore_errors=True)
        path = _directory[0] / f"{fingerprint}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(pem)
        _files[fingerprint] = path
        return path


def postgres_tls(ca_pem: str, origin: str) -> str:
    """libpq's options (a conninfo string) for a connection to a control plane whose authority is ``ca_pem``.

    ``verify-full``: the server's certificate must be issued by this authority and name the host dialled.
    ``gssencmode=disable``: where a Kerberos ticket exists (common on clusters) libpq would try GSS encryption
    first, which our servers do not offer. ``origin`` names where the authority came from, for the message
    when it is missing."""
    if not ca_pem:
        raise TLSConfigError(
            f"{origin}: no certificate authority (field 'tls.ca_cert'): PostgreSQL is reached over TLS "
            "only and the server cannot be verified without it; copy the credentials.json that the control "
            "plane publishes now (a control plane started by this version writes it)"
        )
    return f"sslmode=verify-full sslrootcert={_quoted(str(ca_file(ca_pem)))} gssencmode=disable"


def _quoted(value: str) -> str:
    """A conninfo value in single quotes, with backslashes and quotes escaped (libpq's syntax)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
