"""What ``han-worker top`` draws: the tables of a snapshot, as rich renderables for a terminal and as plain
lines for a pipe, from the same rows. Pure: the command (han_worker/cli/top.py) reads the snapshots."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from han_worker.observe.snapshot import Snapshot
from han_worker.store.tallies import PoolFigures

log = logging.getLogger(__name__)

ERROR_WIDTH = 100  # a failure's error is cut to its first line and this many characters


@dataclass
class ViewState:
    """What the view remembers between refreshes: the last snapshot, the rates it allows, and since when the
    control plane has not answered (None: it answers)."""

    snapshot: Snapshot | None = None
    rates: dict[str, float] = field(default_factory=dict)  # queue -> jobs finished per second
    unreachable_since: datetime | None = None
    reason: str = ""

    def update(self, snapshot: Snapshot) -> None:
        previous = self.snapshot
        if previous is not None and previous.control_plane.source == snapshot.control_plane.source:
            self.rates = _rates(previous, snapshot)
        else:
            self.rates = {}
        self.snapshot, self.unreachable_since, self.reason = snapshot, None, ""

    def lost(self, now: datetime, reason: str) -> None:
        if self.unreachable_since is None:
            self.unreachable_since = now
        self.reason = reason


def _finished_by_queue(snapshot: Snapshot) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for finished in snapshot.finished:
        totals[finished.queue] += finished.count
    return totals


def _rates(before: Snapshot, after: Snapshot) -> dict[str, float]:
    seconds = (after.taken_at - before.taken_at).total_seconds()
    if seconds <= 0:
        return {}
    old, new = _finished_by_queue(before), _finished_by_queue(after)
    return {queue: max(0, count - old.get(queue, 0)) / seconds for queue, count in new.items()}


def duration(seconds: float | None) -> str:
    """1h 02m, 4m 05s, 12s; "-" when unknown."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _clock(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone().strftime("%H:%M:%S")


def _one_line(text: str | None) -> str:
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first if len(first) <= ERROR_WIDTH else first[: ERROR_WIDTH - 1] + "…"


def headline(state: ViewState) -> str:
    snapshot = state.snapshot
    if snapshot is None:
        return "control plane: not read yet"
    plane = snapshot.control_plane
    successors = {None: "", 0: ", no successor queued"}.get(
        plane.successors_queued, f", {plane.successors_queued} successor(s) queued"
    )
    walltime = (
        "no walltime"
        if plane.walltime_left_seconds is None
        else f"walltime left {duration(plane.walltime_left_seconds)}"
    )
    return (
        f"control plane: {plane.source} epoch {plane.epoch} on {plane.node}, "
        f"up since {_clock(plane.started_at)}, {walltime}{successors}; read at {_clock(snapshot.taken_at)}"
    )


def unreachable_line(state: ViewState) -> str | None:
    if state.unreachable_since is None:
        return None
    return f"control plane unreachable since {_clock(state.unreachable_since)}: {state.reason}"


QUEUE_HEADER = ("queue", "waiting", "oldest", "running", "done/s")
WORKER_HEADER = (
    "host",
    "platform",
    "state",
    "job",
    "for",
    "walltime left",
    "control plane",
    "done",
    "worker",
)
FAILURE_HEADER = ("at", "kind", "queue", "status", "attempts", "job", "error")
SCALER_HEADER = ("pool", "queues", "desired", "pending", "running", "state", "ticked", "why")


def queue_rows(state: ViewState) -> list[tuple[str, ...]]:
    if state.snapshot is None:
        return []
    return [
        (queue.queue, str(queue.waiting), duration(queue.oldest_waiting_seconds) if queue.waiting else "-",
         str(queue.running), f"{state.rates[queue.queue]:.1f}" if queue.queue in state.rates else "-")
        for queue in state.snapshot.queues
    ]  # fmt: skip


def worker_rows(state: ViewState) -> list[tuple[str, ...]]:
    if state.snapshot is None:
        return []
    return [
        (worker.host, worker.platform, worker.state, (worker.current_job or "")[:8] or "-",
         duration(worker.job_seconds), duration(worker.walltime_left_seconds),
         f"{worker.control_plane} {worker.epoch if worker.epoch is not None else '?'}", str(worker.jobs_done),
         worker.worker_id)
        for worker in state.snapshot.workers
    ]  # fmt: skip


