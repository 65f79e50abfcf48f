"""The ledger is the source of truth: put back in its stream every job that Redis lost.

Redis can lose entries (a restart without its append-only file, a flush, an operator's mistake);
the ledger cannot lose a committed job. So a worker compares the two at start and every
``reconcile_seconds``: a job the ledger says is queued (for longer than a lease, so a submitter
between its commit and its XADD is not raced) or running without a heartbeat for a lease, and that
no stream holds, is enqueued again. A duplicate entry is harmless: the ledger's guarded claim lets
only one of them start the next attempt.
"""

from __future__ import annotations

import logging

from han_worker.store.link import Link

log = logging.getLogger(__name__)


def reconcile(link: Link, lease: float) -> int:
    """Re-enqueue the jobs the ledger expects in a stream that Redis no longer has; returns how many."""
    by_queue: dict[str, list[str]] = {}
    for job_id, queue in link.ledger.orphan_candidates(lease=lease, min_age=lease):
        by_queue.setdefault(queue, []).append(job_id)
    missing = []
    for queue, job_ids in by_queue.items():
        present = link.queues.job_ids(queue)
        missing += [(queue, job_id) for job_id in job_ids if job_id not in present]
    if missing:
        link.queues.enqueue_many(missing)
        log.warning("reconciler: re-enqueued %d job(s) Redis had lost", len(missing))
    return len(missing)
