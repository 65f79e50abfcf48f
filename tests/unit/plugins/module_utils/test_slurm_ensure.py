"""Deciding and acting, on Slurm output captured on the testbed: what runs, what is returned, what is refused."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.han.infra.plugins.module_utils.slurm import FINAL_STATES, parse_squeue
from ansible_collections.han.infra.plugins.module_utils.slurm_ensure import (
    JobControl,
    Slurm,
    SlurmError,
    plan_commands,
    required_commands,
)
from ansible_collections.han.infra.plugins.module_utils.slurm_request import JobRequest, OptionError

FIXTURES = Path(__file__).parent / "fixtures"
COMMANDS = {
    name: f"/usr/bin/{name}" for name in ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "sacct")
}
NO_SACCT = {name: path for name, path in COMMANDS.items() if name != "sacct"}


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def lines(name: str, *job_ids: str) -> str:
    """The lines of a captured squeue output that are about these jobs, as squeue printed them."""
    return "".join(line for line in fixture(name).splitlines(keepends=True) if line.split("|")[0] in job_ids)


CHAIN = parse_squeue(fixture("squeue_running_and_singleton_successor.txt"))
RUNNING_JOB = next(job for job in CHAIN if job.state == "RUNNING")
RUNNING = RUNNING_JOB.job_id
SUCCESSOR = next(job.job_id for job in CHAIN if job.state == "PENDING")
ARRAY = parse_squeue(fixture("squeue_array.txt"))
ARRAY_ID = ARRAY[0].array_job_id
HISTORY = parse_squeue(fixture("squeue_finished.txt"))
LAST_FINISHED = max(HISTORY, key=lambda job: int(job.job_id))


class Replay:
    """Slurm's `run`: answers with output captured on the testbed and keeps every argv it was given."""

    def __init__(self, *squeue: str, sbatch: str = "", scancel_stderr: str = "", sacct: str = "") -> None:
        self.squeue = list(squeue) or [""]  # one output per squeue call; the last one repeats
        self.sbatch = sbatch
        self.scancel_stderr = scancel_stderr
        self.sacct = sacct
        self.records = {
            RUNNING: "scontrol_job_running.txt",
            SUCCESSOR: "scontrol_job_pending.txt",
            LAST_FINISHED.job_id: "scontrol_job_cancelled.txt",
            f"{ARRAY_ID}_0": "scontrol_job_array_task.txt",
        }
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(argv)
        answer: Any = getattr(self, "_" + os.path.basename(argv[0]))
        return answer(argv)  # type: ignore[no-any-return]

    def _squeue(self, _argv: list[str]) -> tuple[int, str, str]:
        return 0, self.squeue.pop(0) if len(self.squeue) > 1 else self.squeue[0], ""

    def _scontrol(self, argv: list[str]) -> tuple[int, str, str]:
        if argv[1:] == ["--oneliner", "show", "partition"]:
            return 0, fixture("scontrol_partitions.txt"), ""
        record = self.records.get(argv[-1])
        return (
            (0, fixture(record), "") if record else (1, "", "slurm_load_jobs error: Invalid job id specified")
        )

    def _sinfo(self, argv: list[str]) -> tuple[int, str, str]:
        return 0, fixture(f"sinfo_gres_{argv[2].split('=')[1]}.txt"), ""

    def _sbatch(self, _argv: list[str]) -> tuple[int, str, str]:
        return (0, self.sbatch, "") if self.sbatch else (1, "", "sbatch: error: Batch job submission failed")

    def _scancel(self, _argv: list[str]) -> tuple[int, str, str]:
        return int(bool(self.scancel_stderr)), "", self.scancel_stderr

    def _sacct(self, _argv: list[str]) -> tuple[int, str, str]:
        return (0, self.sacct, "") if self.sacct else (1, "", fixture("sacct_completion_as_user_stderr.txt"))

    def ran(self, command: str) -> list[list[str]]:
        return [argv[1:] for argv in self.calls if os.path.basename(argv[0]) == command]


def request(**params: Any) -> JobRequest:
    params.setdefault("name", "fx-chain")
    if params.get("state", "present") == "present":
        params.setdefault("wrap", "sleep 300")
    return JobRequest(params)


def run(replay: Replay, check_mode: bool = False, commands: dict[str, str] = COMMANDS, **params: Any):  # type: ignore[no-untyped-def]
    clock = iter(range(0, 10_000, 5))
    control = JobControl(
        Slurm(replay, commands), request(**params), "pegasus", lambda _s: None, lambda: next(clock)
    )
    return control.run(check_mode)


