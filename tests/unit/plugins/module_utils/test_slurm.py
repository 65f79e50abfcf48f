"""Slurm values and output, parsed; the outputs are real, captured on the testbed by capture_fixtures.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from ansible_collections.han.infra.plugins.module_utils.slurm import (
    ACTIVE_STATES,
    ENDING_STATES,
    FINAL_STATES,
    JOB_STATES,
    SQUEUE_FORMAT,
    WAITING_STATES,
    GresItem,
    Partition,
    QueuedJob,
    batch_script_argv,
    format_gres,
    format_walltime,
    has_started,
    is_alive,
    is_finished,
    job_facts,
    job_record_argv,
    job_sort_key,
    may_be_running,
    parse_gres,
    parse_key_values,
    parse_partitions,
    parse_sacct,
    parse_scontrol,
    parse_sinfo_gres,
    parse_squeue,
    parse_walltime,
    sacct_user,
    squeue_argv,
)

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90 * 60),  # minutes
        ("5:00", 5 * 60),  # minutes:seconds, as squeue prints short limits
        ("1:30", 90),
        ("12:00:00", 12 * 3600),
        ("23:59:58", 86398),
        ("2-12", (2 * 24 + 12) * 3600),  # days-hours
        ("1-2:30", 26 * 3600 + 30 * 60),  # days-hours:minutes
        ("1-00:00:00", 86400),
        ("7-23:59:59", 7 * 86400 + 86399),
        (" 10 ", 600),
        ("UNLIMITED", None),
        ("infinite", None),
        ("0", None),  # sbatch: a limit of zero means no limit
        ("0:00:00", None),
    ],
)
def test_walltimes_in_every_form_slurm_takes(text: str, seconds: int | None) -> None:
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "12h",
            "'12h' is not a Slurm time; use MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED",
        ),
        ("", "'' is not a Slurm time"),
        ("-5", "'-5' is not a Slurm time"),
        ("1:2:3:4", "'1:2:3:4' is not a Slurm time"),
        ("1-", "'1-' is not a Slurm time"),
        ("NOT_SET", "'NOT_SET' is not a Slurm time"),
        ("1:60", "'1:60' has a field of 60 where at most 59 fits"),
        ("1:60:00", "'1:60:00' has a field of 60 where at most 59 fits"),
        ("1-24:00:00", "'1-24:00:00' has a field of 24 where at most 23 fits"),
        ("1-1:00:60", "'1-1:00:60' has a field of 60 where at most 59 fits"),
    ],
)
def test_walltimes_that_are_not_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        parse_walltime(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "UNLIMITED"), (300, "5:00"), (43200, "12:00:00"), (86400, "1-00:00:00"), (90061, "1-01:01:01")],
)
def test_walltimes_are_spelled_as_slurm_does(seconds: int | None, text: str) -> None:
    assert format_walltime(seconds) == text
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("gpu", [GresItem("gpu", None, 1)]),
        ("gpu:2", [GresItem("gpu", None, 2)]),
        ("gpu:rtxa6000:1", [GresItem("gpu", "rtxa6000", 1)]),
        ("gpu:a100_3g.20gb:1", [GresItem("gpu", "a100_3g.20gb", 1)]),
        ("gpu:rtxa6000", [GresItem("gpu", "rtxa6000", 1)]),
        ("gpu:1,mps:100", [GresItem("gpu", None, 1), GresItem("mps", None, 100)]),
        ("bandwidth:lustre:4G", [GresItem("bandwidth", "lustre", 4 * 1024**3)]),
    ],
)
def test_gres_requests(text: str, items: list[GresItem]) -> None:
    assert parse_gres(text) == items


@pytest.mark.parametrize(
    "text", ["gpu=1", "gpu:0", "gpu:rtxa6000:1:2", ":1", "gpu::1", "gpu:1,", "", "1gpu:1", "gpu 1"]
)
def test_gres_requests_that_are_not(text: str) -> None:
    message = f"'{text}' is not a GRES request; use NAME[:TYPE][:COUNT] such as gpu:1 or gpu:rtxa6000:1"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        parse_gres(text)


def test_gres_are_spelled_back() -> None:
    assert format_gres(parse_gres("gpu:rtxa6000:2,gpu")) == "gpu:rtxa6000:2,gpu:1"


def test_squeue_a_running_job_and_its_singleton_successor() -> None:
    assert parse_squeue(fixture("squeue_running_and_singleton_successor.txt")) == [
        QueuedJob(
            job_id="65",
            array_job_id="65",
            array_task_id="N/A",
            state="PENDING",
            reason="Dependency",
            partition="batch",
            node="",
            time_used="0:00",
            time_left="5:00",
            time_limit="5:00",
            submit_time="2026-12-06T00:54:04",
            start_time="N/A",
            end_time="N/A",
            tres_per_node="N/A",
            user="pegasus",
            name="fx-chain",
        ),
        QueuedJob(
            job_id="64",
            array_job_id="64",
            array_task_id="N/A",
            state="RUNNING",
            reason="None",
            partition="batch",
            node="localhost",
            time_used="0:07",
            time_left="4:53",
            time_limit="5:00",
            submit_time="2026-12-06T00:54:04",
            start_time="2026-12-06T00:54:05",
            end_time="2026-12-06T00:59:05",  # the walltime end while it runs
            tres_per_node="N/A",
            user="pegasus",
            name="fx-chain",
        ),
    ]


def test_squeue_an_array_lists_each_task() -> None:
    tasks = parse_squeue(fixture("squeue_array.txt"))
    assert [(task.job_id, task.array_job_id, task.array_task_id, task.state) for task in tasks] == [
        ("66_2", "66", "2", "PENDING"),
        ("66_3", "66", "3", "PENDING"),
        ("66_0", "66", "0", "RUNNING"),
        ("66_1", "66", "1", "RUNNING"),
    ]
    assert {task.tres_per_node for task in tasks} == {"gres:gpu:1"}
    # Pending tasks: the start Slurm expects (when the running ones reach their walltime).
    assert (tasks[0].start_time, tasks[0].end_time) == ("2026-12-06T01:04:00", "2026-12-06T01:09:00")


def test_squeue_finished_jobs_within_min_job_age() -> None:
    jobs = parse_squeue(fixture("squeue_finished.txt"))
    assert [(job.job_id, job.state, job.reason, job.node, job.end_time) for job in jobs] == [
        ("69", "CANCELLED", "BeginTime", "", "2026-12-06T00:54:08"),  # cancelled while pending
        ("72", "CANCELLED", "None", "localhost", "2026-12-06T00:54:10"),  # cancelled while running
        ("67", "COMPLETED", "None", "localhost", "2026-12-06T00:54:05"),
        ("68", "FAILED", "NonZeroExitCode", "localhost", "2026-12-06T00:54:05"),
    ]
    assert not any(is_alive(job) for job in jobs)
    assert all(is_finished(job) and has_started(job) for job in jobs)


def test_squeue_a_timed_out_job_has_no_time_left() -> None:
    [job] = parse_squeue(fixture("squeue_timeout.txt"))
    assert (job.state, job.reason, job.time_used, job.time_left, job.time_limit) == (
        "TIMEOUT",
        "TimeLimit",
        "1:00",
        "0:00",
        "1:00",
    )
    assert not is_alive(job)


def test_squeue_nothing() -> None:
    assert fixture("squeue_none.txt") == ""
    assert parse_squeue("") == []


def test_squeue_a_name_with_the_delimiter_stays_whole() -> None:
    line = fixture("squeue_timeout.txt").replace("fx-timeout", "odd|name")
    assert parse_squeue(line)[0].name == "odd|name"


def test_squeue_output_in_another_format_is_refused() -> None:
    with pytest.raises(ValueError, match="squeue printed a line this module cannot read"):
        parse_squeue("             JOBID PARTITION     NAME     USER ST       TIME  NODES NODELIST(REASON)\n")


def test_alive_started_and_finished() -> None:
    pending, running = parse_squeue(fixture("squeue_running_and_singleton_successor.txt"))
    assert (is_alive(pending), has_started(pending), is_finished(pending)) == (True, False, False)
    assert (is_alive(running), has_started(running), is_finished(running)) == (True, True, False)
    # A state this list does not know counts as alive: better no duplicate than a tidy answer.
    assert is_alive(running._replace(state="A_STATE_OF_A_NEWER_SLURM"))
    # A cancelled job completes its processes for up to KillWait: no longer the job a task is about, and not
    # finished either (its final state is not known yet).
    completing = running._replace(state="COMPLETING")
    assert (is_alive(completing), has_started(completing), is_finished(completing)) == (False, True, False)
    held = pending._replace(state="RESV_DEL_HOLD")
    assert (is_alive(held), has_started(held)) == (True, False)


@pytest.mark.parametrize(
    ("state", "running"),
    [
        ("PENDING", False),
        ("CONFIGURING", True),
        ("RUNNING", True),
        ("SUSPENDED", True),
        ("COMPLETING", True),  # its processes are being killed: they may still answer
        ("COMPLETED", False),
        ("CANCELLED", False),
        ("TIMEOUT", False),
        ("A_STATE_OF_A_NEWER_SLURM", True),
    ],
)
def test_may_be_running(state: str, running: bool) -> None:
    [job] = parse_squeue(fixture("squeue_timeout.txt"))
    assert may_be_running(job._replace(state=state)) is running


def test_the_state_classes_do_not_overlap() -> None:
    classes = [WAITING_STATES, ACTIVE_STATES, ENDING_STATES, FINAL_STATES]
    assert sum(len(states) for states in classes) == len(JOB_STATES)


def test_job_facts_are_what_a_module_returns() -> None:
    pending, running = parse_squeue(fixture("squeue_running_and_singleton_successor.txt"))
    facts = job_facts(pending)
    assert (facts["array_task_id"], facts["start_time"], facts["end_time"], facts["tres_per_node"]) == (
        "",
        "",
        "",
        "",
    )
    assert (facts["alive"], facts["started"], facts["finished"]) == (True, False, False)
    assert job_facts(running)["time_left"] == "4:53"
    [timed_out] = parse_squeue(fixture("squeue_timeout.txt"))
    assert (job_facts(timed_out)["time_left"], job_facts(timed_out)["finished"]) == ("", True)


def test_the_argv_of_the_queries() -> None:
    assert squeue_argv("/usr/bin/squeue", user="pegasus", name="fx-chain") == [
        "/usr/bin/squeue",
        "--noheader",
        "--array",
        "--states=all",
        "--user=pegasus",
        "--name=fx-chain",
        f"--format={SQUEUE_FORMAT}",
    ]
    assert squeue_argv("squeue", job_ids=["66_0", "64"])[-2:] == [
        "--jobs=66_0,64",
        f"--format={SQUEUE_FORMAT}",
    ]
    assert job_record_argv("scontrol", "64") == ["scontrol", "--oneliner", "show", "job", "64"]
    assert job_record_argv("scontrol", "64", details=True) == [
        "scontrol",
        "--oneliner",
        "--details",
        "--details",
        "show",
        "job",
        "64",
    ]
    assert batch_script_argv("scontrol", "64") == ["scontrol", "write", "batch_script", "64", "-"]


def test_squeue_json_of_slurm_22_05_ignores_the_filters() -> None:
    """Why the parsers read text: `squeue --json --name=fx-none` printed every job of the queue."""
    document = json.loads(fixture("squeue_json_name_fx-none.json"))
    assert document["meta"]["Slurm"]["release"] == "22.05.8"
    assert {job["name"] for job in document["jobs"]} == {"fx-chain", "fx-array", "fx-history", "fx-timeout"}


def test_scontrol_records_of_jobs() -> None:
    running = parse_scontrol(fixture("scontrol_job_running.txt"))[0]
    assert (running["JobId"], running["JobState"], running["NodeList"]) == ("64", "RUNNING", "localhost")
    assert running["StdOut"] == "/tmp/han-slurm-fixtures/fx-chain-64.out"
    assert running["TRES"] == "cpu=1,mem=16M,node=1,billing=1"
    assert running["ReqB:S:C:T"] == "0:0:*:*"
    assert running["Power"] == ""
    pending = parse_scontrol(fixture("scontrol_job_pending.txt"))[0]
    assert (pending["JobState"], pending["Dependency"], pending["NodeList"]) == (
        "PENDING",
        "singleton(unfulfilled)",
        "",
    )
    failed = parse_scontrol(fixture("scontrol_job_failed.txt"))[0]
    assert (failed["JobState"], failed["Reason"], failed["ExitCode"]) == ("FAILED", "NonZeroExitCode", "3:0")
    cancelled = parse_scontrol(fixture("scontrol_job_cancelled.txt"))[0]
    assert (cancelled["JobState"], cancelled["ExitCode"]) == ("CANCELLED", "0:15")


def test_scontrol_details_stay_one_record() -> None:
    """`scontrol --oneliner -dd show job` (what the hardening check scans): the allocation joins the line."""
    [record] = parse_scontrol(fixture("scontrol_job_running_details.txt"))
    assert (record["JobId"], record["JobName"], record["WorkDir"]) == ("64", "fx-chain", "/work/slurm")
    assert (record["Nodes"], record["CPU_IDs"]) == ("localhost", "1")


def test_scontrol_records_of_array_tasks() -> None:
    task = parse_scontrol(fixture("scontrol_job_array_task.txt"))[0]
    assert (task["JobId"], task["ArrayJobId"], task["ArrayTaskId"], task["TresPerNode"]) == (
        "70",
        "66",
        "0",
        "gres:gpu:1",
    )
    pending = parse_scontrol(fixture("scontrol_job_array_pending.txt"))[0]
    assert (pending["JobState"], pending["StdOut"]) == (
        "PENDING",
        "/tmp/han-slurm-fixtures/fx-array-66_3.out",
    )


def test_scontrol_values_may_hold_spaces() -> None:
    record = parse_key_values("JobId=7 Comment=two words WorkDir=/home/a b/c StdOut=/x.out")
    assert record == {"JobId": "7", "Comment": "two words", "WorkDir": "/home/a b/c", "StdOut": "/x.out"}


def test_partitions() -> None:
    assert parse_partitions(fixture("scontrol_partitions.txt")) == {
        "batch": Partition("batch", True, 86400, "UP"),
        "RTXA6000": Partition("RTXA6000", False, 86400, "UP"),
    }


def test_sinfo_gres() -> None:
    assert parse_sinfo_gres(fixture("sinfo_gres_RTXA6000.txt")) == [[GresItem("gpu", "rtxa6000", 2)]]
    assert parse_sinfo_gres("gpu:a100:4(S:0-1),shard:8\n(null)\n") == [
        [GresItem("gpu", "a100", 4), GresItem("shard", None, 8)]
    ]


def test_sacct_completion_records() -> None:
    records = parse_sacct(fixture("sacct_completion.txt"))
    assert len(records) == len(fixture("sacct_completion.txt").splitlines())
    history = [record for record in records if record["JobName"] == "fx-history"][-4:]
    assert [(r["JobID"], r["State"], r["ExitCode"], r["NodeList"]) for r in history] == [
        ("68", "FAILED", "3:0", "localhost"),
        ("67", "COMPLETED", "0:0", "localhost"),
        ("69", "CANCELLED", "0:0", "(null)"),
        ("72", "CANCELLED", "0:0", "localhost"),
    ]
    assert history[0]["End"] == "2026-12-06T00:54:05"
    assert sacct_user(history[0]["User"]) == "pegasus"


def test_job_ids_sort_numerically_with_array_tasks() -> None:
    ids = ["77_3", "9", "77_[5-7]", "100", "77_0", "83"]
    assert sorted(ids, key=job_sort_key) == ["9", "77_0", "77_3", "77_[5-7]", "83", "100"]
