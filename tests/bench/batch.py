"""Batch submission (issue 21): many small inputs submitted as one batch, against single ``han-worker submit``
calls and against RQ's and Celery's bulk enqueue of as many jobs with the same payload; then the fetch of a
batch's outputs.

Run by the suite (``python -m tests.bench --only batch``) on the run's control plane (127.0.0.10), as root,
with the commands run as the cluster user from the bench venv, as a lab member runs them:

- ours, one batch: ``han-worker submit --kind noop --input DIR`` of N files of PAYLOAD random bytes, timed
  from the command's start to its exit (process start, choosing and connecting the control plane, reading and
  hashing every file, the inputs packed into 8 objects uploaded at once (han_worker.packs: each input is a
  range of one), one ledger statement, one Redis round trip). A fresh ``--param`` per repetition makes it a
  new batch (the ids derive from the manifest).
- ours, single calls: ``han-worker submit --kind noop --input FILE`` once per file, one after the other; M of
  them (fewer than N: each is a process of its own, ~1 s here), and jobs/s is M over their time.
- RQ: ``Queue.enqueue_many`` of N jobs (one pipeline), each with PAYLOAD bytes as its argument; timed in
  this process, and as a command (tests.bench.rq_submit: a fresh Python process of the bench venv, as the
  cluster user, that imports RQ, connects and enqueues), which is what ``han-worker submit`` is.
- Celery: N ``send_task`` calls through one producer (Celery has no bulk publish), each with PAYLOAD
  characters as its argument.

RQ and Celery keep the payload in Redis with the job and write no ledger row; ours uploads each input to S3
and records a durable ledger row per job. No worker runs while submissions are timed; the jobs they leave are
deleted afterwards (stream entries, ledger rows, RQ's and Celery's keys). Then a worker runs a batch of N
``sleep`` jobs (0 s; each writes one small output) and ``han-worker fetch --batch`` is timed twice: into an
empty folder (N downloads) and again (every file already there and checked: none).
"""

from __future__ import annotations

import compileall
import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from han_worker import client
from han_worker.selection.redis_tls import tls_redis
from han_worker.store.link import Link
from han_worker.store.queues import stream_key
from tests.bench import report
from tests.bench.context import Context
from tests.bench.dispatch import BENCH_USER, celery_peer, connect, create_bench_user, peer_argv, stop_all
from tests.conftest import REPO
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    han_worker,
    start_worker,
    wait_for,
    worker_settings,
    write_private_file,
)

PAYLOAD = 1024  # bytes per input: "small inputs"
RQ_QUEUE, CELERY_QUEUE = "bench.batch.rq", "bench.batch.celery"
GOAL_OVER_SINGLES = 10.0  # the issue's: batch submission >= 10x the single calls


@dataclass(frozen=True)
class Sizes:
    jobs: int  # inputs in the batch, and jobs RQ and Celery enqueue
    singles: int  # single submit calls timed


@dataclass
class Samples:
    batch: list[float]  # jobs/s
    library: list[float]
    singles: list[float]
    rq: list[float]
    rq_command: list[float]  # RQ's enqueue_many in a fresh process (tests.bench.rq_submit)
    celery: list[float]
    batch_seconds: list[float]
    library_seconds: list[float]
    rq_command_seconds: list[float]
    start_seconds: list[float]  # han-worker submit --help: the command's process start alone
    stages: dict[
        str, list[float]
    ]  # the library's submission: seconds per stage (read, upload, record, enqueue)


def make_inputs(env: UnprivilegedEnv, root: Path, count: int) -> Path:
    """``count`` files of PAYLOAD random bytes, owned by the cluster user (the commands run as that user)."""
    root.mkdir()
    for index in range(count):
        (root / f"frame{index:05d}.bin").write_bytes(os.urandom(PAYLOAD))
    for path in [root, *root.iterdir()]:
        shutil.chown(path, env.user, env.user)
    return root


