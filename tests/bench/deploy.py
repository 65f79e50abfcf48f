"""Deploying: the plays a user runs to set up Pegasus, first run and idempotent re-run, timed, with the
changes they report and the SSH commands and connections they open (see :mod:`tests.bench.playbooks`).

``site.yml`` does not exist yet (issue 8 asks for it); these are the plays it would chain:

- ``playbooks/bootstrap.yml`` on Pegasus with a fresh ``pegasus_env_path`` (``~/.han/bench-env``), so
  that the first run builds the env for real (a venv with PostgreSQL, Valkey and SeaweedFS from wheels,
  the pose runtime and this checkout's han_worker) and the re-run finds it current;
- ``playbooks/pegasus_worker.yml`` with a job and a state directory of this benchmark's own
  (``han-bench-worker``, ``~/.han/bench-worker``, 1 CPU, 1 GB, one GPU, 20 minutes), running from that env: the
  first run writes the config and submits the job array (without waiting for a GPU: see
  ``pegasus_worker_wait_started``), the re-run finds it current; then ``-e state=stopped`` drains it.

The worker's Pegasus is this run's own control plane (the context's), so that it never takes a job
from the inventory's; mode auto reads the Mac's address and its workers' credentials from the inventory,
as a user's run does. In smoke mode only a re-run in check mode of bootstrap.yml on the inventory's env
runs: a real re-run would rebuild an env others use whenever this checkout's han_worker changed.
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
WORKER_STATE_DIR = "~/.han/bench-worker"
WORKER_JOB_NAME = "han-bench-worker"
LIMIT = ("--limit", "pegasus-login")  # the Mac's env is the same play on another host: not timed here
BOOTSTRAP = "playbooks/bootstrap.yml"
WORKER = "playbooks/pegasus_worker.yml"


def home_path(path: str) -> Path:
    """``~/...`` of the cluster account as this (root) process reaches it: the same machine."""
    return Path(pwd.getpwnam(CLUSTER_USER).pw_dir) / path.removeprefix("~/")


def bootstrap(*args: str) -> Played:
    return play(BOOTSTRAP, *LIMIT, *args)


def worker_settings(context: Context) -> dict[str, object]:
    endpoints_file = context.control_plane().state_dir / "endpoints.json"
    return {
        "pegasus_worker_slurm_job_name": WORKER_JOB_NAME,
        "pegasus_worker_state_dir": WORKER_STATE_DIR,
        "pegasus_worker_slurm_cpus": 1,
        "pegasus_worker_slurm_mem": "1G",
        # Short: Slurm's backfill then starts it beside a long job waiting for the node (the inventory's
        # 12-hour workers often do) instead of queueing it behind that job.
        "pegasus_worker_slurm_time": "00:20:00",
        # Return once the job is queued: when it starts depends on whose jobs hold the node's two GPUs,
        # which is the cluster's business, not the deploy's.
        "pegasus_worker_wait_started": False,
        "pegasus_worker_env_bin_dir": f"{ENV_PATH}/bin",
        "pegasus_worker_endpoints_file": str(endpoints_file),
        "pegasus_worker_control_plane_mode": "auto",
        "pegasus_worker_launch_mode": "slurm",
        "pegasus_worker_queues": "pose",
    }


def worker(context: Context, *extra: str) -> Played:
    return play(WORKER, *LIMIT, *extra_vars(worker_settings(context)), *extra)


def clean(context: Context) -> None:
    """Stop the benchmark's worker if one runs; remove its state and the benchmark's env builds."""
    if slurm_job_ids(WORKER_JOB_NAME):
        worker(context, "-e", "state=stopped")
    for path in (WORKER_STATE_DIR, ENV_PATH, f"{ENV_PATH}.builds", f"{ENV_PATH}.previous"):
        target = home_path(path)
        if target.is_symlink():
            target.unlink()
        else:
            shutil.rmtree(target, ignore_errors=True)


def measured(name: str, played: Played) -> Played:
    print(f"  {name}: {played.seconds:.1f}s, changed {played.recap.get('changed', 0)}, "
          f"{played.ssh_commands} ssh commands, {played.connections} new connections", flush=True)  # fmt: skip
    return played


Step = Callable[[Context], Played]
FRESH_ENV = extra_vars({"pegasus_env_path": ENV_PATH})
# One deploy, in order: what a user runs to set up Pegasus, then takes down.
STEPS: dict[str, Step] = {
    "bootstrap.yml, first run (builds the env)": lambda _context: bootstrap(*FRESH_ENV),
    "bootstrap.yml, re-run": lambda _context: bootstrap(*FRESH_ENV),
    "pegasus_worker.yml, first run (submits the worker)": worker,
    "pegasus_worker.yml, re-run": worker,
    "pegasus_worker.yml -e state=stopped": lambda context: worker(context, "-e", "state=stopped"),
}
SMOKE_STEPS: dict[str, Step] = {
    "bootstrap.yml, re-run in check mode (the inventory's env)": lambda _context: bootstrap("--check"),
}


def deploy_once(context: Context, steps: dict[str, Step]) -> dict[str, Played]:
    return {name: measured(name, step(context)) for name, step in steps.items()}


# Deploys vary by about 1 % run to run (27.6 and 27.8 s for the env), so two of them tell the spread; a
# third cost ~55 s of the 15-minute budget of make bench.
MAX_DEPLOYS = 2


def benchmark(context: Context) -> report.Section:
    """Up to ``MAX_DEPLOYS`` deploys from nothing (each cleaned up); smoke: one check-mode re-run of
    bootstrap.yml."""
    if context.smoke:
        print("deploy: bootstrap.yml re-run in check mode", flush=True)
        return section([deploy_once(context, SMOKE_STEPS)])
    count = min(context.repeat, MAX_DEPLOYS)
    print(f"deploy: {count} time(s) bootstrap.yml into {ENV_PATH}, pegasus_worker.yml as "
          f"{WORKER_JOB_NAME}", flush=True)  # fmt: skip
    deploys = []
    for _index in range(count):
        clean(context)  # from nothing: no env at the path, no worker
        try:
            deploys.append(deploy_once(context, STEPS))
        finally:
            clean(context)
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
        "title": "Deploy: the plays that set up Pegasus, first run and re-run",
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
            "site.yml does not exist yet: these are the plays it would chain (bootstrap, then the worker; the "
            "control plane's start is in the control-plane section).",
            f"{len(deploys)} deploy(s), median (min-max) over them; each starts from nothing (no env at "
            "~/.han/bench-env, no worker) and is removed after; the "
            "env build downloads its wheels from the package index this machine is configured with, so its "
            "time depends on that index's speed.",
            "bootstrap.yml runs on Pegasus only (--limit pegasus-login); on the Mac it is the same play.",
            "pegasus_worker.yml runs with pegasus_worker_wait_started=false: it returns once the job is queued, "
            "since when it starts depends on who holds the testbed's two GPUs (other sessions' workers do).",
            "pegasus_worker.yml also reads the Mac workers' credentials over SSH on the Mac (127.0.0.20): "
            "its connections are in the count (by address in the JSON report).",
        ],
    }
