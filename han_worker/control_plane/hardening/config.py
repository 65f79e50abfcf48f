"""No weak authentication configured: pg_hba.conf methods, Redis's protected mode, ACL users and listeners,
SeaweedFS's S3 identities, and the strength of the secrets themselves."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import redis

from han_worker.control_plane.admin_secrets import KNOWN_DEFAULTS, MIN_PASSWORD_LENGTH, MINIO_DEFAULT_USER
from han_worker.control_plane.hardening.files import mode_row
from han_worker.control_plane.hardening.report import FAIL, PASS, WARN, Row
from han_worker.control_plane.hardening.state import StateDocuments, field, read_json, trusted_authority
from han_worker.control_plane.layout import Layout
from han_worker.control_plane.services import identities_file
from han_worker.selection.redis_tls import tls_redis
from han_worker.selection.tls import TLSConfigError

WEAK_HBA_METHODS = frozenset({"trust", "md5", "password"})

# -- PostgreSQL ---------------------------------------------------------------------------------------


def weak_hba_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, method)`` of pg_hba.conf lines whose method is trust, md5 or password."""
    weak: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split("#", 1)[0].split()
        if not fields or fields[0].startswith("include"):
            continue
        # local DATABASE USER METHOD [OPTIONS]; host* DATABASE USER ADDRESS [MASK] METHOD [OPTIONS]
        candidates = fields[3:] if fields[0] == "local" else fields[4:]
        method = next(
            (item for item in candidates if "=" not in item and "/" not in item and "." not in item), ""
        )
        if method.lower() in WEAK_HBA_METHODS:
            weak.append((number, method.lower()))
    return weak