def submit(env: UnprivilegedEnv, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = han_worker(env, "submit", "--config", str(config), "--kind", "noop", *args, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"han-worker submit {' '.join(args)} failed: {done.stderr}")
    return done


def time_batch(env: UnprivilegedEnv, config: Path, folder: Path, nonce: str) -> float:
    started = time.perf_counter()
    submit(env, config, "--input", str(folder), "--param", f"bench={nonce}")
    return time.perf_counter() - started


def time_start(env: UnprivilegedEnv) -> float:
    """A han-worker submit that does nothing (``--help``): Python and the imports a submission pays."""
    started = time.perf_counter()
    subprocess.run(env.argv("han-worker", "submit", "--help"), check=True, capture_output=True, timeout=60)
    return time.perf_counter() - started


def time_library(link: Link, folder: Path, nonce: str) -> dict[str, float]:
    """The same batch submitted from Python (in this process, as RQ and Celery are timed): seconds per stage."""
    started = time.perf_counter()
    batch = client.plan_batch(folder, "noop", {"bench": nonce, "from": "python"}, 3)
    stages, last = {"read": time.perf_counter() - started}, [time.perf_counter()]

    def progress(stage: str, _done: int, _total: int) -> None:
        now = time.perf_counter()
        stages[stage] = stages.get(stage, 0.0) + now - last[0]
        last[0] = now

    client.submit_batch(link, batch, progress=progress)
    stages["total"] = time.perf_counter() - started
    return stages


def time_singles(env: UnprivilegedEnv, config: Path, folder: Path, count: int, nonce: str) -> float:
    files = sorted(folder.iterdir())[:count]
    started = time.perf_counter()
    for path in files:
        submit(env, config, "--input", str(path), "--param", f"bench={nonce}")
    return time.perf_counter() - started


def forget_queued(link: Link, cp: RunningControlPlane) -> None:
    """Delete the jobs the submissions left (no worker ran them): stream entries and ledger rows."""
    admin = cp.redis_admin()
    try:
        admin.xtrim(stream_key("noop"), maxlen=0)
    finally:
        admin.close()
    connection = link.ledger.connection()
    connection.execute("DELETE FROM jobs WHERE status = 'queued' AND kind = 'noop'")
    connection.execute(
        "DELETE FROM batches WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE batch_id = batches.id)"
    )


def peer_connection(env: UnprivilegedEnv, workdir: Path, cp: RunningControlPlane) -> tuple[redis.Redis, Path]:
    """Redis as the benchmark's ACL user (keys outside han:*), with Celery's app configured for it in this
    process, as the dispatch benchmark does; and the settings file a peer process connects with."""
    settings = create_bench_user(cp)
    settings_file = write_private_file(env, workdir / "bench-redis.json", json.dumps(settings))
    connection = tls_redis(str(settings["host"]), int(str(settings["port"])), str(settings["ca_cert"]),
                           "the bench's settings", username=BENCH_USER, password=str(settings["password"]),
                           socket_timeout=30)  # fmt: skip
    celery_peer(env, workdir, settings_file, connection)
    return connection, settings_file


def time_rq(connection: redis.Redis, jobs: int) -> float:
    from rq import Queue  # noqa: PLC0415 - the bench extra

    from tests.bench import rq_tasks  # noqa: PLC0415

    queue = Queue(RQ_QUEUE, connection=connection)
    payload = os.urandom(PAYLOAD)
    started = time.perf_counter()
    queue.enqueue_many([Queue.prepare_data(rq_tasks.TASK, (payload,)) for _index in range(jobs)])
    elapsed = time.perf_counter() - started
    queue.empty()  # type: ignore[no-untyped-call]
    return elapsed


def time_rq_command(env: UnprivilegedEnv, settings_file: Path, connection: redis.Redis, jobs: int) -> float:
    """tests.bench.rq_submit from its process's start to its exit, as the han-worker command is timed."""
    from rq import Queue  # noqa: PLC0415 - the bench extra

    argv = peer_argv(env, settings_file, "tests.bench.rq_submit", RQ_QUEUE, str(jobs), str(PAYLOAD))
    started = time.perf_counter()
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"tests.bench.rq_submit failed: {done.stderr}")
    queued = Queue(RQ_QUEUE, connection=connection)
    if queued.count != jobs:
        raise RuntimeError(f"tests.bench.rq_submit left {queued.count} jobs, not {jobs}")
    queued.empty()  # type: ignore[no-untyped-call]
    return elapsed


