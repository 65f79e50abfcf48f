"""The local spool: results finished while their control plane was away, kept until it returns.

A job belongs to the ledger it came from, so a result is delivered to that control plane (by its
source name: a restarted Pegasus control plane keeps its ledger under a new epoch), never to the one
the worker moved to. Each entry is a directory holding ``result.json`` and the output files, built
under a temporary name and renamed into place: a reader sees a whole entry or none. Every output is kept as
a file, small or large: which ones the ledger stores inline is decided when the result is delivered
(:func:`han_worker.store.artifacts.split_outputs`, the rule of a result recorded at once), so an entry
spooled by one version of the worker is delivered by another as it would have recorded it.

Several workers may share a spool (the default lives in the shared home directory), so a worker takes
an entry by renaming it into ``.delivering/`` first; an entry left there by a worker that died
mid-delivery is put back after :data:`STALE_DELIVERY_SECONDS`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from han_worker.fields import FieldReader
from han_worker.private_files import parse_json_object

log = logging.getLogger(__name__)

SCHEMA = 1
RESULT_FILE = "result.json"
OUTPUTS_DIR = "outputs"
STALE_DELIVERY_SECONDS = 300.0


@dataclass(frozen=True)
class SpooledResult:
    source: str  # the control plane whose ledger the job belongs to
    epoch: int  # its epoch when the attempt started (recorded, not required on delivery)
    job_id: str
    attempt: int
    queue: str
    entry_id: str
    outcome: str
    summary: Mapping[str, object] | None
    error: str | None
    outputs: tuple[str, ...]  # output names; the files are in the entry's outputs/ directory

    @property
    def name(self) -> str:
        return f"{self.source}-{self.job_id}-{self.attempt}"


def _parse(data: Mapping[str, object], origin: str) -> SpooledResult:
    fields = FieldReader(data, origin, ValueError)
    if fields.integer("schema") != SCHEMA:
        fields.fail("schema", f": {data['schema']} is not {SCHEMA}")
    summary, outputs = fields.raw("summary"), fields.raw("outputs")
    if summary is not None and not isinstance(summary, dict):
        fields.fail("summary", " must be an object or null")
    if not isinstance(outputs, list) or not all(isinstance(name, str) for name in outputs):
        fields.fail("outputs", " must be a list of names")
    return SpooledResult(
        source=fields.string("source"),
        epoch=fields.integer("epoch"),
        job_id=fields.string("job_id"),
        attempt=fields.integer("attempt", minimum=1),
        queue=fields.string("queue"),
        entry_id=fields.string("entry_id"),
        outcome=fields.string("outcome"),
        summary=summary,
        error=fields.optional_string("error"),
        outputs=tuple(outputs),
    )


def _write_json(path: Path, document: Mapping[str, object]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._delivering = directory / ".delivering"

    def _prepare(self) -> None:
        for path in (self.directory, self._delivering):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def put(self, result: SpooledResult, files: Mapping[str, Path]) -> Path:
        """Keep ``result`` and its output files (moved, not copied); returns the entry's directory."""
        self._prepare()
        staging = self.directory / f".tmp-{result.name}-{secrets.token_hex(4)}"
        (staging / OUTPUTS_DIR).mkdir(mode=0o700, parents=True)
        try:
            for name in result.outputs:
                shutil.move(str(files[name]), staging / OUTPUTS_DIR / name)
            _write_json(staging / RESULT_FILE, {"schema": SCHEMA, **asdict(result)})
            target = self.directory / result.name
            os.replace(staging, target)  # an entry of the same attempt is only ever written once
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.warning("spooled the %s result of job %s attempt %d in %s", result.outcome, result.job_id,
                    result.attempt, target)  # fmt: skip
        return target

    def entries(self) -> Iterator[Path]:
        if self.directory.is_dir():
            yield from sorted(
                p for p in self.directory.iterdir() if p.is_dir() and not p.name.startswith(".")
            )

    def recover_stale(self) -> None:
        """Put back entries a worker took for delivery and never finished with (it died)."""
        if not self._delivering.is_dir():
            return
        for path in self._delivering.iterdir():
            if time.time() - path.stat().st_mtime > STALE_DELIVERY_SECONDS:
                os.replace(path, self.directory / path.name.rsplit("@", 1)[0])
                log.info("spool: put back %s, abandoned mid-delivery", path.name)

    def _take(self, path: Path, taker: str) -> Path | None:
        self._prepare()
        taken = self._delivering / f"{path.name}@{taker}"
        try:
            os.replace(path, taken)
        except FileNotFoundError:
            return None  # another worker took it first
        os.utime(taken)  # the clock of recover_stale() starts now
        return taken

    def deliver(
        self, source: str, taker: str, deliver: Callable[[SpooledResult, dict[str, Path]], None]
    ) -> int:
        """Hand every entry of ``source`` to ``deliver``; an entry is removed only once that returns.

        When ``deliver`` raises, the entry goes back into the spool and the exception propagates.
        """
        delivered = 0
        for path in self.entries():
            if not path.name.startswith(f"{source}-"):
                continue
            taken = self._take(path, taker)
            if taken is None:
                continue
            try:
                text = (taken / RESULT_FILE).read_text(encoding="utf-8")
                result = _parse(parse_json_object(text, str(path)), str(path))
            except (OSError, ValueError, TypeError) as exc:
                log.error("spool: %s is unreadable (%s); moved aside", path, exc)
                os.replace(taken, self.directory / f".broken-{path.name}")
                continue
            files = {name: taken / OUTPUTS_DIR / name for name in result.outputs}
            try:
                deliver(result, files)
            except BaseException:
                os.replace(taken, path)
                raise
            shutil.rmtree(taken, ignore_errors=True)
            delivered += 1
        return delivered