def failure_rows(state: ViewState) -> list[tuple[str, ...]]:
    if state.snapshot is None:
        return []
    return [
        (_clock(failure.finished_at), failure.kind, failure.queue, failure.status, str(failure.attempts),
         failure.job_id[:8], _one_line(failure.error))
        for failure in state.snapshot.failures
    ]  # fmt: skip


def scaler_rows(state: ViewState) -> list[tuple[str, ...]]:
    """Each elastic pool as its scaler recorded its last tick: how many worker jobs, and why (not) scaling."""
    if state.snapshot is None:
        return []
    return [_scaler_row(pool, state.snapshot.taken_at) for pool in state.snapshot.pools]


def _scaler_row(pool: PoolFigures, now: datetime) -> tuple[str, ...]:
    tick = pool.tick
    return (
        tick.pool, ",".join(tick.queues), str(tick.desired), str(tick.pending), str(tick.running),
        f"paused ({tick.paused_by})" if tick.paused_by else "scaling",
        f"{duration(max(0.0, (now - pool.ticked_at).total_seconds()))} ago", _one_line(tick.reason),
    )  # fmt: skip


def switches_line(state: ViewState) -> str | None:
    """The workers' switches to this control plane, as its ledger counts them; None when there were none."""
    counted = [item for item in state.snapshot.switches if item.count] if state.snapshot else []
    if not counted:
        return None
    pairs = ", ".join(f"{item.from_source} -> {item.to_source} {item.count}" for item in counted)
    return f"switches to this control plane: {pairs}"


def _table(title: str, header: Sequence[str], rows: Sequence[tuple[str, ...]], numeric: int = 0) -> Table:
    table = Table(title=title, title_justify="left", expand=False, pad_edge=False)
    for index, name in enumerate(header):
        table.add_column(name, justify="right" if 0 < index <= numeric else "left", overflow="ellipsis")
    for row in rows:
        table.add_row(*row)
    return table


def render(state: ViewState, interval: float) -> RenderableType:
    """The whole screen, for rich.live.Live."""
    parts: list[RenderableType] = [Text(headline(state), style="bold")]
    lost = unreachable_line(state)
    if lost is not None:
        parts.append(Text(lost, style="bold red"))
    workers = state.snapshot.workers if state.snapshot else ()
    parts += [
        _table("queues", QUEUE_HEADER, queue_rows(state), numeric=4),
        _table(f"workers ({len(workers)})", WORKER_HEADER, worker_rows(state)),
        _table("recent failures", FAILURE_HEADER, failure_rows(state)),
    ]
    scalers = scaler_rows(state)
    if scalers:
        parts.append(_table("scalers", SCALER_HEADER, scalers, numeric=4))
    switches = switches_line(state)
    if switches is not None:
        parts.append(Text(switches))
    parts.append(Text(f"every {interval:g}s; q or Ctrl-C quits", style="dim"))
    return Group(*parts)


def _plain_table(title: str, header: Sequence[str], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [f"{title}:"]
    for row in (header, *rows):
        lines.append(
            "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return lines


def render_plain(state: ViewState) -> str:
    """The same picture as plain lines: for a pipe, a log, or ``--once``."""
    lines = [headline(state)]
    lost = unreachable_line(state)
    if lost is not None:
        lines.append(lost)
    workers = state.snapshot.workers if state.snapshot else ()
    lines += _plain_table("queues", QUEUE_HEADER, queue_rows(state))
    lines += _plain_table(f"workers ({len(workers)})", WORKER_HEADER, worker_rows(state))
    lines += _plain_table("recent failures", FAILURE_HEADER, failure_rows(state))
    scalers = scaler_rows(state)
    if scalers:
        lines += _plain_table("scalers", SCALER_HEADER, scalers)
    switches = switches_line(state)
    if switches is not None:
        lines.append(switches)
    return "\n".join(lines)
