"""An elastic pool's file (han_worker/scaling/pool.py): every field read, every bad one refused naming it, and
the sbatch command it gives (the pool's name, its options, no exported environment, nothing secret)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from han_worker.private_files import write_private_json
from han_worker.scaling.policy import Failures
from han_worker.scaling.pool import PoolFileError, load_pool_file, parse_pool
from han_worker.scaling.scaler import ScalerState, StateFileError, load_state

FULL: dict[str, object] = {
    "job_name": "han-pose-workers",
    "queues": ["pose", "pose"],
    "script": "/home/pegasus/.han/worker/worker.sbatch",
    "sbatch": {
        "partition": "RTXA6000",
        "time": "1-00:00:00",
        "gres": "gpu:1",
        "cpus_per_task": 4,
        "mem": "16G",
        "signal": "B:TERM@300",
        "output": "/home/pegasus/.han/worker/logs/slurm-%j.out",
        "chdir": "/home/pegasus/.han/worker",
    },
    "slurm_bin_dir": "/opt/slurm/bin",
    "tick_seconds": 2,
    "limits": {
        "max_workers": 6,
        "min_workers": 1,
        "max_pending": 2,
        "horizon_seconds": 30,
        "max_failed_submissions": 4,
        "max_failed_starts": 2,
    },
}


def test_every_field_is_read_and_gives_one_sbatch_command() -> None:
    settings = parse_pool(json.loads(json.dumps(FULL)), "pool.json")
    assert (settings.pool.job_name, settings.pool.queues) == ("han-pose-workers", ("pose",))
    assert (settings.tick_seconds, settings.limits.max_workers, settings.limits.min_workers) == (2, 6, 1)
    assert (settings.limits.max_pending, settings.limits.horizon_seconds) == (2, 30)
    assert (settings.limits.max_failed_submissions, settings.limits.max_failed_starts) == (4, 2)
    assert settings.sbatch_argv() == [
        "/opt/slurm/bin/sbatch", "--parsable", "--job-name=han-pose-workers", "--partition=RTXA6000",
        "--time=1-00:00:00", "--gres=gpu:1", "--cpus-per-task=4", "--mem=16G", "--signal=B:TERM@300",
        "--output=/home/pegasus/.han/worker/logs/slurm-%j.out", "--chdir=/home/pegasus/.han/worker",
        "--export=NONE", "/home/pegasus/.han/worker/worker.sbatch",
    ]  # fmt: skip
    assert settings.slurm_program("squeue") == "/opt/slurm/bin/squeue"
    assert settings.gpus_per_job == 1


def test_the_least_a_pool_needs() -> None:
    settings = parse_pool({"job_name": "p", "queues": ["pose"], "script": "/s.sbatch",
                           "limits": {"max_workers": 2}}, "pool.json")  # fmt: skip
    assert settings.sbatch_argv() == ["sbatch", "--parsable", "--job-name=p", "--export=NONE", "/s.sbatch"]
    assert (settings.limits.max_pending, settings.limits.min_workers, settings.tick_seconds) == (1, 0, 5)
    assert settings.gpus_per_job == 0


@pytest.mark.parametrize(("gres", "gpus"), [("gpu:rtxa6000:2", 2), ("gpu:2,shard:8", 2), ("shard:1", 0)])
def test_the_gpus_a_worker_job_holds_come_from_its_gres(gres: str, gpus: int) -> None:
    settings = parse_pool({**json.loads(json.dumps(FULL)), "sbatch": {"gres": gres}}, "pool.json")
    assert settings.gpus_per_job == gpus


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"job_name": "my pool"}, "field 'job_name': 'my pool' may hold letters, digits"),
        ({"job_name": ""}, "field 'job_name' must not be empty"),
        ({"queues": []}, "field 'queues' must be a non-empty list of queue names"),
        ({"queues": "pose"}, "field 'queues' must be a non-empty list of queue names"),
        ({"script": "worker.sbatch"}, "field 'script': worker.sbatch is not an absolute path"),
        ({"tick_seconds": 0}, "field 'tick_seconds': 0 must be a finite number of seconds >= 0.5"),
        ({"colour": "red"}, "unknown field(s) colour"),
        ({"sbatch": {"partiton": "gpu"}}, "unknown field(s) sbatch.partiton"),
        ({"sbatch": {"time": "forever"}}, "field 'sbatch.time': 'forever' is not a Slurm time"),
        ({"sbatch": {"mem": "16G\n#SBATCH --x"}}, "field 'sbatch.mem' must be one line"),
        ({"sbatch": {"gres": "gpu:0"}}, "field 'sbatch.gres': 'gpu:0' is not a GRES request"),
        ({"sbatch": {"cpus_per_task": 0}}, "field 'sbatch.cpus_per_task': 0 is out of range 1-10000"),
        ({"limits": {}}, "field 'limits.max_workers' is missing"),
        (
            {"limits": {"max_workers": 2, "min_workers": 3}},
            "field 'limits.min_workers': 3 must be within 0-2",
        ),
        (
            {"limits": {"max_workers": 2, "max_pending": 0}},
            "field 'limits.max_pending': 0 must be at least 1",
        ),
        ({"limits": {"max_workers": "4"}}, "field 'limits.max_workers' must be an integer"),
    ],
)
def test_a_bad_field_is_refused_naming_it(change: dict[str, object], message: str) -> None:
    with pytest.raises(PoolFileError) as refused:
        parse_pool({**json.loads(json.dumps(FULL)), **change}, "/home/p/.han/worker/pool.json")
    assert str(refused.value).startswith("/home/p/.han/worker/pool.json: ")
    assert message in str(refused.value)


def test_a_pool_file_others_can_write_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(FULL))
    os.chmod(path, 0o666)
    with pytest.raises(PoolFileError, match=r"pool\.json"):
        load_pool_file(path)


def test_the_scalers_state_survives_a_restart_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scaler" / "state.json"
    assert load_state(path) == ScalerState()  # none yet: nothing submitted, no failures
    state = ScalerState({"4711": 1000.5}, Failures(2, 1, 999.0, "sbatch: error: invalid partition"))
    write_private_json(path, state.to_dict())
    assert load_state(path) == state
    write_private_json(path, {"submitted": {"4711": "yesterday"}, "failures": {}})
    with pytest.raises(StateFileError, match=r"field 'submitted\.4711' must be a number of seconds"):
        load_state(path)
