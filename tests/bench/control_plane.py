"""The control plane as a Slurm job on Pegasus: how long until its endpoints are published and healthy,
how long a stop takes, and how long the walltime rollover leaves no control plane.

Run as the user runs it: ``ansible-playbook playbooks/control_plane.yml`` with a job and a state
directory of this benchmark's own (``han-bench-cp``, ``~/.han/bench-cp``, 1 CPU, 1 GB), never the
inventory's. The play returns once the endpoints are published and answer the workers' credentials,
so its wall time is what a user waits. The pure figure leaves Ansible out: Slurm's submit time of the
job (``squeue %V``, whole seconds) to the supervisor's "published" log line (milliseconds).

- cold start: a fresh state directory (initdb, the first S3 volume, new secrets);
- warm start: the same directory again, after a clean stop;
- stop: ``-e state=stopped`` (SIGTERM to the supervisor, wait until the job ended);
- rollover (not in smoke mode: it costs the 2-minute walltime): a job with a 2-minute walltime, Slurm's
  warning 30 s before its end (the role's least), and a successor queued by the job itself
  (``--dependency=singleton``).
  The gap is from the old epoch's stale mark to the new epoch's publication, both from the supervisors'
  logs; the new job's warm start is timed from its start (it was submitted minutes before).
"""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

from han_worker.control_plane.services import SEAWEED_STOP_GRACE_S
from tests.bench import report
from tests.bench.context import Context
from tests.bench.logs import logged_at, wait_until
from tests.bench.playbooks import Played, extra_vars, play, slurm_job_ids
from tests.integration.conftest import CLUSTER_USER

JOB_NAME = "han-bench-cp"
STATE_DIR = "~/.han/bench-cp"
PLAYBOOK = "playbooks/control_plane.yml"
SETTINGS: dict[str, object] = {
    "control_plane_slurm_job_name": JOB_NAME,
    "control_plane_state_dir": STATE_DIR,
    "control_plane_slurm_cpus": 1,
    "control_plane_slurm_mem": "1G",
}
# A short walltime: Slurm's backfill then starts the job even while a long job waits for the node (the
# inventory's 12-hour jobs often do), instead of queueing it behind that job for hours.
NO_SUCCESSOR: dict[str, object] = {"control_plane_successor": False, "control_plane_slurm_time": "30"}
ROLLOVER: dict[str, object] = {
    # Slurm may signal up to a minute early, so the warning can come 30 s after the start at the soonest:
    # long after the warm start has published (~5 s).
    "control_plane_slurm_time": "2",  # minutes
    "control_plane_walltime_warning": 30,
    "control_plane_successor": True,
}
ROLLOVER_TIMEOUT_S = 270.0  # the 2-minute walltime, the stop and the successor's start, with a margin


def state_dir() -> Path:
    """The benchmark's state directory as this (root) process reads it: the testbed's Pegasus home is
    on this machine, as a cluster's home is on its shared filesystem."""
    return Path(pwd.getpwnam(CLUSTER_USER).pw_dir) / STATE_DIR.removeprefix("~/")


def endpoints() -> dict[str, object]:
    return dict(json.loads((state_dir() / "endpoints.json").read_text()))


def slurm_log(job_id: str) -> str:
    return (state_dir() / "logs" / f"slurm-{job_id}.out").read_text(errors="replace")


def control_plane(*settings: dict[str, object]) -> Played:
    merged = SETTINGS | {name: value for each in settings for name, value in each.items()}
    return play(PLAYBOOK, *extra_vars(merged))


