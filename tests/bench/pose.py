"""Pose at the model's speed: the bare model against the whole system, on the same inputs, in one run.

    python -m tests.bench --only pose [--smoke]

The inputs are what the lab sends, made here: the drill's photo (matplotlib's ``grace_hopper.jpg``, 512x600
JPEG), the same as PNG, a 1024x1200 JPEG and a phone-sized 12-megapixel JPEG made by upscaling it, and a
short MP4 video of the person moving across the picture, written with OpenCV. For each repetition, side by
side:

1. the bare loop (:mod:`tests.bench.pose_bare`): one process, one warm graph, read + decode + model for each
   input, no job system; then the same with two processes, each taking half of the inputs;
2. one worker, then two, through the whole system: every job staged first, its input uploaded to S3 and
   its ledger row committed, then the workers started and, once they are ready, every job put in the
   ``pose`` stream at once (:func:`stage`); each worker takes a job, downloads its input, runs the
   ``pose`` backend and commits the result with ``landmarks.json`` (small: stored in the ledger). Throughput is the jobs divided by
   the time from the first job's start to the last one's finish, on the ledger's clock; per-job latency is
   an attempt's start to its finish;
3. video: the same videos through the bare loop and one worker, in frames per second.

Where a job's time goes comes from the worker's own count (its last log line, ``time per job: ...``) and
the backend's summary (decode and model time). The worker's resident memory is read from /proc after
about 10 jobs and after the last one; a full run adds one worker taking 1,000 jobs for that.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import matplotlib.cbook
import numpy

from han_worker.store.artifacts import input_key
from han_worker.store.ledger import NewJob
from han_worker.store.link import Link
from tests.bench import report
from tests.bench.context import Context
from tests.bench.dispatch import connect, stop_all, wait_started
from tests.conftest import REPO
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    WorkerProcess,
    start_worker,
    worker_settings,
    write_private_file,
)

TIMINGS = re.compile(
    r"time per job: total ([\d.]+) ms: download ([\d.]+), backend ([\d.]+), upload ([\d.]+), "
    r"ledger ([\d.]+), queue ([\d.]+), other ([\d.]+)"
)
STOPPED = re.compile(r"stopped after (\d+) job\(s\)")
WARMED = re.compile(r"backend pose warmed up in ([\d.]+) s")
PHASES = ("download", "backend", "upload", "ledger", "queue", "other")
# A first job within this factor of the later ones counts as "no slower": on this shared 2-core machine two
# jobs of one input differ by as much.
FIRST_JOB_NOISE = 1.1
RSS_EARLY = 10  # jobs after which the first memory reading is taken
GOALS = {"images": 0.85, "video": 0.95}
# A job's parts: the worker's phases (its log), with the backend's split in decode, model and the rest.
PARTS = ("download", "decode", "inference", "rest of the backend", "upload", "ledger", "queue", "other")


@dataclass(frozen=True)
class Sizes:
    images: int  # single-image jobs per throughput figure, the input kinds in turn
    videos: int  # video jobs per video figure
    video_frames: int  # frames of the video
    endurance: int  # jobs of the memory run with one worker (0: none)


FULL, SMOKE = Sizes(200, 8, 90, 1000), Sizes(12, 2, 10, 0)


# -- the inputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Input:
    kind: str  # what it is, for the report
    name: str  # the job's input name: image or video
    path: Path


def make_inputs(env: UnprivilegedEnv, directory: Path, sizes: Sizes) -> tuple[list[Input], Input]:
    """The image kinds and the video, as files the cluster user can read."""
    photo = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    person = cv2.imread(str(photo))
    quality = [cv2.IMWRITE_JPEG_QUALITY, 92]
    images = [
        Input("JPEG 512x600 (the drill's photo)", "image", _copy(photo, directory / "photo.jpg")),
        Input("PNG 512x600", "image", _write(directory / "photo.png", person)),
        Input("JPEG 1024x1200", "image", _write(directory / "medium.jpg", _scaled(person, 2), quality)),
        Input(
            "JPEG 3200x3750, 12 MP (upscaled)",
            "image",
            _write(directory / "phone.jpg", _scaled(person, 3750 / 600), quality),
        ),
    ]
    video = Input(f"MP4 512x600, {sizes.video_frames} frames", "video", directory / "walk.mp4")
    _write_video(video.path, person, sizes.video_frames)
    for each in [*images, video]:
        subprocess.run(["chown", f"{env.user}:{env.user}", str(each.path)], check=True)
    return images, video


def _copy(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes())
    return target


def _scaled(image: Any, factor: float) -> Any:
    height, width = image.shape[:2]
    return cv2.resize(image, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_CUBIC)


def _write(path: Path, image: Any, options: list[int] | None = None) -> Path:
    assert cv2.imwrite(str(path), image, options or []), path
    return path


def _write_video(path: Path, person: Any, frames: int) -> None:
    """The person moving across the picture and back: tracking from frame to frame, as in a real clip."""
    height, width = person.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 30.0, (width, height))
    for index in range(frames):
        offset = 60 * numpy.sin(2 * numpy.pi * index / 60)
        shift = numpy.float32([[1, 0, offset], [0, 1, offset / 3]])
        writer.write(cv2.warpAffine(person, shift, (width, height), borderValue=(90, 90, 90)))
    writer.release()


def in_turn(kinds: list[Input], count: int) -> list[Input]:
    return [kinds[index % len(kinds)] for index in range(count)]


# -- the bare loop ------------------------------------------------------------------------------------


@dataclass
class Run:
    """One measured run, bare or through the system."""

    rate: float  # inputs (images) or frames per second, first start to last finish
    per_input_ms: list[float]  # in the order the inputs were given (bare) or of the ledger (system)
    kinds: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    workers: list[str] = field(default_factory=list)  # system runs: the worker of each job, in the same order


def bare_argv(env: UnprivilegedEnv, mode: str, inputs_file: Path) -> list[str]:
    return [
        "setpriv",
        f"--reuid={env.user}",
        f"--regid={env.user}",
        "--init-groups",
        "--",
        "env",
        "-i",
        f"HOME=/home/{env.user}",
        f"PATH={env.bin_dir}:/usr/bin:/bin",
        f"PYTHONPATH={REPO}",
        str(env.bin_dir / "python"),
        "-m",
        "tests.bench.pose_bare",
        mode,
        str(inputs_file),
    ]


def _ready(process: subprocess.Popen[str], log: Path) -> None:
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "ready":
        process.kill()
        raise RuntimeError(f"the bare loop did not start: {line!r}\n{log.read_text()[-2000:]}")


def run_bare(env: UnprivilegedEnv, workdir: Path, inputs: list[Input], processes: int) -> Run:
    """The inputs split between ``processes`` bare loops that start together, once each has warmed up."""
    mode, shares = inputs[0].name, [inputs[index::processes] for index in range(processes)]
    started = []
    for index, share in enumerate(shares):
        listing = write_private_file(
            env, workdir / f"bare-{index}.json", json.dumps([str(i.path) for i in share])
        )
        log = workdir / f"bare-{index}.log"
        with log.open("w") as errors:
            started.append(
                (
                    subprocess.Popen(
                        bare_argv(env, mode, listing),
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=errors,
                        text=True,
                        cwd="/",
                    ),
                    log,
                )
            )
    for process, log in started:
        _ready(process, log)
    for process, _log in started:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    results = [json.loads(process.communicate(timeout=1800)[0]) for process, _log in started]
    return _bare_run(results, shares, mode)


def _bare_run(results: list[dict[str, Any]], shares: list[list[Input]], mode: str) -> Run:
    span = max(result["last_finish"] for result in results) - min(result["first_start"] for result in results)
    count = sum(result["frames"] for result in results) if mode == "video" else sum(map(len, shares))
    inputs = sum(map(len, shares))
    details = {
        "decode_ms": sum(result["decode_ms"] for result in results) / inputs,
        "inference_ms": sum(result["inference_ms"] for result in results) / inputs,
        "warm_up_s": results[0]["warm_up_s"],
        "new_graph_ms": results[0]["new_graph_ms"],
    }
    per_input = [ms for result in results for ms in result["per_input_ms"]]
    kinds = [each.kind for share in shares for each in share]
    return Run(count / span, per_input, kinds, details)


# -- the whole system ---------------------------------------------------------------------------------


def start_pose_workers(
    env: UnprivilegedEnv, workdir: Path, cp: RunningControlPlane, count: int
) -> list[WorkerProcess]:
    settings = worker_settings(
        cp,
        workdir / "spool",
        mode="pegasus",
        queues=["pose"],
        lease_seconds=120,
        heartbeat_seconds=5,
        probe_interval_seconds=5,
        reconcile_seconds=120,
    )
    config = write_private_file(env, workdir / "pose-worker.json", json.dumps(settings))
    workers = [start_worker(env, config, "--quiet") for _index in range(count)]
    wait_started(workers, lambda: all("serving pose" in worker.output() for worker in workers), "pose worker")
    return workers


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _done(link: Link, job_ids: list[str]) -> int:
    row = (
        link.ledger.connection()
        .execute(
            "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND status IN ('succeeded', 'failed', 'dead')",
            (job_ids,),
        )
        .fetchone()
    )
    return int(row[0]) if row else 0


def watch(
    link: Link, job_ids: list[str], worker: WorkerProcess | None, timeout: float = 3600
) -> dict[str, float]:
    """Wait until every job is done; with ``worker``, its resident memory after about RSS_EARLY jobs and at the
    end (MiB, and the job counts they were read at)."""
    memory: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while (done := _done(link, job_ids)) < len(job_ids):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{len(job_ids) - done} of {len(job_ids)} pose jobs not done within {timeout:g}s"
            )
        if worker is not None and done >= RSS_EARLY and "early_mib" not in memory:
            memory.update(early_mib=resident_mib(worker.pid), early_jobs=done)
        time.sleep(0.2)  # the ledger is asked a few times a second only: the bare loop has no such guest
    if worker is not None:
        end = resident_mib(worker.pid)
        # Every job ended between two looks (a fast run, the smoke's few jobs): the first reading is the end's.
        memory.setdefault("early_mib", end)
        memory.setdefault("early_jobs", len(job_ids))
        memory.update(end_mib=end, end_jobs=len(job_ids))
    return memory


@dataclass(frozen=True)
class JobRow:
    """A finished pose job as the ledger has it: its last attempt's start and finish, its worker, its summary."""

    job_id: str
    started: float
    finished: float
    worker_id: str
    summary: dict[str, Any]


