"""The control plane's own secrets: admin and worker credentials for each service (schema v1).

The supervisor reads them from ``secrets.json`` (0600, ours) and publishes only the worker's share
as the credentials file that workers read. Known defaults and short passwords are refused here, before
any service is configured with them.

The file also holds the control plane's certificate authority (``tls``: its certificate and private key),
made with the first secrets and kept across starts. Every client of the control plane verifies its servers
against it, so it never changes under them: a rotation makes a new one with the other secrets, the workers
are given both, and only once every worker holds both do the servers switch to the new one
(han_worker.control_plane.rotation). Its certificate (public) goes to the workers with their credentials;
its key never leaves this file.

And the password of the control plane's ``/metrics`` endpoint (``metrics``: its HTTP basic-auth user and
password, han_worker.control_plane.metrics_server), which :func:`ensure_secrets` adds to a file written before
it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from han_worker.control_plane.pki import STABLE_AUTHORITY_VALIDITY, Authority
from han_worker.fields import FieldReader
from han_worker.private_files import StrPath, TrustedFileError, read_trusted_json, write_private_json
from han_worker.selection.credentials import Credentials, PostgresCredentials, RedisCredentials, S3Credentials
from han_worker.selection.tls import authority_bundle

log = logging.getLogger(__name__)

SCHEMA = 1
MIN_PASSWORD_LENGTH = 16
MINIO_DEFAULT_USER = "minioadmin"  # MinIO's default user (and password), which the runbook names
ARTIFACTS_BUCKET = "han-artifacts"
METRICS_USER = "han_metrics"  # the basic-auth user a lab's Prometheus scrapes /metrics as
KNOWN_DEFAULTS = frozenset({"minioadmin", "postgres", "password", "admin", "redis", "changeme", "secret"})
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


class SecretsError(ValueError):
    """The secrets file cannot be used; the message names the file, the field and the problem."""


@dataclass(frozen=True)
class ControlPlaneSecrets:
    postgres_superuser: str
    postgres_superuser_password: str = field(repr=False)
    postgres_user: str
    postgres_password: str = field(repr=False)
    postgres_database: str
    redis_admin_user: str
    redis_admin_password: str = field(repr=False)
    redis_user: str
    redis_password: str = field(repr=False)
    s3_root_access_key: str
    s3_root_secret_key: str = field(repr=False)
    s3_access_key: str
    s3_secret_key: str = field(repr=False)
    s3_bucket: str
    generation: int = 1  # 1 when first generated, one more at each rotation
    # The control plane's certificate authority, PEM; empty in a file written before TLS, until
    # ensure_secrets adds one (with_authority).
    tls_ca_cert: str = ""
    tls_ca_key: str = field(default="", repr=False)
    # /metrics's basic-auth user and password; empty in a file written before it, until ensure_secrets adds
    # one (with_metrics_password).
    metrics_user: str = METRICS_USER
    metrics_password: str = field(default="", repr=False)

    def worker_credentials(self, also_trusted: str = "") -> Credentials:
        """The worker's share: least-privilege users and the authority's certificate, no admin secret.

        ``also_trusted``: the certificate of the authority a rotation replaces, trusted until it retires."""
        return Credentials(
            postgres=PostgresCredentials(self.postgres_user, self.postgres_password, self.postgres_database),
            redis=RedisCredentials(self.redis_user, self.redis_password),
            s3=S3Credentials(self.s3_access_key, self.s3_secret_key, self.s3_bucket),
            generation=self.generation,
            tls_ca_cert=authority_bundle(self.tls_ca_cert, also_trusted),
        )

    def with_authority(self) -> ControlPlaneSecrets:
        """The same secrets with a new certificate authority (for a file that has none yet)."""
        authority = Authority("han control plane CA", validity=STABLE_AUTHORITY_VALIDITY)
        return replace(self, tls_ca_cert=authority.cert_pem.decode(), tls_ca_key=authority.key_pem.decode())

    def with_metrics_password(self) -> ControlPlaneSecrets:
        """The same secrets with a new password for /metrics (for a file that has none yet)."""
        return replace(self, metrics_password=_token())

    def authority(self) -> Authority:
        """The certificate authority that issues the servers' certificates."""
        if not self.tls_ca_cert or not self.tls_ca_key:
            raise SecretsError("the secrets hold no certificate authority (start the control plane once)")
        return Authority.load(self.tls_ca_cert.encode(), self.tls_ca_key.encode())

    def rotated(self) -> ControlPlaneSecrets:
        """The next generation: every password, S3 key and the certificate authority new; user names,
        database and bucket kept.

        S3 keys are the identities' names to SeaweedFS, so both generations can be valid at once."""
        return replace(
            self.with_authority(),
            postgres_superuser_password=_token(),
            postgres_password=_token(),
            redis_admin_password=_token(),
            redis_password=_token(),
            s3_root_access_key=_s3_key("han-root"),
            s3_root_secret_key=_token(),
            s3_access_key=_s3_key("han-worker"),
            s3_secret_key=_token(),
            metrics_password=_token(),
            generation=self.generation + 1,
        )

    def to_dict(self) -> dict[str, object]:
        tls = {"tls": {"ca_cert": self.tls_ca_cert, "ca_key": self.tls_ca_key}} if self.tls_ca_cert else {}
        metrics = (
            {"metrics": {"user": self.metrics_user, "password": self.metrics_password}}
            if self.metrics_password
            else {}
        )
        return {
            "schema": SCHEMA,
            "generation": self.generation,
            "postgres": {
                "superuser": self.postgres_superuser,
                "superuser_password": self.postgres_superuser_password,
                "user": self.postgres_user,
                "password": self.postgres_password,
                "database": self.postgres_database,
            },
            "redis": {
                "admin_user": self.redis_admin_user,
                "admin_password": self.redis_admin_password,
                "user": self.redis_user,
                "password": self.redis_password,
            },
            "s3": {
                "root_access_key": self.s3_root_access_key,
                "root_secret_key": self.s3_root_secret_key,
                "access_key": self.s3_access_key,
                "secret_key": self.s3_secret_key,
                "bucket": self.s3_bucket,
            },
            **tls,
            **metrics,
        }


