"""Job inputs and outputs in the object store, with their SHA-256 and size recorded in the ledger.

Keys: ``jobs/<id>/inputs/<name>`` and ``jobs/<id>/outputs/<attempt>/<name>``; a batch's inputs are
``batches/<batch id>/inputs/<job id>/<name>``, or for its small ones ranges of ``batches/<batch id>/packs/<n>-
<digest>`` (:mod:`han_worker.packs`), under one prefix, so a batch submitted again after an interruption lists
what it uploaded with one request (the ids derive from the inputs' SHA-256, so a key names its bytes).
Outputs are kept per attempt, so a superseded attempt can never overwrite the files the ledger points at;
inputs are checked against their recorded hash after every download. The ledger records every key: nothing
reads a key that it did not record.

Small outputs are not objects at all: an output of at most :data:`INLINE_OUTPUT_MAX_BYTES` (a pose job's
``landmarks.json`` is a few KiB), up to :data:`INLINE_JOB_MAX_BYTES` of them per job, is stored in the ledger
itself (table ``job_outputs``, migration 6), in the transaction that records the result: one S3 PUT less per
job, and one GET less per fetch. Its record in the job's outputs is ``{inline: true, sha256, size}``, with
no key, and is checked on fetch exactly as an object is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeGuard, cast

from minio import Minio
from minio.error import S3Error
from urllib3 import BaseHTTPResponse

from han_worker.fields import MAX_NAME_BYTES, shown, text_problem

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_SNAPSHOT_IN_MEMORY = 8 << 20  # an input larger than this is snapshotted to a temporary file
_RESERVED_NAMES = frozenset({"", ".", ".."})
# Outputs stored in the ledger rather than the object store (see the module): each at most this size, and
# at most the budget per job (the rest, largest last, go to S3), so that one result's commit stays small.
INLINE_OUTPUT_MAX_BYTES = 64 << 10
INLINE_JOB_MAX_BYTES = 256 << 10
# What a name must leave out to be a file on every worker: control characters, and what Windows refuses (a
# pose job may run on the Windows worker). Its length: the worker writes an input under its own name
# (download_inputs; no temporary name since fget_object's NAME.<etag>.part.minio went), so up to
# MAX_NAME_BYTES.
_UNWRITABLE = re.compile(r'[<>:"|?*\x00-\x1f\x7f]')
_WINDOWS_DEVICES = re.compile(r"(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\..*)?", re.IGNORECASE)


class ArtifactError(ValueError):
    """An artifact is missing, malformed or does not match its recorded hash: retrying will not help."""


@dataclass(frozen=True)
class Artifact:
    """An object of the store, or with ``offset`` a part of one: a batch's small inputs are packed (see
    :mod:`han_worker.packs`), and one of them is ``size`` bytes from ``offset`` of the pack at ``key``."""

    key: str
    sha256: str
    size: int
    offset: int | None = None

    def to_dict(self) -> dict[str, object]:
        record: dict[str, object] = {"key": self.key, "sha256": self.sha256, "size": self.size}
        if self.offset is not None:
            record["offset"] = self.offset
        return record

    @property
    def where(self) -> str:
        """The object, or the bytes of it, for messages: ``KEY`` or ``KEY bytes 1024-2047``."""
        if self.offset is None:
            return self.key
        return f"{self.key} bytes {self.offset}-{self.offset + self.size - 1}"

    @classmethod
    def from_dict(cls, data: Mapping[str, object], what: str) -> Artifact:
        key, sha256, size = data.get("key"), data.get("sha256"), data.get("size")
        if not isinstance(key, str) or not isinstance(sha256, str) or not _is_count(size):
            raise ArtifactError(f"{what}: the ledger's record {dict(data)!r} is not {{key, sha256, size}}")
        offset = data.get("offset")
        if offset is None:
            return cls(key, sha256, size)
        if not _is_count(offset) or size < 1:  # a packed input is never empty (packs.is_packable)
            raise ArtifactError(
                f"{what}: the ledger's record {dict(data)!r} has no valid offset (a whole number of bytes "
                "from 0, for an input of at least 1 byte)"
            )
        return cls(key, sha256, size, offset)


@dataclass(frozen=True)
class InlineOutput:
    """An output stored in the ledger (table ``job_outputs``), not in the object store."""

    sha256: str
    size: int

    def to_dict(self) -> dict[str, object]:
        return {"inline": True, "sha256": self.sha256, "size": self.size}

    @property
    def where(self) -> str:
        return "the ledger's copy"

    @classmethod
    def of(cls, data: bytes) -> InlineOutput:
        return cls(hashlib.sha256(data).hexdigest(), len(data))


Stored = Artifact | InlineOutput


def output_record(data: Mapping[str, object], what: str) -> Stored:
    """An output's record in the ledger: in the ledger itself (``inline``) or an object of the store."""
    if data.get("inline") is not True:
        return Artifact.from_dict(data, what)
    sha256, size = data.get("sha256"), data.get("size")
    if not isinstance(sha256, str) or not _is_count(size):
        raise ArtifactError(f"{what}: the ledger's record {dict(data)!r} is not {{inline, sha256, size}}")
    return InlineOutput(sha256, size)