# -- the decision ---------------------------------------------------------------------------------------------


def alive(*states: str) -> list[Any]:
    return [job for job in CHAIN if job.state in states]


SBATCH = ["/usr/bin/sbatch", "--parsable", "--job-name=fx-chain", "--wrap=sleep 300"]


@pytest.mark.parametrize(
    ("state", "queued", "planned"),
    [
        ("present", [], [SBATCH]),
        ("present", ["PENDING"], []),
        ("present", ["RUNNING"], []),
        ("present", ["RUNNING", "PENDING"], []),
        ("absent", [], []),
        ("absent", ["PENDING"], [["/usr/bin/scancel", SUCCESSOR]]),
        ("absent", ["RUNNING"], [["/usr/bin/scancel", RUNNING]]),
        ("absent", ["RUNNING", "PENDING"], [["/usr/bin/scancel", RUNNING, SUCCESSOR]]),
    ],
    ids=lambda value: (
        "-".join(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else None
    ),
)
def test_what_would_change(state: str, queued: list[str], planned: list[list[str]]) -> None:
    jobs = sorted(alive(*queued), key=lambda job: int(job.job_id))
    assert plan_commands(request(state=state), jobs, COMMANDS) == planned


def test_a_signal_reaches_started_jobs_and_queued_ones_are_cancelled() -> None:
    jobs = sorted(CHAIN, key=lambda job: int(job.job_id))
    assert plan_commands(request(state="absent", signal="TERM"), jobs, COMMANDS) == [
        ["/usr/bin/scancel", SUCCESSOR],
        ["/usr/bin/scancel", "--signal=TERM", RUNNING],
    ]


def test_a_batch_only_signal_to_an_array() -> None:
    assert plan_commands(request(state="absent", signal="USR1", batch_only=True), ARRAY, COMMANDS) == [
        ["/usr/bin/scancel", f"{ARRAY_ID}_2", f"{ARRAY_ID}_3"],
        ["/usr/bin/scancel", "--signal=USR1", "--batch", f"{ARRAY_ID}_0", f"{ARRAY_ID}_1"],
    ]


def test_required_commands() -> None:
    assert required_commands(request()) == ["sbatch", "squeue", "scontrol"]
    assert required_commands(request(gres="gpu:1")) == ["sbatch", "squeue", "scontrol", "sinfo"]
    assert required_commands(request(state="absent")) == ["squeue", "scontrol", "scancel"]


# -- present --------------------------------------------------------------------------------------------------


def test_present_submits_when_no_job_of_that_name_is_alive() -> None:
    replay = Replay("", lines("squeue_running_and_singleton_successor.txt", RUNNING), sbatch=f"{RUNNING}\n")
    result, warnings = run(replay, time="5", commands=NO_SACCT)
    assert result == {
        "changed": True,
        "cmd": [["/usr/bin/sbatch", "--parsable", "--job-name=fx-chain", "--time=5", "--wrap=sleep 300"]],
        "job_id": RUNNING,
        "job_ids": [RUNNING],
        "state": "RUNNING",
        "node": "localhost",
        "time_left": RUNNING_JOB.time_left,
        "partition": "batch",
        "output_path": f"/tmp/han-slurm-fixtures/fx-chain-{RUNNING}.out",
        "differs": [],
        "last_finished": {},
    }
    assert warnings == []
    assert len(replay.ran("sbatch")) == 1


def test_present_in_check_mode_answers_without_submitting() -> None:
    replay = Replay("")
    result, _warnings = run(replay, check_mode=True)
    assert (result["changed"], result["cmd"], result["job_id"], result["job_ids"]) == (True, [SBATCH], "", [])
    assert replay.ran("sbatch") == []


def test_present_leaves_a_running_job_and_its_successor_alone() -> None:
    replay = Replay(fixture("squeue_running_and_singleton_successor.txt"))
    result, warnings = run(replay, time="5:00")
    assert result["changed"] is False
    assert result["cmd"] == []
    assert result["job_id"] == RUNNING
    assert result["job_ids"] == [RUNNING, SUCCESSOR]
    assert (result["state"], result["node"], result["partition"]) == ("RUNNING", "localhost", "batch")
    assert result["output_path"] == f"/tmp/han-slurm-fixtures/fx-chain-{RUNNING}.out"
    assert (result["differs"], warnings) == ([], [])
    assert replay.ran("sbatch") == []


def test_present_reports_how_the_job_found_differs() -> None:
    replay = Replay(fixture("squeue_running_and_singleton_successor.txt"))
    result, warnings = run(replay, partition="RTXA6000", time="10", gres="gpu:1")
    assert result["changed"] is False
    assert result["differs"] == ["partition", "time", "gres"]
    assert warnings == [
        f"job {RUNNING} (fx-chain) has partition=batch where the task asks for RTXA6000; it is left as it is, "
        "since jobs are identified by name",
        f"job {RUNNING} (fx-chain) has time=5:00 where the task asks for 10; it is left as it is, since jobs are "
        "identified by name",
        f"job {RUNNING} (fx-chain) has gres=N/A where the task asks for gpu:1; it is left as it is, since jobs "
        "are identified by name",
    ]


def test_present_sees_no_difference_in_the_same_request() -> None:
    replay = Replay(fixture("squeue_array.txt"))
    result, warnings = run(
        replay, name="fx-array", partition="RTXA6000", time="4:30", gres="gpu:1", array="0-3"
    )
    assert (result["changed"], result["differs"], warnings) == (False, [], [])
    assert result["job_id"] == ARRAY_ID
    assert sorted(result["job_ids"]) == [f"{ARRAY_ID}_{task}" for task in range(4)]
    assert result["output_path"] == f"/tmp/han-slurm-fixtures/fx-array-{ARRAY_ID}_0.out"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"partition": "gpu"}, "partition: partition 'gpu' does not exist on this cluster"),
        (
            {"time": "2-00:00:00"},
            "time: '2-00:00:00' is over the limit of partition batch (MaxTime=1-00:00:00)",
        ),
        (
            {"partition": "RTXA6000", "gres": "gpu:a100:1"},
            "gres: partition RTXA6000 has no gpu of type 'a100'",
        ),
    ],
)
def test_present_checks_the_cluster_before_submitting(params: dict[str, Any], message: str) -> None:
    replay = Replay("", sbatch="1\n")
    with pytest.raises(OptionError, match=f"^{re.escape(message)}"):
        run(replay, **params)
    assert replay.ran("sbatch") == []


