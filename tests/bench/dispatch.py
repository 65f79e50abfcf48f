"""No-op dispatch: enqueue-to-start latency and jobs per second, with 1 and 4 worker processes.

    python -m tests.bench.dispatch [--jobs N] [--workers 1,4]

Run as root from the repository, like the integration tests: it refreshes the cluster user's venv
from this checkout, starts a control plane as that user (PostgreSQL, Valkey, SeaweedFS on
127.0.0.10), starts ``han-worker run`` processes and submits ``noop`` jobs through
:mod:`han_worker.client`. Times come from the ledger (created_at, started_at, finished_at: one
clock). Prints figures only; whatever they are, it exits 0 once it could measure.

- throughput: N jobs submitted at once (one commit, one Redis round trip), workers already idle;
  jobs/s = N / (last finish - first start).
- latency: jobs submitted one at a time at half the measured throughput (at most 200/s), so that
  they rarely queue; enqueue-to-start = the claim's start - the job's insert.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from han_worker import client
from han_worker.connection import Choice, Link, open_link
from han_worker.endpoints import parse_endpoints
from tests.conftest import REPO
from tests.integration.conftest import CLUSTER_USER, UNPRIVILEGED_VENV, UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    WorkerProcess,
    start_control_plane,
    start_worker,
    worker_settings,
    write_private_file,
)

STOPPED = re.compile(r"stopped after (\d+) job\(s\); (\d+) ledger commits")


def prepare_env() -> UnprivilegedEnv:
    """The cluster user's venv with this checkout's han_worker (as the test session fixture builds it)."""
    python = UNPRIVILEGED_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(UNPRIVILEGED_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "--constraint", str(REPO / ".ci" / "constraints.txt"), f"{REPO}[server]"], check=True
    )
    subprocess.run([*pip, "--force-reinstall", "--no-deps", str(REPO)], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(UNPRIVILEGED_VENV)], check=True)
    return UnprivilegedEnv(UNPRIVILEGED_VENV / "bin", CLUSTER_USER)


def connect(control_plane: RunningControlPlane) -> Link:
    """A link as root: the control plane's files belong to the cluster user, so read them directly."""
    endpoints = parse_endpoints(control_plane.endpoints, "endpoints.json")
    choice = Choice("pegasus", endpoints, control_plane.worker_credentials(), "benchmark")
    return open_link(choice, timeout=5, name="han-bench")


def start_workers(
    env: UnprivilegedEnv, workdir: Path, cp: RunningControlPlane, count: int
) -> list[WorkerProcess]:
    settings = worker_settings(cp, workdir / "spool", mode="pegasus", lease_seconds=30, heartbeat_seconds=5,
                               probe_interval_seconds=5, reconcile_seconds=30)  # fmt: skip
    config = write_private_file(env, workdir / "worker.json", json.dumps(settings))
    workers = [start_worker(env, config) for _index in range(count)]
    deadline = time.monotonic() + 60
    while not all("serving noop" in worker.output() for worker in workers):
        if time.monotonic() > deadline or any(worker.process.poll() is not None for worker in workers):
            for worker in workers:
                worker.kill()
            raise RuntimeError("workers did not start:\n" + "\n".join(worker.output() for worker in workers))
        time.sleep(0.1)
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


def timings(link: Link, job_ids: list[str]) -> tuple[float, list[float]]:
    """(seconds from the first start to the last finish, enqueue-to-start latencies in ms)."""
    connection = link.ledger.connection()
    row = connection.execute(
        "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM jobs WHERE id = ANY(%s::uuid[])",
        (job_ids,),
    ).fetchone()
    rows = connection.execute(
        "SELECT extract(epoch FROM started_at - created_at) * 1000 FROM jobs WHERE id = ANY(%s::uuid[])",
        (job_ids,),
    ).fetchall()
    assert row is not None
    return float(row[0]), [float(latency) for (latency,) in rows]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure(link: Link, jobs: int) -> tuple[float, list[float]]:
    """(jobs/s, latencies in ms) with the workers that are running now."""
    batch = client.submit_many(link, "noop", [{}] * jobs, max_attempts=3)
    wait_done(link, batch)
    span, _latencies = timings(link, batch)
    rate = jobs / span
    paced, interval = [], 1 / min(200.0, rate / 2)
    for _index in range(jobs):
        paced.append(client.submit(link, "noop", {}, {}, max_attempts=3))
        time.sleep(interval)
    wait_done(link, paced)
    return rate, timings(link, paced)[1]


def commits_per_job(workers: list[WorkerProcess]) -> str:
    jobs = commits = 0
    for worker in workers:
        found = STOPPED.search(worker.output())
        if found:
            jobs, commits = jobs + int(found.group(1)), commits + int(found.group(2))
    return f"{commits / jobs:.2f}" if jobs else "?"


def run(jobs: int, worker_counts: list[int]) -> None:
    env = prepare_env()
    workdir = env.private_dir("han-bench-")
    cp = start_control_plane(env, workdir / "cp")
    try:
        link = connect(cp)
        print(
            f"no-op dispatch, {jobs} jobs per figure, {os.cpu_count()} CPUs; ledger PostgreSQL, queues Redis Streams"
        )
        print(f"{'workers':>7} {'jobs/s':>8} {'start p50 ms':>13} {'start p99 ms':>13} {'commits/job':>12}")
        for count in worker_counts:
            workers = start_workers(env, workdir, cp, count)
            try:
                rate, latencies = measure(link, jobs)
            finally:
                for worker in workers:
                    try:
                        worker.stop(timeout=30)
                    finally:
                        worker.kill()
            p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
            print(
                f"{count:>7} {rate:>8.0f} {p50:>13.2f} {p99:>13.2f} {commits_per_job(workers):>12}",
                flush=True,
            )
        link.close()
    finally:
        cp.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.dispatch", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--jobs", type=int, default=500, help="jobs per figure (default: 500)")
    parser.add_argument(
        "--workers", default="1,4", help="worker process counts, comma-separated (default: 1,4)"
    )
    args = parser.parse_args(argv)
    if args.jobs < 10:
        parser.error("--jobs: at least 10")
    try:
        counts = [int(count) for count in args.workers.split(",")]
    except ValueError:
        parser.error(f"--workers: {args.workers!r} is not a comma-separated list of numbers")
    if os.geteuid() != 0:
        parser.error("run as root: the control plane and the workers run as the cluster user")
    run(args.jobs, counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