def job_rows(link: Link, job_ids: list[str]) -> list[JobRow]:
    """Each job's row, by start; every job must have succeeded."""
    rows = (
        link.ledger.connection()
        .execute(
            "SELECT j.id::text, extract(epoch FROM a.started_at)::float8, extract(epoch FROM a.finished_at)::float8, "
            "a.worker_id, j.result, j.status, j.error FROM jobs j "
            "JOIN job_attempts a ON a.job_id = j.id AND a.attempt = j.attempts "
            "WHERE j.id = ANY(%s::uuid[]) ORDER BY a.started_at",
            (job_ids,),
        )
        .fetchall()
    )
    failed = [f"{row[0]}: {row[5]} {row[6]}" for row in rows if row[5] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} pose job(s) did not succeed: {failed[:3]}")
    return [JobRow(*row[:5]) for row in rows]


def worker_timings(workers: list[WorkerProcess]) -> dict[str, float]:
    """Milliseconds per job in each phase, over every worker, from their last log lines."""
    sums, jobs = dict.fromkeys(("total", *PHASES), 0.0), 0
    for worker in workers:
        output = worker.output()
        timed, stopped = TIMINGS.search(output), STOPPED.search(output)
        if timed is None or stopped is None:
            continue
        count = int(stopped.group(1))
        jobs += count
        for name, value in zip(("total", *PHASES), timed.groups(), strict=True):
            sums[name] += float(value) * count
    return {name: value / jobs for name, value in sums.items()} if jobs else {}


