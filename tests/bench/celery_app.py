"""Celery's side of the dispatch comparison: the no-op task and a worker with the solo pool (one task
at a time in the worker process), late acknowledgement and a prefetch of one, the settings closest to
ours (a job is acknowledged only after it ran; a worker holds one job at a time).

    HAN_BENCH_REDIS=settings.json python -m tests.bench.celery_app QUEUE NAME
"""

from __future__ import annotations

import sys
import time
from typing import Any

from celery import Celery  # type: ignore[import-untyped]
from celery.signals import worker_ready  # type: ignore[import-untyped]

from tests.bench import peers

SYSTEM = "celery"
TASK = "bench.noop"
READY_KEY = "bench:celery:ready"  # the workers' names once they consume (gossip and mingle are off)

app = Celery("bench")
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,  # no result backend: fire and forget, as labs commonly run it
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name=TASK)  # type: ignore[untyped-decorator]
def noop(enqueued: float) -> None:
    started = time.time()
    peers.record(peers.connection(), SYSTEM, enqueued, started, time.time())


@worker_ready.connect  # type: ignore[untyped-decorator]
def _announce(sender: Any = None, **_kwargs: Any) -> None:
    peers.connection().sadd(READY_KEY, str(sender.hostname))


def main(argv: list[str]) -> int:
    queue, name = argv
    app.conf.broker_url = peers.redis_url()
    app.conf.broker_use_ssl = peers.broker_tls()
    # gossip, mingle and heartbeat are broadcasts between workers; off, so that only dispatch is measured.
    app.worker_main(
        ["worker", "--pool=solo", "--concurrency=1", f"--queues={queue}", f"--hostname={name}@%h",
         "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
