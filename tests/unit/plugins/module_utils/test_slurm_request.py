"""A task's options: each checked alone, then against the cluster's partitions and GRES, then as sbatch argv."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.han.infra.plugins.module_utils.slurm import (
    GresItem,
    parse_partitions,
    parse_sinfo_gres,
)
from ansible_collections.han.infra.plugins.module_utils.slurm_request import (
    JobRequest,
    OptionError,
    check_gres,
    check_partition,
    find_commands,
    sbatch_argv,
)

FIXTURES = Path(__file__).parent / "fixtures"
PARTITIONS = parse_partitions((FIXTURES / "scontrol_partitions.txt").read_text())
RTXA6000_GRES = parse_sinfo_gres((FIXTURES / "sinfo_gres_RTXA6000.txt").read_text())


def request(**params: Any) -> JobRequest:
    params.setdefault("name", "han-control-plane")
    if params.get("state", "present") == "present" and "script" not in params:
        params.setdefault("wrap", "sleep 60")
    return JobRequest(params)


def option_error(**params: Any) -> str:
    with pytest.raises(OptionError) as raised:
        request(**params)
    return str(raised.value)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"name": "has space"}, "name: 'has space' is not valid; expected letters, digits and . _ : + @ -"),
        ({"name": "a,b"}, "name: 'a,b' is not valid; expected"),
        (
            {"wrap": "true", "script": "/bin/true"},
            "script: give either script (a batch script on the target) or wrap",
        ),
        ({"wrap": ""}, "script: give either script (a batch script on the target) or wrap (a command)"),
        (
            {"script": "/nonexistent/job.sbatch"},
            "script: '/nonexistent/job.sbatch' is not a file on the target",
        ),
        ({"time": "12h"}, "time: '12h' is not a Slurm time; use MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM"),
        ({"time": "1:60:00"}, "time: '1:60:00' has a field of 60 where at most 59 fits"),
        ({"gres": "gpu=1"}, "gres: 'gpu=1' is not a GRES request; use NAME[:TYPE][:COUNT] such as gpu:1"),
        ({"mem": "4GB"}, "mem: '4GB' is not valid; expected megabytes, or a number with a unit K, M, G or T"),
        (
            {"array": "0-3,"},
            "array: '0-3,' is not valid; expected indexes such as 0-3, 1,3,5, 0-15:4 or 0-15%4",
        ),
        ({"dependency": " "}, "dependency: is empty; leave it out or give e.g. singleton or afterok:123"),
        ({"cpus_per_task": 0}, "cpus_per_task: must be 1 or more (got 0)"),
        ({"timeout": -5}, "timeout: must be 1 second or more (got -5)"),
        (
            {"signal": "TERM@120:B"},
            "signal: 'TERM@120:B' is not an sbatch --signal; use [R:|B:]SIGNAL[@SECONDS]",
        ),
        (
            {"state": "absent", "signal": "B:TERM@120"},
            "signal: 'B:TERM@120' is not a signal for scancel; with state=absent give a name or number",
        ),
        (
            {"state": "absent", "batch_only": True},
            "batch_only: needs signal: it sends that signal to the batch shell",
        ),
    ],
)
def test_each_wrong_option_is_named_with_what_is_wrong(params: dict[str, Any], message: str) -> None:
    assert option_error(**params).startswith(message)


@pytest.mark.parametrize(
    ("arg", "why"),
    [
        ("--export=TOKEN=s3cret", "variables passed with sbatch --export are stored with the job"),
        ("--export=ALL", "variables passed with sbatch --export are stored with the job"),
        ("--expo=TOKEN=s3cret", "variables passed with sbatch --export are stored with the job"),
        ("--export-file=/tmp/env", "this module never adds variables to a job's environment"),
        ("--wrap=true", "it sets what the option wrap sets; use that option"),
        ("--job-name=other", "it sets what the option name sets"),
        ("-J", "it sets what the option name sets"),
        ("-pRTXA6000", "it sets what the option partition sets"),
        ("--part=RTXA6000", "it sets what the option partition sets"),
        ("-t", "it sets what the option time sets"),
        ("--gres=gpu:1", "it sets what the option gres sets"),
        ("--parsable", "the module adds it and reads the job id from it"),
    ],
)
def test_extra_args_refuse_what_the_module_sets_and_export(arg: str, why: str) -> None:
    assert option_error(extra_args=["--begin=now", arg]).startswith(f"extra_args: '{arg}' is refused: {why}")


@pytest.mark.parametrize(
    "arg",
    ["--begin=now+1hour", "--mem-per-cpu=1G", "--time-min=30", "--gres-flags=enforce-binding", "-N", "2"],
)
def test_extra_args_pass_other_sbatch_options(arg: str) -> None:
    assert request(extra_args=[arg]).extra_args == [arg]


def test_absent_ignores_the_submission_options() -> None:
    absent = request(
        state="absent", wrap=None, time="not a time", gres="not gres", signal="USR1", batch_only=True
    )
    assert (absent.signal, absent.batch_only, absent.options["signal"]) == ("USR1", True, None)


def test_the_default_partition_is_checked_when_none_is_given() -> None:
    assert check_partition(request(), PARTITIONS) == "batch"
    assert check_partition(request(partition="RTXA6000"), PARTITIONS) == "RTXA6000"


def test_an_unknown_partition_is_named_with_those_that_exist() -> None:
    with pytest.raises(OptionError) as raised:
        check_partition(request(partition="RTXA600"), PARTITIONS)
    assert str(raised.value) == (
        "partition: partition 'RTXA600' does not exist on this cluster (partitions: batch, RTXA6000)"
    )


@pytest.mark.parametrize("time", ["1-00:00:00", "24:00:00", "1440", "23:59:30", "1:00"])
def test_a_walltime_within_the_partition_limit_passes(time: str) -> None:
    assert check_partition(request(time=time), PARTITIONS) == "batch"


@pytest.mark.parametrize("time", ["1-00:00:30", "2-00:00:00", "1441", "UNLIMITED", "0"])
def test_a_walltime_over_the_partition_limit_fails(time: str) -> None:
    with pytest.raises(OptionError) as raised:
        check_partition(request(time=time, partition="RTXA6000"), PARTITIONS)
    assert str(raised.value) == f"time: '{time}' is over the limit of partition RTXA6000 (MaxTime=1-00:00:00)"


@pytest.mark.parametrize("gres", ["gpu", "gpu:2", "gpu:rtxa6000:1", "gpu:rtxa6000:2"])
def test_gres_that_the_nodes_offer_passes(gres: str) -> None:
    check_gres(request(gres=gres).gres, "RTXA6000", RTXA6000_GRES)


@pytest.mark.parametrize(
    ("gres", "problem"),
    [
        ("tpu:1", "partition RTXA6000 has no GRES named 'tpu' (it offers: gpu:rtxa6000:2)"),
        ("gpu:v100:1", "partition RTXA6000 has no gpu of type 'v100' (it offers: gpu:rtxa6000:2)"),
        (
            "gpu:3",
            "'gpu:3' asks for 3 per node, but nodes of partition RTXA6000 have at most 2 (it offers: gpu:rtxa6000:2)",
        ),
        ("gpu:1,mps:10", "partition RTXA6000 has no GRES named 'mps' (it offers: gpu:rtxa6000:2)"),
    ],
)
def test_gres_the_nodes_do_not_offer_fails(gres: str, problem: str) -> None:
    with pytest.raises(OptionError) as raised:
        check_gres(request(gres=gres).gres, "RTXA6000", RTXA6000_GRES)
    assert str(raised.value) == f"gres: {problem}"


def test_no_gres_at_all_is_said_so() -> None:
    with pytest.raises(OptionError) as raised:
        check_gres([GresItem("gpu", None, 1)], "cpu-only", parse_sinfo_gres("(null)\n"))
    assert str(raised.value) == "gres: partition cpu-only has no GRES named 'gpu' (it offers: none)"


def test_sbatch_argv_of_a_command() -> None:
    assert sbatch_argv("/usr/bin/sbatch", request(name="probe", wrap="echo $(hostname)")) == [
        "/usr/bin/sbatch",
        "--parsable",
        "--job-name=probe",
        "--wrap=echo $(hostname)",
    ]


def test_an_empty_gres_asks_for_none_rather_than_passing_an_empty_flag() -> None:
    # sbatch refuses --gres= ("Invalid Trackable RESource (TRES) specification"); roles pass "" for no GPU.
    asked = request(name="probe", wrap="true", gres="")
    assert asked.gres == []
    assert sbatch_argv("/usr/bin/sbatch", asked) == [
        "/usr/bin/sbatch",
        "--parsable",
        "--job-name=probe",
        "--wrap=true",
    ]


def test_sbatch_argv_with_every_option(tmp_path: Path) -> None:
    script = tmp_path / "job.sbatch"
    script.write_text("#!/bin/sh\n")
    full = request(
        script=str(script), partition="RTXA6000", time="12:00:00", gres="gpu:1", cpus_per_task=4, mem="4G",
        output="/logs/%x-%j.out", chdir="/work", dependency="singleton", signal="B:TERM@120", array="0-3%2",
        export="NONE", extra_args=["--begin=now+1hour", "--qos", "normal"],
    )  # fmt: skip
    assert sbatch_argv("/opt/slurm/bin/sbatch", full) == [
        "/opt/slurm/bin/sbatch",
        "--parsable",
        "--job-name=han-control-plane",
        "--partition=RTXA6000",
        "--time=12:00:00",
        "--gres=gpu:1",
        "--cpus-per-task=4",
        "--mem=4G",
        "--output=/logs/%x-%j.out",
        "--chdir=/work",
        "--dependency=singleton",
        "--signal=B:TERM@120",
        "--array=0-3%2",
        "--export=NONE",
        "--begin=now+1hour",
        "--qos",
        "normal",
        str(script),
    ]


def make_commands(directory: Path, *names: str, mode: int = 0o755) -> None:
    directory.mkdir(exist_ok=True)
    for name in names:
        (directory / name).write_text("#!/bin/sh\n")
        (directory / name).chmod(mode)


def test_commands_are_found_on_path_in_order(tmp_path: Path) -> None:
    make_commands(tmp_path / "a", "squeue")
    make_commands(tmp_path / "b", "sbatch", "squeue")
    search_path = os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")])
    assert find_commands(["sbatch", "squeue"], None, search_path) == {
        "sbatch": str(tmp_path / "b" / "sbatch"),
        "squeue": str(tmp_path / "a" / "squeue"),
    }


def test_a_command_missing_from_path_names_slurm_bin_dir(tmp_path: Path) -> None:
    make_commands(tmp_path / "bin", "sbatch", mode=0o644)  # not executable: does not count
    with pytest.raises(OptionError) as raised:
        find_commands(["sbatch"], None, str(tmp_path / "bin"))
    assert str(raised.value) == (
        f"slurm_bin_dir: not set, and sbatch is not on the target's PATH ({tmp_path / 'bin'}); install Slurm's "
        "client commands or set slurm_bin_dir to the directory that holds them"
    )


def test_slurm_bin_dir_is_the_only_place_looked_at_when_set(tmp_path: Path) -> None:
    make_commands(tmp_path / "path", "sbatch")
    with pytest.raises(OptionError) as raised:
        find_commands(["sbatch"], str(tmp_path / "opt"), str(tmp_path / "path"))
    assert str(raised.value) == f"slurm_bin_dir: '{tmp_path / 'opt'}' holds no executable sbatch"
