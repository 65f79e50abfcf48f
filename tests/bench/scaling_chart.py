"""The scaling section's picture (issue 20): backlog, workers by state and pending allocations over time, one
column per pool (elastic beside fixed), drawn with matplotlib (the pose extras' dependency) into an SVG.

Pure: a :class:`Timeline` per pool in, a file out; no Slurm, no ledger. :mod:`tests.bench.scaling` builds the
timelines from what it measured and keeps them in the report's figures (:meth:`Timeline.figures`), so a
report's picture can be drawn again from its JSON (:meth:`Timeline.from_figures`).

Every series is a step function: a point ``(t, value)`` holds from ``t`` (seconds since the burst's
submission) until the next point.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on the testbed; before pyplot is imported

import matplotlib.pyplot as plt  # after the backend is chosen
from matplotlib.axes import Axes

Point = tuple[float, int]
DIGITS = 1  # tenths of a second: squeue is sampled every 0.25 s, the ledger's times are finer than needed

BACKLOG = "jobs waiting (submitted, not started: ledger)"
BUSY = "workers running a job (ledger)"
IDLE = "worker jobs running, idle or starting (squeue)"
PENDING = "worker jobs pending in Slurm (squeue)"
MAKESPAN = "burst drained (makespan)"
X_LABEL = "seconds since the burst was submitted"
BACKLOG_AXIS, WORKERS_AXIS = "jobs waiting", "worker jobs"
COLOURS = {BACKLOG: "tab:red", BUSY: "tab:green", IDLE: "tab:orange", PENDING: "tab:blue", MAKESPAN: "black"}


@dataclass(frozen=True)
class Timeline:
    """One pool's burst over time: what the picture draws and the report keeps."""

    label: str  # the column's title: "elastic", "fixed array of 4"
    backlog: list[Point]  # jobs submitted and not yet started (each job's first attempt, the ledger)
    busy: list[Point]  # attempts running at once: workers running a job (the ledger)
    running: list[Point]  # the pool's worker jobs RUNNING in Slurm (squeue)
    pending: list[Point]  # the pool's worker jobs PENDING in Slurm (squeue)
    drained: float  # the last job finished: the makespan

    def figures(self) -> dict[str, object]:
        """Compact for the JSON report: each series as ``[[t, value], ...]``, t in tenths of a second."""
        series = {name: [[t, value] for t, value in getattr(self, name)] for name in SERIES}
        return {"label": self.label, "drained": round(self.drained, DIGITS), **series}

    @classmethod
    def from_figures(cls, figures: Mapping[str, object]) -> Timeline:
        """The timeline :meth:`figures` wrote; ValueError naming the field otherwise."""
        label, drained = figures.get("label"), figures.get("drained")
        if not isinstance(label, str) or not isinstance(drained, int | float):
            raise ValueError("a timeline needs 'label' (a string) and 'drained' (seconds)")
        backlog, busy, running, pending = (_points(figures.get(name), name) for name in SERIES)
        return cls(label, backlog, busy, running, pending, float(drained))


SERIES = ("backlog", "busy", "running", "pending")


def _points(value: object, name: str) -> list[Point]:
    if not isinstance(value, list) or not all(
        isinstance(point, list | tuple) and len(point) == 2 for point in value
    ):
        raise ValueError(f"timeline series '{name}' is not a list of [seconds, count] pairs")
    return [(float(t), int(count)) for t, count in value]


# -- series from measurements ------------------------------------------------------------------------


def steps(samples: Iterable[Point]) -> list[Point]:
    """Samples (in time order) as a step function: only the points where the value changes, times rounded.
    Samples taken before the burst (t < 0) hold at t = 0."""
    points: list[Point] = []
    for t, value in samples:
        at = max(0.0, round(t, DIGITS))
        if points and points[-1][0] == at:
            points[-1] = (at, value)  # a later sample in the same tenth wins
        elif not points or points[-1][1] != value:
            points.append((at, value))
    return _merged(points)


def _merged(points: list[Point]) -> list[Point]:
    """Drop a point that repeats its predecessor's value (left behind when a later sample overwrote one)."""
    merged: list[Point] = []
    for point in points:
        if not merged or merged[-1][1] != point[1]:
            merged.append(point)
    return merged


