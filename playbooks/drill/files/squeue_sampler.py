"""The failover drill's squeue sampler (scenario 9, burst and drain): the worker jobs of one Slurm job name,
every half second, as JSON lines, until a stop file appears or a time limit passes.

Run with the env's Python on the Pegasus host, as the cluster user, so that it reads Slurm's states through
han_worker.slurm (the one list of job states) exactly as the scaler does:

    python squeue_sampler.py JOB_NAME SAMPLES_FILE STOP_FILE SECONDS

Each line: {"at": epoch seconds, "alive": [job ids pending or running], "waiting": [job ids pending],
"states": {job id: state}} for every job of the name that slurmctld still lists (ended ones included, so that
the last line says how each worker job ended). A failed squeue skips one sample: the drill judges the lines.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from han_worker.slurm import COMMAND_ENVIRONMENT, WAITING_STATES, is_alive, parse_squeue, squeue_argv

INTERVAL = 0.5  # seconds between two samples
USAGE = "usage: squeue_sampler.py JOB_NAME SAMPLES_FILE STOP_FILE SECONDS"


def sample(job_name: str) -> dict[str, object] | None:
    """One squeue of the job name's jobs, or None when squeue did not answer."""
    argv = squeue_argv("squeue", user=getpass.getuser(), name=job_name)
    environment = {**_environment(), **COMMAND_ENVIRONMENT}
    listed = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, env=environment)
    if listed.returncode != 0:
        return None
    jobs = parse_squeue(listed.stdout)
    return {
        "at": time.time(),
        "alive": sorted(job.job_id for job in jobs if is_alive(job)),
        "waiting": sorted(job.job_id for job in jobs if job.state in WAITING_STATES),
        "states": {job.job_id: job.state for job in jobs},
    }


def _environment() -> dict[str, str]:
    """What squeue needs from ours (PATH, HOME, USER), none of the caller's other variables."""
    return {key: os.environ[key] for key in ("PATH", "HOME", "USER", "LOGNAME") if key in os.environ}


def main(argv: list[str]) -> int:
    if len(argv) != 5 or not argv[4].isdigit():
        print(USAGE, file=sys.stderr)
        return 2
    job_name, samples, stop, seconds = argv[1], Path(argv[2]), Path(argv[3]), int(argv[4])
    deadline = time.monotonic() + seconds
    # The samples are private, as every file of the drill is.
    descriptor = os.open(samples, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a", encoding="utf-8") as output:
        while time.monotonic() < deadline and not stop.exists():
            line = sample(job_name)
            if line is not None:
                output.write(json.dumps(line) + "\n")
                output.flush()
            time.sleep(INTERVAL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
