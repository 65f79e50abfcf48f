"""Batches: one job per input file, submitted together, watched together, fetched together.

A batch source is a folder (its files, not its subfolders, not its hidden files) or a glob pattern (``**``
crosses folders). :func:`plan` reads every file once before anything is sent: an empty folder, a pattern that
matches nothing, an unreadable file, a symlink out of the folder are refused naming the input, and nothing is
submitted. The ids derive from what is submitted: the batch's from the manifest's SHA-256 (kind, params, and
each input's path relative to the folder, size and SHA-256), each job's from the batch's and its input's path.
So the same command run again after an interruption submits the same ids: the ledger keeps the rows it
has (``ON CONFLICT DO NOTHING``), uploads already in the object store are skipped, and the jobs recorded but
not in their stream (the interruption came between the commit and the enqueue) are enqueued then.

Submitting: inputs uploaded in parallel, the small ones concatenated into a few packs
(:mod:`han_worker.packs`: one PUT per input was most of a submission's time) built from the bytes :func:`plan`
kept (see Reading below); meanwhile the batch and its jobs are inserted with one statement, in a transaction
committed once every upload is done; then one Redis round trip for the entries. A worker can never see a job
whose inputs are missing.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import logging
import os
import stat
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, partial
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from han_worker.fields import RequestError, shown
from han_worker.packs import Pack, is_packable, plan_packs, read_pack
from han_worker.store import retention
from han_worker.store.artifacts import (
    Artifact,
    ArtifactError,
    batch_input_key,
    batch_prefix,
    check_name,
    take_snapshot,
)
from han_worker.store.ledger import BatchCounts, NewBatch, NewJob
from han_worker.store.link import Link

log = logging.getLogger(__name__)

MAX_BATCH_JOBS = 10_000  # one statement records the batch: bounded, as every input is
UPLOAD_THREADS = 8
OPEN = frozenset({"queued", "running"})  # any other status is final (whatever final statuses there are)
# uuid5 namespace of batch ids (fixed: a batch id must be the same on every machine and in every version).
BATCH_NAMESPACE = uuid.UUID("6f1c3d0e-7b0a-5c4e-9a57-68616e626174")
_GLOB_MAGIC = frozenset("*?[")

Progress = Callable[[str, int, int], None]  # (stage: upload, record, enqueue; done; total)


@dataclass(frozen=True)
class BatchInput:
    """One file of a batch: where it is, its path relative to the batch's folder (``/``-separated: the fetch
    layout), the name the backend sees it under (the file's name), its SHA-256 and size."""

    path: Path
    relative: str
    sha256: str
    size: int
    # The bytes plan() read, kept for a small input (see Reading): its pack is then uploaded from them, with
    # no second read of the file.
    data: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return PurePosixPath(self.relative).name


@dataclass(frozen=True)
class BatchPlan:
    """What :func:`plan` read: the batch's and each job's id, and the checked request."""

    batch_id: str
    kind: str
    queue: str
    params: Mapping[str, object]
    max_attempts: int
    manifest_sha256: str
    inputs: tuple[BatchInput, ...]
    timeout_seconds: float | None = None  # each job's own limit (submit --timeout); not part of the ids

    def job_id(self, item: BatchInput) -> str:
        return self._job_ids[item.relative]

    @cached_property
    def _job_ids(self) -> dict[str, str]:
        """Each input's job id (by its relative path), derived once: a uuid5 costs a few microseconds, and a
        submission asks for every id several times."""
        namespace = uuid.UUID(self.batch_id)
        return {item.relative: str(uuid.uuid5(namespace, item.relative)) for item in self.inputs}

    @property
    def job_ids(self) -> list[str]:
        return list(self._job_ids.values())

    def key(self, item: BatchInput) -> str:
        """The object of an input that is not packed."""
        return batch_input_key(self.batch_id, self.job_id(item), item.name)

    @cached_property
    def packs(self) -> tuple[Pack, ...]:
        """The packs of the small inputs (derived from the inputs alone: the same on every run)."""
        return plan_packs(self.batch_id, self.inputs)

    @cached_property
    def packed(self) -> dict[str, Artifact]:
        """Each packed input's record (by its relative path): its pack's key and its range in it."""
        return {relative: artifact for pack in self.packs for relative, artifact in pack.artifacts().items()}

    def artifact(self, item: BatchInput) -> Artifact:
        packed = self.packed.get(item.relative)
        return packed if packed is not None else Artifact(self.key(item), item.sha256, item.size)

    def new_jobs(self) -> list[NewJob]:
        jobs = []
        for item in self.inputs:
            record = {**self.artifact(item).to_dict(), "path": item.relative}
            jobs.append(
                NewJob(
                    self.job_id(item),
                    self.kind,
                    self.queue,
                    self.params,
                    {item.name: record},
                    self.max_attempts,
                    self.timeout_seconds,
                )
            )
        return jobs


@dataclass(frozen=True)
class BatchSubmission:
    """What :func:`submit` did: ``uploaded`` inputs sent now, ``kept`` already in the object store,
    ``recorded`` jobs recorded now (the others were before), ``enqueued`` stream entries added now."""

    batch_id: str
    job_ids: tuple[str, ...]
    uploaded: int
    kept: int
    recorded: int
    enqueued: int

    def to_dict(self) -> dict[str, object]:
        return {**self.__dict__, "job_ids": list(self.job_ids)}


def is_batch_source(path: Path) -> bool:
    """Whether an ``--input`` names a batch: a folder, or a pattern (``*``, ``?``, ``[``) that is no file."""
    if path.is_file():
        return False
    return path.is_dir() or bool(_GLOB_MAGIC & set(str(path)))


def _glob_base(pattern: str) -> Path:
    """The folder a pattern starts in: its leading parts without a wildcard (relative paths start there)."""
    fixed = list(itertools.takewhile(lambda part: not _GLOB_MAGIC & set(part), Path(pattern).parts))
    return Path(*fixed) if fixed else Path(".")


def source_files(source: Path) -> tuple[Path, list[Path]]:
    """(the folder relative paths start in, the files of ``source``, sorted); RequestError naming --input when
    there are none."""
    if source.is_dir():
        try:
            with os.scandir(source) as entries:
                names = [
                    entry.name for entry in entries if not entry.name.startswith(".") and not entry.is_dir()
                ]
        except OSError as exc:
            raise RequestError(f"--input: {source}: cannot be listed: {exc.strerror or exc}") from None
        if not names:
            raise RequestError(
                f"--input: {source}: a folder with no file in it (subfolders and hidden files are not read)"
            )
        return source, [source / name for name in sorted(names)]
    pattern = str(source)
    files = sorted(Path(match) for match in glob.glob(pattern, recursive=True) if not Path(match).is_dir())
    if not files:
        raise RequestError(f"--input: {pattern}: the pattern matches no file")
    return _glob_base(pattern), files


def _real(path: Path) -> str:
    """Where ``path`` leads, every link followed (os.path: ~4x cheaper than Path.resolve)."""
    try:
        return os.path.realpath(path, strict=True)
    except FileNotFoundError:
        raise RequestError(f"--input: {path} is a link to nothing") from None
    except OSError as exc:
        raise RequestError(f"--input: {path}: cannot be read: {exc.strerror or exc}") from None


def _relative(base: Path, real_base: str, path: Path) -> str:
    """``path`` relative to ``base`` (which leads to ``real_base``), each part a plain file name; RequestError
    for a link out of ``base``."""
    if path.parent == base and not os.path.islink(path):
        parts: tuple[str, ...] = (path.name,)  # a file of the folder itself: no link to follow out of it
    else:
        real = _real(path)
        if os.path.commonpath([real, real_base]) != real_base:
            raise RequestError(f"--input: {path} is a link to {real}, out of the folder {base}")
        parts = path.relative_to(base).parts
    try:
        return "/".join(check_name(part, "--input") for part in parts)
    except ArtifactError as exc:
        raise RequestError(f"{exc} (in {path})") from None


# -- reading -----------------------------------------------------------------------------------------------
#
# plan() reads every file once, to hash it. A small input's bytes are kept (up to KEPT_BYTES in all), and its
# pack is built from them: reading and hashing every file again made most of the upload stage (2,000 inputs of
# 1 KiB: 0.39 s of a 1.19 s submission; 0.09-0.12 s with the bytes kept). What is uploaded is then what was
# hashed, whatever happens to the file meanwhile. Inputs past the budget are read again at upload and refused
# if they changed.

KEPT_BYTES = 64 << 20
READ_CHUNK = 1 << 20


@dataclass
class _Budget:
    """What plan() may still keep of the inputs' bytes."""

    left: int


def _read(path: Path, relative: str, budget: _Budget) -> BatchInput:
    try:
        # O_NONBLOCK: a FIFO in the folder must not block the open before fstat refuses it (POSIX only).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RequestError(f"--input: {path} is not a regular file")
            data, sha256, size = _digest(handle, budget)
    except OSError as exc:
        raise RequestError(f"--input: {path}: cannot be read: {exc.strerror or exc}") from None
    return BatchInput(path, relative, sha256, size, data)


def _digest(handle: BinaryIO, budget: _Budget) -> tuple[bytes | None, str, int]:
    """(the bytes, when the input is packable and the budget holds them; their SHA-256; their size)."""
    digest, size, chunks, keep = hashlib.sha256(), 0, [], True
    while chunk := handle.read(READ_CHUNK):
        digest.update(chunk)
        size += len(chunk)
        keep = keep and size <= budget.left and is_packable(size)
        if keep:
            chunks.append(chunk)
    if not (keep and is_packable(size)):
        return None, digest.hexdigest(), size
    budget.left -= size
    return b"".join(chunks), digest.hexdigest(), size


def manifest_digest(kind: str, params: Mapping[str, object], inputs: Sequence[BatchInput]) -> str:
    """SHA-256 of the canonical manifest: kind, params, and each input's relative path, size and SHA-256."""
    manifest = {
        "kind": kind,
        "params": params,
        "inputs": sorted([item.relative, item.size, item.sha256] for item in inputs),
    }
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def plan(source: Path, kind: str, queue: str, params: Mapping[str, object], max_attempts: int) -> BatchPlan:
    """Every file of ``source`` (a folder or a pattern) checked and read, and the batch's ids derived; the
    other arguments already checked. RequestError, naming --input, for anything that cannot be submitted."""
    base, files = source_files(source)
    if len(files) > MAX_BATCH_JOBS:
        raise RequestError(
            f"--input: {source} holds {len(files)} files; a batch has at most {MAX_BATCH_JOBS}"
        )
    real_base, budget = _real(base), _Budget(KEPT_BYTES)
    inputs = tuple(_read(path, _relative(base, real_base, path), budget) for path in files)
    digest = manifest_digest(kind, params, inputs)
    batch_id = str(uuid.uuid5(BATCH_NAMESPACE, digest))
    return BatchPlan(batch_id, kind, queue, dict(params), max_attempts, digest, inputs)


# -- submitting ------------------------------------------------------------------------------------------


def _upload(link: Link, batch: BatchPlan, item: BatchInput) -> None:
    """Upload one input from a fresh read; refused when its bytes are not those :func:`plan` read."""
    try:
        snapshot = take_snapshot(item.path)
    except OSError as exc:
        raise RequestError(f"--input: {item.path}: cannot be read: {exc.strerror or exc}") from None
    try:
        if (snapshot.sha256, snapshot.size) != (item.sha256, item.size):
            raise RequestError(
                f"--input: {item.path} changed while the batch was being submitted; run it again"
            )
        link.artifacts.upload_snapshot(batch.key(item), snapshot)
    finally:
        snapshot.close()


def _upload_pack(link: Link, pack: Pack) -> None:
    """Upload one pack, its members read again (refused when one is not what :func:`plan` read)."""
    snapshot = read_pack(pack)
    try:
        link.artifacts.upload_snapshot(pack.key, snapshot)
    finally:
        snapshot.close()


Upload = tuple[Callable[[], None], int]  # an upload, and how many inputs it carries


def _missing(link: Link, batch: BatchPlan) -> list[Upload]:
    """The uploads of what the object store does not hold yet (by key and size: a key names its bytes):
    packs first, as they carry most inputs."""
    present = link.artifacts.sizes_under(batch_prefix(batch.batch_id))
    missing: list[Upload] = [
        (partial(_upload_pack, link, pack), len(pack.members))
        for pack in batch.packs
        if present.get(pack.key) != pack.size
    ]
    missing += [
        (partial(_upload, link, batch, item), 1)
        for item in batch.inputs
        if item.relative not in batch.packed and present.get(batch.key(item)) != item.size
    ]
    return missing


def _upload_all(link: Link, batch: BatchPlan, threads: int, progress: Progress) -> tuple[int, int]:
    """Upload the inputs the object store does not hold yet, ``threads`` objects at a time; (inputs uploaded,
    inputs kept)."""
    missing = _missing(link, batch)
    total = len(batch.inputs)
    done = kept = total - sum(count for _call, count in missing)
    progress("upload", kept, total)
    if not missing:
        return 0, kept
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="han-upload") as pool:
        pending: dict[Future[None], int] = {pool.submit(upload): count for upload, count in missing}
        try:
            while pending:
                finished, _running = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()  # the first failure stops the batch: nothing is recorded
                    done += pending.pop(future)
                progress("upload", done, total)
        finally:
            for future in pending:
                future.cancel()
    return done - kept, kept


