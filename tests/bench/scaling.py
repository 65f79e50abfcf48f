"""Elastic workers (issue 20): a burst of short jobs from zero workers through ``han-worker scale``, beside a
fixed array of the pool's ``max_workers`` already running, on the testbed's real Slurm.

Its own control plane (127.0.0.79) and its own Slurm job names (``han-bench-elastic-<hex>``,
``han-bench-fixed-<hex>``); the worker jobs run this checkout's ``han-worker run`` from the bench venv as the
cluster user, in partition batch with 1 CPU and no GRES (the testbed's fake GPUs are not needed to measure the
scaling), as tests/integration/test_scaling.py does.

Where each figure comes from (one clock: one machine):

- the burst's submission: this process's clock just before ``client.submit_many`` (one ledger commit);
- the first worker job submitted: the scaler's ``submitted worker job`` log line (after ``sbatch`` returned);
- a worker registered: its ``serving ... on`` log line in its Slurm output;
- jobs started and finished, and the time each worker job spent running jobs: the ledger's attempts (the
  worker id names its Slurm job);
- allocations: Slurm's start and end of each worker job from its job completion log (jobcomp/filetxt,
  whole seconds): the testbed has no accounting (``sacct``);
- peak workers, and worker jobs pending and running over time (the picture): ``squeue`` every 0.25 s;
- the backlog over time (jobs submitted, not yet started) and workers running a job over time (the picture):
  the ledger's attempts.

Allocation-seconds held idle: the sum over worker jobs of their allocation minus the time they spent running
jobs (start-up before the registration counts as idle). The fixed array never leaves, so over the elastic
run's window (the burst's submission to its last worker gone) it holds ``max_workers`` times that window; its
time before the burst is not counted, which favours it.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path

from han_worker import client
from han_worker.store.ledger import Ledger
from tests.bench import report, scaling_chart
from tests.bench.context import Context
from tests.bench.dispatch import connect
from tests.bench.logs import logged_at, wait_until
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    start_control_plane,
    worker_settings,
    write_private_file,
)
from tests.integration.scaling_pools import alive_states

ADDRESS = "127.0.0.79"  # no other test or benchmark uses it
JOBCOMP_LOG = Path("/var/log/slurm/jobcomp.log")  # the testbed's JobCompLoc
TICK_SECONDS = 3.0  # longer than the client's probe timeout (2 s), as in test_scaling.py
HORIZON_SECONDS = 5.0
SBATCH: dict[str, object] = {"time": "10:00", "cpus_per_task": 1, "mem": "500M"}
MAKESPAN_GOAL = 1.15  # the issue's: elastic within 15 % of a fixed array already running
SLURM_JOB_IN_WORKER_ID = re.compile(r"-slurm(\d+)-")
SUBMITTED = re.compile(r"submitted worker job (\d+)")
JOBCOMP_LINE = re.compile(r"^JobId=(\d+) .*?StartTime=(\S+) EndTime=(\S+)", re.MULTILINE)


@dataclass(frozen=True)
class Plan:
    jobs: int
    job_seconds: float
    max_workers: int
    max_pending: int
    idle_timeout: float


FULL = Plan(jobs=200, job_seconds=1.0, max_workers=4, max_pending=2, idle_timeout=5.0)  # the burst
SMOKE = Plan(jobs=12, job_seconds=1.0, max_workers=3, max_pending=2, idle_timeout=5.0)


@dataclass
class Run:
    """One burst through one pool; times in seconds from the burst's submission."""

    mode: str  # "elastic" or "fixed"
    to_first_sbatch: float | None  # elastic only: the fixed array was submitted before the burst
    to_first_registered: float | None
    to_first_started: float
    drained: float  # the last job finished
    last_gone: float | None  # elastic only: the fixed array never leaves
    worker_jobs: int
    peak_workers: int
    allocated_s: float
    busy_s: float
    longest_after_drain_s: float | None = None  # elastic only: the longest a worker stayed after the last job
    killed: int = 0  # attempts that ended crashed or timed out (a worker killed: by scaling, by its walltime)
    released: int = 0  # attempts given back unfinished (a worker that drained)
    duplicated: int = 0  # jobs with more than one succeeded attempt
    timeline: scaling_chart.Timeline | None = field(default=None, repr=False)  # for the picture

    @property
    def idle_s(self) -> float:
        return self.allocated_s - self.busy_s