def backlog_steps(jobs: int, started: Iterable[float]) -> list[Point]:
    """``jobs`` submitted at t = 0, minus those started by t (``started``: each job's first start)."""
    waiting, samples = jobs, [(0.0, jobs)]
    for t in sorted(started):
        waiting -= 1
        samples.append((t, waiting))
    return steps(samples)


def busy_steps(attempts: Iterable[tuple[float, float]]) -> list[Point]:
    """Attempts running at once, from their (started, finished); an end before a start at the same time."""
    events = sorted([(finished, -1) for _started, finished in attempts] + [(s, 1) for s, _f in attempts])
    running, samples = 0, [(0.0, 0)]
    for t, change in events:
        running += change
        samples.append((t, running))
    return steps(samples)


def value_at(points: Sequence[Point], t: float) -> int:
    """The step function's value at ``t``: the last point at or before it, 0 before the first."""
    value = 0
    for at, point_value in points:
        if at > t:
            break
        value = point_value
    return value


# -- the picture -------------------------------------------------------------------------------------


def _series(timeline: Timeline) -> list[list[Point]]:
    return [timeline.backlog, timeline.busy, timeline.running, timeline.pending]


def _end(timeline: Timeline) -> float:
    return max([timeline.drained, *(t for points in _series(timeline) for t, _value in points)])


def _draw_backlog(axes: Axes, timeline: Timeline, end: float) -> None:
    points = timeline.backlog or [(0.0, 0)]
    times = [t for t, _value in points] + [end]
    values = [value for _t, value in points] + [points[-1][1]]
    axes.step(times, values, where="post", color=COLOURS[BACKLOG], label=BACKLOG)
    axes.set_ylabel(BACKLOG_AXIS)


def _draw_workers(axes: Axes, timeline: Timeline, end: float) -> None:
    """Stacked: busy at the bottom, then the allocated rest (idle or starting), then pending in Slurm."""
    grid = sorted({0.0, end, *(t for points in _series(timeline)[1:] for t, _v in points)})
    busy = [value_at(timeline.busy, t) for t in grid]
    running = [max(value_at(timeline.running, t), b) for t, b in zip(grid, busy, strict=True)]
    pending = [r + value_at(timeline.pending, t) for t, r in zip(grid, running, strict=True)]
    floor = [0] * len(grid)
    for label, lower, upper in ((BUSY, floor, busy), (IDLE, busy, running), (PENDING, running, pending)):
        axes.fill_between(grid, lower, upper, step="post", color=COLOURS[label], alpha=0.6, label=label,
                          linewidth=0)  # fmt: skip
    axes.set_ylabel(WORKERS_AXIS)
    axes.set_xlabel(X_LABEL)


def _mark_makespan(axes: Axes, timeline: Timeline, labelled: bool) -> None:
    axes.axvline(timeline.drained, color=COLOURS[MAKESPAN], linestyle="--", linewidth=1,
                 label=MAKESPAN if labelled else "_makespan")  # fmt: skip


def draw(timelines: Sequence[Timeline], path: Path, title: str) -> Path:
    """Draw one column per timeline (backlog above, workers by state below, the makespan marked, shared axes)
    into ``path`` (SVG or PNG, by its suffix); returns ``path``."""
    if not timelines:
        raise ValueError("no timeline to draw")
    end = max(_end(timeline) for timeline in timelines) * 1.02
    # Text as <text> elements, not outlines: a smaller SVG whose words a reader (and a test) can find.
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "han-bench"}):
        figure, grid = plt.subplots(2, len(timelines), sharex=True, sharey="row", squeeze=False,
                                    figsize=(5.5 * len(timelines), 6.5), layout="constrained")  # fmt: skip
        try:
            for column, timeline in enumerate(timelines):
                top, bottom = grid[0][column], grid[1][column]
                top.set_title(f"{timeline.label}: drained at {timeline.drained:.1f} s")
                _draw_backlog(top, timeline, end)
                _draw_workers(bottom, timeline, end)
                for axes in (top, bottom):
                    _mark_makespan(axes, timeline, labelled=axes is top)
                    axes.set_xlim(0, end)
                    axes.grid(alpha=0.3)
            handles = [*grid[0][0].get_legend_handles_labels()[0], *grid[1][0].get_legend_handles_labels()[0]]
            figure.suptitle(title)
            figure.legend(handles=handles, loc="outside lower center", ncols=3, fontsize="small")
            figure.savefig(path)
        finally:
            plt.close(figure)
    return path