def test_a_failing_sbatch_is_reported_with_its_error() -> None:
    with pytest.raises(SlurmError) as raised:
        run(Replay(""))
    assert str(raised.value) == (
        "/usr/bin/sbatch --parsable --job-name=fx-chain --wrap=sleep 300 failed (exit 1): "
        "sbatch: error: Batch job submission failed"
    )


def test_wait_started_polls_until_the_job_runs() -> None:
    pending = lines("squeue_running_and_singleton_successor.txt", SUCCESSOR)
    running = lines("squeue_after_batch_signal.txt", SUCCESSOR)
    replay = Replay("", pending, pending, running, sbatch=f"{SUCCESSOR}\n")
    result, _warnings = run(replay, wait_started=True, commands=NO_SACCT)
    assert (result["job_id"], result["state"]) == (SUCCESSOR, "RUNNING")
    assert len(replay.ran("squeue")) == 5  # the query, three polls, the description


def test_wait_started_gives_up_after_the_timeout_and_says_why() -> None:
    pending = lines("squeue_running_and_singleton_successor.txt", SUCCESSOR)
    with pytest.raises(SlurmError) as raised:
        run(Replay("", pending, sbatch=f"{SUCCESSOR}\n"), wait_started=True, timeout=20, commands=NO_SACCT)
    assert str(raised.value) == (
        f"timeout: job {SUCCESSOR} is still PENDING (reason: Dependency) after 20 s of wait_started; "
        "it stays queued"
    )
    assert (raised.value.result["changed"], raised.value.result["job_id"]) == (True, SUCCESSOR)


# -- absent ---------------------------------------------------------------------------------------------------


def test_absent_cancels_every_task_of_an_array() -> None:
    replay = Replay(fixture("squeue_array.txt"), fixture("squeue_array_cancelled.txt"))
    result, _warnings = run(replay, state="absent", name="fx-array")
    tasks = [job.job_id for job in sorted(ARRAY, key=lambda job: int(job.array_task_id))]
    assert replay.ran("scancel") == [tasks]
    assert (result["changed"], result["job_ids"], result["job_id"]) == (True, tasks, ARRAY_ID)
    assert (result["state"], result["time_left"]) == ("CANCELLED", "")