def _enqueue(link: Link, batch: BatchPlan, recorded: Sequence[str]) -> int:
    """Add stream entries for the jobs recorded now, and for those recorded before that are still queued and
    in no stream (a submission interrupted between its commit and its enqueue); how many were added."""
    fresh = set(recorded)
    missing = [(batch.queue, job_id) for job_id in batch.job_ids if job_id in fresh]
    earlier = [job_id for job_id in batch.job_ids if job_id not in fresh]
    if earlier:
        in_stream = link.queues.job_ids(batch.queue)
        missing += [
            (queue, job_id) for job_id, queue in link.ledger.queued_of(earlier) if job_id not in in_stream
        ]
    if missing:
        link.queues.enqueue_many(missing)
    return len(missing)


def _finish_purge_of(link: Link, batch: BatchPlan) -> None:
    """Delete what a purge journaled of this batch's earlier self (same ids, same keys) before looking at the
    store (see :func:`han_worker.store.retention.delete_journaled_of_batch`)."""
    deleted = retention.delete_journaled_of_batch(
        link.ledger, link.artifacts, batch_prefix(batch.batch_id), batch.job_ids
    )
    if deleted.objects or deleted.failed:
        log.info("batch %s was purged before: %d of its old object(s) deleted first, %d refused",
                 batch.batch_id, deleted.objects, deleted.failed)  # fmt: skip
    if deleted.failed:
        raise ArtifactError(
            f"batch {batch.batch_id}: {deleted.failed} object(s) of its purged earlier submission could not "
            "be deleted from the object store; nothing was submitted, run it again"
        )