def serving_generation(
    current: ControlPlaneSecrets, previous: ControlPlaneSecrets | None
) -> ControlPlaneSecrets:
    """The generation whose authority issues the servers' certificates: while a rotation is in progress, the
    one it replaces (a worker that has not read the new credentials yet trusts only that one); else the
    current one. The rotation's retire phase switches the servers before it forgets the previous one."""
    return previous if previous is not None and previous.tls_ca_cert else current


def trusted_authorities(current: ControlPlaneSecrets, previous: ControlPlaneSecrets | None) -> str:
    """The authorities a client of the control plane trusts (PEM): the current one, and while a rotation is
    in progress the one it replaces."""
    return authority_bundle(current.tls_ca_cert, previous.tls_ca_cert if previous is not None else "")


def _password(fields: FieldReader, key: str) -> str:
    value = fields.string(key)
    if value.lower() in KNOWN_DEFAULTS:
        fields.fail(key, " is a well-known default password; generate one (han-control-plane init-secrets)")
    if len(value) < MIN_PASSWORD_LENGTH:
        fields.fail(key, f" is {len(value)} characters long; at least {MIN_PASSWORD_LENGTH} are required")
    return value


def _name(fields: FieldReader, key: str) -> str:
    value = fields.string(key)
    # Names end up in SQL identifiers, Redis ACL rules and S3 policies: keep them plain.
    if not set(value) <= _NAME_CHARS or not value[0].isalpha():
        fields.fail(key, f": {value!r} must start with a letter and use only a-z, 0-9, '_' and '-'")
    if value.lower() == MINIO_DEFAULT_USER:
        fields.fail(key, " is MinIO's default user name; choose another")
    return value


