"""Capture the fixtures of the Slurm parser tests from a real cluster: run as root on the testbed.

    .venv/bin/python tests/unit/plugins/module_utils/capture_fixtures.py

Jobs run as the cluster account (runuser), with the argv the module itself builds (Slurm, SQUEUE_FORMAT,
SACCT_FIELDS), so the fixtures are exactly what the module reads. Takes about two minutes, because one job
must reach TIMEOUT; every job it submits is cancelled at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.han.infra.plugins.module_utils.slurm import (  # noqa: E402
    COMMAND_ENVIRONMENT,
    job_record_argv,
)
from ansible_collections.han.infra.plugins.module_utils.slurm_ensure import Slurm  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
USER = "pegasus"
OUTPUT_DIR = "/tmp/han-slurm-fixtures"
SLURM_COMMANDS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "sacct")
COMMANDS = {name: f"/usr/bin/{name}" for name in SLURM_COMMANDS}
NAMES = ("fx-chain", "fx-array", "fx-history", "fx-timeout")


def run_as(user: str, argv: list[str]) -> tuple[int, str, str]:
    prefix = [] if user == "root" else ["runuser", "-u", user, "--"]
    env = dict(os.environ, **COMMAND_ENVIRONMENT)
    done = subprocess.run(prefix + argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    return done.returncode, done.stdout, done.stderr


class Recorder:
    """A `run` for Slurm that keeps what the last command printed."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.last: tuple[int, str, str] = (0, "", "")

    def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        self.last = run_as(self.user, argv)
        return self.last


def save(name: str, text: str) -> None:
    (FIXTURES / name).write_text(text)
    print(f"{name}: {len(text.splitlines())} lines")


def sbatch(name: str, *args: str, fixture: str = "") -> str:
    argv = [COMMANDS["sbatch"], "--parsable", f"--job-name={name}", "--mem=16M", *args]
    rc, out, err = run_as(USER, argv)
    assert rc == 0, err
    if fixture:
        save(fixture, out)
    return out.strip()


def squeue(slurm: Slurm, recorder: Recorder, name: str, fixture: str) -> None:
    slurm.jobs(name, USER)
    save(fixture, recorder.last[1])


def scontrol_job(slurm: Slurm, recorder: Recorder, job_id: str, fixture: str) -> None:
    slurm.job_record(job_id)
    save(fixture, recorder.last[1])


