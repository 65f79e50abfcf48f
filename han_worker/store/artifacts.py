"""Job inputs and outputs in the object store, with their SHA-256 and size recorded in the ledger.

Keys: ``jobs/<id>/inputs/<name>`` and ``jobs/<id>/outputs/<attempt>/<name>``. Outputs are kept per
attempt, so a superseded attempt can never overwrite the files the ledger points at; inputs are
checked against their recorded hash after every download.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from minio import Minio
from minio.error import S3Error

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_RESERVED_NAMES = frozenset({"", ".", ".."})


class ArtifactError(ValueError):
    """An artifact is missing, malformed or does not match its recorded hash: retrying will not help."""


@dataclass(frozen=True)
class Artifact:
    key: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, object]:
        return {"key": self.key, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, data: Mapping[str, object], what: str) -> Artifact:
        key, sha256, size = data.get("key"), data.get("sha256"), data.get("size")
        if not isinstance(key, str) or not isinstance(sha256, str) or not isinstance(size, int):
            raise ArtifactError(f"{what}: the ledger's record {dict(data)!r} is not {{key, sha256, size}}")
        return cls(key, sha256, size)


def check_name(name: str, what: str) -> str:
    """An artifact name is one plain file name: it becomes both an S3 key part and a local file."""
    if name in _RESERVED_NAMES or "/" in name or "\\" in name or "\0" in name or name != name.strip():
        raise ArtifactError(f"{what}: {name!r} is not a plain file name")
    return name


def input_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/inputs/{check_name(name, 'input name')}"


def output_key(job_id: str, attempt: int, name: str) -> str:
    return f"jobs/{job_id}/outputs/{attempt}/{check_name(name, 'output name')}"


def file_digest(path: Path) -> tuple[str, int]:
    """(SHA-256 hex digest, size in bytes) of a local file."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class ArtifactStore:
    """One bucket of the control plane's object store."""

    def __init__(self, client: Minio, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def ready(self) -> None:
        """Make the first transfer as fast as the next ones: the S3 client asks where the bucket is before
        its first request to it, and opens its connection then. A worker does this before its first job."""
        self.client.bucket_exists(self.bucket)

    def upload(self, key: str, path: Path) -> Artifact:
        sha256, size = file_digest(path)
        self.client.fput_object(self.bucket, key, str(path), metadata={"x-amz-meta-sha256": sha256})
        log.debug("uploaded %s (%d bytes) to %s", path, size, key)
        return Artifact(key, sha256, size)

    def upload_outputs(self, job_id: str, attempt: int, files: Mapping[str, Path]) -> dict[str, Artifact]:
        return {name: self.upload(output_key(job_id, attempt, name), path) for name, path in files.items()}

    def download(self, artifact: Artifact, destination: Path) -> Path:
        """Fetch ``artifact`` to ``destination``; refuse it unless size and SHA-256 match the ledger.

        One GET, hashed as it is written: no HEAD first and no second read of the file (what the SDK's
        ``fget_object`` costs), which a job's input would pay on every job."""
        try:
            response = self.client.get_object(self.bucket, artifact.key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ArtifactError(f"{artifact.key}: missing from bucket {self.bucket}") from exc
            raise
        try:
            sha256, size = _save(response.stream(_CHUNK), destination)
        finally:
            response.close()
            response.release_conn()
        if (sha256, size) != (artifact.sha256, artifact.size):
            destination.unlink(missing_ok=True)
            raise ArtifactError(
                f"{artifact.key}: corrupt: {size} bytes with SHA-256 {sha256}, but the ledger recorded "
                f"{artifact.size} bytes with SHA-256 {artifact.sha256}"
            )
        return destination

    def download_inputs(self, inputs: Mapping[str, Mapping[str, object]], directory: Path) -> dict[str, Path]:
        """Every input of a job into ``directory`` (created when there are inputs), keyed by input name."""
        if inputs:  # a job without inputs creates no directory (JobContext.workdir)
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        local = {}
        for name, record in inputs.items():
            artifact = Artifact.from_dict(record, f"input {name!r}")
            local[name] = self.download(artifact, directory / check_name(name, "input name"))
        return local


def _save(chunks: Iterable[bytes], destination: Path) -> tuple[str, int]:
    """Write ``chunks`` to ``destination``; (SHA-256 hex digest, size in bytes) of what was written."""
    digest, size = hashlib.sha256(), 0
    with destination.open("wb") as handle:
        for chunk in chunks:
            digest.update(chunk)
            handle.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