def plain_text_hba_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, connection type)`` of pg_hba.conf lines that admit TCP sessions without TLS
    (``host``, ``hostnossl``; ``hostssl`` and ``local`` are the only ones we write)."""
    plain: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split("#", 1)[0].split()
        if fields and fields[0].lower() in ("host", "hostnossl"):
            plain.append((number, fields[0].lower()))
    return plain


def pg_hba_rows(state: StateDocuments) -> list[Row]:
    hba = state.layout.data_dir("postgres") / "pg_hba.conf"
    try:
        text = hba.read_text()
    except OSError as exc:
        return [Row("pg-hba", str(hba), FAIL, f"cannot verify: {exc.strerror}")]
    weak = weak_hba_lines(text)
    if weak:
        return [Row("pg-hba", str(hba), FAIL, "; ".join(f"line {n}: {method}" for n, method in weak))]
    plain = plain_text_hba_lines(text)
    if plain:
        detail = "; ".join(f"line {n}: {kind} admits plain text (hostssl only)" for n, kind in plain)
        return [Row("pg-hba", str(hba), FAIL, detail)]
    return [Row("pg-hba", str(hba), PASS, "no trust, md5 or password lines; TCP with TLS only (hostssl)")]


# -- Redis --------------------------------------------------------------------------------------------


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def acl_rows(acl_lines: Sequence[str], target: str, weak_passwords: Iterable[str] = ()) -> list[Row]:
    """Judge ``ACL LIST``: ``default`` disabled, no user without a password or with a known default one."""
    weak = {_sha256(password): password for password in (*sorted(KNOWN_DEFAULTS), *weak_passwords)}
    users = [tokens for tokens in map(str.split, acl_lines) if len(tokens) >= 3 and tokens[0] == "user"]
    rows: list[Row] = []
    for tokens in users:
        rows.extend(_acl_user_rows(tokens, target, weak))
    if not any(tokens[1] == "default" for tokens in users):
        rows.append(Row("redis-config", f"{target} user default", FAIL, "not in ACL LIST"))
    return rows


def _acl_user_rows(tokens: Sequence[str], target: str, weak: Mapping[str, str]) -> list[Row]:
    """One ``ACL LIST`` line (``user NAME on|off [#hash|nopass|rule]...``) judged."""
    user, enabled = tokens[1], "on" in tokens[2:]
    rows: list[Row] = []
    if user == "default":
        detail = "enabled: clients need no user name" if enabled else "disabled (off)"
        rows.append(Row("redis-config", f"{target} user default", FAIL if enabled else PASS, detail))
    if not enabled:
        return rows  # a disabled user cannot log in, whatever its password
    if "nopass" in tokens:
        rows.append(Row("redis-config", f"{target} user {user}", FAIL, "enabled with nopass (any password)"))
    hashes = {token[1:] for token in tokens[2:] if token.startswith("#")}
    for password in sorted(weak[digest] for digest in hashes & weak.keys()):
        detail = f"password is the known default {password!r}"
        rows.append(Row("redis-config", f"{target} user {user}", FAIL, detail))
    return rows


def redis_config_rows(state: StateDocuments, timeout: float, uid: int | None = None) -> list[Row]:
    """``protected-mode``, the ACL users and where Valkey listens, read as the admin user from the secrets
    file over TLS (the server verified against the authority in the secrets file). ``uid``: who must own
    Valkey's socket directory (default: this process's user)."""
    if "redis" not in state.services:
        return []
    host, port = state.services["redis"]
    target = f"redis {host}:{port}"
    admin_user = field(state.secrets_doc, "redis", "admin_user")
    admin_password = field(state.secrets_doc, "redis", "admin_password")
    if not admin_user or not admin_password:
        return [
            Row("redis-config", target, WARN, "admin credentials not readable: CONFIG and ACL not checked")
        ]
    try:
        client = tls_redis(
            host, port, *trusted_authority(state),
            username=admin_user, password=admin_password, socket_timeout=timeout,
            socket_connect_timeout=timeout, decode_responses=True,
        )  # fmt: skip
    except TLSConfigError as exc:
        return [Row("redis-config", target, FAIL, f"cannot verify: {exc}")]
    try:
        settings = {str(key): str(value) for key, value in client.config_get("*").items()}
        acl = [str(line) for line in client.acl_list()]
    except redis.RedisError as exc:
        return [Row("redis-config", target, FAIL, f"cannot verify as the admin user: {type(exc).__name__}")]
    finally:
        client.close()
    return [
        *_redis_settings_rows(target, settings.get("protected-mode", "?"), acl),
        *redis_listen_rows(target, settings, state.layout, os.getuid() if uid is None else uid),
    ]


def redis_listen_rows(target: str, settings: Mapping[str, str], layout: Layout, uid: int) -> list[Row]:
    """Valkey listens on no TCP port (``port 0``; stunnel holds the published one) and on a unix socket
    that only its owner may use, in a private (0700) directory of the state directory."""
    port, socket_path = settings.get("port", "?"), settings.get("unixsocket", "")
    if port == "0":
        rows = [
            Row("redis-config", f"{target} port", PASS, "port 0: Valkey has no TCP listener (stunnel's TLS)")
        ]
    else:
        rows = [
            Row("redis-config", f"{target} port", FAIL, f"Valkey itself listens on TCP port {port} (plain)")
        ]
    if not socket_path:
        return [*rows, Row("redis-config", f"{target} unixsocket", FAIL, "no unix socket configured")]
    directory = Path(socket_path).parent
    inside = directory.resolve().is_relative_to(layout.root.resolve())
    rows.append(
        mode_row(directory, uid, private=True, directory=True)
        if inside
        else Row("mode", str(directory), FAIL, f"Valkey's socket directory is outside {layout.root}")
    )
    perm = settings.get("unixsocketperm", "?")
    perm_ok = bool(perm) and set(perm) <= set("01234567") and not int(perm, 8) & 0o077
    detail = f"unixsocketperm {perm}" + ("" if perm_ok else " gives group/others access (want 700)")
    rows.append(Row("redis-config", f"{target} unixsocket {socket_path}", PASS if perm_ok else FAIL, detail))
    return rows


def _redis_settings_rows(target: str, protected: str, acl: Sequence[str]) -> list[Row]:
    result = PASS if protected == "yes" else FAIL
    rows = [Row("redis-config", f"{target} protected-mode", result, f"protected-mode {protected}")]
    found = acl_rows(acl, target)
    rows.extend(found)
    if not any(row.result == FAIL and "user default" not in row.target for row in found):
        detail = f"{len(acl)} ACL users, none without a password or with a known default"
        rows.append(Row("redis-config", f"{target} users", PASS, detail))
    return rows


# -- S3 -----------------------------------------------------------------------------------------------


def s3_config_rows(state: StateDocuments) -> list[Row]:
    """SeaweedFS's identities: no MinIO default key, no known default secret, no anonymous identity."""
    identities = identities_file(state.layout.data_dir("s3"))
    document = read_json(identities)
    if document is None:
        return [Row("s3-config", str(identities), WARN, "not readable: S3 identities not checked")]
    listed = document.get("identities")
    weak = [
        problem
        for identity in (listed if isinstance(listed, list) else [])
        if isinstance(identity, Mapping)
        for problem in _weak_identity(identity)
    ]
    if weak:
        return [Row("s3-config", str(identities), FAIL, "; ".join(weak))]
    return [Row("s3-config", str(identities), PASS, "no default key, no anonymous identity")]


def _weak_identity(identity: Mapping[str, object]) -> list[str]:
    name = identity.get("name")
    credentials = identity.get("credentials")
    weak = []
    for credential in credentials if isinstance(credentials, list) else []:
        if not isinstance(credential, Mapping):
            continue
        if str(credential.get("accessKey", "")).lower() == MINIO_DEFAULT_USER:
            weak.append(f"identity {name}: access key {MINIO_DEFAULT_USER}")
        if str(credential.get("secretKey", "")).lower() in KNOWN_DEFAULTS:
            weak.append(f"identity {name}: secret key is a known default")
    if not credentials:
        weak.append(f"identity {name}: no credentials (anonymous)")
    return weak


# -- the secrets themselves ---------------------------------------------------------------------------


def weak_secret_fields(secrets: Mapping[str, str], min_length: int = MIN_PASSWORD_LENGTH) -> list[str]:
    """Names of secret fields that hold a known default or are shorter than ``min_length``."""
    weak = []
    for name, value in sorted(secrets.items()):
        if value.lower() in KNOWN_DEFAULTS:
            weak.append(f"{name} is a known default")
        elif len(value) < min_length:
            weak.append(f"{name} has {len(value)} characters (< {min_length})")
    return weak


def secret_strength_rows(state: StateDocuments) -> list[Row]:
    rows = []
    if state.secrets_doc is None:
        detail = "not readable: leaks of admin secrets not checked"
        rows.append(Row("secrets", str(state.layout.secrets_file), WARN, detail))
    weak = weak_secret_fields(state.secrets)
    detail = "; ".join(weak) if weak else f"{len(state.secrets)} secrets, none default or short"
    rows.append(Row("secrets", str(state.layout.root), FAIL if weak else PASS, detail))
    return rows
