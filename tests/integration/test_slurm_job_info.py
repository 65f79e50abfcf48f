"""han.infra.slurm_job_info against the testbed's real Slurm, over SSH as the cluster account."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import ansible_env, run_ansible
from tests.integration.test_slurm_job import HOST, SMALL, USER, name, slurm_job, submit_successor, wait_for

pytestmark = (
    pytest.mark.own_names
)  # the testbed under its own names: beside the inventory lane (tests/run_lanes.sh)

__all__ = ["name"]  # the fixture, shared with test_slurm_job: a job name of one test, cancelled afterwards


def slurm_job_info(check: bool = False, **args: Any) -> dict[str, Any]:
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    options = ["--check"] if check else []
    result = run_ansible(
        "ansible", HOST, *options, "-m", "han.infra.slurm_job_info", "-a", json.dumps(args), env=env
    )
    assert result.stdout, result.stderr
    host: dict[str, Any] = json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"][HOST]
    return host


def test_a_running_job_and_its_queued_successor_by_name(name: str) -> None:
    first = slurm_job(name=name, wrap="sleep 120", wait_started=True, timeout=30, **SMALL)
    successor = submit_successor(name)

    found = slurm_job_info(name=name)
    assert found["changed"] is False
    running, pending = found["jobs"]
    assert (running["job_id"], running["state"], running["node"]) == (first["job_id"], "RUNNING", "localhost")
    assert (running["alive"], running["started"], running["finished"]) == (True, True, False)
    assert (running["user"], running["name"], running["partition"]) == (USER, name, "batch")
    assert running["time_limit"] == "3:00"
    assert running["time_left"].startswith(("2:", "3:"))
    assert running["start_time"]
    assert running["end_time"] > running["start_time"]
    assert (pending["job_id"], pending["state"], pending["reason"]) == (successor, "PENDING", "Dependency")
    assert (pending["alive"], pending["started"], pending["node"]) == (True, False, "")

    assert [job["job_id"] for job in slurm_job_info(name=name, states=["pending"])["jobs"]] == [successor]
    in_check_mode = slurm_job_info(check=True, name=name, states=["RUNNING"])
    assert [job["job_id"] for job in in_check_mode["jobs"]] == [first["job_id"]]


def test_array_tasks_by_id_and_a_job_slurm_does_not_know(name: str) -> None:
    array = slurm_job(name=name, wrap="sleep 120", array="0-1", **SMALL)
    task = f"{array['job_id']}_1"
    [found] = slurm_job_info(job_ids=[task])["jobs"]
    assert (found["job_id"], found["array_job_id"], found["array_task_id"]) == (task, array["job_id"], "1")
    assert found["name"] == name
    assert sorted(job["job_id"] for job in slurm_job_info(job_ids=[array["job_id"]])["jobs"]) == sorted(
        array["job_ids"]
    )
    assert slurm_job_info(job_ids=["99999999"])["jobs"] == []


def test_a_finished_job_is_listed_with_its_final_state(name: str) -> None:
    failed = slurm_job(name=name, wrap="exit 3", **SMALL)
    wait_for(name, failed["job_id"], {"FAILED"})
    [job] = slurm_job_info(name=name)["jobs"]
    assert (job["state"], job["reason"], job["time_left"]) == ("FAILED", "NonZeroExitCode", "")
    assert (job["alive"], job["started"], job["finished"]) == (False, True, True)


def test_a_wrong_state_is_refused_naming_the_option() -> None:
    result = slurm_job_info(states=["RUNING"])
    assert result.get("failed") is True
    assert result["msg"].startswith("states: 'RUNING' is not a Slurm job state; use one of BOOT_FAIL")
    assert (result["option"], result["changed"]) == ("states", False)
