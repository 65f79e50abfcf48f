"""What the supervisor learns from Slurm when it runs as a batch job."""

from __future__ import annotations

import logging
import os
import subprocess
from datetime import datetime, timezone

log = logging.getLogger(__name__)


def job_id() -> str | None:
    return os.environ.get("SLURM_JOB_ID") or None


def node_name() -> str | None:
    return os.environ.get("SLURMD_NODENAME") or None


def parse_end_time(text: str) -> datetime | None:
    """squeue prints the end time in the node's local time without a zone (``2026-11-29T09:00:00``)."""
    text = text.strip()
    if not text or text in {"N/A", "Unknown", "NONE"}:
        return None
    try:
        naive = datetime.fromisoformat(text)
    except ValueError:
        return None
    # astimezone() reads a naive time as local time, which is what squeue printed.
    return naive.astimezone(timezone.utc)


def job_end_time(slurm_job_id: str) -> datetime | None:
    """The job's walltime end, or None when Slurm cannot tell (then the endpoints do not expire)."""
    try:
        result = subprocess.run(
            ["squeue", "--noheader", "--jobs", slurm_job_id, "--format=%e"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot read the end time of Slurm job %s: %s", slurm_job_id, exc)
        return None
    return parse_end_time(result.stdout)