def stage(link: Link, inputs: list[Input]) -> list[str]:
    """The jobs as ``client.submit`` records them (input uploaded to S3, ledger row committed), not yet in
    their stream: the workers start meanwhile, and every job is released at once when they are ready, so that
    neither the uploads nor a worker's start are in the figures. The workers' lease is longer than this takes,
    so their reconciler does not enqueue the jobs first."""
    jobs = []
    for each in inputs:
        job_id = str(uuid.uuid4())
        uploaded = link.artifacts.upload(input_key(job_id, each.name), each.path)
        jobs.append(NewJob(job_id, "pose", "pose", {}, {each.name: uploaded.to_dict()}, max_attempts=3))
    link.ledger.insert_jobs(jobs)
    return [job.job_id for job in jobs]


@dataclass(frozen=True)
class Bench:
    """What every run of this benchmark uses: the suite's context, a link as root, a private directory."""

    context: Context
    link: Link
    workdir: Path


def run_system(bench: Bench, inputs: list[Input], workers: int) -> Run:
    cp, env, link, workdir = bench.context.control_plane(), bench.context.env, bench.link, bench.workdir
    job_ids = stage(link, inputs)
    kind_of = {job_id: each.kind for job_id, each in zip(job_ids, inputs, strict=True)}
    started = start_pose_workers(env, workdir, cp, workers)
    link.queues.enqueue_many([("pose", job_id) for job_id in job_ids])  # released to ready workers at once
    try:
        memory = watch(link, job_ids, started[0] if workers == 1 else None)
    finally:
        stop_all(started)
    rows = job_rows(link, job_ids)
    span = max(row.finished for row in rows) - min(row.started for row in rows)
    summaries = [row.summary for row in rows]
    count = sum(int(summary["frames"]) for summary in summaries) if inputs[0].name == "video" else len(rows)
    details = {
        "timings_ms": worker_timings(started),
        "decode_ms": statistics.fmean(s["decode_ms_per_frame"] * s["frames"] for s in summaries),
        "inference_ms": statistics.fmean(s["ms_per_frame"] * s["frames"] for s in summaries),
        "warm_up_s": [float(found.group(1)) for w in started if (found := WARMED.search(w.output()))],
        "memory": memory,
    }
    per_job = [(row.finished - row.started) * 1000 for row in rows]
    kinds = [kind_of[row.job_id] for row in rows]
    return Run(count / span, per_job, kinds, details, [row.worker_id for row in rows])