def parse_secrets(data: Mapping[str, object], origin: str) -> ControlPlaneSecrets:
    fields = FieldReader(data, origin, SecretsError)
    schema = fields.integer("schema")
    if schema != SCHEMA:
        raise SecretsError(f"{origin}: unknown schema {schema} (this supervisor reads schema {SCHEMA})")
    pg, rd, s3 = fields.child("postgres"), fields.child("redis"), fields.child("s3")
    parsed = ControlPlaneSecrets(
        postgres_superuser=_name(pg, "superuser"),
        postgres_superuser_password=_password(pg, "superuser_password"),
        postgres_user=_name(pg, "user"),
        postgres_password=_password(pg, "password"),
        postgres_database=_name(pg, "database"),
        redis_admin_user=_name(rd, "admin_user"),
        redis_admin_password=_password(rd, "admin_password"),
        redis_user=_name(rd, "user"),
        redis_password=_password(rd, "password"),
        s3_root_access_key=_name(s3, "root_access_key"),
        s3_root_secret_key=_password(s3, "root_secret_key"),
        s3_access_key=_name(s3, "access_key"),
        s3_secret_key=_password(s3, "secret_key"),
        s3_bucket=_name(s3, "bucket"),
        generation=fields.integer("generation", minimum=1) if "generation" in data else 1,
        **_authority(fields),
        **_metrics(fields),
    )
    if parsed.postgres_user == parsed.postgres_superuser or parsed.redis_user == parsed.redis_admin_user:
        raise SecretsError(f"{origin}: the worker user must differ from the admin user (least privilege)")
    if parsed.s3_access_key == parsed.s3_root_access_key:
        raise SecretsError(f"{origin}: field 's3.access_key' must differ from 's3.root_access_key'")
    return parsed


def _authority(fields: FieldReader) -> dict[str, str]:
    """The ``tls`` section (absent in a file written before TLS), checked: a certificate and its key."""
    if "tls" not in fields.data:
        return {}
    tls = fields.child("tls")
    cert, key = tls.string("ca_cert"), tls.string("ca_key")
    try:
        Authority.load(cert.encode(), key.encode())
    except ValueError as exc:
        tls.fail("ca_cert", f" and 'ca_key' are not a certificate authority and its key: {exc}")
    return {"tls_ca_cert": cert, "tls_ca_key": key}


def _metrics(fields: FieldReader) -> dict[str, str]:
    """The ``metrics`` section (absent in a file written before /metrics), checked like the others."""
    if "metrics" not in fields.data:
        return {}
    metrics = fields.child("metrics")
    return {"metrics_user": _name(metrics, "user"), "metrics_password": _password(metrics, "password")}


def load_secrets(path: StrPath) -> ControlPlaneSecrets:
    try:
        data = read_trusted_json(path, secret=True)
    except TrustedFileError as exc:
        raise SecretsError(str(exc)) from exc
    return parse_secrets(data, str(path))


def _token() -> str:
    """32 url-safe characters (~190 bits)."""
    return secrets.token_urlsafe(24)


def _s3_key(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def generate_secrets() -> ControlPlaneSecrets:
    """Fresh random secrets: 32 url-safe characters (~190 bits) per password."""
    token = _token
    return ControlPlaneSecrets(
        postgres_superuser="han_owner",
        postgres_superuser_password=token(),
        postgres_user="han_worker",
        postgres_password=token(),
        postgres_database="han",
        redis_admin_user="han_admin",
        redis_admin_password=token(),
        redis_user="han_worker",
        redis_password=token(),
        s3_root_access_key=_s3_key("han-root"),
        s3_root_secret_key=token(),
        s3_access_key=_s3_key("han-worker"),
        s3_secret_key=token(),
        s3_bucket=ARTIFACTS_BUCKET,
        metrics_password=token(),
    ).with_authority()


def ensure_secrets(path: Path) -> tuple[ControlPlaneSecrets, bool]:
    """Load the secrets file, or create it with fresh secrets; returns (secrets, created).

    A file written before TLS gets its certificate authority here, once; one written before /metrics, its
    password."""
    if path.exists():
        loaded = load_secrets(path)
        if loaded.tls_ca_cert and loaded.metrics_password:
            return loaded, False
        upgraded = loaded if loaded.tls_ca_cert else loaded.with_authority()
        upgraded = upgraded if upgraded.metrics_password else upgraded.with_metrics_password()
        write_private_json(path, upgraded.to_dict())
        log.info("added what %s lacked (certificate authority, /metrics password)", path)
        return upgraded, False
    generated = generate_secrets()
    write_private_json(path, generated.to_dict())
    log.info("generated new control-plane secrets in %s", path)
    return generated, True
