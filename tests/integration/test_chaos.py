"""A small chaos round (tests/integration/chaos_round.py): worker SIGKILLs, Valkey's, and every process of
the control plane's at once, while jobs run; counted from the ledger, every job succeeded exactly once and
everything came back by itself. Its own control plane and workers on 127.0.0.70; nothing of the testbed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.chaos_round import CONTROL_PLANE, VALKEY, WORKER, Plan, Round
from tests.integration.conftest import UnprivilegedEnv

# Only services this module starts itself: `make test` runs it beside the tests that share the testbed.
pytestmark = pytest.mark.self_contained

PLAN = Plan(workers=3, jobs=30, worker_kills=2, valkey_kills=1, control_plane_kills=1, job_seconds=0.5)


def test_a_chaos_round_loses_nothing_and_everything_comes_back(
    unprivileged_env: UnprivilegedEnv, workdir: Path
):
    result = Round(unprivileged_env, workdir, PLAN).run()
    print(result.to_dict())  # the figures, for a failing run's report
    assert result.kills == {WORKER: 2, VALKEY: 1, CONTROL_PLANE: 1}
    assert result.succeeded == PLAN.jobs, "every job succeeded"
    assert result.lost == 0
    assert result.duplicated == 0, "no job succeeded twice"
    assert result.workers_at_end == PLAN.workers
    # Back by its keeper, in the same job: published, not stale, the next epoch; nothing else queued or running.
    assert result.control_plane_back
    assert result.epoch_before is not None
    assert result.epoch_after == result.epoch_before + 1
    assert result.control_plane_processes == 2, "its keeper and one supervisor, no successor of any kind"
    assert result.scratch_left_by_killed_workers == [], "restarted workers remove what the killed ones left"