# -- the section --------------------------------------------------------------------------------------


@dataclass
class Pair:
    """A bare run and a system run of the same inputs, measured one after the other."""

    bare: list[Run] = field(default_factory=list)
    system: list[Run] = field(default_factory=list)

    def ratios(self) -> report.Spread:
        return report.spread(
            [mine.rate / bare.rate for mine, bare in zip(self.system, self.bare, strict=True)]
        )


def measure(context: Context, sizes: Sizes) -> tuple[dict[str, Pair], Run | None, list[Input]]:
    env = context.env
    workdir = env.private_dir("han-bench-pose-")
    link = connect(context.control_plane())
    try:
        images, video = make_inputs(env, workdir, sizes)
        plan: dict[str, tuple[list[Input], int]] = {
            "images, 1": (in_turn(images, sizes.images), 1),
            "images, 2": (in_turn(images, sizes.images), 2),
            "video, 1": ([video] * sizes.videos, 1),
        }
        bench, pairs = Bench(context, link, workdir), {name: Pair() for name in plan}
        for repetition in range(context.repeat):
            for name, planned in plan.items():
                _measure_pair(bench, pairs[name], planned, repetition)
        memory_run = in_turn(images, sizes.endurance)
        endurance = run_system(bench, memory_run, 1) if sizes.endurance else None
        return pairs, endurance, [*images, video]
    finally:
        link.close()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


