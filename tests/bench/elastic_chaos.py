"""An elastic chaos round (tests/integration/elastic_chaos_round.py), longer than the test's: what the worst day
of an elastic pool costs. Its own control plane (``--restart-crashed``, direct mode, 127.0.0.86) and pool
(``han-worker scale`` submitting worker jobs to the testbed's Slurm, partition batch, no GRES); N ``sleep``
jobs from zero workers; a worker job on its way and a running one cancelled, the scaler and the control plane
SIGKILLed in the middle of the scale-up (the keeper's new supervisor starts the registered scaler again), worker
processes SIGKILLed mid-job in their Slurm jobs. Figures only, never asserted."""

from __future__ import annotations

import shutil

from tests.bench import report
from tests.bench.context import Context
from tests.integration.elastic_chaos_round import (
    PENDING_CANCEL,
    RUNNING_CANCEL,
    SCALER_KILL,
    WORKER_KILL,
    ElasticRound,
    Plan,
    Result,
)

FULL = Plan(jobs=150, job_seconds=1.0, max_workers=4, max_pending=2, worker_kills=5)
SMOKE = Plan(jobs=40, job_seconds=1.0, max_workers=3, max_pending=2, worker_kills=2)

COLUMNS = [
    "jobs", "max workers / pending", "kills (worker / mid-job / job on its way / running job / scaler+CP)",
    "succeeded", "lost", "duplicated", "most allocations / pending", "samples over a limit", "orphans",
    "last worker left after the drain (s)", "round (s)",
]  # fmt: skip


def benchmark(context: Context) -> report.Section:
    plan = SMOKE if context.smoke else FULL
    directory = context.workdir / "elastic-chaos"
    directory.mkdir(mode=0o700)
    shutil.chown(directory, context.env.user, context.env.user)  # the cluster user's, as the test's workdir
    result = ElasticRound(context.env, directory, plan).run()
    return section(result)


def section(result: Result) -> report.Section:
    plan, kills = result.plan, result.kills
    last_left = max(result.left_after_drain.values(), default=0.0)
    row = [
        str(plan.jobs), f"{plan.max_workers} / {plan.max_pending}",
        f"{kills[WORKER_KILL]} / {result.worker_kills_mid_job} / {kills[PENDING_CANCEL]} / "
        f"{kills[RUNNING_CANCEL]} / {kills[SCALER_KILL]}",
        str(result.succeeded), str(result.lost), str(result.duplicated),
        f"{result.most_allocations} / {result.most_pending}",
        f"{result.samples_over_max_workers + result.samples_over_max_pending} of {result.samples}",
        str(len(result.orphans)), f"{last_left:.1f}", f"{result.seconds:.1f}",
    ]  # fmt: skip
    return {
        "title": "Elastic chaos round",
        "explanation": [
            "Jobs are counted from the ledger once every one finished: succeeded, lost (not succeeded) and "
            "duplicated (more than one succeeded attempt).",
            f"Allocations are the pool's worker jobs alive in Slurm (pending or running), sampled by squeue "
            f"every 0.25 s against max_workers {plan.max_workers} and max_pending {plan.max_pending}.",
            "Orphans are the pool's worker jobs still alive once the queue drained and every worker had its "
            f"idle timeout ({plan.idle_timeout:g} s) plus a tick ({plan.tick_seconds:g} s) plus 5 s to leave.",
            "The round runs from the submission until the last worker job left.",
        ],
        "columns": COLUMNS,
        "rows": [row],
        "figures": result.to_dict(),
        "notes": [
            f"each job sleeps {plan.job_seconds:g} s and may be tried {plan.max_attempts} times; "
            f"{result.crashed_attempts} attempt(s) ended crashed (their worker killed)",
            f"cancelled on its way: {result.pending_cancelled}; cancelled running: {result.running_cancelled}",
            f"scaler and control plane killed with {result.allocations_at_scaler_kill} worker job(s) alive; "
            f"{result.scaler_starts} scaler(s) started; control plane epoch {result.epoch_before} -> "
            f"{result.epoch_after}",
            f"worker jobs submitted: {result.worker_jobs_submitted} (seen by squeue: {result.worker_jobs_seen}); "
            f"left late (past idle timeout + a tick): {len(result.left_late)}; the scaler's failures in a row at "
            f"the end: {result.scaler_failures.get('starts', 0)} start(s), "
            f"{result.scaler_failures.get('submissions', 0)} submission(s); paused: "
            + ("YES" if result.scaler_paused else "no"),
        ],
    }
