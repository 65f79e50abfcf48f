"""The testbed is real: Ansible reaches "Pegasus" over SSH as the cluster account and Slurm runs a GPU job."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import ansible_runner
import pytest
import yaml

from tests.conftest import BIN, REPO, run_ansible
from tests.integration.conftest import MAC, PEGASUS, recap, ssh


def test_gpu_check_through_ansible_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CI drives the collection with ansible-runner; project_dir makes the repository's ansible.cfg apply."""
    # ansible-runner finds ansible-playbook on PATH.
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    run = ansible_runner.run(
        private_data_dir=str(tmp_path),
        project_dir=str(REPO),
        playbook="playbooks/gpu_check.yml",
        envvars={"ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
        quiet=True,
    )
    assert run.status == "successful", run.stdout.read()
    reports = [
        event["event_data"]["res"]["msg"]
        for event in run.events
        if event.get("event") == "runner_on_ok"
        and event["event_data"].get("task_action") == "ansible.builtin.debug"
    ]
    assert len(reports) == 1
    assert re.match(
        r"Job \d+ on partition RTXA6000 \(gpu:1\): COMPLETED; node=\S+ gpus=\d job=\d+$", reports[0]
    )


GPU_CHECK_JOB = yaml.safe_load((REPO / "roles/slurm_gpu_check/vars/main.yml").read_text())[
    "_slurm_gpu_check_job_name"
]


def gpu_check_jobs() -> set[str]:
    """The GPU check's Slurm jobs now (by its job name: the other lane runs jobs of its own meanwhile)."""
    listed = subprocess.run(
        ["squeue", "--noheader", "--all", f"--name={GPU_CHECK_JOB}", "--format=%i"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return set(listed.split())


def test_wrong_partition_fails_naming_the_variable_and_submits_nothing() -> None:
    before = gpu_check_jobs()
    result = run_ansible(
        "ansible-playbook", "playbooks/gpu_check.yml", "-e", "slurm_gpu_check_partition=RTXA600"
    )
    assert result.returncode == 2
    assert "slurm_gpu_check_partition: partition 'RTXA600' does not exist on this cluster" in result.stdout
    assert "(partitions: batch, RTXA6000)" in result.stdout
    # A check job of an earlier test may end meanwhile; what must not happen is a new one.
    assert gpu_check_jobs() - before == set()


def test_cluster_account_runs_debians_python() -> None:
    result = ssh(
        PEGASUS, "id -un && /usr/bin/python3 -c 'import sys; print(sys.version_info[:2] >= (3, 11))'"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["pegasus", "True"]


def test_root_cannot_log_in_to_pegasus() -> None:
    result = ssh("root@127.0.0.10", "true")
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def test_testbed_check_mode_reports_no_change() -> None:
    result = run_ansible("ansible-playbook", "playbooks/testbed.yml", "--check")
    assert result.returncode == 0, result.stdout
    assert recap(result, "localhost")["changed"] == 0, result.stdout


def test_the_mac_admits_only_its_operator() -> None:
    assert ssh(MAC, "id -un").stdout.strip() == "operator"
    refused = ssh("pegasus@127.0.0.20", "true")
    assert refused.returncode == 255
    assert "Permission denied" in refused.stderr
    assert ssh("operator@127.0.0.10", "true").returncode == 255