def compile_checkout() -> None:
    """Bytecode for the checkout's modules a peer process imports (its PYTHONPATH is the checkout, which the
    cluster user cannot write): RQ's command should not compile them at every start, as the bench venv's
    han-worker (a wheel, compiled at install) does not."""
    for folder in ("han_worker", "tests"):
        compileall.compile_dir(REPO / folder, quiet=1)


def time_celery(connection: redis.Redis, jobs: int) -> float:
    from tests.bench import celery_app  # noqa: PLC0415 - the bench extra

    payload = os.urandom(PAYLOAD // 2).hex()  # JSON carries text: PAYLOAD characters
    started = time.perf_counter()
    with celery_app.app.producer_or_acquire() as producer:
        for _index in range(jobs):
            celery_app.app.send_task(celery_app.TASK, args=[payload], queue=CELERY_QUEUE, producer=producer)
    elapsed = time.perf_counter() - started
    connection.delete(CELERY_QUEUE)
    return elapsed


def measure_fetch(
    env: UnprivilegedEnv, config: Path, link: Link, folder: Path, workdir: Path
) -> tuple[float, float, int]:
    """(seconds of the first fetch, of the second, bytes fetched) of a batch of ``sleep`` jobs a worker ran."""
    batch = client.plan_batch(folder, "sleep", {"seconds": 0}, 3)
    client.submit_batch(link, batch)
    worker = start_worker(env, config, "--quiet")
    try:
        wait_for(lambda: "serving noop" in worker.output(), 60, "the worker")
        progress = client.wait_batch(link, batch.batch_id, timeout=1800, interval=1.0)
        if not progress.all_succeeded:
            raise RuntimeError(f"the fetch's batch did not succeed: {client.format_batch_progress(progress)}")
    finally:
        stop_all([worker])
    output = workdir / "fetched"
    timings = []
    for _round in range(2):
        started = time.perf_counter()
        done = han_worker(env, "fetch", "--config", str(config), "--batch", batch.batch_id, "--output",
                          str(output), timeout=1800)  # fmt: skip
        timings.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"han-worker fetch --batch failed: {done.stderr}")
    fetched = sum(path.stat().st_size for path in output.rglob("*") if path.is_file())
    return timings[0], timings[1], fetched