def wait_for_state(slurm: Slurm, name: str, state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not any(job.state == state for job in slurm.jobs(name, USER)):
        assert time.monotonic() < deadline, f"{name} never reached {state}"
        time.sleep(2)


def wait_until_forgotten(slurm: Slurm) -> None:
    """Jobs of an earlier capture stay in squeue for MinJobAge (300 s); the fixtures show one run only."""
    deadline = time.monotonic() + 400
    while any(slurm.jobs(name, USER) for name in NAMES):
        assert time.monotonic() < deadline, "slurmctld still remembers jobs of an earlier capture"
        print("waiting for slurmctld to forget the jobs of an earlier capture (MinJobAge)")
        time.sleep(20)


def submit_jobs() -> dict[str, str]:
    """Jobs in every state the module meets; returns their ids by role."""
    out = f"--output={OUTPUT_DIR}/%x-%j.out"
    ids = {
        "timeout": sbatch("fx-timeout", "--time=1", out, "--wrap=sleep 300", fixture="sbatch_parsable.txt")
    }
    ids["chain"] = sbatch("fx-chain", "--time=5", "--signal=B:TERM@60", out, "--wrap=sleep 300")
    ids["successor"] = sbatch("fx-chain", "--time=5", "--dependency=singleton", out, "--wrap=sleep 300")
    ids["array"] = sbatch(
        "fx-array", "--time=5", "--partition=RTXA6000", "--gres=gpu:1", "--array=0-3",
        f"--output={OUTPUT_DIR}/%x-%A_%a.out", "--wrap=sleep 300",
    )  # fmt: skip
    ids["completed"] = sbatch("fx-history", "--time=2", out, "--wrap=true")
    ids["failed"] = sbatch("fx-history", "--time=2", out, "--wrap=exit 3")
    ids["queued"] = sbatch("fx-history", "--time=2", "--begin=now+1hour", out, "--wrap=true")
    time.sleep(4)
    run_as(USER, [COMMANDS["scancel"], ids["queued"]])
    ids["cancelled"] = sbatch("fx-history", "--time=2", out, "--wrap=sleep 300")
    return ids


def capture_queue(slurm: Slurm, recorder: Recorder, ids: dict[str, str]) -> None:
    squeue(slurm, recorder, "fx-chain", "squeue_running_and_singleton_successor.txt")
    squeue(slurm, recorder, "fx-array", "squeue_array.txt")
    squeue(slurm, recorder, "fx-history", "squeue_finished.txt")
    squeue(slurm, recorder, "fx-none", "squeue_none.txt")
    scontrol_job(slurm, recorder, ids["chain"], "scontrol_job_running.txt")
    scontrol_job(slurm, recorder, ids["successor"], "scontrol_job_pending.txt")
    scontrol_job(slurm, recorder, f"{ids['array']}_3", "scontrol_job_array_pending.txt")
    scontrol_job(slurm, recorder, f"{ids['array']}_0", "scontrol_job_array_task.txt")
    scontrol_job(slurm, recorder, ids["failed"], "scontrol_job_failed.txt")
    scontrol_job(slurm, recorder, ids["cancelled"], "scontrol_job_cancelled.txt")
    slurm.partitions()
    save("scontrol_partitions.txt", recorder.last[1])
    for partition in ("RTXA6000", "batch"):
        slurm.gres_configurations(partition)
        save(f"sinfo_gres_{partition}.txt", recorder.last[1])


def capture_by_ids(slurm: Slurm, recorder: Recorder, ids: dict[str, str]) -> None:
    """What slurm_job_info reads for job_ids: an array task and a plain job; an id slurmctld does not know."""
    slurm.jobs(None, USER, [f"{ids['array']}_0", ids["chain"]])
    save("squeue_by_job_ids.txt", recorder.last[1])
    slurm.jobs(None, USER, ["999999"])
    print(f"squeue --jobs=999999: rc={recorder.last[0]}")
    save("squeue_unknown_job_stderr.txt", recorder.last[2])
    save(
        "scontrol_job_running_details.txt",
        run_as(USER, job_record_argv(COMMANDS["scontrol"], ids["chain"], True))[1],
    )
    # Evidence for reading text, not JSON: Slurm 22.05's squeue --json ignores --name (and every other filter).
    save("squeue_json_name_fx-none.json", run_as(USER, [COMMANDS["squeue"], "--json", "--name=fx-none"])[1])


def capture_cancellations(slurm: Slurm, recorder: Recorder, ids: dict[str, str]) -> None:
    signal_finished = [COMMANDS["scancel"], "--signal=TERM", "--batch", ids["completed"], ids["failed"]]
    save("scancel_signal_finished_stderr.txt", run_as(USER, signal_finished)[2])
    slurm.read([COMMANDS["scancel"], "--signal=TERM", "--batch", ids["chain"]])
    time.sleep(2)
    squeue(slurm, recorder, "fx-chain", "squeue_after_batch_signal.txt")
    tasks = [job.job_id for job in slurm.jobs("fx-array", USER)]
    slurm.read([COMMANDS["scancel"], *tasks])
    time.sleep(2)
    squeue(slurm, recorder, "fx-array", "squeue_array_cancelled.txt")


def capture_completion_records() -> None:
    root = Recorder("root")
    Slurm(root, COMMANDS).completion_records("fx-history", USER)
    save("sacct_completion.txt", root.last[1])
    rc, _out, err = run_as(USER, [COMMANDS["sacct"], "--completion", "--parsable2", "--noheader"])
    print(f"sacct --completion as {USER}: rc={rc}")
    save("sacct_completion_as_user_stderr.txt", err)


def main() -> None:
    run_as("root", ["install", "-d", "-m", "0777", OUTPUT_DIR])
    recorder = Recorder(USER)
    slurm = Slurm(recorder, COMMANDS)
    wait_until_forgotten(slurm)
    try:
        ids = submit_jobs()
        wait_for_state(slurm, "fx-history", "RUNNING", 30)
        run_as(USER, [COMMANDS["scancel"], ids["cancelled"]])
        time.sleep(2)
        capture_queue(slurm, recorder, ids)
        capture_by_ids(slurm, recorder, ids)
        capture_cancellations(slurm, recorder, ids)
        wait_for_state(slurm, "fx-timeout", "TIMEOUT", 180)
        squeue(slurm, recorder, "fx-timeout", "squeue_timeout.txt")
        capture_completion_records()
    finally:
        for name in NAMES:
            run_as(USER, [COMMANDS["scancel"], f"--name={name}"])


if __name__ == "__main__":
    main()