def _upload_and_record(
    link: Link, batch: BatchPlan, threads: int, report: Progress
) -> tuple[int, int, list[str]]:
    """Upload the inputs while the ledger inserts the rows, in a transaction committed once every upload is
    done (rolled back if one fails): no one sees a job before its inputs are in the object store, and the
    server's time for the statement overlaps the uploads'. (inputs uploaded, inputs kept, jobs recorded)."""
    rows = (NewBatch(batch.batch_id, batch.kind, batch.manifest_sha256), batch.new_jobs())
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="han-record") as recorder,
        link.ledger.transaction(),
    ):
        recording = recorder.submit(link.ledger.insert_batch, *rows)
        uploaded, kept = _upload_all(link, batch, threads, report)
        report("record", 0, len(batch.inputs))
        return uploaded, kept, recording.result()


def submit(
    link: Link, batch: BatchPlan, threads: int = UPLOAD_THREADS, progress: Progress | None = None
) -> BatchSubmission:
    """Upload, record and enqueue a planned batch; safe to run again with the same plan (see the module)."""
    report: Progress = progress or (lambda _stage, _done, _total: None)
    total = len(batch.inputs)
    if link.ledger.batch_counts(batch.batch_id) is None:  # recorded in one statement: all of it or nothing
        _finish_purge_of(link, batch)
        uploaded, kept, recorded = _upload_and_record(link, batch, threads, report)
    else:
        uploaded, kept, recorded = 0, total, []
        log.info("batch %s was recorded before: enqueueing what its stream lacks", batch.batch_id)
    report("record", total, total)
    enqueued = _enqueue(link, batch, recorded)
    report("enqueue", total, total)
    return BatchSubmission(batch.batch_id, tuple(batch.job_ids), uploaded, kept, len(recorded), enqueued)


