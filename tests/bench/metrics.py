"""What a Prometheus scrape of the control plane's /metrics costs with a full ledger: 10,000 jobs waiting and
100,000 finished (smoke: 1,000 and 10,000), written straight into the ledger of a control plane of this
section's own (on 127.0.0.82, its own state directory, so that no other section's figures see those rows).

Timed two ways: a whole scrape as Prometheus makes it (HTTPS with basic auth to the supervisor's /metrics,
a new connection each time, as Prometheus's scrape after an idle keep-alive), and the snapshot alone in this
process (han_worker.observe.snapshot.take_snapshot over the same ledger and registry), so that the gap is the
server's and TLS's share. Then one worker's no-op dispatch on that ledger (as the dispatch section runs it),
without scrapes and with a scrape every second, alternating: the scrapes' queries must not slow the claims.
The goal: a scrape under 100 ms.
"""

from __future__ import annotations

import base64
import http.client
import shutil
import ssl
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from han_worker.observe.snapshot import take_snapshot
from han_worker.selection.endpoints import parse_endpoints
from tests.bench import dispatch, report
from tests.bench.context import Context
from tests.integration.control_planes import RunningControlPlane, start_control_plane

ADDRESS = "127.0.0.82"  # tests/integration/test_metrics.py's too; each picks free ports there, so both can run at once
GOAL_MS = 100.0
SCRAPES = 30  # per repetition
# The rows, as a lab's ledger holds them after months: most jobs succeeded, 2 % failed, some took retries.
_FILL = """
INSERT INTO jobs (id, kind, queue, status, attempts, max_attempts, created_at, started_at, finished_at, error)
SELECT gen_random_uuid(), kind, %(queue)s, status, attempts, 3, created, created + interval '1 second',
       CASE WHEN status = 'queued' THEN NULL ELSE created + make_interval(secs => 1 + i %% 600) END,
       CASE WHEN status = 'failed' THEN 'failed on purpose' END
FROM (SELECT i, (ARRAY['noop', 'sleep', 'fail'])[1 + i %% 3] AS kind,
             CASE WHEN %(status)s = 'queued' THEN 'queued' WHEN i %% 50 = 0 THEN 'failed' ELSE 'succeeded' END
               AS status,
             CASE WHEN %(status)s = 'queued' THEN 0 ELSE 1 + (i %% 7 = 0)::int END AS attempts,
             now() - make_interval(secs => i) AS created
      FROM generate_series(1, %(count)s) AS i) AS rows
RETURNING id::text
"""
# The waiting jobs' queue: one no worker of this section serves (as a lab's gpu queue while its Windows host is
# off), so that the dispatch measured below runs only its own jobs.
BACKLOG_QUEUE = "backlog"


def fill(control_plane: RunningControlPlane, waiting: int, finished: int) -> float:
    """Write the rows in two statements, and the waiting ones in their Redis stream too (as a submission
    puts them there: a worker's reconciler would otherwise enqueue them itself); the seconds it took."""
    started = time.monotonic()
    link = control_plane.client_link()  # migrates the ledger
    try:
        connection = link.ledger.connection()
        connection.execute(_FILL, {"status": "finished", "count": finished, "queue": "noop"})
        queued = connection.execute(_FILL, {"status": "queued", "count": waiting, "queue": BACKLOG_QUEUE})
        link.queues.enqueue_many([(BACKLOG_QUEUE, job_id) for (job_id,) in queued.fetchall()])
        connection.execute("ANALYZE jobs")
    finally:
        link.close()
    return time.monotonic() - started


def scraper(control_plane: RunningControlPlane) -> Callable[[], int]:
    """One scrape as Prometheus makes it; returns the body's length (and fails on anything but 200)."""
    endpoints = parse_endpoints(control_plane.endpoints, "endpoints.json")
    assert endpoints.metrics is not None
    host, port = endpoints.metrics.host, endpoints.metrics.port
    tls = ssl.create_default_context(cafile=str(control_plane.state_dir / "metrics-ca.pem"))
    password = (control_plane.state_dir / "metrics-password").read_text()
    authorization = "Basic " + base64.b64encode(f"han_metrics:{password}".encode()).decode()

    def scrape() -> int:
        connection = http.client.HTTPSConnection(host, port, context=tls, timeout=30)
        try:
            connection.request("GET", "/metrics", headers={"Authorization": authorization})
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"/metrics answered {response.status}: {body[:200]!r}")
        return len(body)

    return scrape


def timed_ms(action: Callable[[], object], count: int) -> list[float]:
    action()  # warm: the supervisor's link to the ledger and Redis is opened by the first scrape
    samples = []
    for _index in range(count):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


@contextmanager
def scraping(scrape: Callable[[], int], interval: float = 1.0) -> Iterator[list[float]]:
    """A scrape every ``interval`` seconds from a thread, as a Prometheus with a 1 s scrape interval, until
    the block exits; yields the scrapes' times (ms)."""
    stop, times = threading.Event(), []

    def loop() -> None:
        while not stop.wait(interval):
            times.append(timed_ms(scrape, 1)[0])

    thread = threading.Thread(target=loop, name="scrapes", daemon=True)
    thread.start()
    try:
        yield times
    finally:
        stop.set()
        thread.join()


