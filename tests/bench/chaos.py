"""A chaos round (tests/integration/chaos_round.py), longer than the test's: what an operator's worst day
costs. Its own control plane (``--restart-crashed``, direct mode, 127.0.0.70) and workers (``--restart-crashed``,
mode pegasus); W workers, N jobs of ``sleep``; worker SIGKILLs (most mid-job), one Valkey SIGKILL and one
SIGKILL of the supervisor with all its services, while the jobs run. Figures only, never asserted."""

from __future__ import annotations

import shutil

from tests.bench import report
from tests.bench.context import Context
from tests.integration.chaos_round import CONTROL_PLANE, VALKEY, WORKER, Plan, Result, Round

FULL = Plan(workers=4, jobs=200, worker_kills=6, valkey_kills=1, control_plane_kills=1, job_seconds=0.3)
SMOKE = Plan(workers=3, jobs=30, worker_kills=2, valkey_kills=1, control_plane_kills=1, job_seconds=0.5)

COLUMNS = [
    "jobs", "workers", "kills (worker / mid-job / Valkey / control plane)", "succeeded", "lost", "duplicated",
    "s without a control plane", "s below the worker count", "epoch before -> after", "round (s)",
]  # fmt: skip


def benchmark(context: Context) -> report.Section:
    plan = SMOKE if context.smoke else FULL
    directory = context.workdir / "chaos"
    directory.mkdir(mode=0o700)
    shutil.chown(directory, context.env.user, context.env.user)  # the cluster user's, as the test's workdir
    result = Round(context.env, directory, plan).run()
    return section(result)


def section(result: Result) -> report.Section:
    plan, kills = result.plan, result.kills
    row = [
        str(plan.jobs), str(plan.workers),
        f"{kills[WORKER]} / {result.worker_kills_mid_job} / {kills[VALKEY]} / {kills[CONTROL_PLANE]}",
        str(result.succeeded), str(result.lost), str(result.duplicated),
        f"{result.seconds_without_control_plane:.1f}", f"{result.seconds_below_worker_count:.1f}",
        f"{result.epoch_before} -> {result.epoch_after}", f"{result.seconds:.1f}",
    ]  # fmt: skip
    return {
        "title": "Chaos round",
        "explanation": [
            "Jobs are counted from the ledger once every one finished: succeeded, lost (not succeeded) and "
            "duplicated (more than one succeeded attempt).",
            "Seconds without a control plane are sampled every 0.25 s: the endpoints file stale or missing, or "
            "PostgreSQL, Valkey or the S3 port not answering.",
            "Seconds below the worker count are sampled while the control plane answers: fewer registered "
            "workers whose process still runs than configured.",
            "The round runs from the submission until every job finished and everything is back.",
        ],
        "columns": COLUMNS,
        "rows": [row],
        "figures": result.to_dict(),
        "notes": [
            f"each job sleeps {plan.job_seconds:g} s and may be tried {plan.max_attempts} times; "
            f"{result.crashed_attempts} attempt(s) ended crashed (their worker killed)",
            "control plane back after its kill: "
            + ("yes" if result.control_plane_back else "NO")
            + f", {result.control_plane_processes} process(es) of it at the end (its keeper and one supervisor:"
            " no successor of any kind)",
            f"workers at the end: {result.workers_at_end} of {plan.workers}; scratch directories left by killed "
            f"workers: {len(result.scratch_left_by_killed_workers)}",
        ],
    }