# -- progress ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchProgress:
    """A batch's jobs by where they stand: ``succeeded``, ``failed`` (failed, dead, or any other final
    status), ``running``, ``waiting`` (queued); ``rate`` in jobs per second since its first job started (None
    before one finished) and ``seconds_left`` at that rate."""

    batch_id: str
    kind: str
    total: int
    succeeded: int
    failed: int
    running: int
    waiting: int
    by_status: dict[str, int]
    rate: float | None
    seconds_left: float | None
    created_at: datetime

    @property
    def finished(self) -> bool:
        return self.running + self.waiting == 0

    @property
    def all_succeeded(self) -> bool:
        return self.finished and self.succeeded == self.total

    def to_dict(self) -> dict[str, object]:
        return {**self.__dict__, "created_at": self.created_at.isoformat(), "finished": self.finished}


def progress_of(counts: BatchCounts) -> BatchProgress:
    by_status = counts.by_status
    succeeded = by_status.get("succeeded", 0)
    running, waiting = by_status.get("running", 0), by_status.get("queued", 0)
    total = sum(by_status.values())
    failed = total - succeeded - running - waiting
    rate = seconds_left = None
    if counts.first_started_at is not None and succeeded + failed:
        elapsed = max((counts.observed_at - counts.first_started_at).total_seconds(), 1e-3)
        rate = (succeeded + failed) / elapsed
        seconds_left = (running + waiting) / rate
    return BatchProgress(
        counts.batch_id, counts.kind, total, succeeded, failed, running, waiting, dict(by_status), rate,
        seconds_left, counts.created_at,
    )  # fmt: skip


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _rate_and_left(progress: BatchProgress) -> str:
    speed = "" if progress.rate is None else f", {progress.rate:.1f} jobs/s"
    unknown = progress.seconds_left is None or progress.finished
    return speed + ("" if unknown else f", {_clock(progress.seconds_left or 0.0)} left")


