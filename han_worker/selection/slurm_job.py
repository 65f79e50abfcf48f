"""Whether the Slurm job that published an endpoints file still runs, asked of Slurm where it answers.

A control plane killed with SIGKILL (or its node lost) never marks its endpoints file stale; Slurm
knows. Only a definite answer counts: no ``squeue`` here, or no answer in time, is "not known".
Slurm is asked and read as the collection's modules do (han_worker.slurm).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

from han_worker.slurm import COMMAND_ENVIRONMENT, UNKNOWN_JOB_ERROR, may_be_running, parse_squeue, squeue_argv

log = logging.getLogger(__name__)


def slurm_job_alive(job_id: str, timeout: float = 10.0) -> bool | None:
    """True while Slurm runs ``job_id``, False once it says the job ended, None when it cannot tell."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    try:
        result = subprocess.run(
            squeue_argv(squeue, job_ids=[job_id]), env={**os.environ, **COMMAND_ENVIRONMENT},
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("squeue for job %s: %s", job_id, exc)
        return None
    if result.returncode != 0:
        # A job Slurm has forgotten (past MinJobAge) is gone; any other error says nothing about it.
        return False if UNKNOWN_JOB_ERROR in result.stderr else None
    try:
        jobs = parse_squeue(result.stdout)
    except ValueError as exc:
        log.debug("squeue for job %s: %s", job_id, exc)
        return None
    return any(may_be_running(job) for job in jobs)
