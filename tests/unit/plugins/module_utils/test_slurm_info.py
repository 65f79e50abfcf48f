"""slurm_job_info's logic on Slurm output captured on the testbed: which jobs, and what is said of each."""

from __future__ import annotations

import re
from typing import Any

import pytest
from ansible_collections.han.infra.plugins.module_utils.slurm_ensure import Slurm, SlurmError
from ansible_collections.han.infra.plugins.module_utils.slurm_info import InfoRequest, job_infos
from ansible_collections.han.infra.plugins.module_utils.slurm_request import OptionError

from tests.unit.plugins.module_utils.test_slurm_ensure import ARRAY_ID, COMMANDS, RUNNING, Replay, fixture

FIELDS = {
    "job_id", "array_job_id", "array_task_id", "state", "reason", "partition", "node", "time_used",
    "time_left", "time_limit", "submit_time", "start_time", "end_time", "tres_per_node", "user", "name",
    "alive", "started", "finished",
}  # fmt: skip


def infos(replay: Replay, **params: Any) -> list[dict[str, Any]]:
    return job_infos(Slurm(replay, COMMANDS), InfoRequest(params), "pegasus")  # type: ignore[no-any-return]


def test_a_running_job_and_its_queued_successor() -> None:
    replay = Replay(fixture("squeue_running_and_singleton_successor.txt"))
    running, pending = infos(replay, name="fx-chain")
    assert set(running) == FIELDS
    assert (running["job_id"], running["state"], running["node"], running["partition"]) == (
        RUNNING,
        "RUNNING",
        "localhost",
        "batch",
    )
    assert (running["alive"], running["started"], running["finished"]) == (True, True, False)
    assert running["time_left"]
    assert running["end_time"].startswith("20")
    assert (pending["state"], pending["reason"], pending["node"]) == ("PENDING", "Dependency", "")
    assert (pending["alive"], pending["started"], pending["finished"]) == (True, False, False)
    assert pending["array_task_id"] == pending["tres_per_node"] == ""  # N/A as Slurm prints it
    assert replay.ran("squeue") == [
        [
            "--noheader",
            "--array",
            "--states=all",
            "--user=pegasus",
            "--name=fx-chain",
            "--format=%i|%F|%K|%T|%r|%P|%N|%M|%L|%l|%V|%S|%e|%b|%u|%j",
        ]
    ]


def test_finished_jobs_have_their_final_state_and_no_time_left() -> None:
    jobs = infos(Replay(fixture("squeue_finished.txt")), name="fx-history")
    assert {job["state"] for job in jobs} == {"CANCELLED", "COMPLETED", "FAILED"}
    assert all(not job["alive"] and job["finished"] and job["time_left"] == "" for job in jobs)


def test_states_narrow_the_list() -> None:
    replay = Replay(fixture("squeue_array.txt"))
    running = infos(replay, name="fx-array", states=["running"])
    assert [job["job_id"] for job in running] == [f"{ARRAY_ID}_0", f"{ARRAY_ID}_1"]
    assert {job["array_job_id"] for job in running} == {ARRAY_ID}
    assert {job["tres_per_node"] for job in running} == {"gres:gpu:1"}


def test_job_ids_without_a_name() -> None:
    replay = Replay(fixture("squeue_by_job_ids.txt"))
    jobs = infos(replay, job_ids=[f"{ARRAY_ID}_0", RUNNING])
    assert [job["job_id"] for job in jobs] == [RUNNING, f"{ARRAY_ID}_0"]
    assert [job["name"] for job in jobs] == ["fx-chain", "fx-array"]
    assert replay.ran("squeue")[0][-2] == f"--jobs={ARRAY_ID}_0,{RUNNING}"
    assert "--name" not in " ".join(replay.ran("squeue")[0])


def test_an_unknown_job_id_is_no_job_and_not_an_error() -> None:
    replay = Replay("")
    replay._squeue = lambda _argv: (1, "", fixture("squeue_unknown_job_stderr.txt"))  # type: ignore[method-assign]
    assert infos(replay, job_ids=["999999"]) == []


def test_another_squeue_failure_is_an_error() -> None:
    replay = Replay("")
    replay._squeue = lambda _argv: (1, "", "squeue: error: Invalid user: nobody\n")  # type: ignore[method-assign]
    with pytest.raises(SlurmError, match="Invalid user"):
        infos(replay, name="fx-chain")


def test_jobs_of_another_name_or_user_are_not_listed() -> None:
    # squeue filters by itself; the module checks again what squeue printed, as slurm_job does.
    chain = fixture("squeue_running_and_singleton_successor.txt")
    assert infos(Replay(chain), name="fx-other") == []
    assert job_infos(Slurm(Replay(chain), COMMANDS), InfoRequest({"name": "fx-chain"}), "operator") == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"name": "a name"}, "name: 'a name' is not valid"),
        ({"job_ids": ["12", "x"]}, "job_ids: 'x' is not a job id; use digits such as 4211, or 4211_3"),
        ({"states": ["RUNNING", "DONE"]}, "states: 'DONE' is not a Slurm job state; use one of BOOT_FAIL"),
    ],
)
def test_wrong_options_are_refused_naming_the_option(params: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionError, match=f"^{re.escape(message)}") as raised:
        InfoRequest(params)
    assert raised.value.option == message.split(":", maxsplit=1)[0]