class Sampler(threading.Thread):
    """``squeue`` every 0.25 s: the most worker jobs of the pool running at once, and (epoch seconds,
    pending, running) at each sample for the picture."""

    def __init__(self, job_name: str) -> None:
        super().__init__(daemon=True)
        self.job_name, self.peak_running, self.stopping = job_name, 0, threading.Event()
        self.samples: list[tuple[float, int, int]] = []

    def run(self) -> None:
        while not self.stopping.wait(0.25):
            try:
                alive = alive_states(self.job_name)
            except subprocess.CalledProcessError:
                continue  # slurmctld busy for a moment: a sample missed, not the rest of the run's
            running = sum(state == "RUNNING" for state in alive)
            self.samples.append((time.time(), sum(state == "PENDING" for state in alive), running))
            self.peak_running = max(self.peak_running, running)


# -- the pools ---------------------------------------------------------------------------------------


class Bench:
    def __init__(
        self, env: UnprivilegedEnv, workdir: Path, control_plane: RunningControlPlane, plan: Plan
    ) -> None:
        self.env, self.workdir, self.cp, self.plan = env, workdir, control_plane, plan

    def worker_script(self, name: str, **settings: object) -> Path:
        config = write_private_file(self.env, self.workdir / f"{name}.json", json.dumps(worker_settings(
            self.cp, self.workdir / f"spool-{name}", queues=["noop"], **settings)))  # fmt: skip
        return write_private_file(self.env, self.workdir / f"{name}.sbatch", "#!/bin/bash -eu\nexec "
                                  f"{self.env.bin_dir / 'han-worker'} run --config {config}\n", 0o700)  # fmt: skip

    def pool_file(self, job_name: str, script: Path) -> Path:
        sbatch = SBATCH | {"output": str(self.workdir / "slurm-%j.out"), "chdir": str(self.workdir)}
        limits = {"max_workers": self.plan.max_workers, "max_pending": self.plan.max_pending,
                  "horizon_seconds": HORIZON_SECONDS}  # fmt: skip
        document = {"job_name": job_name, "queues": ["noop"], "script": str(script),
                    "tick_seconds": TICK_SECONDS, "sbatch": sbatch, "limits": limits}  # fmt: skip
        return write_private_file(self.env, self.workdir / f"{job_name}.pool.json", json.dumps(document))

    def sbatch(self, job_name: str, script: Path) -> str:
        """One worker job, as the cluster user, as the role's fixed array submits its tasks."""
        submitted = subprocess.run(
            ["setpriv", f"--reuid={self.env.user}", f"--regid={self.env.user}", "--init-groups", "--", "sbatch",
             "--parsable", f"--job-name={job_name}", f"--time={SBATCH['time']}", "--cpus-per-task=1",
             f"--mem={SBATCH['mem']}", f"--output={self.workdir / 'slurm-%j.out'}", f"--chdir={self.workdir}",
             "--export=NONE", str(script)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return submitted.stdout.strip().split(";")[0]

    def registered_at(self, slurm_job: str) -> float | None:
        try:
            text = (self.workdir / f"slurm-{slurm_job}.out").read_text(errors="replace")
        except OSError:
            return None
        return logged_at(text, r"serving \S+ on ")

    def burst(self) -> tuple[float, list[str]]:
        link = connect(self.cp)
        try:
            submitted_at = time.time()
            params = [{"seconds": self.plan.job_seconds}] * self.plan.jobs
            return submitted_at, client.submit_many(link, "sleep", params, max_attempts=3)
        finally:
            link.close()

    def wait_succeeded(self, ledger: Ledger, job_ids: list[str]) -> None:
        query = "SELECT count(*) FROM jobs WHERE status = 'succeeded' AND id = ANY(%s::uuid[])"

        def done() -> bool:
            row = ledger.connection().execute(query, (job_ids,)).fetchone()
            return row is not None and int(row[0]) == len(job_ids)

        wait_until(done, 300, f"the {len(job_ids)} jobs to succeed", 0.25)

    # -- the elastic pool ----------------------------------------------------------------------------

    def elastic(self, ledger: Ledger) -> Run:
        job_name = f"han-bench-elastic-{uuid.uuid4().hex[:8]}"
        script = self.worker_script(job_name, idle_timeout_seconds=self.plan.idle_timeout)
        pool, state, log = self.pool_file(job_name, script), self.workdir / f"{job_name}.state.json", \
            self.workdir / f"{job_name}.scaler.log"  # fmt: skip
        with log.open("w") as output:
            scaler = subprocess.Popen(
                self.env.argv("han-worker", "scale", "--config", str(self.workdir / f"{job_name}.json"),
                              "--pool", str(pool), "--state", str(state)),
                stdout=output, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        sampler = Sampler(job_name)
        try:
            wait_until(state.exists, 60, "the scaler's first tick", 0.1)  # it watches the queue now
            sampler.start()
            submitted_at, job_ids = self.burst()
            self.wait_succeeded(ledger, job_ids)
            wait_until(
                lambda: not alive_states(job_name),
                self.plan.idle_timeout + 120,
                "every worker job to leave",
                0.25,
            )
        finally:
            sampler.stopping.set()
            scaler.send_signal(signal.SIGTERM)
            scaler.wait(30)
            subprocess.run(["scancel", f"--name={job_name}"], check=False)
        text = log.read_text()
        slurm_jobs = SUBMITTED.findall(text)
        first_sbatch = logged_at(text, SUBMITTED.pattern)
        return self.measured("elastic", ledger, submitted_at=submitted_at, job_ids=job_ids,
                             slurm_jobs=slurm_jobs, sampler=sampler, first_sbatch=first_sbatch)  # fmt: skip

    # -- the fixed array -----------------------------------------------------------------------------

    def fixed(self, ledger: Ledger) -> Run:
        job_name = f"han-bench-fixed-{uuid.uuid4().hex[:8]}"
        script = self.worker_script(job_name)  # idle_timeout_seconds 0: never leaves, as the array's tasks
        slurm_jobs = [self.sbatch(job_name, script) for _index in range(self.plan.max_workers)]
        sampler = Sampler(job_name)
        try:
            wait_until(lambda: all(self.registered_at(job) for job in slurm_jobs), 180,
                       f"the fixed array's {len(slurm_jobs)} workers to register", 0.25)  # fmt: skip
            sampler.start()
            submitted_at, job_ids = self.burst()
            self.wait_succeeded(ledger, job_ids)
        finally:
            sampler.stopping.set()
            subprocess.run(["scancel", f"--name={job_name}"], check=False)
        wait_until(lambda: not alive_states(job_name), 60, "the fixed array's jobs to end", 0.25)
        return self.measured("fixed", ledger, submitted_at=submitted_at, job_ids=job_ids,
                             slurm_jobs=slurm_jobs, sampler=sampler)  # fmt: skip

    # -- what the run measured -----------------------------------------------------------------------

    def measured(self, mode: str, ledger: Ledger, *, submitted_at: float, job_ids: list[str],
                 slurm_jobs: list[str], sampler: Sampler, first_sbatch: float | None = None) -> Run:  # fmt: skip
        attempts = read_attempts(ledger, job_ids)
        busy = busy_by_slurm_job(attempts)
        started, drained = min(row[1] for row in attempts), max(row[2] for row in attempts)
        registered = [at for at in (self.registered_at(job) for job in slurm_jobs) if at is not None]
        allocations = wait_until(lambda: allocations_of(slurm_jobs), 30, "Slurm's completion records", 0.5)
        elastic = mode == "elastic"
        last_gone = max(end for _start, end in allocations.values())
        return Run(
            mode=mode,
            to_first_sbatch=None if first_sbatch is None else first_sbatch - submitted_at,
            to_first_registered=min(registered) - submitted_at if elastic and registered else None,
            to_first_started=started - submitted_at,
            drained=drained - submitted_at,
            last_gone=last_gone - submitted_at if elastic else None,
            worker_jobs=len(slurm_jobs),
            peak_workers=sampler.peak_running,
            allocated_s=sum(end - start for start, end in allocations.values()),
            busy_s=sum(busy.values()),
            longest_after_drain_s=last_gone - drained if elastic else None,
            **interrupted(ledger, job_ids),
            timeline=timeline_of(mode, submitted_at=submitted_at, jobs=len(job_ids),
                                 started=first_starts(ledger, job_ids), attempts=attempts,
                                 samples=list(sampler.samples), drained=drained),
        )  # fmt: skip


def read_attempts(ledger: Ledger, job_ids: list[str]) -> list[tuple[str, float, float]]:
    """(worker id, started, finished) of every attempt of the burst, epoch seconds."""
    rows = (
        ledger.connection()
        .execute(
            """SELECT worker_id, extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8
           FROM job_attempts WHERE job_id = ANY(%s::uuid[]) AND finished_at IS NOT NULL""",
            (job_ids,),
        )
        .fetchall()
    )
    return [(str(row[0]), float(row[1]), float(row[2])) for row in rows]


def interrupted(ledger: Ledger, job_ids: list[str]) -> dict[str, int]:
    """The burst's attempts killed (crashed or timed out) and given back (released), and its jobs that
    succeeded more than once, from the ledger."""
    row = (
        ledger.connection()
        .execute(
            """SELECT count(*) FILTER (WHERE outcome IN ('crashed', 'timed_out')),
                      count(*) FILTER (WHERE outcome = 'released'),
                      (SELECT count(*) FROM (SELECT job_id FROM job_attempts WHERE job_id = ANY(%(ids)s::uuid[])
                          AND outcome = 'succeeded' GROUP BY job_id HAVING count(*) > 1) AS twice)
               FROM job_attempts WHERE job_id = ANY(%(ids)s::uuid[])""",
            {"ids": job_ids},
        )
        .fetchone()
    )
    killed, released, duplicated = row if row is not None else (0, 0, 0)
    return {"killed": int(killed), "released": int(released), "duplicated": int(duplicated)}


def first_starts(ledger: Ledger, job_ids: list[str]) -> list[float]:
    """When each job of the burst first started (a retried job leaves the backlog once), epoch seconds."""
    rows = (
        ledger.connection()
        .execute(
            """SELECT min(extract(epoch FROM started_at))::float8 FROM job_attempts
           WHERE job_id = ANY(%s::uuid[]) GROUP BY job_id""",
            (job_ids,),
        )
        .fetchall()
    )
    return [float(row[0]) for row in rows]


def timeline_of(
    label: str, *, submitted_at: float, jobs: int, started: list[float],
    attempts: list[tuple[str, float, float]], samples: list[tuple[float, int, int]], drained: float,
) -> scaling_chart.Timeline:  # fmt: skip
    """The run over time, from the burst's submission: the ledger's backlog and busy workers, squeue's
    pending and running worker jobs."""
    return scaling_chart.Timeline(
        label=label,
        backlog=scaling_chart.backlog_steps(jobs, [t - submitted_at for t in started]),
        busy=scaling_chart.busy_steps([(s - submitted_at, f - submitted_at) for _w, s, f in attempts]),
        running=scaling_chart.steps((t - submitted_at, running) for t, _pending, running in samples),
        pending=scaling_chart.steps((t - submitted_at, pending) for t, pending, _running in samples),
        drained=drained - submitted_at,
    )


def busy_by_slurm_job(attempts: list[tuple[str, float, float]]) -> dict[str, float]:
    busy: dict[str, float] = {}
    for worker_id, started, finished in attempts:
        found = SLURM_JOB_IN_WORKER_ID.search(worker_id)
        if found:
            busy[found.group(1)] = busy.get(found.group(1), 0.0) + finished - started
    return busy


def allocations_of(slurm_jobs: list[str], log: Path = JOBCOMP_LOG) -> dict[str, tuple[float, float]] | None:
    """Slurm's (start, end) of each job, from its job completion log; None until every one is there."""
    found = {
        job: (datetime.fromisoformat(start).timestamp(), datetime.fromisoformat(end).timestamp())
        for job, start, end in JOBCOMP_LINE.findall(log.read_text(errors="replace"))
        if job in slurm_jobs and start != "Unknown"
    }
    return found if len(found) == len(slurm_jobs) else None


# -- the section -------------------------------------------------------------------------------------


def benchmark(context: Context) -> report.Section:
    plan = SMOKE if context.smoke else FULL
    directory = context.workdir / "scaling"
    directory.mkdir(mode=0o700)
    shutil.chown(directory, context.env.user, context.env.user)  # the worker jobs write their output here
    control_plane = start_control_plane(context.env, directory / "cp", address=ADDRESS)
    runs: list[tuple[Run, Run]] = []
    try:
        bench = Bench(context.env, directory, control_plane, plan)
        ledger = control_plane.ledger()
        try:
            for repetition in range(context.repeat):
                elastic, fixed = bench.elastic(ledger), bench.fixed(ledger)
                print(f"  repetition {repetition + 1}: elastic drained {elastic.drained:.1f}s, idle "
                      f"{elastic.idle_s:.0f} alloc-s; fixed drained {fixed.drained:.1f}s", flush=True)  # fmt: skip
                runs.append((elastic, fixed))
        finally:
            ledger.close()
    finally:
        control_plane.shutdown()
    return section(plan, runs)


def with_fixed_window(elastic: Run, fixed: Run, max_workers: int) -> Run:
    """The fixed array's allocation over the elastic run's window: it holds every worker throughout."""
    assert elastic.last_gone is not None
    return replace(fixed, allocated_s=max_workers * elastic.last_gone)


def run_figures(run: Run) -> dict[str, object]:
    """A run's figures for the report; its timeline goes under ``timelines``, once per repetition."""
    measured = {item.name: getattr(run, item.name) for item in fields(run) if item.name != "timeline"}
    return measured | {"idle_s": run.idle_s}


def timelines_of(elastic: list[Run], fixed: list[Run], fixed_label: str) -> list[list[dict[str, object]]]:
    """Per repetition, [elastic, fixed] as :meth:`scaling_chart.Timeline.figures`; [] where one is missing."""
    pairs = []
    for elastic_run, fixed_run in zip(elastic, fixed, strict=True):
        if elastic_run.timeline is not None and fixed_run.timeline is not None:
            labelled = replace(fixed_run.timeline, label=fixed_label)
            pairs.append([elastic_run.timeline.figures(), labelled.figures()])
    return pairs


def picture(section: report.Section, path: Path) -> None:
    """The section's picture for :func:`report.write`: of the repetition whose elastic burst drained at the
    median (the lower one of an even count), elastic beside fixed. ValueError when no run has a timeline."""
    pairs, plan = section["figures"].get("timelines"), section["figures"].get("plan")
    if not isinstance(pairs, list) or not pairs or not isinstance(plan, Mapping):
        raise ValueError("no repetition recorded a timeline (figures.timelines is empty)")
    timelines = [[scaling_chart.Timeline.from_figures(side) for side in pair] for pair in pairs]
    order = sorted(range(len(timelines)), key=lambda index: timelines[index][0].drained)
    chosen = order[(len(order) - 1) // 2]
    title = (f"A burst of {plan['jobs']} jobs of {plan['job_seconds']:g} s from zero workers "
             f"(repetition {chosen + 1} of {len(timelines)}, the median elastic makespan)")  # fmt: skip
    scaling_chart.draw(timelines[chosen], path, title)


def spread_of(values: list[float | None]) -> report.Spread | None:
    measured = [value for value in values if value is not None]
    return report.spread(measured) if measured else None


def cell(values: list[float | None], digits: int = 1) -> str:
    measured = spread_of(values)
    return "-" if measured is None else report.spread_text(measured, digits)


COLUMNS = [
    "pool", "to first sbatch (s)", "to first worker registered (s)", "to first job started (s)",
    "burst drained (s)", "queue empty to last worker gone (s)", "worker jobs", "peak workers",
    "allocation-s", "allocation-s idle", "attempts killed / given back", "jobs succeeded twice",
]  # fmt: skip


def row(label: str, runs: list[Run]) -> list[str]:
    gone = [None if run.last_gone is None else run.last_gone - run.drained for run in runs]
    return [
        label,
        cell([run.to_first_sbatch for run in runs]),
        cell([run.to_first_registered for run in runs]),
        cell([run.to_first_started for run in runs]),
        cell([run.drained for run in runs]),
        cell(gone) if runs[0].mode == "elastic" else "never (no idle timeout)",
        cell([float(run.worker_jobs) for run in runs], 0),
        cell([float(run.peak_workers) for run in runs], 0),
        cell([run.allocated_s for run in runs], 0),
        cell([run.idle_s for run in runs], 0),
        f"{sum(run.killed for run in runs)} / {sum(run.released for run in runs)}",
        str(sum(run.duplicated for run in runs)),
    ]


def section(plan: Plan, runs: list[tuple[Run, Run]]) -> report.Section:
    elastic = [pair[0] for pair in runs]
    fixed = [with_fixed_window(pair[0], pair[1], plan.max_workers) for pair in runs]
    makespan = report.spread([e.drained / f.drained for e, f in zip(elastic, fixed, strict=True)])
    idle_e, idle_f = (
        report.spread([run.idle_s for run in elastic]),
        report.spread([run.idle_s for run in fixed]),
    )
    figures: dict[str, object] = {
        "plan": asdict(plan),
        "elastic": [run_figures(run) for run in elastic],
        "fixed": [run_figures(run) for run in fixed],
        "makespan_ratio": makespan,
        "timelines": timelines_of(elastic, fixed, f"fixed array of {plan.max_workers}"),
    }
    fewer_idle = idle_e["median"] < idle_f["median"]
    within = makespan["median"] <= MAKESPAN_GOAL
    after = report.spread([run.longest_after_drain_s or 0.0 for run in elastic])
    return {
        "title": "Elastic workers: a burst from zero workers, beside a fixed array",
        "explanation": [
            f"A burst of {plan.jobs} `sleep` jobs of {plan.job_seconds:g} s is submitted at once; every time is "
            "from that submission.",
            "Elastic: `han-worker scale` with no worker running, the first worker job submitted (the scaler's "
            "log after sbatch returned), its worker registered (the worker's log), the first job started and "
            "the last finished (the ledger), and the last worker job gone (Slurm's end of it).",
            "Fixed: the pool's max_workers as worker jobs without an idle timeout, registered before the burst, "
            "as role pegasus_worker's fixed array.",
            "Peak workers is the most worker jobs running at once (squeue every 0.25 s).",
            "Allocation-seconds are Slurm's start to end of each worker job (whole seconds, from the job "
            "completion log: the testbed has no accounting for sacct); idle is that minus the time the "
            "worker spent running jobs (the ledger's attempts). For the fixed array both are over the elastic "
            "run's window, the submission to its last worker gone, which it holds throughout.",
            "Attempts killed (crashed or timed out: a worker killed by scaling or by its walltime) and given "
            "back (released by a draining worker), and jobs that succeeded more than once, are counted from the "
            "ledger's attempts, summed over the repetitions; the issue's goal for both is 0.",
            "The picture beside the report (linked below the notes) draws one repetition over time, elastic "
            "beside fixed: the jobs waiting (the ledger), the worker jobs running a job (the ledger's attempts), "
            "running idle or starting, and pending in Slurm (squeue), and when the burst drained.",
        ],
        "columns": COLUMNS,
        "rows": [row("elastic", elastic), row(f"fixed array of {plan.max_workers}", fixed)],
        "figures": figures,
        "notes": [
            f"Goal: the elastic pool holds fewer idle allocation-seconds than the fixed array "
            f"({report.spread_text(idle_e)} vs {report.spread_text(idle_f)}: {'met' if fewer_idle else 'NOT met'}) "
            f"and finishes the burst within {MAKESPAN_GOAL - 1:.0%} of it (elastic/fixed "
            f"{report.ratio_text(makespan)}: {'met' if within else 'NOT met'}). Measured, never asserted.",
            f"The longest a worker held its allocation after the burst drained: {report.spread_text(after, 1)} s "
            f"(idle_timeout_seconds {plan.idle_timeout:g}; the issue's goal: at most idle_timeout + 5 s).",
            f"Pool: max_workers {plan.max_workers}, max_pending {plan.max_pending}, tick {TICK_SECONDS:g} s, "
            f"horizon {HORIZON_SECONDS:g} s; worker jobs in partition batch, 1 CPU, 500 MB, no GRES. The "
            "anchors' defaults: HyperQueue checks every 5-30 s with a 5-minute idle timeout, dask-jobqueue's "
            "adapt() every 1 s with 3 suggestions before scaling down, Parsl every 5 s with max_idletime 120 s.",
            "One control plane of its own (127.0.0.79) for every repetition: from the second on, the scaler "
            "knows a typical run time from the previous bursts' attempts.",
        ],
    }
