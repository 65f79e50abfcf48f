"""Queues in Redis Streams, and the worker registry.

One stream per queue (``han:queue:<queue>``), read by one consumer group; an entry carries only the
job id, the ledger holds the rest. An entry stays pending until its worker acknowledges it, which
happens after the ledger commit and the artifact upload; then it is deleted as well, so a stream
holds the jobs not yet done (and, for a moment, finished ones whose acknowledgement is owed, below)
and the reconciler can compare it with the ledger cheaply.

A worker keeps its entry's idle time near zero with ``XCLAIM ... JUSTID`` to itself (the lease);
others take over entries idle past the lease with ``XAUTOCLAIM``. Every key lives under ``han:``:
the worker's Redis user may touch nothing else.

Under load an acknowledgement can be owed (:meth:`Queues.owe`) rather than sent: it then rides with the
next command of this client that goes to Redis anyway (the next read, an acknowledgement), saving a round
trip per job; :meth:`Queues.flush_owed` sends it alone (the heartbeat, a stop, a switch). Only an entry
whose result the ledger already holds is owed: should the worker die first, the entry is reclaimed after
a lease and the ledger's claim refuses the finished job, so it is acknowledged then and never run again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis
from redis.client import Pipeline

log = logging.getLogger(__name__)

STREAM_PREFIX = "han:queue:"
WORKER_PREFIX = "han:worker:"
GROUP = "workers"
_T = TypeVar("_T")


@dataclass(frozen=True)
class Delivery:
    """One stream entry handed to this worker: which job, and the entry to acknowledge."""

    queue: str
    entry_id: str
    job_id: str


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    length: int  # entries in the stream: jobs not done yet
    waiting: int  # not yet delivered to any worker
    in_flight: int  # delivered, not acknowledged

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def stream_key(queue: str) -> str:
    return f"{STREAM_PREFIX}{queue}"


def _queue_of(stream: str) -> str:
    return stream.removeprefix(STREAM_PREFIX)


def _is_nogroup(exc: redis.ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


class Queues:
    """Stream and registry operations over one Redis client (``decode_responses=True``)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._cursors: dict[str, str] = {}
        self._owed: list[Delivery] = []
        self._owed_lock = threading.Lock()  # the heartbeat thread flushes what the main thread owes

    def close(self) -> None:
        self.client.close()

    # -- acknowledgements ----------------------------------------------------------------------------

    def owe(self, delivery: Delivery) -> None:
        """Acknowledge ``delivery`` with this client's next read or acknowledgement (or flush_owed)."""
        with self._owed_lock:
            self._owed.append(delivery)

    @property
    def owed(self) -> list[Delivery]:
        with self._owed_lock:
            return list(self._owed)

    def _with_owed(self, commands: Callable[[Pipeline], None]) -> list[Any]:
        """One round trip: the owed acknowledgements, then ``commands``; the replies of ``commands``.

        An acknowledgement that Redis refused is dropped (it no-ops on an entry Redis lost, so a refusal
        would come again); one whose round trip failed stays owed."""
        with self._owed_lock:
            owed, self._owed = self._owed, []
        pipe = self.client.pipeline(transaction=False)
        for delivery in owed:
            pipe.xack(stream_key(delivery.queue), GROUP, delivery.entry_id)
            pipe.xdel(stream_key(delivery.queue), delivery.entry_id)
        commands(pipe)
        try:
            replies = pipe.execute(raise_on_error=False)
        except BaseException:
            with self._owed_lock:
                self._owed[:0] = owed
            raise
        for reply in replies[: 2 * len(owed)]:
            if isinstance(reply, Exception):
                log.warning("Redis refused an acknowledgement: %s", reply)
        own = replies[2 * len(owed) :]
        for reply in own:
            if isinstance(reply, Exception):
                raise reply
        return own

    def flush_owed(self) -> None:
        """Send the owed acknowledgements now, if any."""
        if self.owed:
            self._with_owed(lambda _pipe: None)

    def ensure_group(self, queue: str) -> None:
        """Create the stream's consumer group (and the stream); from id 0, so no entry is skipped."""
        try:
            self.client.xgroup_create(stream_key(queue), GROUP, id="0", mkstream=True)
            log.info("created consumer group %s on %s", GROUP, stream_key(queue))
        except redis.ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    def _grouped(self, queues: Iterable[str], operation: Callable[[], _T]) -> _T:
        """Run ``operation``; if Redis lost the stream or its group (a flush, a restart without data),
        create them again and retry once. The reconciler puts the lost jobs back from the ledger."""
        try:
            return operation()
        except redis.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            log.warning("Redis lost a stream or its group (%s); creating it again", exc)
            for queue in queues:
                self.ensure_group(queue)
            return operation()

    def enqueue(self, queue: str, job_id: str) -> str:
        return str(self.client.xadd(stream_key(queue), {"job": job_id}))

    def enqueue_many(self, items: Sequence[tuple[str, str]]) -> None:
        """(queue, job id) pairs in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for queue, job_id in items:
            pipe.xadd(stream_key(queue), {"job": job_id})
        pipe.execute()

    def _deliveries(self, queue: str, entries: Sequence[Any]) -> list[Delivery]:
        found = []
        for entry_id, fields in entries:
            job_id = (fields or {}).get("job")
            if job_id:
                found.append(Delivery(queue, entry_id, job_id))
            elif fields is not None:  # None: deleted meanwhile, XAUTOCLAIM drops it from the pending list
                log.warning("%s entry %s has no job id; dropping it", stream_key(queue), entry_id)
                self.done(Delivery(queue, entry_id, ""))
        return found

    def next_delivery(
        self, queues: Sequence[str], consumer: str, block_seconds: float | None
    ) -> Delivery | None:
        """The next new entry of any of ``queues``, waiting up to ``block_seconds`` for one (None: not)."""
        streams = {stream_key(queue): ">" for queue in queues}

        def read() -> Any:
            block = None if block_seconds is None else max(1, round(block_seconds * 1000))

            if not self.owed:  # a plain command: no pipeline to build when there is nothing to carry
                return self.client.xreadgroup(GROUP, consumer, streams, count=1, block=block)  # type: ignore[arg-type]

            def reading(pipe: Pipeline) -> None:
                pipe.xreadgroup(GROUP, consumer, streams, count=1, block=block)  # type: ignore[arg-type]

            # In the round trip of the owed acknowledgements: they go in before a blocking read waits.
            return self._with_owed(reading)[0]

        for stream, entries in self._grouped(queues, read) or []:
            for delivery in self._deliveries(_queue_of(stream), entries):
                return delivery
        return None

    def reclaim(self, queue: str, consumer: str, min_idle_seconds: float) -> Delivery | None:
        """Take over one entry whose worker has not renewed its lease for ``min_idle_seconds``."""
        cursor = self._cursors.get(queue, "0-0")

        def claim() -> Any:
            idle = round(min_idle_seconds * 1000)
            return self.client.xautoclaim(stream_key(queue), GROUP, consumer, idle, cursor, count=1)

        reply = cast(list[Any], self._grouped([queue], claim))
        self._cursors[queue] = reply[0]
        found = self._deliveries(queue, reply[1])
        return found[0] if found else None

    def renew(self, delivery: Delivery, consumer: str) -> bool:
        """Reset the entry's idle time (our lease); False when it is no longer ours or gone."""
        claimed = self._grouped(
            [delivery.queue],
            lambda: self.client.xclaim(
                stream_key(delivery.queue), GROUP, consumer, 0, [delivery.entry_id], justid=True
            ),
        )
        return bool(claimed)

    def done(self, delivery: Delivery) -> None:
        """Acknowledge and delete the entry, and any owed, in one round trip (no-ops if Redis lost it)."""
        self.owe(delivery)
        self.flush_owed()

    def job_ids(self, queue: str) -> set[str]:
        """Every job id in the stream: pending (delivered, not done) and waiting alike."""
        found: set[str] = set()
        start = "-"
        while True:
            batch = cast(list[Any], self.client.xrange(stream_key(queue), start, "+", count=1000))
            found.update(fields.get("job", "") for _entry_id, fields in batch)
            if len(batch) < 1000:
                return found
            start = "(" + batch[-1][0]

    def depth(self, queue: str) -> QueueDepth:
        # Done entries are deleted, so the stream is exactly the waiting entries plus the pending ones
        # (XINFO's lag cannot be trusted once entries were deleted).
        key = stream_key(queue)
        length = int(self.client.xlen(key))
        groups: list[dict[str, Any]] = self.client.xinfo_groups(key) if length else []
        pending = sum(int(info.get("pending") or 0) for info in groups if info.get("name") == GROUP)
        return QueueDepth(queue, length, max(0, length - pending), pending)

    def known_queues(self) -> list[str]:
        return sorted(_queue_of(key) for key in self.client.scan_iter(match=f"{STREAM_PREFIX}*", count=100))

    def forget_consumer(self, queues: Iterable[str], consumer: str) -> None:
        """Remove our consumer from each group, unless it still holds entries (others reclaim those)."""
        for queue in queues:
            try:
                consumers: list[dict[str, Any]] = self.client.xinfo_consumers(stream_key(queue), GROUP)
            except redis.ResponseError:
                continue
            if any(info.get("name") == consumer and not info.get("pending") for info in consumers):
                self.client.xgroup_delconsumer(stream_key(queue), GROUP, consumer)

    # -- the worker registry -------------------------------------------------------------------------

    def register(self, worker_id: str, fields: Mapping[str, str | int | float], ttl: float) -> None:
        key = f"{WORKER_PREFIX}{worker_id}"
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping=dict(fields))  # type: ignore[arg-type]
        pipe.expire(key, max(1, round(ttl)))
        pipe.execute()

    def unregister(self, worker_id: str) -> None:
        self.client.delete(f"{WORKER_PREFIX}{worker_id}")

    def workers(self) -> list[dict[str, str]]:
        """Every live worker's registry entry (entries of dead workers expire)."""
        keys = sorted(self.client.scan_iter(match=f"{WORKER_PREFIX}*", count=100))
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [
            dict(entry, id=_worker_id(key)) for key, entry in zip(keys, pipe.execute(), strict=True) if entry
        ]


def _worker_id(key: str) -> str:
    return key.removeprefix(WORKER_PREFIX)