def _measure_pair(bench: Bench, pair: Pair, planned: tuple[list[Input], int], repetition: int) -> None:
    (inputs, count), context = planned, bench.context
    runs: list[Callable[[], None]] = [
        lambda: pair.bare.append(run_bare(context.env, bench.workdir, inputs, count)),
        lambda: pair.system.append(run_system(bench, inputs, count)),
    ]
    for run in runs[repetition % 2 :] + runs[: repetition % 2]:  # alternate who goes first
        run()
    unit = "frames/s" if inputs[0].name == "video" else "images/s"
    print(
        f"  [{repetition + 1}/{context.repeat}] {inputs[0].name}, {count} process(es): bare "
        f"{pair.bare[-1].rate:.1f} {unit}, system {pair.system[-1].rate:.1f} {unit} "
        f"({pair.system[-1].rate / pair.bare[-1].rate:.2f}x)",
        flush=True,
    )


def _latency(runs: list[Run]) -> tuple[report.Spread, report.Spread]:
    p50 = report.spread([statistics.median(run.per_input_ms) for run in runs])
    p99 = report.spread([report.percentile(run.per_input_ms, 0.99) for run in runs])
    return p50, p99


def _rows(pairs: dict[str, Pair], sizes: Sizes) -> tuple[list[list[str]], dict[str, object]]:
    rows, figures = [], {}
    what = {
        "images, 1": (f"{sizes.images} images", "images/s"),
        "images, 2": (f"{sizes.images} images", "images/s"),
        "video, 1": (f"{sizes.videos} videos x {sizes.video_frames} frames", "frames/s"),
    }
    for name, pair in pairs.items():
        inputs, unit = what[name]
        count = name.rsplit(", ", 1)[1]
        ratio = pair.ratios()
        entry: dict[str, object] = {"ratio": ratio}
        for side, runs, label in (
            ("bare", pair.bare, f"bare loop, {count} process(es)"),
            ("system", pair.system, f"{count} worker(s), whole system"),
        ):
            rate, (p50, p99) = report.spread([run.rate for run in runs]), _latency(runs)
            entry[side] = {"rate": rate, "p50_ms": p50, "p99_ms": p99}
            rows.append(
                [
                    label,
                    inputs,
                    f"{report.spread_text(rate, 1)} {unit}",
                    "1" if side == "bare" else report.ratio_text(ratio),
                    report.spread_text(p50, 1),
                    report.spread_text(p99, 1),
                ]
            )
        figures[name] = entry
    return rows, figures


def _per_kind(pair: Pair) -> str:
    """p50 per input kind, bare and system, from the last repetition."""
    parts = []
    bare, system = pair.bare[-1], pair.system[-1]
    for kind in dict.fromkeys(bare.kinds):
        mine = [ms for ms, k in zip(system.per_input_ms, system.kinds, strict=True) if k == kind]
        theirs = [ms for ms, k in zip(bare.per_input_ms, bare.kinds, strict=True) if k == kind]
        parts.append(f"{kind}: {statistics.median(theirs):.1f} bare, {statistics.median(mine):.1f} system")
    return "; ".join(parts)


def _first_job(runs: list[Run]) -> dict[str, report.Spread]:
    """Each fresh worker's first job against the p50 of its later jobs of the same input kind, over every
    worker of ``runs``: the ms of both, and their ratio taken worker by worker (one worker's first job is one
    sample, so the runs of one and of two workers all count)."""
    first, steady, ratios = [], [], []
    for run in runs:
        for worker in dict.fromkeys(run.workers):
            jobs = [(ms, kind) for ms, kind, who in zip(run.per_input_ms, run.kinds, run.workers, strict=True)
                    if who == worker]  # fmt: skip
            first_ms, first_kind = jobs[0]
            later = [ms for ms, kind in jobs[1:] if kind == first_kind]
            if not later:
                continue
            first.append(first_ms)
            steady.append(statistics.median(later))
            ratios.append(first_ms / steady[-1])
    return {
        "first_ms": report.spread(first),
        "steady_p50_ms": report.spread(steady),
        "ratio": report.spread(ratios),
    }


