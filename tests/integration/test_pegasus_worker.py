"""Runbook step 3 on the testbed: `pegasus_worker.yml` runs `han-worker run` as a Slurm job array on RTXA6000.

The module starts its own Pegasus control plane (own Slurm job name and state directory) so that it can
copy, break and point at endpoints files without touching the inventory's; the Mac is the inventory's
(started if it is not running, and stopped again only if this module started it).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterator

import matplotlib.cbook
import pytest

from tests.conftest import ansible_env, run_ansible
from tests.integration.conftest import MAC, PEGASUS, recap, ssh
from tests.integration.control_planes import wait_for

PEGASUS_HOST = "pegasus-login"
CP_JOB = "han-cp-worker-test"
CP_DIR = "~/.han/test-worker-cp"
WORKER_JOB = "han-test-pose-worker"
WORKER_DIR = "~/.han/test-worker"
HAN_WORKER = "~/.han/env/bin/han-worker"
# A fixed array (the role's default in launch mode slurm is an elastic pool: test_pegasus_worker_elastic.py).
WORKER_VARS = (
    "-e", "pegasus_worker_scaling=fixed",
    "-e", f"pegasus_worker_slurm_job_name={WORKER_JOB}",
    "-e", f"pegasus_worker_state_dir={WORKER_DIR}",
    "-e", f"pegasus_worker_endpoints_file={CP_DIR}/endpoints.json",
    "-e", "pegasus_worker_drain_grace=5",
    "-e", "pegasus_worker_slurm_cpus=1",
    "-e", "pegasus_worker_slurm_mem=1G",
)  # fmt: skip


def worker_play(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_ansible("ansible-playbook", "playbooks/pegasus_worker.yml", *WORKER_VARS, *args, env=env)


def control_plane(*args: str) -> subprocess.CompletedProcess[str]:
    return run_ansible("ansible-playbook", "playbooks/control_plane.yml", *args)


def jobs(name: str) -> list[str]:
    result = ssh(PEGASUS, f"squeue --noheader --me --name={name} --format='%i %T %P'")
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def running(name: str) -> list[str]:
    return [line for line in jobs(name) if " RUNNING " in line]


def queued_successor(name: str) -> str:
    """The id of the array the first task queued at its start (walltime continuity), once it is there."""
    pending = wait_for(lambda: [line.split()[0] for line in jobs(name) if " PENDING " in line], 60,
                       "the first task to queue the successor array", interval=1)  # fmt: skip
    assert len(pending) == 1, pending
    return str(pending[0]).split("_", 1)[0]  # squeue prints a pending array as 123_[0]


def choice(output: str) -> str:
    """The play's one-line account of its choice ("CONTROL_PLANE_MODE=...: the ... control plane; ...")."""
    match = re.search(r"msg: '?(CONTROL_PLANE_MODE=.*?)(?:'\n|\nTASK)", output, re.DOTALL)
    assert match, output[-3000:]
    return " ".join(match.group(1).split())


def worker_processes(config_dir: str) -> list[str]:
    result = ssh(PEGASUS, "ps -u pegasus -o args= | grep -F -- 'han-worker run' | grep -v grep || true")
    return [line for line in result.stdout.splitlines() if config_dir in line]


