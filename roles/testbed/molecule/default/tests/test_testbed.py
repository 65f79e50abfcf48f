"""Verify the converged testbed: Slurm answers, both partitions exist, a GPU job runs as the cluster user."""

import re

import pytest

CLUSTER_USER = "pegasus"


def test_slurmctld_answers(host):
    ping = host.run("scontrol ping")
    assert ping.rc == 0, ping.stderr
    assert re.search(r"Slurmctld\(primary\) at \S+ is UP", ping.stdout), ping.stdout


def test_slurmd_registered_the_node_with_gpus(host):
    node = host.run("scontrol --oneliner show node localhost")
    assert node.rc == 0, node.stderr
    assert "Gres=gpu:rtxa6000:4" in node.stdout
    state = re.search(r"\bState=(\S+)", node.stdout)
    assert state is not None
    assert state.group(1).split("+")[0] in {"IDLE", "MIXED", "ALLOCATED"}, node.stdout


@pytest.mark.parametrize(("partition", "is_default"), [("batch", True), ("RTXA6000", False)])
def test_partitions_exist(host, partition, is_default):
    shown = host.run(f"scontrol --oneliner show partition {partition}")
    assert shown.rc == 0, shown.stderr
    assert f"Default={'YES' if is_default else 'NO'}" in shown.stdout
    assert "State=UP" in shown.stdout


def test_sshd_listens_only_on_the_pegasus_mac_and_windows_standin_addresses(host):
    sockets = {str(s) for s in host.socket.get_listening_sockets() if s.endswith(":2222")}
    assert sockets == {"tcp://127.0.0.10:2222", "tcp://127.0.0.20:2222", "tcp://127.0.0.40:2222"}


def test_gpu_job_as_cluster_user_completes(host):
    submit = host.run(
        "runuser -u %s -- sbatch --parsable --wait --partition=RTXA6000 --gres=gpu:1 --time=2 "
        "--output=/dev/null --wrap %s",
        CLUSTER_USER,
        'test -n "$CUDA_VISIBLE_DEVICES"',
    )
    assert submit.rc == 0, submit.stderr
    job_id = submit.stdout.strip().split(";")[0]
    shown = host.run("scontrol --oneliner show job %s", job_id)
    assert "JobState=COMPLETED" in shown.stdout, shown.stdout
    assert f"UserId={CLUSTER_USER}(" in shown.stdout
    assert "Partition=RTXA6000" in shown.stdout


def test_finished_jobs_are_recorded(host):
    submit = host.run(
        "runuser -u %s -- sbatch --parsable --wait --time=2 --output=/dev/null --wrap true", CLUSTER_USER
    )
    assert submit.rc == 0, submit.stderr
    job_id = submit.stdout.strip()
    record = host.run("sacct -c --noheader --jobs %s --format=JobID,State,Partition", job_id)
    assert record.rc == 0, record.stderr
    assert record.stdout.split()[:3] == [job_id, "COMPLETED", "batch"], record.stdout