def _breakdown(pair: Pair) -> dict[str, report.Spread]:
    """Milliseconds per job in each part, medians over the repetitions of per-job means."""
    parts: dict[str, list[float]] = {}
    for run in pair.system:
        timings = run.details["timings_ms"]
        inner = {"decode": run.details["decode_ms"], "inference": run.details["inference_ms"]}
        own = {
            "download": timings["download"],
            **inner,
            "rest of the backend": timings["backend"] - inner["decode"] - inner["inference"],
            **{name: timings[name] for name in ("upload", "ledger", "queue", "other")},
            "total": timings["total"],
        }
        for name, value in own.items():
            parts.setdefault(name, []).append(value)
    for run in pair.bare:
        parts.setdefault("bare decode", []).append(run.details["decode_ms"])
        parts.setdefault("bare inference", []).append(run.details["inference_ms"])
        parts.setdefault("bare total", []).append(statistics.fmean(run.per_input_ms))
    return {name: report.spread(values) for name, values in parts.items()}


def _breakdown_text(parts: dict[str, report.Spread], what: str) -> str:
    def ms(name: str) -> str:
        return f"{parts[name]['median']:.1f}"

    system = ", ".join(f"{name} {ms(name)}" for name in PARTS)
    return (
        f"Where a {what} job's time goes, ms per job (1 worker; medians over the repetitions of per-job "
        f"means): {system}; in all {ms('total')}. The bare loop: decode {ms('bare decode')}, inference "
        f"{ms('bare inference')}; in all {ms('bare total')}."
    )


def _memory(pairs: dict[str, Pair], endurance: Run | None) -> dict[str, object]:
    runs = [run for run in pairs["images, 1"].system if run.details["memory"]]
    memory: dict[str, object] = {
        "early_mib": report.spread([run.details["memory"]["early_mib"] for run in runs]),
        "end_mib": report.spread([run.details["memory"]["end_mib"] for run in runs]),
        "early_jobs": runs[0].details["memory"]["early_jobs"],
        "end_jobs": runs[0].details["memory"]["end_jobs"],
    }
    if endurance is not None:
        memory["endurance"] = endurance.details["memory"] | {"images_per_s": endurance.rate}
    return memory


def _memory_text(memory: dict[str, object]) -> str:
    early, end = memory["early_mib"], memory["end_mib"]
    assert isinstance(early, dict)
    assert isinstance(end, dict)
    text = (
        f"Resident memory of one worker: {early['median']:.0f} MiB after {memory['early_jobs']} jobs, "
        f"{end['median']:.0f} MiB after {memory['end_jobs']}"
    )
    endurance = memory.get("endurance")
    if isinstance(endurance, dict):
        text += (
            f"; in the 1,000-job run {endurance['early_mib']:.0f} MiB after {endurance['early_jobs']:.0f} "
            f"jobs and {endurance['end_mib']:.0f} MiB after {endurance['end_jobs']:.0f} "
            f"({endurance['images_per_s']:.1f} images/s)"
        )
    return text + " (the two warm graphs take about 220 MiB of it)."


def _goals(figures: dict[str, object], first: dict[str, report.Spread]) -> str:
    verdicts = []
    for name, goal in (("images, 1", GOALS["images"]), ("video, 1", GOALS["video"])):
        entry = figures[name]
        assert isinstance(entry, dict)
        ratio = entry["ratio"]["median"]
        verdicts.append(
            f"{'met' if ratio >= goal else 'not met'}: {name.split(',', maxsplit=1)[0]} with 1 worker "
            f"{ratio:.2f}x the bare loop (goal >= {goal:g}x)"
        )
    ratio = first["ratio"]["median"]
    verdicts.append(
        f"{'met' if ratio <= FIRST_JOB_NOISE else 'not met'}: a fresh worker's first job {ratio:.2f}x its "
        f"later jobs' p50 on the same input (goal <= 1x; {FIRST_JOB_NOISE:g}x counts as met, two jobs of one "
        "input differ by that much here)"
    )
    return "Goals (not asserted): " + "; ".join(verdicts) + "."