def test_absent_in_check_mode_cancels_nothing() -> None:
    replay = Replay(fixture("squeue_running_and_singleton_successor.txt"))
    result, _warnings = run(replay, check_mode=True, state="absent", signal="TERM", batch_only=True)
    assert result["changed"] is True
    assert result["cmd"] == [
        ["/usr/bin/scancel", SUCCESSOR],
        ["/usr/bin/scancel", "--signal=TERM", "--batch", RUNNING],
    ]
    assert result["job_ids"] == [RUNNING, SUCCESSOR]
    assert replay.ran("scancel") == []


def test_absent_tolerates_jobs_that_ended_meanwhile() -> None:
    replay = Replay(fixture("squeue_running_and_singleton_successor.txt"), "")
    replay.scancel_stderr = fixture("scancel_signal_finished_stderr.txt")
    result, _warnings = run(replay, state="absent", signal="TERM")
    assert result["changed"] is True
    assert len(replay.ran("scancel")) == 2


def test_absent_fails_on_other_scancel_errors() -> None:
    replay = Replay(fixture("squeue_running_and_singleton_successor.txt"), "")
    replay.scancel_stderr = "scancel: error: Kill job error on job id 1: Access/permission denied\n"
    with pytest.raises(SlurmError, match="Access/permission denied"):
        run(replay, state="absent")


def test_wait_ended_polls_until_the_jobs_are_gone() -> None:
    chain = fixture("squeue_running_and_singleton_successor.txt")
    replay = Replay(chain, chain, chain, lines("squeue_after_batch_signal.txt", RUNNING))
    result, _warnings = run(replay, state="absent", signal="TERM", batch_only=True, wait_ended=True)
    assert (result["changed"], result["job_ids"]) == (True, [RUNNING, SUCCESSOR])
    assert (
        len(replay.ran("squeue")) == 6
    )  # the query, three polls, the look for late successors, the description


def test_wait_ended_also_stops_a_successor_queued_after_the_jobs_were_listed() -> None:
    # Listed: only 114 runs. By the time it has ended, the successor it queued at its start (115) runs too.
    after = fixture("squeue_after_batch_signal.txt")
    replay = Replay(lines("squeue_running_and_singleton_successor.txt", RUNNING), after, after, "")
    result, _warnings = run(replay, state="absent", signal="TERM", batch_only=True, wait_ended=True)
    assert result["job_ids"] == [RUNNING, SUCCESSOR]
    assert replay.ran("scancel") == [
        ["--signal=TERM", "--batch", RUNNING],
        ["--signal=TERM", "--batch", SUCCESSOR],
    ]


def test_wait_ended_gives_up_after_the_timeout() -> None:
    chain = fixture("squeue_running_and_singleton_successor.txt")
    with pytest.raises(SlurmError) as raised:
        run(Replay(chain), state="absent", signal="TERM", wait_ended=True, timeout=10)
    assert (
        str(raised.value) == f"timeout: job {RUNNING}, {SUCCESSOR} is still RUNNING after 10 s of wait_ended"
    )


# -- a job's final state --------------------------------------------------------------------------------------


def test_absent_with_nothing_alive_reports_how_the_last_job_ended() -> None:
    replay = Replay(fixture("squeue_finished.txt"))
    result, warnings = run(replay, state="absent", name="fx-history")
    assert (result["changed"], result["cmd"], result["job_ids"]) == (False, [], [])
    assert result["last_finished"] == {
        "job_id": LAST_FINISHED.job_id,
        "state": "CANCELLED",
        "exit_code": "0:15",
        "end_time": result["last_finished"]["end_time"],
        "node": "localhost",
        "partition": "batch",
        "output_path": f"/tmp/han-slurm-fixtures/fx-history-{LAST_FINISHED.job_id}.out",
        "source": "squeue",
    }
    assert result["last_finished"]["end_time"].startswith("2026-")
    assert warnings == []
    assert replay.ran("sacct") == []


def test_after_min_job_age_the_final_state_comes_from_job_completion_records() -> None:
    replay = Replay("", sbatch="100\n", sacct=fixture("sacct_completion.txt"))
    result, warnings = run(replay, check_mode=True, name="fx-history")
    assert result["changed"] is True  # a finished job does not count: present submits anew
    assert result["last_finished"] == {
        "job_id": LAST_FINISHED.job_id,
        "state": "CANCELLED",
        "exit_code": "0:0",
        "end_time": result["last_finished"]["end_time"],
        "node": "localhost",
        "partition": "batch",
        "output_path": "",
        "source": "sacct",
    }
    assert warnings == []