def measure(context: Context, sizes: Sizes) -> tuple[Samples, tuple[float, float, int]]:
    cp, env = context.control_plane(), context.env
    workdir = env.private_dir("han-bench-batch-")
    link = connect(cp)
    document = worker_settings(cp, workdir / "spool", mode="pegasus", lease_seconds=30, heartbeat_seconds=5,
                               probe_interval_seconds=5, reconcile_seconds=30)  # fmt: skip
    config = write_private_file(env, workdir / "worker.json", json.dumps(document))
    samples = Samples([], [], [], [], [], [], [], [], [], [], {})
    try:
        folder = make_inputs(env, workdir / "inputs", sizes.jobs)
        connection, settings_file = peer_connection(env, workdir, cp)
        compile_checkout()
        for repetition in range(context.repeat):
            nonce = secrets.token_hex(4)
            samples.start_seconds.append(time_start(env))
            seconds = time_batch(env, config, folder, nonce)
            samples.batch_seconds.append(seconds)
            samples.batch.append(sizes.jobs / seconds)
            stages = time_library(link, folder, nonce)
            samples.library_seconds.append(stages["total"])
            samples.library.append(sizes.jobs / stages["total"])
            for stage, spent in stages.items():
                samples.stages.setdefault(stage, []).append(spent)
            samples.singles.append(sizes.singles / time_singles(env, config, folder, sizes.singles, nonce))
            samples.rq.append(sizes.jobs / time_rq(connection, sizes.jobs))
            samples.rq_command_seconds.append(time_rq_command(env, settings_file, connection, sizes.jobs))
            samples.rq_command.append(sizes.jobs / samples.rq_command_seconds[-1])
            samples.celery.append(sizes.jobs / time_celery(connection, sizes.jobs))
            forget_queued(link, cp)
            print(f"  [{repetition + 1}/{context.repeat}] batch {samples.batch[-1]:,.0f} jobs/s "
                  f"({seconds:.1f} s), from Python {samples.library[-1]:,.0f} jobs/s, single calls "
                  f"{samples.singles[-1]:.1f} jobs/s, RQ {samples.rq[-1]:,.0f} jobs/s (as a command "
                  f"{samples.rq_command[-1]:,.0f}), Celery {samples.celery[-1]:,.0f} jobs/s", flush=True)  # fmt: skip
        fetch = measure_fetch(env, config, link, folder, workdir)
    finally:
        link.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return samples, fetch


