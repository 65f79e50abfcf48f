"""A small elastic chaos round (tests/integration/elastic_chaos_round.py): from zero workers, a burst served by
an elastic pool on the testbed's Slurm while a worker job on its way and a running one are cancelled, the scaler
(run by the control plane's supervisor, from the pool's registration) and the control plane are SIGKILLed in the
middle of the scale-up (the keeper's new supervisor starts the scaler again), and worker processes are SIGKILLed mid-job
inside their Slurm jobs. Counted from the ledger and Slurm: every job succeeded exactly once, the pool never
held more than max_workers allocations nor max_pending waiting, and no worker job was left behind.

Its own control plane on 127.0.0.86, its own pool's Slurm job name; no GPU, nothing of the inventory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import UnprivilegedEnv
from tests.integration.elastic_chaos_round import (
    PENDING_CANCEL,
    RUNNING_CANCEL,
    SCALER_KILL,
    WORKER_KILL,
    ElasticRound,
    Plan,
)

# Slurm under the pool's own job name, its own control plane and address, no GPU: beside the inventory's lane.
pytestmark = pytest.mark.own_names

PLAN = Plan(jobs=40, job_seconds=1.0, max_workers=3, max_pending=2, worker_kills=2)


def test_an_elastic_chaos_round_loses_nothing_and_keeps_the_pool_within_its_limits(
    unprivileged_env: UnprivilegedEnv, workdir: Path
) -> None:
    round_ = ElasticRound(unprivileged_env, workdir, PLAN)
    result = round_.run()
    print(result.to_dict())  # the figures, for a failing run's report
    scalers = round_.scaler_output()
    assert result.kills == {PENDING_CANCEL: 1, SCALER_KILL: 1, WORKER_KILL: 2, RUNNING_CANCEL: 1}
    assert result.succeeded == PLAN.jobs, "every job succeeded"
    assert result.lost == 0
    assert result.duplicated == 0, "no job succeeded twice"
    assert result.most_allocations <= PLAN.max_workers, scalers
    assert result.most_pending <= PLAN.max_pending, scalers
    assert result.limits_kept, scalers
    assert result.orphans == [], (
        f"worker jobs alive after the queue drained and their idle timeout: {scalers}"
    )
    assert result.on_the_way_at_end == [], "the scaler accounts for every worker job it submitted"
    assert not result.scaler_paused, scalers
    assert result.epoch_after == (result.epoch_before or 0) + 1, "the control plane came back, once"
    assert result.scaler_starts == 2, "the supervisor started the pool's scaler, and its successor once more"