def test_unreadable_job_completion_records_are_a_warning() -> None:
    result, warnings = run(Replay(""), check_mode=True, name="fx-history")
    assert result["last_finished"] == {}
    assert warnings == [
        "sacct --completion cannot read job completion records (sacct: fatal: open /var/log/slurm/jobcomp.log: "
        "Permission denied), so last_finished covers only jobs that ended within Slurm's MinJobAge"
    ]


# -- choosing which jobs of a name to stop, and how -----------------------------------------------------------


def test_states_cancels_the_queued_successor_and_leaves_the_running_job() -> None:
    replay = Replay(fixture("squeue_running_and_singleton_successor.txt"))
    result, _warnings = run(replay, state="absent", states=["pending"])
    assert replay.ran("scancel") == [[SUCCESSOR]]
    assert (result["changed"], result["job_ids"]) == (True, [SUCCESSOR])


def test_a_kill_of_running_jobs_only_signals_every_step() -> None:
    replay = Replay(fixture("squeue_running_and_singleton_successor.txt"))
    result, _warnings = run(replay, state="absent", states=["RUNNING"], signal="KILL", full=True)
    assert replay.ran("scancel") == [["--signal=KILL", "--full", RUNNING]]
    assert result["job_ids"] == [RUNNING]


def test_job_ids_ask_squeue_for_those_jobs_only() -> None:
    task = f"{ARRAY_ID}_0"
    replay = Replay(lines("squeue_array.txt", task))
    result, _warnings = run(replay, state="absent", name="fx-array", job_ids=[task], signal="KILL", full=True)
    assert replay.ran("squeue")[0][-2] == f"--jobs={task}"
    assert replay.ran("scancel") == [["--signal=KILL", "--full", task]]
    assert result["job_ids"] == [task]


def test_a_job_id_slurm_no_longer_knows_is_no_job() -> None:
    replay = Replay("")
    replay._squeue = lambda _argv: (1, "", fixture("squeue_unknown_job_stderr.txt"))  # type: ignore[method-assign]
    result, _warnings = run(replay, state="absent", job_ids=["999999"], commands=NO_SACCT)
    assert (result["changed"], result["job_ids"], replay.ran("scancel")) == (False, [], [])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"state": "absent", "full": True}, "full: needs state=absent and signal"),
        ({"full": True}, "full: needs state=absent and signal"),
        (
            {"state": "absent", "signal": "KILL", "full": True, "batch_only": True},
            "full: and batch_only exclude each other",
        ),
        ({"job_ids": ["12"]}, "job_ids: is for state=absent"),
        ({"states": ["PENDING"]}, "states: is for state=absent"),
        ({"state": "absent", "job_ids": ["12;"]}, "job_ids: '12;' is not a job id"),
        ({"state": "absent", "job_ids": ["12_[1-3]"]}, "job_ids: '12_[1-3]' is not a job id"),
        ({"state": "absent", "states": ["RUNING"]}, "states: 'RUNING' is not a Slurm job state; use one of"),
    ],
)
def test_wrong_choices_of_jobs_are_refused_naming_the_option(params: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionError, match=f"^{re.escape(message)}"):
        request(**params)


# -- present, waiting for the final state ---------------------------------------------------------------------


def test_wait_ended_with_present_waits_for_the_final_state() -> None:
    running = lines("squeue_running_and_singleton_successor.txt", RUNNING)
    ended = lines("squeue_after_batch_signal.txt", RUNNING)
    replay = Replay("", running, running, ended, sbatch=f"{RUNNING}\n")
    result, _warnings = run(replay, wait_ended=True, commands=NO_SACCT)
    [final] = parse_squeue(ended)
    assert (result["changed"], result["job_id"], result["state"]) == (True, RUNNING, final.state)
    assert final.state in FINAL_STATES
    assert result["output_path"] == f"/tmp/han-slurm-fixtures/fx-chain-{RUNNING}.out"
    assert len(replay.ran("squeue")) == 5  # the query, three polls, the description


def test_wait_ended_with_present_gives_up_after_the_timeout_and_leaves_the_job() -> None:
    running = lines("squeue_running_and_singleton_successor.txt", RUNNING)
    replay = Replay("", running, sbatch=f"{RUNNING}\n")
    with pytest.raises(SlurmError) as raised:
        run(replay, wait_ended=True, timeout=20, commands=NO_SACCT)
    assert str(raised.value) == (
        f"timeout: job {RUNNING} is still RUNNING after 20 s of wait_ended; it is left as it is"
    )
    assert (raised.value.result["job_id"], raised.value.result["state"]) == (RUNNING, "RUNNING")
    assert replay.ran("scancel") == []