def read_small(path: Path, limit: int) -> bytes | None:
    """The bytes of ``path`` when it holds at most ``limit`` of them, else None (read once: what is stored
    is what was measured, even should the file grow meanwhile)."""
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    return data if len(data) <= limit else None


def split_outputs(
    files: Mapping[str, Path], limit: int = INLINE_OUTPUT_MAX_BYTES, budget: int = INLINE_JOB_MAX_BYTES
) -> tuple[dict[str, bytes], dict[str, Path]]:
    """(outputs to store in the ledger: name -> bytes, outputs to upload: name -> file). Each of at most
    ``limit`` bytes goes inline while the job's ``budget`` lasts, smallest first (the most outputs for the
    budget; ties by name, so a spooled result delivered later splits the same way)."""
    small = {name: data for name, path in files.items() if (data := read_small(path, limit)) is not None}
    inline: dict[str, bytes] = {}
    for name, data in sorted(small.items(), key=lambda item: (len(item[1]), item[0])):
        if len(data) > budget:
            break
        inline[name] = data
        budget -= len(data)
    return inline, {name: path for name, path in files.items() if name not in inline}


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_name(name: str, what: str) -> str:
    """An artifact name is one plain file name: it becomes an S3 key part, a ledger string and a local file
    on every worker that may run the job (Linux or Windows)."""
    problem = _name_problem(name)
    if problem is not None:
        raise ArtifactError(f"{what}: {shown(name)} {problem}")
    return name


def _name_problem(name: str) -> str | None:
    if name in _RESERVED_NAMES or "/" in name or "\\" in name or name != name.strip():
        return "is not a plain file name"
    problem = text_problem(name)
    if problem is not None:
        return f"{problem}: it cannot be stored with the job"
    if _UNWRITABLE.search(name) or name.endswith("."):
        return 'cannot be a file name on every worker (no control characters, <>:"|?* or trailing dot)'
    if _WINDOWS_DEVICES.fullmatch(name):
        return "is a device name on Windows, not a file name"
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long; a worker can write a name of at most {MAX_NAME_BYTES} bytes"
    return None


def input_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/inputs/{check_name(name, 'input name')}"


def batch_prefix(batch_id: str) -> str:
    """Every object a batch's submission uploads: its inputs and its packs."""
    return f"batches/{batch_id}/"


def batch_input_key(batch_id: str, job_id: str, name: str) -> str:
    return f"{batch_prefix(batch_id)}inputs/{job_id}/{check_name(name, 'input name')}"


def output_key(job_id: str, attempt: int, name: str) -> str:
    return f"jobs/{job_id}/outputs/{attempt}/{check_name(name, 'output name')}"


@dataclass(frozen=True)
class Snapshot:
    """A local file's bytes as read once (st_size is not trusted: /proc files say 0), with their hash."""

    data: BinaryIO
    sha256: str
    size: int

    def close(self) -> None:
        self.data.close()