def section_of(samples: Samples, sizes: Sizes, fetch: tuple[float, float, int]) -> report.Section:
    rates = {
        name: report.spread(getattr(samples, name))
        for name in ("batch", "library", "singles", "rq", "rq_command", "celery")
    }
    over = {
        name: report.spread(
            [ours / other for ours, other in zip(samples.batch, getattr(samples, name), strict=True)]
        )
        for name in ("library", "singles", "rq", "rq_command", "celery")
    }
    library_over = {
        name: report.spread(
            [ours / other for ours, other in zip(samples.library, getattr(samples, name), strict=True)]
        )
        for name in ("rq", "celery")
    }
    stages = {stage: report.spread(spent) for stage, spent in samples.stages.items()}
    first, second, fetched = fetch
    rows = [
        ["ours: one batch (han-worker submit --input DIR)", "yes: S3 upload + ledger row", f"{sizes.jobs:,}",
         report.spread_text(report.spread(samples.batch_seconds), 2), report.spread_text(rates["batch"]), "1"],
        ["ours: one batch from Python (client.submit_batch)", "yes: S3 upload + ledger row", f"{sizes.jobs:,}",
         report.spread_text(report.spread(samples.library_seconds), 2), report.spread_text(rates["library"]),
         report.ratio_text(over["library"])],
        ["ours: single calls (han-worker submit --input FILE)", "yes: S3 upload + ledger row", f"{sizes.singles:,}",
         "-", report.spread_text(rates["singles"], 1), report.ratio_text(over["singles"])],
        ["RQ enqueue_many", "no: payload in Redis", f"{sizes.jobs:,}", "-", report.spread_text(rates["rq"]),
         report.ratio_text(over["rq"])],
        ["RQ enqueue_many as a command (a fresh process)", "no: payload in Redis", f"{sizes.jobs:,}",
         report.spread_text(report.spread(samples.rq_command_seconds), 2), report.spread_text(rates["rq_command"]),
         report.ratio_text(over["rq_command"])],
        ["Celery send_task, one producer", "no: payload in Redis", f"{sizes.jobs:,}", "-",
         report.spread_text(rates["celery"]), report.ratio_text(over["celery"])],
    ]  # fmt: skip
    verdict = [
        f"{'met' if over[name]['median'] >= goal else 'not met'}: {over[name]['median']:.2f}x {label} (goal >= "
        f"{goal:g}x)"
        for name, label, goal in (("singles", "the single calls", GOAL_OVER_SINGLES), ("rq", "RQ", 1.0),
                                  ("rq_command", "RQ as a command", 1.0), ("celery", "Celery", 1.0))
    ]  # fmt: skip
    verdict += [
        f"from Python: {library_over[name]['median']:.2f}x {label}"
        for name, label in (("rq", "RQ"), ("celery", "Celery"))
    ]
    spent = "; ".join(
        f"{stage} {report.spread_text(stages[stage], 2)} s"
        for stage in ("read", "upload", "record", "enqueue")
    )
    start = report.spread(samples.start_seconds)
    timed = zip(samples.batch_seconds, samples.start_seconds, strict=True)
    command_less_start = [command - process_start for command, process_start in timed]
    megabytes = fetched / 1e6
    return {
        "title": "Batch submission: one batch vs single calls, RQ and Celery bulk enqueue",
        "explanation": [
            f"jobs/s is {sizes.jobs:,} jobs with an input of {PAYLOAD:,} bytes each, over the time from the "
            "submitting call's start to its end; for ours, the whole han-worker command as a lab member runs "
            "it (process start, connecting, reading and hashing every file, the small inputs packed into 8 "
            "objects uploaded at once while one ledger statement records the jobs, one Redis round trip).",
            f"The single calls are {sizes.singles:,} han-worker submit commands one after the other (each a "
            "process of its own), timed together.",
            "'batch / this' is the batch's jobs/s over the other's, within one repetition: above 1, the batch "
            "is faster.",
        ],
        "columns": ["how", "durable?", "jobs", "seconds", "jobs/s", "batch / this"],
        "rows": rows,
        "figures": {
            "jobs": sizes.jobs,
            "singles": sizes.singles,
            "payload_bytes": PAYLOAD,
            "jobs_per_s": rates,
            "batch_over": over,
            "fetch": {
                "outputs": sizes.jobs,
                "bytes": fetched,
                "first_s": first,
                "again_s": second,
                "first_mb_per_s": megabytes / first,
                "first_files_per_s": sizes.jobs / first,
            },
            "process_start_s": start,
        },
        "notes": [
            "Goals (not asserted): " + "; ".join(verdict) + ".",
            f"Fetch of the {sizes.jobs:,} outputs of a batch of sleep jobs (han-worker fetch --batch, 8 at a "
            f"time): {first:.1f} s ({sizes.jobs / first:,.0f} files/s, {megabytes / first:.3f} MB/s: each output "
            f"is a few bytes, so files/s is the figure); again, every file already there and checked: "
            f"{second:.1f} s.",
            f"Where the batch's time goes (from Python): {spent}: reading and hashing the files (each read "
            "once: the packs are built from the bytes kept), uploading them to S3 (packed: 8 objects, each "
            "input a range of one, uploaded at once; one PUT per input took 2.84 s here before) while the "
            "ledger inserts the rows, then the wait for that statement (its transaction commits once every "
            "upload is done), one Redis round trip for their entries.",
            "RQ and Celery carry the payload in the job (Redis); ours uploads it to S3 and writes a durable "
            "ledger row per job. Like for like: the row from Python against RQ and Celery timed in this "
            "process, the command against RQ as a command (each a fresh Python process that imports its "
            "clients and connects). A han-worker submit that does nothing (--help: Python and the imports of "
            f"its PostgreSQL, Redis and S3 clients) takes {report.spread_text(start, 2)} s; the command less "
            f"that start took {report.spread_text(report.spread(command_less_start), 2)} s.",
            "2-core machine shared with other sessions' tests: compare the ratios, measured side by side.",
        ],
    }


def benchmark(context: Context) -> report.Section:
    """The suite's entry: 2,000 inputs and 100 single calls (30 and 5 in smoke mode)."""
    sizes = Sizes(30, 5) if context.smoke else Sizes(2000, 100)
    print(f"batch: {sizes.jobs} inputs of {PAYLOAD} bytes, {sizes.singles} single calls, "
          f"{context.repeat} repetition(s)", flush=True)  # fmt: skip
    samples, fetch = measure(context, sizes)
    return section_of(samples, sizes, fetch)
