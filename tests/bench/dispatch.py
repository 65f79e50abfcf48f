"""No-op dispatch: our worker side by side with RQ and Celery, on the same Redis, in the same run.

    python -m tests.bench.dispatch [--batch N] [--paced N] [--workers 1,4] [--repeat 3]

Run as root from the repository, like the integration tests: it refreshes the cluster user's venv
from this checkout, starts a control plane as that user (PostgreSQL, Valkey, SeaweedFS on
127.0.0.10), and for each system starts its worker processes as that user and submits no-op jobs:

- ours: ``han-worker run --quiet`` processes, ``noop`` jobs through :mod:`han_worker.client`; throughput
  from the ledger's started_at and finished_at, latency from the submitter's time.time() just before
  ``client.submit`` to the no-op's own start (its summary's ``started``), as for the other two.
- RQ: ``SimpleWorker`` (no fork per job: the worker RQ offers on Windows), see :mod:`tests.bench.rq_tasks`.
- Celery: the solo pool with ``acks_late`` and a prefetch of one, see :mod:`tests.bench.celery_app`.

RQ and Celery use the control plane's own Valkey through a Redis ACL user the admin creates for this
run, limited to their keys (ours stay under han:*). Their no-op task records time.time() at its start
and end against the enqueue time passed as its argument (one clock: one machine).

- throughput: a batch of N jobs enqueued at once, workers already idle; jobs/s = N / (last finish - first
  start). 2,000 by default: one worker takes ~2 s over them, long enough for a steady figure.
- latency: M jobs enqueued one at a time at half the measured throughput (at most 200/s), so that they
  rarely queue; enqueue-to-start = the task's own start - the submitter's clock before the enqueue call.

Prints figures only; whatever they are, it exits 0 once it could measure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from han_worker import client
from han_worker.selection.endpoints import parse_endpoints
from han_worker.selection.redis_tls import tls_redis
from han_worker.selection.resolver import Choice
from han_worker.selection.tls import ca_file
from han_worker.store.link import Link, open_link
from tests.bench import peers, report
from tests.bench.context import Context
from tests.conftest import REPO
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    WorkerProcess,
    start_worker,
    worker_settings,
    write_private_file,
)

STOPPED = re.compile(r"stopped after (\d+) job\(s\); (\d+) ledger commits")
BENCH_USER = "han_bench"
RQ_QUEUE, CELERY_QUEUE = "bench.rq", "bench.celery"
# The comparison's keys: RQ's (rq:*), kombu's (the queue's list, its bindings and unacked sets, Celery's
# pidbox) and the tasks' time lists. Not han:*: the comparison cannot touch our queues.
BENCH_KEYS = ("bench*", "rq:*", "_kombu.*", "unacked*", "celery*", "reply.celery*")
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Sizes:
    batch: int  # jobs enqueued at once: the jobs/s figure
    paced: int  # jobs enqueued one at a time: the latency figures


@dataclass(frozen=True)
class Sample:
    """One system, one worker count, one repetition."""

    rate: float  # jobs/s
    p50: float  # enqueue-to-start, ms
    p99: float
    stages: dict[str, float] = field(default_factory=dict)  # ours only: where the latency goes (medians, ms)


def sample(rate: float, latencies: list[float], stages: dict[str, float] | None = None) -> Sample:
    return Sample(rate, statistics.median(latencies), report.percentile(latencies, 0.99), stages or {})


# -- ours ---------------------------------------------------------------------------------------------


def connect(control_plane: RunningControlPlane) -> Link:
    """A link as root: the control plane's files belong to the cluster user, so read them directly."""
    endpoints = parse_endpoints(control_plane.endpoints, "endpoints.json")
    choice = Choice("pegasus", endpoints, control_plane.worker_credentials(), "benchmark")
    return open_link(choice, timeout=5, name="han-bench")


