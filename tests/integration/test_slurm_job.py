"""han.infra.slurm_job against the testbed's real Slurm, run through Ansible over SSH as the cluster account."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ansible_env, run_ansible

pytestmark = (
    pytest.mark.own_names
)  # the testbed under its own names: beside the inventory lane (tests/run_lanes.sh)

HOST = "pegasus-login"
USER = "pegasus"
# Short, so that several jobs fit beside whatever else runs on the one-node cluster.
SMALL = {"time": "3", "mem": "16M", "output": "/dev/null"}
_NUMBERS = itertools.count()


def slurm_job(check: bool = False, **args: Any) -> dict[str, Any]:
    """Run the module once, ad hoc, and return the host's result."""
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    options = ["--check"] if check else []
    result = run_ansible(
        "ansible", HOST, *options, "-m", "han.infra.slurm_job", "-a", json.dumps(args), env=env
    )
    assert result.stdout, result.stderr
    host: dict[str, Any] = json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"][HOST]
    return host


def queue(name: str) -> dict[str, str]:
    """{job id: state} of every job of that name slurmctld knows, finished ones included."""
    argv = [
        "squeue",
        "--noheader",
        "--array",
        "--states=all",
        f"--user={USER}",
        f"--name={name}",
        "--format=%i %T",
    ]
    lines = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout.split("\n")
    return dict(line.split() for line in lines if line.strip())


def alive(name: str) -> dict[str, str]:
    finished = {"COMPLETED", "COMPLETING", "CANCELLED", "FAILED", "TIMEOUT"}
    return {job: state for job, state in queue(name).items() if state not in finished}


