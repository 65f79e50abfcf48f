"""The control plane's credentials file (schema v1), kept apart from the endpoints file.

The endpoints file says where to connect and may be read by anything of ours; this file holds the
passwords, so it must be 0600 and its repr never shows a secret (it ends up in logs and tracebacks).

Standard library only, like :mod:`han_worker.selection.endpoints`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from han_worker.fields import FieldReader
from han_worker.private_files import StrPath, TrustedFileError, read_trusted_json
from han_worker.selection.tls import certificate_ders

log = logging.getLogger(__name__)

SCHEMA = 1


class CredentialsError(ValueError):
    """The credentials file cannot be used; the message names the file, the field and the problem."""


@dataclass(frozen=True)
class PostgresCredentials:
    user: str
    password: str = field(repr=False)
    database: str


@dataclass(frozen=True)
class RedisCredentials:
    user: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class S3Credentials:
    access_key: str  # the S3 user name, shown like the other user names
    secret_key: str = field(repr=False)
    bucket: str


@dataclass(frozen=True)
class Credentials:
    postgres: PostgresCredentials
    redis: RedisCredentials
    s3: S3Credentials
    # Counts rotations (han-control-plane rotate): a worker reports the one it uses, so a rotation knows
    # when every worker has moved to the new credentials.
    generation: int = 1
    # The control plane's certificate authority (PEM, public): clients verify its servers against it. Two
    # certificates while the control plane rotates its authority (the retiring one and its successor).
    tls_ca_cert: str = ""

    def to_dict(self) -> dict[str, object]:
        """The credentials file's document (it holds secrets: write it with mode 0600 only)."""
        return {
            "schema": SCHEMA,
            "generation": self.generation,
            "postgres": {
                "user": self.postgres.user,
                "password": self.postgres.password,
                "database": self.postgres.database,
            },
            "redis": {"user": self.redis.user, "password": self.redis.password},
            "s3": {
                "access_key": self.s3.access_key,
                "secret_key": self.s3.secret_key,
                "bucket": self.s3.bucket,
            },
            "tls": {"ca_cert": self.tls_ca_cert},
        }


def parse_credentials(data: Mapping[str, object], origin: str) -> Credentials:
    """Validate one decoded credentials document; unknown keys are ignored (newer writers)."""
    fields = FieldReader(data, origin, CredentialsError)
    schema = fields.integer("schema")
    if schema != SCHEMA:
        raise CredentialsError(f"{origin}: unknown schema {schema} (this worker reads schema {SCHEMA})")
    postgres = fields.child("postgres")
    redis = fields.child("redis")
    s3 = fields.child("s3")
    return Credentials(
        postgres=PostgresCredentials(
            user=postgres.string("user"),
            password=postgres.string("password"),
            database=postgres.string("database"),
        ),
        redis=RedisCredentials(user=redis.string("user"), password=redis.string("password")),
        s3=S3Credentials(
            access_key=s3.string("access_key"),
            secret_key=s3.string("secret_key"),
            bucket=s3.string("bucket"),
        ),
        generation=fields.integer("generation", minimum=1) if "generation" in data else 1,
        tls_ca_cert=_ca_cert(fields, origin),
    )


def _ca_cert(fields: FieldReader, origin: str) -> str:
    """The control plane's certificate authority: required, since its servers speak TLS only."""
    if "tls" not in fields.data:
        raise CredentialsError(
            f"{origin}: field 'tls' is missing: this credentials file predates TLS and holds no certificate "
            "authority to verify the control plane with: restart that control plane once with this "
            "version (playbooks/control_plane.yml -e state=stopped, then without), which adds the "
            "authority, and copy the credentials.json it then publishes (the worker plays do)"
        )
    tls = fields.child("tls")
    pem = tls.string("ca_cert")
    try:
        certificate_ders(pem)
    except ValueError as exc:
        tls.fail("ca_cert", f" {exc}")
    return pem


def load_credentials_file(path: StrPath) -> Credentials:
    """Read ``path`` after checking that only we can write it and nobody else can read it."""
    try:
        data = read_trusted_json(path, secret=True)
    except TrustedFileError as exc:
        # One exception type for callers of this module; the trust error stays as __cause__.
        raise CredentialsError(str(exc)) from exc
    credentials = parse_credentials(data, str(path))
    log.debug("read credentials from %s", path)
    return credentials
