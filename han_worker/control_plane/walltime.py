"""What the supervisor learns from Slurm when it runs as a batch job."""

from __future__ import annotations

import logging
import os
import subprocess
from datetime import datetime

from han_worker.slurm import COMMAND_ENVIRONMENT, parse_local_time, parse_squeue, squeue_argv

log = logging.getLogger(__name__)


def job_id() -> str | None:
    return os.environ.get("SLURM_JOB_ID") or None


def node_name() -> str | None:
    return os.environ.get("SLURMD_NODENAME") or None


def job_end_time(slurm_job_id: str) -> datetime | None:
    """The job's walltime end, or None when Slurm cannot tell (then the endpoints do not expire)."""
    try:
        result = subprocess.run(
            squeue_argv("squeue", job_ids=[slurm_job_id]),
            capture_output=True, text=True, timeout=10, check=True, env={**os.environ, **COMMAND_ENVIRONMENT},
        )  # fmt: skip
        jobs = parse_squeue(result.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("cannot read the end time of Slurm job %s: %s", slurm_job_id, exc)
        return None
    return parse_local_time(jobs[0].end_time) if jobs else None