def wait_for(name: str, job_id: str, states: set[str], timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while (state := queue(name).get(job_id)) not in states:
        assert time.monotonic() < deadline, f"job {job_id} stayed {state}"
        time.sleep(0.5)
    return state


def submit_successor(name: str) -> str:
    """What a job script does to queue its own successor: same name, --dependency=singleton."""
    argv = [
        "runuser",
        "-u",
        USER,
        "--",
        "sbatch",
        "--parsable",
        f"--job-name={name}",
        "--dependency=singleton",
    ]
    argv += ["--time=3", "--mem=16M", "--output=/dev/null", "--wrap=sleep 120"]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout.strip()


@pytest.fixture
def name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A job name of this test alone; every job of that name is cancelled afterwards."""
    job_name = f"han-it-{os.getpid()}-{next(_NUMBERS)}-{request.node.originalname[5:25]}"
    yield job_name
    subprocess.run(["scancel", f"--user={USER}", f"--name={job_name}"], check=False, timeout=30)


@pytest.fixture
def output_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="han-slurm-job-", dir="/tmp"))
    shutil.chown(directory, USER, USER)
    yield directory
    shutil.rmtree(directory)


def test_present_submits_once_and_then_reports_the_job(name: str) -> None:
    first = slurm_job(name=name, wrap="sleep 120", **SMALL)
    assert first["changed"] is True, first
    submitted = ["--parsable", f"--job-name={name}", "--time=3", "--mem=16M", "--output=/dev/null"]
    assert first["cmd"][0][1:] == [*submitted, "--wrap=sleep 120"]
    assert first["job_id"].isdigit()
    assert first["job_ids"] == [first["job_id"]]
    assert first["partition"] == "batch"

    again = slurm_job(name=name, wrap="sleep 120", **SMALL)
    assert again["changed"] is False, again
    assert again["cmd"] == []
    assert (again["job_id"], again["job_ids"], again["differs"]) == (first["job_id"], [first["job_id"]], [])
    assert list(queue(name)) == [first["job_id"]]

    other = slurm_job(
        name=name, wrap="sleep 120", partition="RTXA6000", time="5", mem="16M", output="/dev/null"
    )
    assert other["changed"] is False
    assert other["differs"] == ["partition", "time"]
    assert any("partition=batch where the task asks for RTXA6000" in w for w in other["warnings"]), other
    assert list(queue(name)) == [first["job_id"]]


def test_check_mode_answers_without_submitting(name: str) -> None:
    result = slurm_job(check=True, name=name, wrap="sleep 120", **SMALL)
    assert result["changed"] is True
    assert result["cmd"][0][-1] == "--wrap=sleep 120"
    assert (result["job_id"], result["job_ids"], result["state"]) == ("", [], "")
    assert queue(name) == {}


def test_a_singleton_successor_is_not_resubmitted_and_absent_cancels_both(name: str) -> None:
    first = slurm_job(name=name, wrap="sleep 120", wait_started=True, timeout=30, **SMALL)
    assert first["state"] == "RUNNING", first
    assert first["node"] == "localhost"
    assert first["time_left"].startswith(("2:", "3:"))
    successor = submit_successor(name)

    again = slurm_job(name=name, wrap="sleep 120", **SMALL)
    assert again["changed"] is False
    assert again["job_ids"] == [first["job_id"], successor]
    assert (again["job_id"], again["state"]) == (first["job_id"], "RUNNING")
    assert alive(name) == {first["job_id"]: "RUNNING", successor: "PENDING"}

    would = slurm_job(check=True, name=name, state="absent")
    assert would["changed"] is True
    assert [argv[1:] for argv in would["cmd"]] == [[first["job_id"], successor]]
    assert len(alive(name)) == 2

    gone = slurm_job(name=name, state="absent")
    assert gone["changed"] is True
    assert gone["job_ids"] == [first["job_id"], successor]
    assert alive(name) == {}
    assert slurm_job(name=name, state="absent")["changed"] is False


def test_absent_with_a_signal_cancels_the_successor_and_lets_the_batch_shell_trap_it(
    name: str, output_dir: Path
) -> None:
    script = 'trap "echo got TERM; exit 0" TERM; echo started; sleep 120 & wait'
    output = f"{output_dir}/%x-%j.out"
    first = slurm_job(
        name=name, wrap=script, wait_started=True, timeout=30, time="3", mem="16M", output=output
    )
    assert first["output_path"] == f"{output_dir}/{name}-{first['job_id']}.out"
    successor = submit_successor(name)
    wait_for_output = time.monotonic() + 10
    while "started" not in Path(first["output_path"]).read_text() and time.monotonic() < wait_for_output:
        time.sleep(0.2)

    stopped = slurm_job(
        name=name, state="absent", signal="TERM", batch_only=True, wait_ended=True, timeout=30
    )
    assert stopped["changed"] is True
    assert [argv[1:] for argv in stopped["cmd"]] == [
        [successor],
        ["--signal=TERM", "--batch", first["job_id"]],
    ]
    assert alive(name) == {}
    # slurmstepd notes the scancel in the output ("*** JOB ... CANCELLED AT ..."); the trap ran all the same.
    assert [line for line in Path(first["output_path"]).read_text().splitlines() if "***" not in line] == [
        "started",
        "got TERM",
    ]
    assert queue(name) == {first["job_id"]: "COMPLETED", successor: "CANCELLED"}


def test_an_array_is_one_job_with_several_tasks(name: str) -> None:
    array = slurm_job(name=name, wrap="sleep 120", array="0-3", partition="RTXA6000", gres="gpu:1", **SMALL)
    assert array["changed"] is True
    assert sorted(array["job_ids"]) == [f"{array['job_id']}_{task}" for task in range(4)]
    assert slurm_job(name=name, wrap="sleep 120", array="0-3", **SMALL)["changed"] is False
    gone = slurm_job(name=name, state="absent")
    assert sorted(gone["job_ids"]) == sorted(array["job_ids"])
    assert alive(name) == {}


def test_a_finished_job_is_reported_and_present_submits_anew(name: str) -> None:
    failed = slurm_job(name=name, wrap="exit 3", **SMALL)
    wait_for(name, failed["job_id"], {"FAILED"})

    would = slurm_job(check=True, name=name, wrap="exit 3", **SMALL)
    assert would["changed"] is True
    assert would["last_finished"] == {
        "job_id": failed["job_id"],
        "state": "FAILED",
        "exit_code": "3:0",
        "end_time": would["last_finished"]["end_time"],
        "node": "localhost",
        "partition": "batch",
        "output_path": "/dev/null",
        "source": "squeue",
    }
    status = slurm_job(name=name, state="absent")
    assert (status["changed"], status["last_finished"]["job_id"]) == (False, failed["job_id"])
    again = slurm_job(name=name, wrap="exit 3", **SMALL)
    assert again["changed"] is True
    assert again["job_id"] != failed["job_id"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            {"partition": "RTXA600"},
            "partition: partition 'RTXA600' does not exist on this cluster (partitions: batch, RTXA6000)",
        ),
        (
            {"partition": "RTXA6000", "gres": "gpu:v100:1"},
            "gres: partition RTXA6000 has no gpu of type 'v100' (it offers: gpu:rtxa6000:4)",
        ),
        (
            {"partition": "RTXA6000", "gres": "gpu:5"},
            "gres: 'gpu:5' asks for 5 per node, but nodes of partition RTXA6000 have at most 4 "
            "(it offers: gpu:rtxa6000:4)",
        ),
        ({"gres": "gpu=1"}, "gres: 'gpu=1' is not a GRES request; use NAME[:TYPE][:COUNT]"),
        (
            {"time": "1-00:00:30"},
            "time: '1-00:00:30' is over the limit of partition batch (MaxTime=1-00:00:00)",
        ),
        ({"slurm_bin_dir": "/nonexistent"}, "slurm_bin_dir: '/nonexistent' holds no executable sbatch"),
        ({"extra_args": ["--export=TOKEN=x"]}, "extra_args: '--export=TOKEN=x' is refused: variables passed"),
    ],
    ids=["unknown-partition", "gres-type", "gres-count", "gres-syntax", "walltime", "no-sbatch", "export"],
)
def test_wrong_options_fail_before_anything_is_submitted(
    name: str, args: dict[str, Any], message: str
) -> None:
    result = slurm_job(name=name, wrap="sleep 120", **dict(SMALL, **args))
    assert result.get("failed") is True, result
    assert result["msg"].startswith(message), result["msg"]
    assert result["changed"] is False
    assert queue(name) == {}


def test_states_cancel_the_queued_successor_then_kill_the_running_job(name: str) -> None:
    first = slurm_job(name=name, wrap="sleep 120", wait_started=True, timeout=30, **SMALL)
    successor = submit_successor(name)

    queued = slurm_job(name=name, state="absent", states=["PENDING"])
    assert (queued["changed"], queued["cmd"][0][1:]) == (True, [successor])
    assert alive(name) == {first["job_id"]: "RUNNING"}

    killed = slurm_job(
        name=name, state="absent", states=["RUNNING"], signal="KILL", full=True, wait_ended=True, timeout=60
    )
    assert killed["cmd"][0][1:] == ["--signal=KILL", "--full", first["job_id"]]
    assert alive(name) == {}
    assert queue(name)[first["job_id"]] in {"CANCELLED", "FAILED"}
    assert slurm_job(name=name, state="absent", states=["RUNNING"])["changed"] is False


def test_job_ids_kill_one_task_of_an_array(name: str) -> None:
    array = slurm_job(name=name, wrap="sleep 120", array="0-1", wait_started=True, timeout=30, **SMALL)
    for task in array["job_ids"]:
        wait_for(name, task, {"RUNNING"})
    task = f"{array['job_id']}_1"
    killed = slurm_job(name=name, state="absent", job_ids=[task], signal="KILL", full=True, wait_ended=True)
    assert (killed["changed"], killed["job_ids"]) == (True, [task])
    assert alive(name) == {f"{array['job_id']}_0": "RUNNING"}


def test_wait_ended_with_present_returns_the_final_state(name: str) -> None:
    failed = slurm_job(name=name, wrap="exit 3", wait_ended=True, timeout=60, **SMALL)
    assert (failed["changed"], failed["state"], failed["job_ids"]) == (True, "FAILED", [failed["job_id"]])
    assert queue(name) == {failed["job_id"]: "FAILED"}


def test_wrong_choices_of_jobs_fail_naming_the_option(name: str) -> None:
    result = slurm_job(name=name, state="absent", signal="KILL", full=True, batch_only=True)
    assert result.get("failed") is True
    assert result["msg"].startswith("full: and batch_only exclude each other")
    assert (result["option"], result["changed"]) == ("full", False)
