"""What /metrics counts beside the jobs, kept in the ledger (migration 5): the control-plane switches the
workers made, and each elastic pool's scaler at its last tick.

Both live where the figures are read from, so that they cover every worker and scaler wherever it runs and
survive a restart of the control plane. A worker that switches records it in the ledger of the control plane
it switched *to* (the one it can reach); a failover to the Mac is therefore counted by the Mac's ledger and a
fail-back by Pegasus's. Each is a handful of rows that a scrape reads whole: one per (from, to) pair of
sources, one per pool.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from han_worker.store.ledger import Connection, Row

log = logging.getLogger(__name__)

SOURCES = ("pegasus", "mac")  # the ledger's CHECK: the only values a switch's labels take
PAUSE_CAUSES = ("failed_submissions", "failed_starts")  # the ledger's CHECK on scaler_pools.paused_by
# Idle GPU-seconds are counted between two ticks: the GPUs seen idle at the earlier one, for the time between.
# A scaler that was away longer (stopped, restarted, its control plane down) is not credited with that gap.
MIN_IDLE_GAP_CAP_SECONDS = 60.0

_SWITCH = """
INSERT INTO control_plane_switches AS s (from_source, to_source, switches, last_worker_id, last_host)
VALUES (%(from)s, %(to)s, 1, %(worker)s, %(host)s)
ON CONFLICT (from_source, to_source) DO UPDATE SET switches = s.switches + 1, last_at = now(),
    last_worker_id = EXCLUDED.last_worker_id, last_host = EXCLUDED.last_host
"""
_SWITCHES = "SELECT from_source, to_source, switches FROM control_plane_switches"

_TICK = """
INSERT INTO scaler_pools AS p (pool, queues, desired, pending, running, paused_by, reason, idle_gpus)
VALUES (%(pool)s, %(queues)s, %(desired)s, %(pending)s, %(running)s, %(paused_by)s, %(reason)s, %(idle_gpus)s)
ON CONFLICT (pool) DO UPDATE SET
    queues = EXCLUDED.queues, desired = EXCLUDED.desired, pending = EXCLUDED.pending,
    running = EXCLUDED.running, paused_by = EXCLUDED.paused_by, reason = EXCLUDED.reason,
    idle_gpu_seconds = p.idle_gpu_seconds
        + p.idle_gpus * least(greatest(date_part('epoch', now() - p.ticked_at), 0), %(gap_cap)s),
    idle_gpus = EXCLUDED.idle_gpus, ticked_at = now()
"""
_POOLS = """
SELECT pool, queues, desired, pending, running, paused_by, reason, idle_gpus, idle_gpu_seconds, ticked_at
FROM scaler_pools ORDER BY pool
"""


@dataclass(frozen=True)
class SwitchCount:
    from_source: str
    to_source: str
    count: int  # since this ledger began: a counter that survives restarts


@dataclass(frozen=True)
class PoolTick:
    """What a scaler saw and decided at one tick, as it records it."""

    pool: str  # the Slurm job name of the pool's worker jobs
    queues: tuple[str, ...]
    desired: int  # allocations the pool should have (the policy's)
    pending: int  # worker jobs Slurm has not started
    running: int  # worker jobs Slurm started and still holds
    paused_by: str | None  # one of PAUSE_CAUSES, or None while scaling
    reason: str  # the decision's line
    idle_gpus: int  # GPUs of started worker jobs whose worker runs no job (warming up, idle or draining)


@dataclass(frozen=True)
class PoolFigures:
    tick: PoolTick
    idle_gpu_seconds: float  # a counter, up to the last tick
    ticked_at: datetime


def record_switch(
    connection: Connection, from_source: str, to_source: str, worker_id: str, host: str
) -> None:
    """Count one switch of a worker from ``from_source`` to ``to_source``: this connection's control plane."""
    for name, source in (("from_source", from_source), ("to_source", to_source)):
        if source not in SOURCES:
            raise ValueError(f"{name}: {source!r} is not one of {', '.join(SOURCES)}")
    connection.execute(
        _SWITCH, {"from": from_source, "to": to_source, "worker": worker_id[:200], "host": host[:200]}
    )


def read_switches(connection: Connection) -> tuple[SwitchCount, ...]:
    """Every (from, to) pair of sources, zeros included: a counter that appears only at its first switch
    hides that switch from Prometheus's increase()."""
    counts = {(old, new): 0 for old in SOURCES for new in SOURCES}
    for from_source, to_source, count in connection.execute(_SWITCHES):
        counts[(from_source, to_source)] = int(count)
    return tuple(SwitchCount(old, new, count) for (old, new), count in sorted(counts.items()))


def record_tick(connection: Connection, tick: PoolTick, tick_seconds: float) -> None:
    """Rewrite the pool's row; add the GPUs seen idle at the previous tick times the time since (capped)."""
    if tick.paused_by is not None and tick.paused_by not in PAUSE_CAUSES:
        raise ValueError(f"paused_by: {tick.paused_by!r} is not one of {', '.join(PAUSE_CAUSES)}")
    connection.execute(
        _TICK,
        {
            "pool": tick.pool, "queues": list(tick.queues), "desired": tick.desired, "pending": tick.pending,
            "running": tick.running, "paused_by": tick.paused_by, "reason": tick.reason[:1000],
            "idle_gpus": tick.idle_gpus, "gap_cap": max(MIN_IDLE_GAP_CAP_SECONDS, 3 * tick_seconds),
        },
    )  # fmt: skip


def read_pools(connection: Connection) -> tuple[PoolFigures, ...]:
    return tuple(_pool(row) for row in connection.execute(_POOLS))


def _pool(row: Row) -> PoolFigures:
    pool, queues, desired, pending, running, paused_by, reason, idle_gpus, idle_seconds, ticked_at = row
    tick = PoolTick(
        pool, tuple(queues), int(desired), int(pending), int(running), paused_by, reason, int(idle_gpus)
    )
    return PoolFigures(tick, float(idle_seconds), ticked_at)