def job_times(job_id: str) -> tuple[float, float]:
    """(submitted, started) of a job Slurm still knows, epoch seconds (Slurm prints whole seconds)."""
    result = subprocess.run(
        ["squeue", "--noheader", f"--jobs={job_id}", "--format=%V %S"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    submitted, started = result.stdout.split()
    return datetime.fromisoformat(submitted).timestamp(), datetime.fromisoformat(started).timestamp()


def published_at(job_id: str, epoch: int) -> float:
    found = logged_at(slurm_log(job_id), rf"published \S+: epoch {epoch},")
    if found is None:
        raise RuntimeError(f"job {job_id}'s log has no publication of epoch {epoch}")
    return found


def start(*settings: dict[str, object]) -> dict[str, object]:
    """Start through the play; its wall time, SSH counts and Slurm's submit-to-published time."""
    played = control_plane(*settings)
    document = endpoints()
    job_id, epoch = str(document["slurm_job_id"]), int(str(document["epoch"]))
    submitted, started = job_times(job_id)
    published = published_at(job_id, epoch)
    figures = played.figures() | {
        "job_id": job_id,
        "epoch": epoch,
        "submit_to_published_s": published - submitted,
        "queued_s": started - submitted,
    }
    print(f"  start: play {played.seconds:.1f}s, submit to published {published - submitted:.1f}s "
          f"(job {job_id}, epoch {epoch})", flush=True)  # fmt: skip
    return figures


def stop() -> dict[str, object]:
    played = control_plane(NO_SUCCESSOR, {"state": "stopped"})
    print(f"  stop: play {played.seconds:.1f}s", flush=True)
    return played.figures()


def fresh_state() -> None:
    """No job of ours and no state directory left from an earlier run: the next start is cold."""
    if slurm_job_ids(JOB_NAME):
        stop()
    shutil.rmtree(state_dir(), ignore_errors=True)


# -- rollover ----------------------------------------------------------------------------------------


def successor_published(old_epoch: int) -> dict[str, object] | None:
    try:
        document = endpoints()
    except (OSError, ValueError):  # being replaced this very moment
        return None
    fresh = int(str(document["epoch"])) > old_epoch and document.get("stale") is False
    return document if fresh else None


def last_logged_at(text: str) -> float:
    """The time of the last log line with one (the supervisor's last service stopped)."""
    times = [logged_at(line, "") for line in text.splitlines()]
    found = [each for each in times if each is not None]
    if not found:
        raise RuntimeError("no timestamped line in the old job's log")
    return found[-1]


def rollover(started: dict[str, object]) -> dict[str, float]:
    """Wait for the walltime to end the job ``started`` and its successor to publish the next epoch."""
    old_job, old_epoch = str(started["job_id"]), int(str(started["epoch"]))
    print(f"  rollover: waiting for job {old_job}'s 2-minute walltime", flush=True)
    document = wait_until(
        lambda: successor_published(old_epoch), ROLLOVER_TIMEOUT_S, "the successor's epoch", 0.5
    )
    new_job, new_epoch = str(document["slurm_job_id"]), int(str(document["epoch"]))
    old_log, new_log = slurm_log(old_job), slurm_log(new_job)
    stale = logged_at(old_log, rf"marked \S+ stale \(epoch {old_epoch}\)")
    first_line = logged_at(new_log, "")
    if stale is None or first_line is None:
        raise RuntimeError(f"the logs of jobs {old_job} and {new_job} lack the stale mark or a first line")
    old_ended, published = last_logged_at(old_log), published_at(new_job, new_epoch)
    figures = {
        "gap_s": published - stale,
        "old_stop_s": old_ended - stale,
        "successor_launch_s": first_line - old_ended,
        "successor_start_to_published_s": published - first_line,
    }
    print("  rollover: " + ", ".join(f"{name} {value:.1f}" for name, value in figures.items()), flush=True)
    return figures


# -- the section -------------------------------------------------------------------------------------


def benchmark(context: Context) -> report.Section:
    """Cold start and stop; outside smoke mode then a warm start that rolls over at its walltime, and stop."""
    print(f"control plane: Slurm job {JOB_NAME}, state {STATE_DIR}", flush=True)
    # The role runs this checkout's han-control-plane from the env bootstrap.yml builds (a no-op when it is
    # current): the benchmark must not depend on another test having built it first.
    play("playbooks/bootstrap.yml", "--limit", "pegasus-login")
    measured: dict[str, list[dict[str, object]]] = {"cold start": [], "warm start": [], "stop": []}
    rolled: dict[str, float] | None = None
    fresh_state()
    try:
        measured["cold start"].append(start(NO_SUCCESSOR))
        measured["stop"].append(stop())
        if not context.smoke:  # the warm start is the rollover's: its 2-minute walltime is the cost
            measured["warm start"].append(start(ROLLOVER))
            rolled = rollover(measured["warm start"][0])
            measured["stop"].append(stop())
    finally:
        fresh_state()  # stops whatever is still running, removes the state directory
    return section(measured, rolled)


def spread_of(samples: list[dict[str, object]], name: str) -> report.Spread:
    return report.spread([float(str(sample[name])) for sample in samples])


def row(what: str, samples: list[dict[str, object]]) -> tuple[list[str], dict[str, report.Spread]]:
    names = ["seconds", "ssh_commands", "ssh_connections"]
    if "submit_to_published_s" in samples[0]:
        names.append("submit_to_published_s")
    figures = {name: spread_of(samples, name) for name in names}
    pure = figures.get("submit_to_published_s")
    cells = [
        what,
        report.spread_text(figures["seconds"], 1),
        report.spread_text(pure, 1) if pure else "-",
        report.spread_text(figures["ssh_commands"]),
        report.spread_text(figures["ssh_connections"]),
    ]
    return cells, figures


def section(measured: dict[str, list[dict[str, object]]], rolled: dict[str, float] | None) -> report.Section:
    rows, figures = [], dict[str, object]()
    for what, samples in measured.items():
        if not samples:
            continue
        cells, figures[what] = row(what, samples)
        rows.append(cells)
    if rolled is not None:
        figures["rollover"] = rolled
        rows.append(["walltime rollover (from the stale mark)", "-", f"{rolled['gap_s']:.1f}", "-", "-"])
    return {
        "title": "Control plane on Slurm: start, stop and the walltime rollover",
        "explanation": [
            "'play' is the wall time of ansible-playbook playbooks/control_plane.yml, which returns once the "
            "endpoints are published and every service answered the workers' credentials (or, with "
            "state=stopped, once the job has ended): what an operator waits.",
            "'to published' leaves Ansible out: from Slurm's submit time of the job (whole seconds) to the "
            "supervisor's 'published' log line.",
            "A cold start runs initdb and creates the first S3 volume and the secrets; a warm start reuses the "
            "state directory of the previous run.",
            "For the walltime rollover it is the gap without a usable control plane: from the old epoch's "
            "stale mark (Slurm's warning, asked for 30 s before the end) to the successor's publication of the "
            "next epoch.",
        ],
        "columns": ["what", "play (s)", "to published (s)", "ssh commands", "new SSH connections"],
        "rows": rows,
        "figures": figures,
        "notes": [
            *rollover_notes(rolled),
            f"Job {JOB_NAME} in partition batch with 1 CPU, 1 GB and a 30-minute walltime (2 minutes for the "
            f"rollover), state in {STATE_DIR} (removed at the end); the inventory's control planes are not "
            "touched.",
            "SSH commands are the ssh processes Ansible ran; new connections those that authenticated "
            "instead of riding on ControlPersist's master (ansible.cfg: 30 s), counted from ssh's own log.",
        ],
    }


def rollover_notes(rolled: dict[str, float] | None) -> list[str]:
    if rolled is None:
        return ["Smoke mode: no rollover (it costs the 2-minute walltime)."]
    return [
        f"Rollover gap {rolled['gap_s']:.1f} s = the old supervisor's stop {rolled['old_stop_s']:.1f} s "
        f"(SeaweedFS gets {SEAWEED_STOP_GRACE_S:g} s, then SIGKILL, instead of waiting out its filer's 15 s "
        f"gRPC graceful stop) + Slurm ending the job and starting the "
        f"successor {rolled['successor_launch_s']:.1f} s + the successor's warm start "
        f"{rolled['successor_start_to_published_s']:.1f} s (its first log line to publication).",
    ]