def section_of(
    pairs: dict[str, Pair], endurance: Run | None, sizes: Sizes, inputs: list[Input]
) -> report.Section:
    rows, figures = _rows(pairs, sizes)
    first = _first_job(pairs["images, 1"].system + pairs["images, 2"].system)
    breakdown = {"images": _breakdown(pairs["images, 1"]), "video": _breakdown(pairs["video, 1"])}
    bare = pairs["images, 1"].bare[0].details
    warm_up = [seconds for run in pairs["images, 1"].system for seconds in run.details["warm_up_s"]]
    memory = _memory(pairs, endurance)
    figures.update(
        first_job=first,
        breakdown_ms=breakdown,
        memory=memory,
        warm_up_s=report.spread(warm_up),
        new_graph_ms=bare["new_graph_ms"],
    )
    new_graph = bare["new_graph_ms"]
    return {
        "title": "Pose: the bare model against the whole system",
        "explanation": [
            "The bare loop is one process with one warm mediapipe graph reading, decoding and running the model on "
            "each input, no job system; two processes take half of the inputs each.",
            "The system runs are the same inputs as pose jobs: all submitted first (each input uploaded to S3), then "
            "1 or 2 workers started; throughput is from the first job's start to the last one's finish on the "
            "ledger's clock, and a job's latency is its attempt's start to finish (download, decode, model, "
            "landmarks.json, commit; landmarks.json, a few KiB, is stored in the ledger by that commit, not "
            "uploaded to S3).",
            f"Images are the four kinds in turn: {', '.join(each.kind for each in inputs[:-1])}; the video is "
            f"{inputs[-1].kind} of the person moving, its tracking state fresh for each video in both loops.",
            "'ratio' is the system's rate divided by the bare loop's, within one repetition.",
            "In the notes' breakdowns, 'rest of the backend' is writing landmarks.json and checking the input, "
            "'queue' is Redis (taking the next entry, acknowledging this one) and 'other' the worker's loop "
            "around them (scratch directory, bookkeeping).",
        ],
        "columns": ["run", "inputs", "rate", "ratio", "p50 ms per input", "p99 ms per input"],
        "rows": rows,
        "figures": figures,
        "notes": [
            _goals(figures, first),
            _breakdown_text(breakdown["images"], "single-image"),
            _breakdown_text(breakdown["video"], "video"),
            f"p50 ms per input kind (1 process / 1 worker, last repetition): {_per_kind(pairs['images, 1'])}.",
            f"A fresh worker warms its model up before it registers ({report.spread_text(figures['warm_up_s'], 2)} s, "
            f"from its log). Over the {first['ratio']['runs']} fresh workers of the image runs (1 and 2 workers), "
            f"a worker's first job took {report.spread_text(first['first_ms'], 1)} ms, its later jobs on the same "
            f"input {report.spread_text(first['steady_p50_ms'], 1)} ms (p50), a ratio of "
            f"{report.spread_text(first['ratio'], 2)} worker by worker. Before, every job built a graph: building one and "
            f"running it on the drill's photo took {new_graph[0]:.0f} ms the first time in a process, then "
            f"{statistics.median(new_graph[1:]):.0f} ms (the bare loop measures it before it starts).",
            _memory_text(memory),
            "Frames go to the model one at a time: mediapipe's legacy pose solution takes one image per call "
            "and tracking makes each video frame depend on the one before, so there is no batch to form.",
            "2-core machine shared with other sessions' tests; the control plane's PostgreSQL, Valkey and "
            "SeaweedFS share the cores with the workers: compare the ratios, measured side by side.",
        ],
    }


def benchmark(context: Context) -> report.Section:
    """The suite's entry: 200 single-image jobs per figure, 8 videos of 90 frames and a 1,000-job memory run
    (smoke: 12 images, 2 videos of 10 frames, no memory run)."""
    sizes = SMOKE if context.smoke else FULL
    print(
        f"pose: {sizes.images} images, {sizes.videos} videos of {sizes.video_frames} frames per figure, "
        f"{context.repeat} repetition(s)"
        + (f", then {sizes.endurance} jobs for memory" if sizes.endurance else ""),
        flush=True,
    )
    pairs, endurance, inputs = measure(context, sizes)
    return section_of(pairs, endurance, sizes, inputs)