@pytest.fixture(scope="module", autouse=True)
def control_planes() -> Iterator[None]:
    """This checkout's env on both machines, a Pegasus control plane of our own, and the inventory's Mac."""
    result = run_ansible("ansible-playbook", "playbooks/bootstrap.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    # One CPU and no successor job: the testbed's node also runs the inventory's control plane and workers.
    pegasus = ("-e", f"control_plane_slurm_job_name={CP_JOB}", "-e", f"control_plane_state_dir={CP_DIR}",
               "-e", "control_plane_slurm_cpus=1", "-e", "control_plane_slurm_mem=1G",
               "-e", "control_plane_successor=false")  # fmt: skip
    mac = ("-e", "control_plane_hosts=mac")
    # The inventory's own workers (make demo, the drill) may hold both of the testbed's GPUs.
    result = run_ansible("ansible-playbook", "playbooks/pegasus_worker.yml", "-e", "state=stopped")
    assert result.returncode == 0, result.stdout[-3000:]
    we_started_the_mac = False
    try:
        result = control_plane(*pegasus)
        assert result.returncode == 0, result.stdout[-3000:]
        result = control_plane(*mac)
        assert result.returncode == 0, result.stdout[-3000:]
        we_started_the_mac = recap(result, "mac-laptop")["changed"] > 0
        yield
    finally:
        worker_play("-e", "state=stopped")
        control_plane(*pegasus, "-e", "state=stopped")
        if we_started_the_mac:  # stopped again only when this module started it
            control_plane(*mac, "-e", "state=stopped")


def private_copy_of_endpoints(directory: str, **changes: object) -> str:
    """A copy of our control plane's endpoints file with some fields changed, and the workers' credentials
    beside it, as the cluster user wrote them (a worker needs both to use a control plane)."""
    document = json.loads(ssh(PEGASUS, f"cat {CP_DIR}/endpoints.json").stdout)
    document.update(changes)
    text = shlex.quote(json.dumps(document))
    script = (f"umask 077 && mkdir -p {directory} && printf %s {text} > {directory}/endpoints.json"
              f" && cp {CP_DIR}/credentials.json {directory}/credentials.json")  # fmt: skip
    assert ssh(PEGASUS, script).returncode == 0
    return f"{directory}/endpoints.json"


# -- choosing the control plane (check mode: nothing is written or submitted) --------------------------------


@pytest.mark.parametrize(
    ("mode", "source", "because"),
    [
        ("auto", "pegasus", "are valid and healthy"),
        ("pegasus", "pegasus", "are valid and healthy"),
        ("mac", "mac", "mode mac always uses the Mac"),
    ],
)
def test_with_pegasus_up_each_mode_picks_what_the_runbook_says(mode: str, source: str, because: str):
    result = worker_play("--check", "-e", f"pegasus_worker_control_plane_mode={mode}")
    assert result.returncode == 0, result.stdout[-3000:]
    said = choice(result.stdout)
    assert f"CONTROL_PLANE_MODE={mode}: the {source} control plane" in said
    assert because in said


def test_check_mode_chooses_with_the_macs_credentials_not_an_older_copy():
    # The workers' copy as it was before the Mac rotated its credentials: a real run replaces it, so check
    # mode must choose with what that run will write, not with the copy (which no longer opens the Mac).
    copy = f"{WORKER_DIR}/config/mac-credentials.json"
    before = ssh(PEGASUS, f"cat {copy}")  # restored afterwards, or removed if there was none
    current = json.loads(ssh(MAC, "cat ~/.han/control-plane/credentials.json").stdout)
    stale = {**current, "postgres": {**current["postgres"], "password": "an-older-password-0000"}}
    text = shlex.quote(json.dumps(stale))
    script = f"umask 077 && mkdir -p {WORKER_DIR}/config && printf %s {text} > {copy}"
    assert ssh(PEGASUS, script).returncode == 0
    try:
        result = worker_play("--check", "-e", "pegasus_worker_control_plane_mode=mac")
        assert result.returncode == 0, result.stdout[-3000:]
        assert "CONTROL_PLANE_MODE=mac: the mac control plane" in choice(result.stdout)
        assert json.loads(ssh(PEGASUS, f"cat {copy}").stdout) == stale, "check mode wrote nothing"
    finally:
        restore = (
            f"printf %s {shlex.quote(before.stdout)} > {copy}" if before.returncode == 0 else f"rm -f {copy}"
        )
        assert ssh(PEGASUS, f"umask 077 && {restore}").returncode == 0


@pytest.mark.parametrize(
    ("changes", "why"),
    [({"stale": True}, "stale"), ({"slurm_job_id": "1"}, "Slurm job 1 is no longer running")],
)
def test_with_pegasus_unusable_auto_falls_back_to_the_mac(changes: dict[str, object], why: str):
    endpoints = private_copy_of_endpoints("~/.han/test-worker-broken", **changes)
    result = worker_play("--check", "-e", "pegasus_worker_control_plane_mode=auto",
                         "-e", f"pegasus_worker_endpoints_file={endpoints}")  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    said = choice(result.stdout)
    assert "CONTROL_PLANE_MODE=auto: the mac control plane; Pegasus skipped:" in said
    assert why in said


def test_the_runbook_environment_variables_are_read():
    env = ansible_env(CONTROL_PLANE_MODE="mac", HAN_WORKER_QUEUES="pose")
    result = run_ansible("ansible-playbook", "playbooks/pegasus_worker.yml", "--check", *WORKER_VARS, env=env)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "CONTROL_PLANE_MODE=mac: the mac control plane" in choice(result.stdout)


@pytest.mark.parametrize(
    ("endpoints", "changes", "reason"),
    [
        ("~/.han/test-worker-none/endpoints.json", None, "does not exist"),
        ("~/.han/test-worker-stale/endpoints.json", {"stale": True}, "stale"),
    ],
)
def test_pegasus_mode_without_valid_endpoints_fails_before_any_sbatch(
    endpoints: str, changes: dict[str, object] | None, reason: str
):
    if changes is not None:
        endpoints = private_copy_of_endpoints(endpoints.rsplit("/", 1)[0], **changes)
    result = worker_play("-e", "pegasus_worker_control_plane_mode=pegasus",
                         "-e", f"pegasus_worker_endpoints_file={endpoints}")  # fmt: skip
    assert result.returncode != 0
    assert "control plane (pegasus mode)" in result.stdout
    assert reason in result.stdout
    assert "Ensure the worker array is pending or running" not in result.stdout
    assert jobs(WORKER_JOB) == []


# -- bad input: each refused with a message that names the setting, and nothing submitted ----------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("pegasus_worker_control_plane_mode=cloud", "pegasus_worker_control_plane_mode"),
        ("pegasus_worker_queues=", "pegasus_worker_queues (HAN_WORKER_QUEUES) is empty"),
        ("pegasus_worker_queues=pose,videos", "queue 'videos' is served by no backend"),
        ("pegasus_worker_queues=gpu", "Windows-only"),
        ("pegasus_worker_launch_mode=ssh", "pegasus_worker_launch_mode"),
        ("pegasus_worker_count=0", "pegasus_worker_count must be 1 or more"),
        ("pegasus_worker_slurm_partition=GTX480", "partition"),
        ("pegasus_worker_slurm_time=30-00:00:00", "MaxTime"),
        # Auto mode fails over to the Mac, whose credentials exist only once its control plane has run.
        (
            "pegasus_worker_mac_credentials_file=~/.han/never-started/credentials.json",
            "pegasus_worker_mac_credentials_file: ~/.han/never-started/credentials.json does not exist on mac-laptop",
        ),
    ],
)
def test_bad_input_is_refused_naming_the_setting(setting: str, message: str):
    result = worker_play("-e", setting)
    assert result.returncode != 0
    assert message in result.stdout, result.stdout[-3000:]
    if setting.startswith("pegasus_worker_queues=gpu"):
        assert "pegasus_worker_queues (HAN_WORKER_QUEUES) = gpu" in result.stdout
        assert "training jobs need the Windows GPU worker" in result.stdout
    assert jobs(WORKER_JOB) == []


