"""TLS to a control plane's services: clients verify the server against that control plane's own authority.

Each control plane has its own certificate authority (made by han_worker.control_plane.pki, kept in
secrets.json); its certificate (public) travels to the workers inside their credentials file, by the same
trusted path as their passwords.
Clients never fall back to plain text and never verify against the system's trust store: a server must show
a certificate that this authority issued for the address the client dialled.

libpq reads its root certificate from a file only, so the certificate is written to a 0600 file named after
its fingerprint in a 0700 directory of the user's own (``han-ca-<uid>`` in the temporary directory; one
that another user made, or that others may enter, is not used). The file is public data; the directory being
ours keeps anyone else from swapping it. Standard library only, like the rest of selection/.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import hashlib
import logging
import os
import re
import shutil
import ssl
import stat
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
    ders = certificate_ders(pem, most=1)
    return ders[0]


# A client trusts one authority, or two while its control plane rotates its certificates (the one that issued
# the servers' certificates until then, and its successor): han_worker.control_plane.rotation.
MAX_AUTHORITIES = 2


def certificate_ders(pem: str, most: int = MAX_AUTHORITIES) -> list[bytes]:
    """The DER bytes of each PEM certificate in ``pem``; ValueError unless there are 1 to ``most``."""
    blocks = _PEM_CERTIFICATE.findall(pem)
    if not 1 <= len(blocks) <= most:
        expected = "exactly one" if most == 1 else f"1 to {most}"
        raise ValueError(f"holds {len(blocks)} PEM certificates, expected {expected}")
    try:
        return [base64.b64decode("".join(block.split()), validate=True) for block in blocks]
    except binascii.Error as exc:
        raise ValueError(f"is not valid base64 PEM: {exc}") from exc


def ca_fingerprint(pem: str) -> str:
    """The SHA-256 fingerprint of the authority's certificate (lowercase hex of its DER form)."""
    return hashlib.sha256(certificate_der(pem)).hexdigest()


def ca_fingerprints(pem: str) -> list[str]:
    """The SHA-256 fingerprint of each authority in ``pem`` (one, or two during a rotation)."""
    return [hashlib.sha256(der).hexdigest() for der in certificate_ders(pem)]


def authority_bundle(*pems: str) -> str:
    """One PEM text holding each distinct certificate of ``pems`` once, in order (empty ones skipped)."""
    seen: list[str] = []
    for pem in pems:
        for block in _PEM_CERTIFICATE.finditer(pem):
            text = block.group(0)
            if text not in seen:
                seen.append(text)
    return "".join(f"{text}\n" for text in seen)


def ca_file(pem: str) -> Path:
    """A file holding ``pem`` for libpq's ``sslrootcert``, in a directory only this user can enter; the same
    path for the same certificate. Written once per process, atomically (other processes may read it)."""
    # Named after the whole bundle: during a rotation a client trusts two authorities.
    fingerprint = hashlib.sha256(b"".join(certificate_ders(pem))).hexdigest()
    with _lock:
        path = _files.get(fingerprint)
        if path is not None and path.exists():
            return path
        if not _directory:
            _directory.append(_private_directory())
        path = _directory[0] / f"{fingerprint}.pem"
        fd, staging = tempfile.mkstemp(dir=_directory[0], prefix=".ca-")  # 0600
        with os.fdopen(fd, "w") as handle:
            handle.write(pem)
        os.replace(staging, path)
        _files[fingerprint] = path
        return path


def _private_directory() -> Path:
    """``han-ca-<uid>`` in the temporary directory when it is ours, a directory and 0700; else (another user
    made it first, or no uids: Windows) a fresh private directory, removed at exit."""
    getuid = getattr(os, "getuid", None)
    if getuid is not None:
        directory = Path(tempfile.gettempdir()) / f"han-ca-{getuid()}"
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
        info = os.lstat(directory)
        if stat.S_ISDIR(info.st_mode) and info.st_uid == getuid() and not stat.S_IMODE(info.st_mode) & 0o077:
            return directory
        log.warning("%s is not a private directory of ours; using a fresh one", directory)
    fresh = Path(tempfile.mkdtemp(prefix="han-ca-"))  # 0700, ours
    atexit.register(shutil.rmtree, fresh, ignore_errors=True)
    return fresh


def postgres_tls(ca_pem: str, origin: str) -> str:
    """libpq's options (a conninfo string) for a connection to a control plane whose authority is ``ca_pem``.

    ``verify-full``: the server's certificate must be issued by this authority and name the host dialled.
    ``gssencmode=disable``: where a Kerberos ticket exists (common on clusters) libpq would try GSS encryption
    first, which our servers do not offer. ``origin`` names where the authority came from, for the message
    when it is missing."""
    require_authority(ca_pem, origin, "PostgreSQL")
    return f"sslmode=verify-full sslrootcert={_quoted(str(ca_file(ca_pem)))} gssencmode=disable"


def _quoted(value: str) -> str:
    """A conninfo value in single quotes, with backslashes and quotes escaped (libpq's syntax)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# -- Redis (Valkey behind stunnel) ---------------------------------------------------------------------------
# redis-py's own SSL connection starts from ssl.create_default_context(): it trusts the system's store as well
# as the CA it is given (a server signed by any public CA would pass) and loads that store at every connection
# (~25 ms with OpenSSL 3). Its pinned subclass (han_worker.selection.redis_tls) uses this context instead.


def require_authority(ca_pem: str, origin: str, service: str) -> str:
    """``ca_pem`` when set; else a TLSConfigError that says what to do (``service`` names who needs it)."""
    if not ca_pem:
        raise TLSConfigError(
            f"{origin}: no certificate authority (field 'tls.ca_cert'): {service} is reached over TLS only "
            "and the server cannot be verified without it; copy the credentials.json that the control "
            "plane publishes now (a control plane started by this version writes it)"
        )
    return ca_pem


def pinned_context(ca_pem: str) -> ssl.SSLContext:
    """A client context that trusts ``ca_pem`` and nothing else (no system store), TLS 1.2 or later, the
    server's certificate verified and its name (or IP address) checked against the host dialled. Built once
    per authority and shared by every client of it (Redis's and S3's)."""
    with _lock:
        context = _contexts.get(ca_pem)
        if context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_verify_locations(cadata=ca_pem)
            _contexts[ca_pem] = context
        return context


_contexts: dict[str, ssl.SSLContext] = {}


# -- S3 ------------------------------------------------------------------------------------------------
# The S3 gateway speaks HTTPS only, with a certificate of the same authority, verified with the same context.


def s3_ssl_context(ca_pem: str, origin: str) -> ssl.SSLContext:
    """:func:`pinned_context` for the S3 client (urllib3 under minio), after checking that ``ca_pem`` (from
    ``origin``) is there and is a certificate: TLSConfigError names the file otherwise."""
    require_authority(ca_pem, origin, "S3")
    try:
        certificate_ders(ca_pem)
    except ValueError as exc:
        raise TLSConfigError(f"{origin}: field 'tls.ca_cert' {exc}") from exc
    return pinned_context(ca_pem)
