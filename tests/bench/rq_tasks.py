"""RQ's side of the dispatch comparison: the no-op task, and a SimpleWorker (no fork per job: the
worker class RQ offers on Windows).

    HAN_BENCH_REDIS=settings.json python -m tests.bench.rq_tasks QUEUE
"""

from __future__ import annotations

import sys
import time

from rq import Queue, SimpleWorker, get_current_job

from tests.bench import peers

SYSTEM = "rq"
TASK = "tests.bench.rq_tasks.noop"  # enqueued by name: the benchmark need not import this module


def noop(enqueued: float) -> None:
    started = time.time()
    job = get_current_job()
    assert job is not None
    # The job's own connection: the one SimpleWorker already holds.
    peers.record(job.connection, SYSTEM, enqueued, started, time.time())


def main(argv: list[str]) -> int:
    connection = peers.connection()
    worker = SimpleWorker([Queue(argv[0], connection=connection)], connection=connection)
    # WARNING: RQ logs two lines per job at INFO; we measure dispatch, not logging (ours logs none).
    worker.work(logging_level="WARNING", with_scheduler=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
