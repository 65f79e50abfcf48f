"""Packs: a batch's small inputs concatenated into a few objects, each job's input a range of one of them.

Measured on the testbed (2,000 inputs of 1 KiB, SeaweedFS's S3 gateway over HTTPS, 2 cores): one PUT per
input took 2.8 s of a 3.2 s submission, ~1.4 ms each however many went in parallel; the reading and hashing
took 0.12 s, the ledger statement 0.13 s, the Redis round trip 0.04 s. So the inputs below
:data:`PACK_BELOW` bytes go into packs of at most :data:`PACK_MAX_BYTES` and :data:`PACK_MAX_INPUTS` each,
spread over at least :data:`PACK_SPREAD` packs (when there are as many inputs) so that their reading and
uploading go on in parallel; larger inputs stay one object each, and an empty input too (a range is never
empty). A worker fetches its input with one ranged GET and checks its SHA-256 as for any input.

The layout derives from the plan alone (the inputs in their order, their sizes and SHA-256), and a pack's key
from its batch, its number and what it holds (``batches/<batch id>/packs/<n>-<digest>``): the same batch
submitted again after an interruption finds the packs it uploaded under the same keys, and uploads the
others only. Each job records its pack's key, so an object is referenced by every job whose input it holds.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from han_worker.fields import RequestError
from han_worker.store.artifacts import Artifact, Snapshot

PACK_BELOW = 1 << 20  # bytes: an input this large or larger is one object of its own
PACK_MAX_BYTES = 64 << 20
PACK_MAX_INPUTS = 1000
PACK_SPREAD = 8  # as many packs at least as a submission uploads at once (batches.UPLOAD_THREADS)
_IN_MEMORY = 8 << 20  # a pack larger than this is built in a temporary file


class Member(Protocol):
    """What a pack needs of an input (batches.BatchInput): its file, its path in the batch, what it held."""

    @property
    def path(self) -> Path: ...

    @property
    def relative(self) -> str: ...

    @property
    def sha256(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def data(self) -> bytes | None: ...


@dataclass(frozen=True)
class Pack:
    """One pack object: ``members`` concatenated in their order, each at its ``offsets`` entry."""

    key: str
    members: tuple[Member, ...]
    offsets: tuple[int, ...]
    size: int

    def artifacts(self) -> dict[str, Artifact]:
        """Each member's record (by its path in the batch): the pack's key and its range in it."""
        return {
            member.relative: Artifact(self.key, member.sha256, member.size, offset)
            for member, offset in zip(self.members, self.offsets, strict=True)
        }


def is_packable(size: int) -> bool:
    return 0 < size < PACK_BELOW


def packs_prefix(batch_id: str) -> str:
    return f"batches/{batch_id}/packs/"


def pack_key(batch_id: str, number: int, members: Sequence[Member]) -> str:
    """``batches/<batch id>/packs/<number>-<16 hex digits>``: the digits name the members (their paths, sizes
    and SHA-256), so a key never names other bytes, whatever a later version's layout."""
    digest = hashlib.sha256()
    for member in members:
        digest.update(f"{member.relative}\0{member.size}\0{member.sha256}\n".encode())
    return f"{packs_prefix(batch_id)}{number:05d}-{digest.hexdigest()[:16]}"


def plan_packs(batch_id: str, inputs: Sequence[Member]) -> tuple[Pack, ...]:
    """The packs of a batch's packable inputs, in their order (see the module for the bounds)."""
    small = [item for item in inputs if is_packable(item.size)]
    per_pack = min(PACK_MAX_INPUTS, max(1, -(-len(small) // PACK_SPREAD)))
    groups: list[list[Member]] = []
    filled = 0
    for item in small:
        if not groups or len(groups[-1]) == per_pack or filled + item.size > PACK_MAX_BYTES:
            groups.append([])
            filled = 0
        groups[-1].append(item)
        filled += item.size
    return tuple(_pack(batch_id, number, group) for number, group in enumerate(groups))


def _pack(batch_id: str, number: int, members: Sequence[Member]) -> Pack:
    offsets, size = [], 0
    for member in members:
        offsets.append(size)
        size += member.size
    return Pack(pack_key(batch_id, number, members), tuple(members), tuple(offsets), size)


def read_pack(pack: Pack) -> Snapshot:
    """The pack's bytes: each member's kept bytes (what planning read and hashed), or its file read again now,
    RequestError naming a file that cannot be read or does not hold what was planned any more (nothing is
    uploaded then). In memory, or a temporary file past a few MiB."""
    # The Snapshot owns the file; typeshed's SpooledTemporaryFile is an IO[bytes] but not a BinaryIO.
    data = cast(BinaryIO, tempfile.SpooledTemporaryFile(max_size=_IN_MEMORY))  # noqa: SIM115
    digest = hashlib.sha256()
    try:
        for member in pack.members:
            chunk = member.data if member.data is not None else _read_member(member)
            digest.update(chunk)
            data.write(chunk)
    except BaseException:
        data.close()
        raise
    data.seek(0)
    return Snapshot(data, digest.hexdigest(), pack.size)


def _read_member(member: Member) -> bytes:
    try:
        with member.path.open("rb") as handle:
            chunk = handle.read(member.size + 1)  # one byte more: a file that grew is seen to
    except OSError as exc:
        raise RequestError(f"--input: {member.path}: cannot be read: {exc.strerror or exc}") from None
    if len(chunk) != member.size or hashlib.sha256(chunk).hexdigest() != member.sha256:
        raise RequestError(
            f"--input: {member.path} changed while the batch was being submitted; run it again"
        )
    return chunk
