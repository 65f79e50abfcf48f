"""Whether a Slurm control plane has a successor queued: the job its batch script submits with the same name
and ``--dependency=singleton`` (role control_plane), which starts when this one's walltime ends."""

from __future__ import annotations

import logging
import os
import subprocess

from han_worker.selection.endpoints import Endpoints
from han_worker.slurm import COMMAND_ENVIRONMENT, WAITING_STATES, QueuedJob, parse_squeue, squeue_argv

log = logging.getLogger(__name__)

SQUEUE_TIMEOUT_SECONDS = 5


def _squeue(**query: object) -> list[QueuedJob]:
    result = subprocess.run(
        squeue_argv("squeue", **query),  # type: ignore[arg-type]
        capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_SECONDS, check=True,
        env={**os.environ, **COMMAND_ENVIRONMENT},
    )  # fmt: skip
    return parse_squeue(result.stdout)


def queued_successors(endpoints: Endpoints) -> int | None:
    """How many jobs named as the control plane's own wait in Slurm's queue; None when Slurm cannot tell."""
    if not endpoints.slurm_job_id:
        return None
    try:
        own = _squeue(job_ids=[endpoints.slurm_job_id])
        if not own:
            return None
        namesakes = _squeue(name=own[0].name)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.debug("cannot ask Slurm for the successors of job %s: %s", endpoints.slurm_job_id, exc)
        return None
    return sum(1 for job in namesakes if job.state in WAITING_STATES and job.job_id != endpoints.slurm_job_id)
