"""fill_array: an array that lost a task gets it back, on squeue output captured on the testbed.

squeue_array_lost_a_task.txt: an array of 2 GPU tasks (fx-fill) whose task 1 was killed with
`scancel --signal=KILL --full`, and its --dependency=singleton successor, pending.
"""

from __future__ import annotations

from typing import Any

import pytest
from ansible_collections.han.infra.plugins.module_utils.slurm import (
    format_array_indexes,
    parse_array_indexes,
    parse_squeue,
    parse_walltime,
)
from ansible_collections.han.infra.plugins.module_utils.slurm_ensure import (
    JobControl,
    Slurm,
    plan_commands,
    plan_fill,
)
from ansible_collections.han.infra.plugins.module_utils.slurm_request import JobRequest, OptionError

from tests.unit.plugins.module_utils.test_slurm_ensure import COMMANDS, Replay, fixture

LOST = parse_squeue(fixture("squeue_array_lost_a_task.txt"))
ALIVE = [job for job in LOST if job.state in ("RUNNING", "PENDING")]
RUNNING_TASK = next(job for job in LOST if job.state == "RUNNING")
FULL_ARRAY = parse_squeue(fixture("squeue_array.txt"))  # 0 and 1 running, 2 and 3 waiting for a GPU


def request(**params: Any) -> JobRequest:
    params = {"name": "fx-fill", "wrap": "sleep 600", "array": "0-1", "fill_array": True, **params}
    return JobRequest(params)


def test_the_lost_task_is_submitted_again_with_the_walltime_its_siblings_have_left() -> None:
    [argv] = plan_commands(request(time="10:00"), ALIVE, COMMANDS)
    left = parse_walltime(RUNNING_TASK.time_left)
    assert left is not None
    assert "--array=1" in argv
    assert [arg for arg in argv if arg.startswith("--time=")] == [f"--time={RUNNING_TASK.time_left}"]
    assert argv[-1] == "--wrap=sleep 600"


def test_without_fill_array_a_half_dead_array_counts_as_present() -> None:
    assert plan_commands(request(fill_array=False), ALIVE, COMMANDS) == []


def test_a_task_waiting_for_resources_is_there_and_one_held_by_a_dependency_is_not() -> None:
    alive = [job for job in FULL_ARRAY if job.state in ("RUNNING", "PENDING")]
    assert plan_fill(request(array="0-3", time="10:00"), alive) is None
    successor_only = [job for job in ALIVE if job.state == "PENDING"]
    assert successor_only, "the fixture holds the pending successor"
    assert all(job.reason == "Dependency" for job in successor_only)
    assert plan_fill(request(time="10:00"), successor_only) is None  # no task runs: nothing to fill


def test_nothing_is_filled_when_little_walltime_is_left() -> None:
    alive = [job for job in FULL_ARRAY if job.state == "RUNNING"]  # 4:53 left, below 5 minutes
    assert plan_fill(request(array="0-3", time="10:00"), alive) is None


def test_the_filler_never_asks_for_more_than_the_task_does() -> None:
    fill = plan_fill(request(time="2"), ALIVE)  # two minutes: less than the siblings have left
    assert fill == {"array": "1", "time": "2:00"}


def test_the_module_submits_the_filler_and_says_it_changed_something() -> None:
    replay = Replay(fixture("squeue_array_lost_a_task.txt"), sbatch="459\n")
    control = JobControl(Slurm(replay, COMMANDS), request(time="10:00", partition="RTXA6000"), "pegasus")
    result, warnings = control.run(check_mode=False)
    assert result["changed"] is True
    [sbatch] = replay.ran("sbatch")
    assert "--array=1" in sbatch
    assert f"--time={RUNNING_TASK.time_left}" in sbatch
    assert warnings == []
    again = Replay(fixture("squeue_array_lost_a_task.txt"))
    result, _warnings = JobControl(Slurm(again, COMMANDS), request(), "pegasus").run(check_mode=True)
    assert result["changed"] is True
    assert again.ran("sbatch") == []


def test_fill_array_needs_array() -> None:
    with pytest.raises(OptionError, match="fill_array: needs array"):
        JobRequest({"name": "fx-fill", "wrap": "true", "fill_array": True})


@pytest.mark.parametrize(
    ("text", "indexes"),
    [
        ("0-3", {0, 1, 2, 3}),
        ("1,3,5", {1, 3, 5}),
        ("0-15:4", {0, 4, 8, 12}),
        ("0-3%2", {0, 1, 2, 3}),
        ("[2-3%2]", {2, 3}),
        ("7", {7}),
    ],
)
def test_array_indexes_are_read_as_sbatch_and_squeue_write_them(text: str, indexes: set[int]) -> None:
    assert parse_array_indexes(text) == indexes


@pytest.mark.parametrize("text", ["", "a", "3-1", "0-3:0", "0-99999999999", "1,,2"])
def test_impossible_array_indexes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"array indexes|at most"):
        parse_array_indexes(text)


@pytest.mark.parametrize(
    ("indexes", "text"), [([0, 1, 2, 5], "0-2,5"), ([3], "3"), ([4, 2, 3, 9, 10], "2-4,9-10")]
)
def test_array_indexes_are_written_as_short_as_sbatch_reads_them(indexes: list[int], text: str) -> None:
    assert format_array_indexes(indexes) == text
    assert parse_array_indexes(text) == set(indexes)


def test_an_impossible_array_option_is_refused_naming_it() -> None:
    with pytest.raises(OptionError, match=r"^array: "):
        JobRequest({"name": "fx-fill", "wrap": "true", "array": "5-1"})
