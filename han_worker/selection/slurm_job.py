"""Whether the Slurm job that published an endpoints file still runs, asked of Slurm where it answers.

A control plane killed with SIGKILL (or its node lost) never marks its endpoints file stale; Slurm
knows. Only a definite answer counts: no ``squeue`` here, or no answer in time, is "not known".
"""

from __future__ import annotations

import logging
import shutil
import subprocess

log = logging.getLogger(__name__)

# States in which a job's processes may still serve (the same list as plugins/module_utils/slurm.py).
SERVING_STATES = frozenset({"RUNNING", "COMPLETING", "SUSPENDED"})
_UNKNOWN_JOB = "Invalid job id specified"


def slurm_job_alive(job_id: str, timeout: float = 10.0) -> bool | None:
    """True while Slurm runs ``job_id``, False once it says the job ended, None when it cannot tell."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    argv = [squeue, "--noheader", f"--jobs={job_id}", "--format=%T"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("squeue for job %s: %s", job_id, exc)
        return None
    if result.returncode != 0:
        # A job Slurm has forgotten (past MinJobAge) is gone; any other error says nothing about it.
        return False if _UNKNOWN_JOB in result.stderr else None
    return any(state in SERVING_STATES for state in result.stdout.split())
