"""RQ's bulk enqueue as a command, for the batch benchmark: a fresh Python process that imports RQ, connects
(TLS, the bench's ACL user) and enqueues JOBS jobs of PAYLOAD random bytes each in one ``enqueue_many``, as
``han-worker submit --input DIR`` is a fresh process that imports its clients, connects and submits.

    HAN_BENCH_REDIS=settings.json python -m tests.bench.rq_submit QUEUE JOBS PAYLOAD
"""

from __future__ import annotations

import os
import sys

from rq import Queue

from tests.bench import peers, rq_tasks


def main(argv: list[str]) -> int:
    queue_name, jobs, payload = argv[0], int(argv[1]), int(argv[2])
    queue = Queue(queue_name, connection=peers.connection())
    data = os.urandom(payload)
    queue.enqueue_many([Queue.prepare_data(rq_tasks.TASK, (data,)) for _index in range(jobs)])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