def wait_started(workers: list[WorkerProcess], ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if time.monotonic() > deadline or any(worker.process.poll() is not None for worker in workers):
            stop_all(workers, timeout=1)
            raise RuntimeError(f"{what} did not start:\n" + "\n".join(worker.output() for worker in workers))
        time.sleep(0.1)


def stop_all(workers: list[WorkerProcess], timeout: float = 30) -> None:
    """SIGTERM (each drains), then SIGKILL whatever is still running."""
    for worker in workers:
        try:
            worker.stop(timeout=timeout)
        except Exception:  # a worker that will not stop is killed below; keep stopping the rest
            pass
        finally:
            worker.kill()


def start_ours(
    env: UnprivilegedEnv, workdir: Path, cp: RunningControlPlane, count: int
) -> list[WorkerProcess]:
    settings = worker_settings(cp, workdir / "spool", mode="pegasus", lease_seconds=30, heartbeat_seconds=5,
                               probe_interval_seconds=5, reconcile_seconds=30)  # fmt: skip
    config = write_private_file(env, workdir / "worker.json", json.dumps(settings))
    # --quiet: no line per succeeded job, as RQ and Celery run at WARNING (see notes()).
    workers = [start_worker(env, config, "--quiet") for _index in range(count)]
    wait_started(workers, lambda: all("serving noop" in worker.output() for worker in workers), "han-worker")
    return workers


def wait_done(link: Link, job_ids: list[str], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    connection = link.ledger.connection()
    while time.monotonic() < deadline:
        row = connection.execute(
            "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND status IN ('succeeded', 'failed', 'dead')",
            (job_ids,),
        ).fetchone()
        if row is not None and row[0] == len(job_ids):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{len(job_ids)} jobs not done within {timeout:g}s")


def span(link: Link, job_ids: list[str]) -> float:
    """Seconds from the first job's start to the last one's finish, on the ledger's clock."""
    row = (
        link.ledger.connection()
        .execute(
            "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM jobs WHERE id = ANY(%s::uuid[])",
            (job_ids,),
        )
        .fetchone()
    )
    assert row is not None
    return float(row[0])


# Where our latency goes, from the clocks on the way (one machine): the submitter's before client.submit, the
# INSERT's start (created_at), the claim's start (started_at) and the no-op's own start.
STAGES = (
    "submitter, before its INSERT starts",
    "INSERT and its commit, the Redis entry, the worker's wake-up",
    "claim and its commit, the worker up to the no-op",
)


def latencies(link: Link, enqueued: dict[str, float]) -> tuple[list[float], dict[str, float]]:
    """Submission-to-start latencies in ms, and the median of each of their STAGES.

    From the submitter's clock just before ``client.submit`` to the no-op's own start (its summary's
    ``started``), as RQ's and Celery's are taken (one machine, one clock). So it counts what a user waits
    for: the job's durable insert, the Redis entry, the worker's wake-up and its durable claim."""
    rows = (
        link.ledger.connection()
        .execute(
            "SELECT id::text, extract(epoch FROM created_at)::float8, extract(epoch FROM started_at)::float8, "
            "(result->>'started')::float8 FROM jobs WHERE id = ANY(%s::uuid[])",
            (list(enqueued),),
        )
        .fetchall()
    )
    times = [(enqueued[job_id], created, claimed, started) for job_id, created, claimed, started in rows]
    stages = {
        stage: statistics.median((each[index + 1] - each[index]) * 1000 for each in times)
        for index, stage in enumerate(STAGES)
    }
    return [(started - submitted) * 1000 for submitted, _c, _s, started in times], stages


def pacing(rate: float) -> float:
    """Seconds between paced submissions: half the throughput, at most 200/s, so jobs rarely queue."""
    return 1 / min(200.0, rate / 2)


def measure_ours(link: Link, sizes: Sizes) -> Sample:
    batch = client.submit_many(link, "noop", [{}] * sizes.batch, max_attempts=3)
    wait_done(link, batch)
    rate, enqueued = sizes.batch / span(link, batch), {}
    for _index in range(sizes.paced):
        submitted = time.time()
        enqueued[client.submit(link, "noop", {}, {}, max_attempts=3)] = submitted
        time.sleep(pacing(rate))
    wait_done(link, list(enqueued))
    return sample(rate, *latencies(link, enqueued))


def commit_ms(link: Link, count: int = 100) -> float:
    """Median time of one durable PostgreSQL commit right now: an INSERT in autocommit mode, so that the
    commit flushes the WAL (a transaction that writes nothing commits without a flush). What each of our
    1 or 2 commits per job cost (see notes()), and how busy the disk is. The table lives in this run's own ledger only."""
    connection, elapsed = link.ledger.connection(), []
    connection.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (at timestamptz NOT NULL)")
    for _index in range(count):
        started = time.perf_counter()
        connection.execute("INSERT INTO bench_commit_probe VALUES (now())")
        elapsed.append((time.perf_counter() - started) * 1000)
    return statistics.median(elapsed)


def commits_per_job(workers: list[WorkerProcess]) -> float | None:
    """Ledger commits per job, as the workers count them in their last log line."""
    jobs = commits = 0
    for worker in workers:
        found = STOPPED.search(worker.output())
        if found:
            jobs, commits = jobs + int(found.group(1)), commits + int(found.group(2))
    return commits / jobs if jobs else None


# -- RQ and Celery ------------------------------------------------------------------------------------


def create_bench_user(cp: RunningControlPlane) -> dict[str, object]:
    """A Redis ACL user for RQ and Celery, created by the admin for this run only (it is not saved:
    the control plane's users come from its config file at every start)."""
    password = secrets.token_urlsafe(32)
    admin = cp.redis_admin()
    admin.acl_setuser(
        BENCH_USER, enabled=True, reset=True, passwords=[f"+{password}"], keys=list(BENCH_KEYS),
        channels=["*"], commands=["+@all", "-@admin", "-@dangerous"],
    )  # fmt: skip
    admin.close()
    endpoint = cp.service("redis")
    ca_cert = cp.worker_credentials().tls_ca_cert
    return {"host": endpoint.host, "port": endpoint.port, "username": BENCH_USER, "password": password,
            "ca_cert": ca_cert}  # fmt: skip


def peer_argv(env: UnprivilegedEnv, settings_file: Path, module: str, *args: str) -> list[str]:
    """Like UnprivilegedEnv.argv, for a module of this checkout (readable by every user) run with the
    venv's Python; the Redis password is in the 0600 settings file, not here."""
    return [
        "setpriv", f"--reuid={env.user}", f"--regid={env.user}", "--init-groups", "--",
        "env", "-i", f"HOME=/home/{env.user}", f"PATH={env.bin_dir}:/usr/bin:/bin", f"PYTHONPATH={REPO}",
        f"{peers.SETTINGS_ENV}={settings_file}", str(env.bin_dir / "python"), "-m", module, *args,
    ]  # fmt: skip


def start_peer(argv: list[str], log: Path) -> WorkerProcess:
    with log.open("w") as handle:
        process = subprocess.Popen(argv, stdout=handle, stderr=handle, text=True, cwd="/")
    return WorkerProcess(process, log)


@dataclass
class Peer:
    """RQ or Celery: how to start its workers and enqueue its no-op task, from this (root) process."""

    system: str
    connection: redis.Redis
    enqueue_many: Callable[[int], None]
    enqueue_one: Callable[[], None]
    start: Callable[[int], list[WorkerProcess]]
    details: dict[str, str] = field(default_factory=dict)

    def times(self, jobs: int, timeout: float = 600) -> list[tuple[float, float, float]]:
        key, deadline = peers.times_key(self.system), time.monotonic() + timeout
        while self.connection.llen(key) < jobs:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.system}: {jobs} jobs not done within {timeout:g}s")
            time.sleep(0.05)
        entries = self.connection.lrange(key, 0, -1)
        self.connection.delete(key)
        parsed = [tuple(float(part) for part in entry.split()) for entry in entries]
        return [(row[0], row[1], row[2]) for row in parsed]

    def measure(self, sizes: Sizes) -> Sample:
        self.connection.delete(peers.times_key(self.system))
        self.enqueue_many(sizes.batch)
        batch = self.times(sizes.batch)
        rate = sizes.batch / (
            max(finished for _e, _s, finished in batch) - min(started for _e, started, _f in batch)
        )
        for _index in range(sizes.paced):
            self.enqueue_one()
            time.sleep(pacing(rate))
        paced = self.times(sizes.paced)
        return sample(rate, [(started - enqueued) * 1000 for enqueued, started, _f in paced])


def rq_peer(env: UnprivilegedEnv, workdir: Path, settings_file: Path, connection: redis.Redis) -> Peer:
    # The bench extra: imported here, so that the rest of this module works without it.
    from rq import Queue, Worker  # noqa: PLC0415

    from tests.bench import rq_tasks  # noqa: PLC0415

    queue = Queue(RQ_QUEUE, connection=connection)

    def enqueue_many(jobs: int) -> None:
        queue.enqueue_many([Queue.prepare_data(rq_tasks.TASK, (time.time(),)) for _index in range(jobs)])

    def start(count: int) -> list[WorkerProcess]:
        argv = peer_argv(env, settings_file, "tests.bench.rq_tasks", RQ_QUEUE)
        workers = [start_peer(argv, workdir / f"rq-{index}.log") for index in range(count)]
        wait_started(workers, lambda: Worker.count(connection=connection, queue=queue) >= count, "RQ")
        return workers

    def enqueue_one() -> None:
        queue.enqueue(rq_tasks.TASK, time.time())

    return Peer("rq", connection, enqueue_many, enqueue_one, start, {"worker": "SimpleWorker (no fork)"})


def celery_peer(env: UnprivilegedEnv, workdir: Path, settings_file: Path, connection: redis.Redis) -> Peer:
    from tests.bench import celery_app  # noqa: PLC0415 - the bench extra; only the benchmark needs it

    settings = json.loads(settings_file.read_text())
    # TLS, as the Celery workers (peers.redis_url and peers.broker_tls, for this process's settings).
    celery_app.app.conf.broker_url = (
        f"rediss://{settings['username']}:{settings['password']}@{settings['host']}:{settings['port']}/0"
    )
    celery_app.app.conf.broker_use_ssl = {
        "ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca_file(str(settings["ca_cert"]))),
    }  # fmt: skip

    def enqueue_one() -> None:
        celery_app.app.send_task(celery_app.TASK, args=[time.time()], queue=CELERY_QUEUE)

    def enqueue_many(jobs: int) -> None:
        # One producer (one connection) for the whole batch, as a lab's submitter would reuse it.
        with celery_app.app.producer_or_acquire() as producer:
            for _index in range(jobs):
                celery_app.app.send_task(celery_app.TASK, args=[time.time()], queue=CELERY_QUEUE,
                                         producer=producer)  # fmt: skip

    def start(count: int) -> list[WorkerProcess]:
        connection.delete(celery_app.READY_KEY)
        workers = [
            start_peer(
                peer_argv(env, settings_file, "tests.bench.celery_app", CELERY_QUEUE, f"bench{index}"),
                workdir / f"celery-{index}.log",
            )
            for index in range(count)
        ]
        wait_started(workers, lambda: connection.scard(celery_app.READY_KEY) >= count, "Celery")
        return workers

    details = {"pool": "solo", "acks_late": "True", "worker_prefetch_multiplier": "1"}
    return Peer("celery", connection, enqueue_many, enqueue_one, start, details)


# -- the run ------------------------------------------------------------------------------------------


@dataclass
class System:
    name: str
    ledger: str  # does it write a durable ledger row per job?
    start: Callable[[int], list[WorkerProcess]]
    measure: Callable[[Sizes], Sample]
    samples: dict[int, list[Sample]] = field(default_factory=dict)
    commits: list[float] = field(default_factory=list)


@contextmanager
def systems(context: Context) -> Iterator[tuple[list[System], Link]]:
    cp, env = context.control_plane(), context.env
    workdir = env.private_dir("han-bench-dispatch-")
    link = connect(cp)
    settings = create_bench_user(cp)
    settings_file = write_private_file(env, workdir / "bench-redis.json", json.dumps(settings))
    connection = tls_redis(str(settings["host"]), int(str(settings["port"])), str(settings["ca_cert"]),
                           "the bench's settings", username=BENCH_USER, password=str(settings["password"]),
                           decode_responses=True, socket_timeout=10)  # fmt: skip
    rq, celery = (make(env, workdir, settings_file, connection) for make in (rq_peer, celery_peer))
    try:
        yield [
            System("ours (han-worker)", "yes: 1 row; 1 commit per job under load, 2 idle",
                   lambda count: start_ours(env, workdir, cp, count), lambda sizes: measure_ours(link, sizes)),
            System("RQ SimpleWorker", "no", rq.start, rq.measure),
            System("Celery solo, acks_late, prefetch 1", "no", celery.start, celery.measure),
        ], link  # fmt: skip
    finally:
        link.close()
        connection.close()
        shutil.rmtree(workdir, ignore_errors=True)


def run_once(system: System, count: int, sizes: Sizes) -> None:
    workers = system.start(count)
    try:
        system.samples.setdefault(count, []).append(system.measure(sizes))
    finally:
        stop_all(workers)
    commits = commits_per_job(workers)
    if commits is not None:
        system.commits.append(commits)


def measure_all(context: Context, sizes: Sizes, counts: list[int]) -> tuple[list[System], list[float]]:
    """Every system's samples, and the PostgreSQL commit time measured before each repetition."""
    commit_times: list[float] = []
    with systems(context) as (measured, link):
        for repetition in range(context.repeat):
            commit_times.append(commit_ms(link))
            print(
                f"  [{repetition + 1}/{context.repeat}] PostgreSQL commit: {commit_times[-1]:.2f} ms",
                flush=True,
            )
            # Rotate the order each repetition, so that a slow spell of the machine does not always hit
            # the same system.
            shift = repetition % len(measured)
            for count in counts:
                for system in measured[shift:] + measured[:shift]:
                    run_once(system, count, sizes)
                    latest = system.samples[count][-1]
                    print(f"  [{repetition + 1}/{context.repeat}] {system.name}, {count} worker(s): "
                          f"{latest.rate:,.0f} jobs/s, p50 {latest.p50:.2f} ms, p99 {latest.p99:.2f} ms",
                          flush=True)  # fmt: skip
        return measured, commit_times


def ratios(
    ours: list[Sample], theirs: list[Sample], metric: Callable[[Sample, Sample], float]
) -> report.Spread:
    """One ratio per repetition (both measured in the same repetition), then their spread."""
    return report.spread([metric(mine, other) for mine, other in zip(ours, theirs, strict=True)])


def section_of(
    measured: list[System], sizes: Sizes, counts: list[int], redis_version: str, commit: report.Spread
) -> report.Section:
    ours = measured[0]
    rows: list[list[str]] = []
    figures = {
        "batch_jobs": sizes.batch,
        "paced_jobs": sizes.paced,
        "redis_server": redis_version,
        "systems": {},
    }
    for system in measured:
        per_count: dict[str, object] = {}
        for count in counts:
            samples = system.samples[count]
            rate, p50, p99 = (
                report.spread([getattr(s, name) for s in samples]) for name in ("rate", "p50", "p99")
            )
            speed = ratios(ours.samples[count], samples, lambda mine, other: mine.rate / other.rate)
            delay = ratios(ours.samples[count], samples, lambda mine, other: other.p50 / mine.p50)
            per_count[str(count)] = {"jobs_per_s": rate, "p50_ms": p50, "p99_ms": p99,
                                     "ours_jobs_per_s_ratio": speed, "their_p50_over_ours": delay}  # fmt: skip
            rows.append([system.name, system.ledger, str(count), report.spread_text(rate),
                         report.spread_text(p50, 2), report.spread_text(p99, 2),
                         "1" if system is ours else report.ratio_text(speed),
                         "1" if system is ours else report.ratio_text(delay)])  # fmt: skip
        figures["systems"][system.name] = per_count  # type: ignore[index]
    commits = report.spread(ours.commits) if ours.commits else None
    figures["ours_commits_per_job"] = commits
    figures["postgres_commit_ms"] = commit
    return {
        "title": "Dispatch: no-op jobs, ours vs RQ and Celery on the same Redis",
        "explanation": [
            f"jobs/s is a batch of {sizes.batch:,} no-op jobs enqueued at once to idle workers, divided by the "
            "time from the first start to the last finish.",
            f"p50 and p99 are enqueue-to-start latencies of {sizes.paced:,} jobs enqueued one at a time at half "
            "that rate (at most 200/s), so that they rarely wait behind each other: from the submitter's clock "
            "just before the enqueue call to the no-op task's own start, the same way for all three.",
            "'ours / this' is our jobs/s divided by the other system's, and 'this p50 / ours' the other "
            "system's p50 divided by ours, each computed within one repetition: above 1 means ours is "
            "faster.",
            "Ours writes a durable PostgreSQL ledger row per job (a claim and a finish; under load one job's "
            "finish and the next one's claim are one commit, so about 1 commit per job); RQ and "
            "Celery keep jobs in Redis only.",
        ],
        "columns": [
            "system",
            "durable ledger row per job?",
            "workers",
            "jobs/s",
            "p50 ms",
            "p99 ms",
            "ours / this (jobs/s)",
            "this p50 / ours",
        ],
        "rows": rows,
        "figures": figures,
        "notes": [
            *notes(measured, counts, commits, redis_version),
            f"One durable PostgreSQL commit took {report.spread_text(commit, 2)} ms (median of 100, before each "
            "repetition): ours pays about one per job under load (the jobs/s figure) and two per job when idle "
            "(the latency figures: claim, then finish alone), so this bounds one worker at about 1000 / it jobs/s.",
        ],
    }


def notes(
    measured: list[System], counts: list[int], commits: report.Spread | None, redis_version: str
) -> list[str]:
    ours, rq, celery = measured
    one = str(counts[0])
    verdict = []
    for name, other, goal in (("Celery", celery, 1.0), ("RQ", rq, 4.0)):
        speed = ratios(ours.samples[counts[0]], other.samples[counts[0]], lambda m, o: m.rate / o.rate)[
            "median"
        ]
        verdict.append(
            f"{'met' if speed >= goal else 'not met'}: ours {speed:.2f}x {name} (goal >= {goal:g}x)"
        )
    p50 = report.spread([s.p50 for s in ours.samples[counts[0]]])["median"]
    verdict.append(f"{'met' if p50 < 1 else 'not met'}: ours p50 {p50:.2f} ms (goal < 1 ms)")
    stages = [
        f"{statistics.median(s.stages[stage] for s in ours.samples[counts[0]]):.2f} ms {stage}"
        for stage in STAGES
    ]
    return [
        f"Goals with {one} worker (not asserted): " + "; ".join(verdict) + ".",
        f"Where our p50 goes with {one} worker (medians of each stage): {'; '.join(stages)}. Two durable "
        "commits are on the way (the submission's and the claim's), each a WAL flush.",
        f"Ledger commits per job counted by our workers: {report.spread_text(commits, 2) if commits else '?'}.",
        f"Same Valkey {redis_version} for all three (the control plane's, AOF everysec); RQ and Celery reach it "
        f"as the ACL user {BENCH_USER} (keys outside han:*), run as the cluster user like ours.",
        "None of the three logs a line per job: ours runs with --quiet, RQ and Celery at WARNING (RQ logs two "
        "lines per job at INFO); Celery runs without gossip, mingle and heartbeat; neither stores results "
        "(Celery has no result backend, RQ keeps its default job hash).",
        "Their no-op task appends its times to a Redis list: one more round trip per job (~0.1 ms) than a "
        "bare no-op; ours has none such.",
        "2-core machine shared with other sessions' tests: figures are noisy; compare the ratios, measured "
        "side by side, rather than absolute figures across runs.",
    ]


def benchmark(context: Context) -> report.Section:
    """The suite's entry: batches of 2,000 jobs and 500 paced ones per figure (30 and 30 in smoke mode), 1 and
    4 workers (1 in smoke mode)."""
    sizes, counts = (Sizes(30, 30), [1]) if context.smoke else (Sizes(2000, 500), [1, 4])
    return run(context, sizes, counts)


def run(context: Context, sizes: Sizes, counts: list[int]) -> report.Section:
    admin = context.control_plane().redis_admin()
    server = admin.info("server")
    admin.close()
    version = str(server.get("valkey_version") or server.get("redis_version"))
    print(f"dispatch: batches of {sizes.batch} and {sizes.paced} paced no-op jobs per figure, workers {counts}, "
          f"{context.repeat} repetition(s), {os.cpu_count()} CPUs", flush=True)  # fmt: skip
    measured, commit_times = measure_all(context, sizes, counts)
    return section_of(measured, sizes, counts, version, report.spread(commit_times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.dispatch", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--batch", type=int, default=2000, help="jobs enqueued at once, for jobs/s (default: 2000)"
    )
    parser.add_argument(
        "--paced", type=int, default=500, help="jobs enqueued one at a time, for latency (default: 500)"
    )
    parser.add_argument(
        "--workers", default="1,4", help="worker process counts, comma-separated (default: 1,4)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="repetitions (default: 1)")
    args = parser.parse_args(argv)
    for name in ("batch", "paced"):
        if getattr(args, name) < 10:
            parser.error(f"--{name}: at least 10, not {getattr(args, name)}")
    try:
        counts = [int(count) for count in args.workers.split(",")]
    except ValueError:
        parser.error(f"--workers: {args.workers!r} is not a comma-separated list of numbers")
    if os.geteuid() != 0:
        parser.error("run as root: the control plane and the workers run as the cluster user")
    context = Context(smoke=False, repeat=max(1, args.repeat))
    try:
        section = run(context, Sizes(args.batch, args.paced), counts)
    finally:
        context.close()
    print(report.table_text(section["columns"], section["rows"]))
    for note in section["notes"]:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