@dataclass
class Dispatch:
    """Our no-op dispatch (one worker, as the dispatch section measures it) on the filled ledger, without
    scrapes and with a scrape every second, alternating."""

    without: list[dispatch.Sample] = field(default_factory=list)
    with_scrapes: list[dispatch.Sample] = field(default_factory=list)
    scrapes_meanwhile: list[float] = field(default_factory=list)


def measure_dispatch(
    context: Context, control_plane: RunningControlPlane, scrape: Callable[[], int]
) -> Dispatch:
    workdir = context.workdir / "metrics-workers"
    workdir.mkdir()
    shutil.chown(workdir, context.env.user, context.env.user)
    sizes = dispatch.Sizes(batch=200, paced=20) if context.smoke else dispatch.Sizes(batch=2000, paced=200)
    workers = dispatch.start_ours(context.env, workdir, control_plane, 1)
    link = dispatch.connect(control_plane)
    measured = Dispatch()
    try:
        for _round in range(context.repeat):
            measured.without.append(dispatch.measure_ours(link, sizes))
            with scraping(scrape) as times:
                measured.with_scrapes.append(dispatch.measure_ours(link, sizes))
            measured.scrapes_meanwhile += times
    finally:
        link.close()
        dispatch.stop_all(workers)
    return measured


def benchmark(context: Context) -> report.Section:
    waiting, finished = (1_000, 10_000) if context.smoke else (10_000, 100_000)
    count = 5 if context.smoke else SCRAPES * context.repeat
    control_plane = start_control_plane(context.env, Path(context.workdir) / "metrics-cp", address=ADDRESS)
    try:
        fill_seconds = fill(control_plane, waiting, finished)
        scrape = scraper(control_plane)
        body = scrape()
        scrapes = timed_ms(scrape, count)
        link = control_plane.client_link()
        try:
            snapshots = timed_ms(lambda: take_snapshot(link, recent_failures=0), count)
        finally:
            link.close()
        measured = measure_dispatch(context, control_plane, scrape)
    finally:
        control_plane.shutdown()
    return section(
        waiting, finished, scrapes=scrapes, snapshots=snapshots, body=body, fill_seconds=fill_seconds,
        measured=measured,
    )  # fmt: skip


def _latency_row(what: str, samples: list[float]) -> list[str]:
    return [
        what,
        f"{report.percentile(samples, 0.5):.1f}",
        f"{report.percentile(samples, 0.95):.1f}",
        f"{max(samples):.1f}",
        str(len(samples)),
    ]


def _rate_row(what: str, samples: list[dispatch.Sample]) -> list[str]:
    rates = [sample.rate for sample in samples]
    return [what, f"{statistics.median(rates):.0f}", "-", f"{max(rates):.0f}", str(len(rates))]


def section(
    waiting: int,
    finished: int,
    *,
    scrapes: list[float],
    snapshots: list[float],
    body: int,
    fill_seconds: float,
    measured: Dispatch,
) -> report.Section:
    p95 = report.percentile(scrapes, 0.95)
    without = statistics.median(sample.rate for sample in measured.without)
    with_scrapes = statistics.median(sample.rate for sample in measured.with_scrapes)
    return {
        "title": f"Metrics: a scrape with {waiting:,} jobs waiting and {finished:,} finished",
        "explanation": [
            "A scrape is an HTTPS request with basic auth to the supervisor's /metrics on a new connection, as "
            "Prometheus makes it; the snapshot is the ledger's and the registry's queries alone, in this process.",
            "Dispatch is one worker's no-op jobs/s on the same filled ledger (as the dispatch section measures "
            "it), without scrapes and with a scrape every second, alternating.",
            f"The goal: a scrape under {GOAL_MS:.0f} ms, and scrapes that do not slow the workers' claims.",
        ],
        "columns": ["what", "median", "p95", "max", "samples"],
        "rows": [
            _latency_row("scrape of /metrics (ms)", scrapes),
            _latency_row("snapshot alone (ms)", snapshots),
            _rate_row("dispatch, no scrape (jobs/s)", measured.without),
            _rate_row("dispatch, a scrape every second (jobs/s)", measured.with_scrapes),
        ],
        "figures": {
            "waiting": waiting,
            "finished": finished,
            "scrape_ms": report.spread(scrapes),
            "snapshot_ms": report.spread(snapshots),
            "body_bytes": body,
            "fill_s": round(fill_seconds, 2),
            "dispatch_jobs_per_s": report.spread([sample.rate for sample in measured.without]),
            "dispatch_jobs_per_s_scraped": report.spread([sample.rate for sample in measured.with_scrapes]),
            "dispatch_p50_ms": report.spread([sample.p50 for sample in measured.without]),
            "dispatch_p50_ms_scraped": report.spread([sample.p50 for sample in measured.with_scrapes]),
        },
        "notes": [
            f"The scrape's p95 is {p95:.1f} ms: {'within' if p95 < GOAL_MS else 'over'} the {GOAL_MS:.0f} ms goal.",
            f"With a scrape every second one worker ran {with_scrapes:.0f} jobs/s against {without:.0f} without "
            f"({with_scrapes / without:.2f}x; {len(measured.scrapes_meanwhile)} scrapes meanwhile).",
            f"The exposition is {body:,} bytes; the rows were written in {fill_seconds:.1f} s.",
        ],
    }