def format_progress(progress: BatchProgress) -> str:
    """One line for people: ``batch ID: 1200/2000 done (1195 succeeded, 5 failed), 2 running, 798 waiting,
    14.2 jobs/s, 0:56 left``."""
    done = progress.succeeded + progress.failed
    return (
        f"batch {progress.batch_id}: {done}/{progress.total} done ({progress.succeeded} succeeded, "
        f"{progress.failed} failed), {progress.running} running, {progress.waiting} waiting"
        f"{_rate_and_left(progress)}"
    )


def format_progress_short(progress: BatchProgress) -> str:
    """Beside a progress bar (which shows done/total): ``1195 succeeded, 5 failed, 2 running, 14.2 jobs/s,
    0:56 left``."""
    return (
        f"{progress.succeeded} succeeded, {progress.failed} failed, {progress.running} running"
        f"{_rate_and_left(progress)}"
    )


def output_folder(record_inputs: Mapping[str, Mapping[str, object]], job_id: str) -> str:
    """Where a batch job's outputs go under the fetch's DIR: its input's path relative to the batch's folder
    (``a/photo1.jpg/``), or the job id when the ledger's record gives none that is safe to write."""
    for record in record_inputs.values():
        relative = record.get("path")
        if isinstance(relative, str) and relative:
            try:
                return "/".join(check_name(part, "input path") for part in relative.split("/"))
            except ArtifactError:
                log.warning(
                    "job %s: its input path %s cannot be a folder; using the job id", job_id, shown(relative)
                )
    return job_id
