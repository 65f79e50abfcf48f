"""A snapshot in Prometheus's text exposition format, through ``prometheus_client``.

Names follow Prometheus's conventions: the ``han_`` prefix, base units (seconds), ``_total`` on counters, Unix
times as ``_timestamp_seconds``. No label takes a job id. The ``worker`` label is a worker process's id: as
many values at once as there are live workers, a new one when a worker restarts; it is what lets a rule see a
worker go. The alert rules in ``monitoring/prometheus/`` are written against these names.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from han_worker.observe.snapshot import WORKER_STATES, Histogram, Snapshot, WorkerFigures
from han_worker.store.tallies import PAUSE_CAUSES, PoolFigures, SwitchCount

log = logging.getLogger(__name__)

_WORKER_LABELS = ("worker", "host", "platform")


class SnapshotCollector(Collector):
    """The metric families of one snapshot (collected once: a scrape takes a snapshot of its own)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        yield from _control_plane(self.snapshot)
        yield from _queues(self.snapshot)
        yield _finished(self.snapshot)
        yield from _timings(self.snapshot)
        yield from _workers(self.snapshot.workers)
        yield _switches(self.snapshot.switches)
        yield from _pools(self.snapshot.pools)


def exposition(snapshot: Snapshot) -> str:
    """The snapshot as the text a ``/metrics`` endpoint answers (content type: prometheus_client's
    CONTENT_TYPE_LATEST)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry).decode()


def _control_plane(snapshot: Snapshot) -> Iterator[Metric]:
    plane = snapshot.control_plane
    info = GaugeMetricFamily(
        "han_control_plane_info",
        "The control plane this snapshot was read from (1).",
        labels=["source", "node"],
    )
    info.add_metric([plane.source, plane.node], 1)
    yield info
    for name, text, value in (
        ("han_control_plane_epoch", "Epoch of the control plane, bumped at every start.", plane.epoch),
        ("han_control_plane_start_time_seconds", "When the control plane started (Unix time).",
         plane.started_at.timestamp()),
        ("han_control_plane_walltime_left_seconds", "Walltime left of the control plane's Slurm job.",
         plane.walltime_left_seconds),
        ("han_control_plane_successors_queued", "Slurm jobs queued to take over at the walltime.",
         plane.successors_queued),
    ):  # fmt: skip
        # unknown is absent, never 0: a rule must not read "no successor" from "no idea"
        if value is not None:
            family = GaugeMetricFamily(name, text, labels=["source"])
            family.add_metric([plane.source], value)
            yield family


def _queues(snapshot: Snapshot) -> Iterator[Metric]:
    families = {
        "waiting": GaugeMetricFamily("han_queue_jobs_waiting", "Jobs queued, not started.", labels=["queue"]),
        "running": GaugeMetricFamily("han_queue_jobs_running", "Jobs running now.", labels=["queue"]),
        "oldest": GaugeMetricFamily(
            "han_queue_oldest_waiting_job_age_seconds",
            "Age of the oldest job waiting to start, since its submission (0: none waits).",
            labels=["queue"],
        ),
    }
    for queue in snapshot.queues:
        families["waiting"].add_metric([queue.queue], queue.waiting)
        families["running"].add_metric([queue.queue], queue.running)
        families["oldest"].add_metric([queue.queue], queue.oldest_waiting_seconds)
    yield from families.values()


def _finished(snapshot: Snapshot) -> Metric:
    family = CounterMetricFamily(
        "han_jobs_finished",
        "Jobs finished, by queue, kind and outcome (succeeded, failed, dead), as the ledger counts them.",
        labels=["queue", "kind", "outcome"],
    )
    for finished in snapshot.finished:
        family.add_metric([finished.queue, finished.kind, finished.outcome], finished.count)
    return family


def _timings(snapshot: Snapshot) -> Iterator[Metric]:
    runs = HistogramMetricFamily(
        "han_job_run_seconds",
        "Run time of the finished jobs' last attempt, by queue and kind, as the ledger holds them.",
        labels=["queue", "kind"],
    )
    attempts = HistogramMetricFamily(
        "han_job_attempts", "Attempts each finished job took, by queue and kind.", labels=["queue", "kind"]
    )
    for timings in snapshot.timings:
        labels = [timings.queue, timings.kind]
        runs.add_metric(labels, _buckets(timings.run_seconds), timings.run_seconds.total)
        attempts.add_metric(labels, _buckets(timings.attempts), timings.attempts.total)
    yield from (runs, attempts)


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    """prometheus_client's buckets: (le, cumulative count; le as client_python writes it, 1.0), then +Inf."""
    finite = [
        (str(float(bound)), float(count))
        for bound, count in zip(histogram.bounds, histogram.buckets, strict=True)
    ]
    return [*finite, ("+Inf", float(histogram.count))]