def take_snapshot(path: Path) -> Snapshot:
    """Read ``path`` to its end into memory (or a temporary file past a few MiB); OSError when unreadable.

    What is uploaded is then exactly what was hashed, even when the file changes meanwhile."""
    # The Snapshot owns the file; typeshed's SpooledTemporaryFile is an IO[bytes] but not a BinaryIO.
    copy = cast(BinaryIO, tempfile.SpooledTemporaryFile(max_size=_SNAPSHOT_IN_MEMORY))  # noqa: SIM115
    try:
        with path.open("rb") as handle:
            sha256, size = _copy(iter(lambda: handle.read(_CHUNK), b""), copy)
    except BaseException:
        copy.close()
        raise
    copy.seek(0)
    return Snapshot(copy, sha256, size)


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

    def upload_snapshot(self, key: str, snapshot: Snapshot) -> Artifact:
        """Upload exactly the bytes of ``snapshot`` (no second read of the file, no trust in its st_size)."""
        snapshot.data.seek(0)
        self.client.put_object(
            self.bucket, key, snapshot.data, snapshot.size, metadata={"x-amz-meta-sha256": snapshot.sha256}
        )
        log.debug("uploaded %d bytes to %s", snapshot.size, key)
        return Artifact(key, snapshot.sha256, snapshot.size)

    def sizes_under(self, prefix: str) -> dict[str, int]:
        """Key -> size of every object whose key starts with ``prefix`` (a listing: one request per 1,000)."""
        return {
            str(item.object_name): int(item.size or 0)
            for item in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
        }

    def remove(self, keys: Iterable[str]) -> None:
        """Delete ``keys``, best effort: each failure is logged, none is raised (a cleanup must not hide the
        error that called for it)."""
        for key in keys:
            try:
                self.client.remove_object(self.bucket, key)
            except Exception as exc:  # any failure leaves one orphan object, logged
                log.warning("could not remove %s from bucket %s: %s", key, self.bucket, exc)
            else:
                log.debug("removed %s", key)

    def upload_outputs(self, job_id: str, attempt: int, files: Mapping[str, Path]) -> dict[str, Artifact]:
        return {name: self.upload(output_key(job_id, attempt, name), path) for name, path in files.items()}

    def store_outputs(
        self, job_id: str, attempt: int, files: Mapping[str, Path]
    ) -> tuple[dict[str, Stored], dict[str, bytes]]:
        """Upload the outputs too large for the ledger (:func:`split_outputs`); (every output's record, the
        bytes of those the ledger is to store, which the caller commits with the result)."""
        inline, large = split_outputs(files)
        records: dict[str, Stored] = {name: InlineOutput.of(data) for name, data in inline.items()}
        records.update(self.upload_outputs(job_id, attempt, large))
        return {name: records[name] for name in files}, inline

    def download(self, artifact: Artifact, destination: Path) -> Path:
        """Fetch ``artifact`` to ``destination``; refuse it unless size and SHA-256 match the ledger.

        One GET, hashed as it is written: no HEAD first and no second read of the file (what the SDK's
        ``fget_object`` costs), which a job's input would pay on every job."""
        response = self._get(artifact)
        try:
            sha256, size = _save(response.stream(_CHUNK), destination)
        finally:
            response.close()
            response.release_conn()
        if (sha256, size) != (artifact.sha256, artifact.size):
            destination.unlink(missing_ok=True)
            raise _corrupt(artifact, sha256, size)
        return destination

    def download_replacing(self, artifact: Artifact, destination: Path, *, durable: bool = True) -> None:
        """Fetch ``artifact`` into a temporary file beside ``destination`` and rename it over ``destination``
        once its size and SHA-256 match the ledger (flushed to disk first unless not ``durable``, as
        :func:`write_replacing`): ``destination`` is either what it was or the whole, checked object, never a
        part. ArtifactError (nothing written) otherwise."""
        response = self._get(artifact)
        try:
            write_replacing(response.stream(_CHUNK), artifact, destination, durable=durable)
        finally:
            response.close()
            response.release_conn()

    def _get(self, artifact: Artifact) -> BaseHTTPResponse:
        """One GET of the object, or of its range for a packed input (never empty: a range of length 0
        would be the rest of the pack)."""
        offset, length = (0, 0) if artifact.offset is None else (artifact.offset, artifact.size)
        try:
            return self.client.get_object(self.bucket, artifact.key, offset=offset, length=length)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ArtifactError(f"{artifact.key}: missing from bucket {self.bucket}") from exc
            if exc.code == "InvalidRange":
                raise ArtifactError(f"{artifact.where}: past the end of the object") from exc
            raise

    def download_inputs(self, inputs: Mapping[str, Mapping[str, object]], directory: Path) -> dict[str, Path]:
        """Every input of a job into ``directory`` (created when there are inputs), keyed by input name."""
        if inputs:  # a job without inputs creates no directory (JobContext.workdir)
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        local = {}
        for name, record in inputs.items():
            artifact = Artifact.from_dict(record, f"input {name!r}")
            try:
                local[name] = self.download(artifact, directory / check_name(name, "input name"))
            except ArtifactError as exc:
                if artifact.offset is None:  # its key names the input (and its job) already
                    raise
                raise ArtifactError(f"input {name!r}: {exc}") from exc  # a pack: many inputs share its key
        return local


def write_replacing(
    chunks: Iterable[bytes], recorded: Stored, destination: Path, *, durable: bool = True
) -> None:
    """Write ``chunks`` into a temporary file beside ``destination`` and rename it over ``destination`` once
    their size and SHA-256 match ``recorded``: ``destination`` is either what it was or the whole, checked
    output, never a part. ArtifactError (nothing written) otherwise.

    ``durable``: flushed to disk before the rename. Without it (many files: the caller syncs once at the end)
    a crash before the data reaches the disk may leave an empty or partial file under the name, which the
    next fetch finds wrong by its SHA-256 and replaces."""
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - renamed, not closed-and-deleted
        dir=destination.parent, prefix=".han-fetch-", suffix=".part", delete=False
    )
    temporary = Path(handle.name)
    try:
        with handle:
            sha256, size = _copy(chunks, cast(BinaryIO, handle))
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        if (sha256, size) != (recorded.sha256, recorded.size):
            raise _corrupt(recorded, sha256, size)
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _corrupt(artifact: Stored, sha256: str, size: int) -> ArtifactError:
    return ArtifactError(
        f"{artifact.where}: corrupt: {size} bytes with SHA-256 {sha256}, but the ledger recorded "
        f"{artifact.size} bytes with SHA-256 {artifact.sha256}"
    )


def _save(chunks: Iterable[bytes], destination: Path) -> tuple[str, int]:
    """Write ``chunks`` to ``destination``; (SHA-256 hex digest, size in bytes) of what was written."""
    with destination.open("wb") as handle:
        return _copy(chunks, handle)


def _copy(chunks: Iterable[bytes], target: BinaryIO) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        target.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size
