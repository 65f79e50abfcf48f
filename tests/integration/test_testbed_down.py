"""`make testbed-down` stops exactly what the testbed started, by pid file, and nothing else."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_ansible
from tests.integration.control_planes import wait_for

# It stops Slurm, munge and sshd under every other test: tests/run_lanes.sh runs it last, alone.
pytestmark = pytest.mark.takes_testbed_down

# Debian installs slurmctld and slurmd through alternatives; /proc/PID/exe names the real file.
TESTBED_DAEMONS = {
    os.path.realpath(f"/usr/sbin/{name}") for name in ("munged", "slurmctld", "slurmd", "sshd")
}


def live_processes(executables: set[str]) -> dict[int, str]:
    """Pids of running (not zombie) processes whose executable is one of the given paths."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")  # unreadable for zombies and vanished processes
        except OSError:
            continue
        if exe in executables:
            found[int(entry.name)] = exe
    return found


@pytest.fixture
def decoy_sshd(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """An sshd the testbed did not start, on another loopback address: testbed-down must leave it alone."""
    key = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = tmp_path / "sshd_config"
    config.write_text(f"ListenAddress 127.0.0.11:2299\nHostKey {key}\nPidFile {tmp_path}/pid\nUsePAM no\n")
    process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(config)])
    yield process
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.skipif(shutil.which("start-stop-daemon") is None, reason="the testbed manages daemons with it")
def test_testbed_down_stops_only_what_it_started(decoy_sshd: subprocess.Popen[bytes]) -> None:
    time.sleep(0.5)
    assert decoy_sshd.poll() is None, "the decoy sshd did not start"
    try:
        down = run_ansible("ansible-playbook", "playbooks/testbed.yml", "-e", "testbed_state=absent")
        assert down.returncode == 0, down.stdout
        remaining = live_processes(TESTBED_DAEMONS)
        assert remaining == {decoy_sshd.pid: "/usr/sbin/sshd"}
    finally:
        up = run_ansible("ansible-playbook", "playbooks/testbed.yml")
    assert up.returncode == 0, up.stdout
    assert set(live_processes(TESTBED_DAEMONS).values()) == TESTBED_DAEMONS


def slurm(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


def job_steps() -> list[str]:
    steps = subprocess.run(["pgrep", "--exact", "slurmstepd"], check=False, capture_output=True, text=True)
    return steps.stdout.split()


def test_jobs_of_a_previous_boot_do_not_come_back_as_ghosts() -> None:
    """A machine restored from an image (or rebooted) keeps slurmctld's saved state but none of the job
    processes: the recovered jobs would stay RUNNING forever, holding the node's CPUs. CI met exactly this:
    the drill waited on a control-plane job that had no process. The testbed starts slurmctld clean then."""
    slurm("scancel", "--user=pegasus")  # what a reboot does to every job; the next tests start theirs again
    wait_for(lambda: not job_steps(), 60, "no job step is alive")
    job_id = slurm("runuser", "-u", "pegasus", "--", "sbatch", "--parsable", "--job-name=han-ghost-test",
                   "--output=/dev/null", "--wrap=exec sleep 7213").strip()  # fmt: skip
    wait_for(job_steps, 60, f"job {job_id} to run its batch step")  # RUNNING in squeue comes before the step

    down = run_ansible("ansible-playbook", "playbooks/testbed.yml", "-e", "testbed_state=absent")
    assert down.returncode == 0, down.stdout
    subprocess.run(["pkill", "-KILL", "--exact", "slurmstepd"], check=True)  # the "reboot"
    subprocess.run(["pkill", "-KILL", "--full", "^sleep 7213$"], check=False)
    wait_for(lambda: not job_steps(), 60, "the job's processes to be gone")

    up = run_ansible("ansible-playbook", "playbooks/testbed.yml")
    assert up.returncode == 0, up.stdout
    assert slurm("squeue", "-h", "--user=pegasus", "-o", "%i %T") == "", "a job came back without its process"
    assert f"the others: {job_id}" in up.stdout, "the play names the jobs it cancelled"
    # Slurm frees the ghost's CPUs when slurmd confirms the job is gone: seconds to minutes here (the play
    # waits up to 90 s and warns after that); not a timing this test can hold Slurm to.