def test_an_empty_han_worker_queues_means_the_default_as_for_the_worker():
    env = ansible_env(HAN_WORKER_QUEUES="")
    result = run_ansible("ansible-playbook", "playbooks/pegasus_worker.yml", "--check", *WORKER_VARS, env=env)
    assert result.returncode == 0, result.stdout[-3000:]


# -- the real thing ---------------------------------------------------------------------------------------------


def submit_pose_job() -> str:
    photo_dir = "/tmp/han-test-pegasus-worker"
    subprocess.run(["install", "-d", "-o", "pegasus", "-g", "pegasus", "-m", "0700", photo_dir], check=True)
    photo = f"{photo_dir}/person.jpg"
    subprocess.run(["install", "-o", "pegasus", "-g", "pegasus", "-m", "0600",
                    matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), photo], check=True)  # fmt: skip
    result = ssh(PEGASUS, f"{HAN_WORKER} submit --config {WORKER_DIR}/config/worker.json --mode pegasus "
                          f"--kind pose --input {photo}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split()[-1]


def wait_for_job(job_id: str) -> dict[str, object]:
    result = ssh(PEGASUS, f"{HAN_WORKER} wait {job_id} --json --timeout 180 "
                          f"--config {WORKER_DIR}/config/worker.json --mode pegasus", timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(json.loads(result.stdout))


def test_a_pose_job_is_done_by_a_slurm_worker_on_rtxa6000_and_stop_leaves_nothing():
    first = worker_play("-e", "pegasus_worker_control_plane_mode=pegasus")
    assert first.returncode == 0, first.stdout[-3000:]
    assert len(running(WORKER_JOB)) == 1
    successor = queued_successor(WORKER_JOB)
    second = worker_play("-e", "pegasus_worker_control_plane_mode=pegasus")
    assert second.returncode == 0, second.stdout[-3000:]
    assert recap(second, PEGASUS_HOST)["changed"] == 0, second.stdout[-3000:]

    config = json.loads(ssh(PEGASUS, f"cat {WORKER_DIR}/config/worker.json").stdout)
    assert config["mode"] == "pegasus"
    assert config["queues"] == ["pose"]
    assert config["pegasus"]["check_slurm_job"] is True
    modes = ssh(PEGASUS, f"stat -c '%a %n' {WORKER_DIR} {WORKER_DIR}/config {WORKER_DIR}/config/worker.json")
    assert [line.split()[0] for line in modes.stdout.splitlines()] == ["700", "700", "600"]

    record = wait_for_job(submit_pose_job())
    assert record["status"] == "succeeded", record
    match = re.search(r"-slurm(\d+)_0-\d+-[0-9a-f]+$", str(record["worker_id"]))
    assert match, record["worker_id"]
    assert record["platform"] == "linux"
    assert record["control_plane"] == "pegasus"
    shown = ssh(PEGASUS, f"scontrol show job {match.group(1)}_0").stdout
    assert "Partition=RTXA6000" in shown
    assert re.search(r"gres/gpu(:rtxa6000)?=1|gres:gpu:1|gpu:1", shown), shown
    assert "ExportEnv" not in shown or "NONE" in shown
    # The successor has the same shape and waits for every task of this array to end.
    queued = ssh(PEGASUS, f"scontrol show job {successor}").stdout
    assert "Dependency=singleton" in queued, queued
    assert "Partition=RTXA6000" in queued, queued
    assert "ArrayTaskId=0" in queued, queued

    logs = run_ansible("ansible-playbook", "playbooks/logs.yml", "-e", "target=worker",
                       "-e", f"pegasus_worker_state_dir={WORKER_DIR}")  # fmt: skip
    assert logs.returncode == 0
    assert "serving pose on pegasus" in logs.stdout

    stopped = worker_play("-e", "state=stopped")
    assert stopped.returncode == 0, stopped.stdout[-3000:]
    assert jobs(WORKER_JOB) == []
    assert worker_processes(f"{WORKER_DIR.removeprefix('~')}/config") == []
    again = worker_play("-e", "state=stopped")
    assert recap(again, PEGASUS_HOST)["changed"] == 0, again.stdout[-3000:]


def test_a_new_config_drains_the_running_workers_and_starts_new_ones():
    first = worker_play("-e", "pegasus_worker_control_plane_mode=pegasus")
    assert first.returncode == 0, first.stdout[-3000:]
    [before] = running(WORKER_JOB)
    switched = worker_play("-e", "pegasus_worker_control_plane_mode=mac")
    assert switched.returncode == 0, switched.stdout[-3000:]
    [after] = running(WORKER_JOB)
    assert before.split()[0] != after.split()[0]
    config = json.loads(ssh(PEGASUS, f"cat {WORKER_DIR}/config/worker.json").stdout)
    assert (config["mode"], config["mac"]["host"]) == ("mac", "127.0.0.20")
    credentials = ssh(PEGASUS, f"stat -c %a {WORKER_DIR}/config/mac-credentials.json")
    assert credentials.stdout.strip() == "600"
    assert "password" not in switched.stdout.lower() or "no_log" in switched.stdout
    mac_credentials = json.loads(ssh(MAC, "cat ~/.han/control-plane/credentials.json").stdout)
    assert mac_credentials["redis"]["password"] not in switched.stdout
    stopped = worker_play("-e", "state=stopped")
    assert stopped.returncode == 0, stopped.stdout[-3000:]
    assert jobs(WORKER_JOB) == []


def test_at_its_walltime_the_array_drains_and_its_successor_serves_on():
    started = worker_play("-e", "pegasus_worker_control_plane_mode=pegasus")
    assert started.returncode == 0, started.stdout[-3000:]
    [first] = [line.split()[0] for line in running(WORKER_JOB)]
    successor = queued_successor(WORKER_JOB)
    # What Slurm's walltime warning does (--signal=B:TERM@...): SIGTERM to each task's batch shell, the worker.
    signalled = ssh(PEGASUS, f"scancel --batch --signal=TERM {first}")
    assert signalled.returncode == 0, signalled.stderr
    wait_for(lambda: [line for line in running(WORKER_JOB) if line.startswith(f"{successor}_")], 120,
             "the successor array to start once the first one drained", interval=1)  # fmt: skip
    record = wait_for_job(submit_pose_job())
    assert record["status"] == "succeeded", record
    assert f"-slurm{successor}_0-" in str(record["worker_id"]), record
    # The chain goes on: the successor queued its own.
    assert queued_successor(WORKER_JOB) != successor
    stopped = worker_play("-e", "state=stopped")
    assert stopped.returncode == 0, stopped.stdout[-3000:]
    assert jobs(WORKER_JOB) == []


def worker_children(config_dir: str) -> list[str]:
    """The pids of the workers the keepers run (`python -m han_worker run`; a keeper is `han-worker run`).
    [h]: the pattern does not match the shell that runs pgrep."""
    result = ssh(PEGASUS, f"pgrep -u pegasus -f -- '[h]an_worker run --config=.*{config_dir}' || true")
    return result.stdout.split()


def test_a_killed_worker_comes_back_and_a_rerun_gives_the_array_its_lost_task_back():
    two = ("-e", "pegasus_worker_control_plane_mode=pegasus", "-e", "pegasus_worker_count=2")
    started = worker_play(*two)
    assert started.returncode == 0, started.stdout[-3000:]
    wait_for(lambda: len(running(WORKER_JOB)) == 2, 60, "both tasks to run", interval=1)
    tasks = sorted(line.split()[0] for line in running(WORKER_JOB))
    config_dir = f"{WORKER_DIR.removeprefix('~')}/config"
    children = wait_for(lambda: worker_children(config_dir) if len(worker_children(config_dir)) == 2 else None,
                        60, "a worker under each keeper", interval=1)  # fmt: skip

    # A worker killed alone is started again by its keeper, in the same Slurm task.
    assert ssh(PEGASUS, f"kill -KILL {children[0]}").returncode == 0
    wait_for(lambda: children[0] not in worker_children(config_dir) and len(worker_children(config_dir)) == 2,
             60, "the keeper to start the worker again", interval=1)  # fmt: skip
    assert sorted(line.split()[0] for line in running(WORKER_JOB)) == tasks
    record = wait_for_job(submit_pose_job())
    assert record["status"] == "succeeded", record

    # A task killed whole (its keeper too) is gone; the play submits that index again.
    assert ssh(PEGASUS, f"scancel --signal=KILL --full {tasks[1]}").returncode == 0
    wait_for(lambda: [line.split()[0] for line in running(WORKER_JOB)] == [tasks[0]], 60,
             "the killed task to end", interval=1)  # fmt: skip
    repaired = worker_play(*two)
    assert repaired.returncode == 0, repaired.stdout[-3000:]
    assert recap(repaired, PEGASUS_HOST)["changed"] > 0
    refilled = wait_for(lambda: running(WORKER_JOB) if len(running(WORKER_JOB)) == 2 else None, 60,
                        "the lost task to run again", interval=1)  # fmt: skip
    filler = next(line.split()[0] for line in refilled if line.split()[0] != tasks[0])
    assert filler.endswith("_1"), refilled
    assert not filler.startswith(tasks[0].split("_")[0] + "_"), refilled  # a new job, not the old array
    shown = ssh(PEGASUS, f"scontrol show job {filler}").stdout
    assert "Partition=RTXA6000" in shown, shown
    assert f"JobName={WORKER_JOB}" in shown, shown
    again = worker_play(*two)
    assert recap(again, PEGASUS_HOST)["changed"] == 0, again.stdout[-3000:]
    stopped = worker_play("-e", "state=stopped")
    assert stopped.returncode == 0, stopped.stdout[-3000:]
    assert jobs(WORKER_JOB) == []
    assert worker_children(config_dir) == []


def test_direct_launch_mode_runs_background_workers_and_stops_them():
    direct = ("-e", "pegasus_worker_launch_mode=direct", "-e", "pegasus_worker_count=2",
              "-e", f"pegasus_worker_state_dir={WORKER_DIR}-direct")  # fmt: skip
    first = worker_play(*direct)
    assert first.returncode == 0, first.stdout[-3000:]
    config_dir = f"{WORKER_DIR.removeprefix('~')}-direct/config"
    assert len(worker_processes(config_dir)) == 2
    again = worker_play(*direct)
    assert recap(again, PEGASUS_HOST)["changed"] == 0, again.stdout[-3000:]
    assert jobs(WORKER_JOB) == [], "direct mode submits nothing to Slurm"
    stopped = worker_play(*direct, "-e", "state=stopped")
    assert stopped.returncode == 0, stopped.stdout[-3000:]
    assert worker_processes(config_dir) == []
    again = worker_play(*direct, "-e", "state=stopped")
    assert recap(again, PEGASUS_HOST)["changed"] == 0, again.stdout[-3000:]


def test_logs_refuses_an_unknown_target():
    result = run_ansible("ansible-playbook", "playbooks/logs.yml", "-e", "target=workers")
    assert result.returncode != 0
    assert "target must be control_plane or worker (got 'workers')" in result.stdout