def _workers(workers: Iterable[WorkerFigures]) -> Iterator[Metric]:
    workers = list(workers)
    counts = GaugeMetricFamily(
        "han_workers", "Live workers by state (busy, idle, draining), platform and host.",
        labels=["state", "platform", "host"],
    )  # fmt: skip
    by_kind = Counter((worker.state, worker.platform, worker.host) for worker in workers)
    for worker in workers:  # every state of every (platform, host) seen: a state that empties reads 0
        for state in WORKER_STATES:
            by_kind.setdefault((state, worker.platform, worker.host), 0)
    for (state, platform, host), count in sorted(by_kind.items()):
        counts.add_metric([state, platform, host], count)
    yield counts
    yield from _per_worker(workers)


def _per_worker(workers: list[WorkerFigures]) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "han_worker_up", "A worker registered and heartbeating (1).", labels=_WORKER_LABELS
    )
    draining = GaugeMetricFamily(
        "han_worker_draining", "1 while the worker drains (leaving on purpose).", labels=_WORKER_LABELS
    )
    walltime = GaugeMetricFamily(
        "han_worker_walltime_left_seconds", "Walltime left of the worker's Slurm job.", labels=_WORKER_LABELS
    )
    busy = GaugeMetricFamily(
        "han_worker_current_job_seconds",
        "How long the worker's job in flight has run.",
        labels=_WORKER_LABELS,
    )
    for worker in workers:
        labels = [worker.worker_id, worker.host, worker.platform]
        up.add_metric(labels, 1)
        draining.add_metric(labels, int(worker.state == "draining"))
        if worker.walltime_left_seconds is not None:
            walltime.add_metric(labels, worker.walltime_left_seconds)
        if worker.job_seconds is not None:
            busy.add_metric(labels, worker.job_seconds)
    yield from (up, draining, walltime, busy)


def _switches(switches: Iterable[SwitchCount]) -> Metric:
    family = CounterMetricFamily(
        "han_worker_control_plane_switches",
        "Workers' switches to this control plane, by the source they left and this one's (pegasus to mac: "
        "a failover; mac to pegasus: a fail-back; pegasus to pegasus: a new epoch), as its ledger counts.",
        labels=["from_source", "to_source"],
    )
    for switch in switches:
        family.add_metric([switch.from_source, switch.to_source], switch.count)
    return family


def _pools(pools: Iterable[PoolFigures]) -> Iterator[Metric]:
    """Each elastic pool as its scaler recorded its last tick; ``han_scaler_last_tick_timestamp_seconds`` says
    when (a scaler that stopped leaves its last figures)."""
    gauges = {
        "desired": GaugeMetricFamily(
            "han_scaler_desired_worker_jobs", "Worker jobs the pool should have (the scaler's decision).",
            labels=["pool"],
        ),
        "pending": GaugeMetricFamily(
            "han_scaler_pending_worker_jobs", "The pool's worker jobs Slurm has not started.", labels=["pool"]
        ),
        "running": GaugeMetricFamily(
            "han_scaler_running_worker_jobs", "The pool's worker jobs Slurm started.", labels=["pool"]
        ),
        "ticked": GaugeMetricFamily(
            "han_scaler_last_tick_timestamp_seconds", "When the scaler last decided (Unix time).",
            labels=["pool"],
        ),
    }  # fmt: skip
    paused = GaugeMetricFamily(
        "han_scaler_paused",
        "1 while the pool is paused for this reason (failed_submissions, failed_starts) until resumed.",
        labels=["pool", "reason"],
    )
    idle = CounterMetricFamily(
        "han_scaler_idle_gpu_seconds",
        "GPU-seconds the pool's started worker jobs held without running a job (warming up, idle, draining).",
        labels=["pool"],
    )
    queues = GaugeMetricFamily(
        "han_scaler_pool_queue_info", "The queues a pool's workers serve (1).", labels=["pool", "queue"]
    )
    for figures in pools:
        tick, pool = figures.tick, [figures.tick.pool]
        for name, value in (("desired", tick.desired), ("pending", tick.pending), ("running", tick.running),
                            ("ticked", figures.ticked_at.timestamp())):  # fmt: skip
            gauges[name].add_metric(pool, value)
        for cause in PAUSE_CAUSES:
            paused.add_metric([tick.pool, cause], int(tick.paused_by == cause))
        idle.add_metric(pool, figures.idle_gpu_seconds)
        for queue in tick.queues:
            queues.add_metric([tick.pool, queue], 1)
    yield from (*gauges.values(), paused, idle, queues)
