"""Role pegasus_worker in elastic mode (issue 20): the pool's file it writes is what ``han-worker scale`` reads
(parsed here by han_worker.scaling.pool itself), the worker's config leaves when idle, the registration with
the control plane is what its supervisor reads, the script runs the workers with nothing secret, and every bad setting is refused naming its variable."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from han_worker.config import parse_worker_config
from han_worker.control_plane.scalers import parse_registration
from han_worker.scaling.policy import Limits
from han_worker.scaling.pool import parse_pool
from tests.conftest import REPO
from tests.unit import role_templates

ROLE = REPO / "roles" / "pegasus_worker"
HOME = "/home/pegasus"
PLAY_VARIABLES: dict[str, Any] = dict(
    ansible_managed="Ansible managed",
    ansible_facts={"user_dir": HOME},
    pegasus_worker_control_plane_mode="pegasus",
    pegasus_worker_queues="pose",
    pegasus_worker_launch_mode="slurm",
    pegasus_worker_mac_host="",
    pegasus_worker_scaling="elastic",
)


def role_variables(**overrides: Any) -> dict[str, Any]:
    return role_templates.role_variables(ROLE, PLAY_VARIABLES, overrides)


def render(template: str, **overrides: Any) -> str:
    return role_templates.render(role_variables(**overrides), ROLE / "templates" / template)


def test_the_pool_file_is_what_han_worker_scale_reads() -> None:
    rendered = render("pool.json.j2", pegasus_worker_max=6, pegasus_worker_max_pending=2, pegasus_worker_min=1,
                      pegasus_worker_scaler_tick=3, pegasus_worker_scaler_horizon=30,
                      pegasus_worker_slurm_bin_dir="/opt/slurm/bin")  # fmt: skip
    settings = parse_pool(json.loads(rendered), "pool.json")
    assert settings.pool.job_name == "han-pose-worker"
    assert settings.pool.queues == ("pose",)
    assert settings.tick_seconds == 3
    assert settings.limits == Limits(
        max_workers=6, min_workers=1, max_pending=2, horizon_seconds=30.0, worker_walltime_seconds=12 * 3600
    )  # the worker jobs' walltime: the role's pegasus_worker_slurm_time, 12:00:00
    assert settings.sbatch_argv() == [
        "/opt/slurm/bin/sbatch", "--parsable", "--job-name=han-pose-worker", "--partition=RTXA6000",
        "--time=12:00:00", "--gres=gpu:1", "--cpus-per-task=4", "--mem=8G", "--signal=B:TERM@90",
        f"--output={HOME}/.han/worker/logs/slurm-%j.out", f"--chdir={HOME}/.han/worker", "--export=NONE",
        f"{HOME}/.han/worker/worker.sbatch",
    ]  # fmt: skip


def test_a_pool_without_gres_asks_for_none() -> None:
    settings = parse_pool(json.loads(render("pool.json.j2", pegasus_worker_slurm_gres="")), "pool.json")
    assert "gres" not in settings.sbatch
    assert settings.sbatch_argv()[0] == "sbatch"  # on the PATH


@pytest.mark.parametrize(("scaling", "idle_timeout"), [("elastic", 120.0), ("fixed", 0.0)])
def test_only_elastic_workers_leave_when_idle(scaling: str, idle_timeout: float) -> None:
    variables = role_variables(pegasus_worker_scaling=scaling, pegasus_worker_idle_timeout=120)
    document = role_templates.evaluate(variables, "_pegasus_worker_config")
    assert (
        parse_worker_config(json.loads(json.dumps(document)), "worker.json").idle_timeout_seconds
        == idle_timeout
    )


def bash_syntax(script: str, tmp_path: Path) -> None:
    path = tmp_path / "script.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_an_elastic_worker_job_queues_no_successor_the_scaler_replaces_it(tmp_path: Path) -> None:
    script = render("worker.sbatch.j2")
    bash_syntax(script, tmp_path)
    assert "sbatch" not in script
    assert script.rstrip().endswith(
        f"exec {HOME}/.han/env/bin/han-worker run --config={HOME}/.han/worker/config/worker.json --restart-crashed"
    )
    assert "--dependency=singleton" in render("worker.sbatch.j2", pegasus_worker_scaling="fixed")


def test_the_registration_is_what_the_control_planes_supervisor_reads() -> None:
    variables = role_variables()
    path = Path(role_templates.evaluate(variables, "_pegasus_worker_registration_file"))
    assert path == Path(f"{HOME}/.han/control-plane/scalers/han-pose-worker.json"), (
        "beside the endpoints file"
    )
    document = role_templates.evaluate(variables, "_pegasus_worker_registration | to_json")
    registration = parse_registration(json.loads(document), path)
    assert registration.name == "han-pose-worker"
    assert registration.argv(["han-worker"]) == [
        "han-worker", "scale", f"--config={HOME}/.han/worker/config/worker.json",
        f"--pool={HOME}/.han/worker/config/pool.json", f"--state={HOME}/.han/worker/run/scaler-state.json",
    ]  # fmt: skip
    assert registration.resume, "the pool's version"


def test_the_pool_version_changes_with_the_pool_and_only_with_it() -> None:
    def version(**overrides: Any) -> str:
        return str(
            role_templates.evaluate(role_variables(**overrides), "_pegasus_worker_registration.resume")
        )

    assert version() == version(pegasus_worker_idle_timeout=17), "the worker's config is not the pool's file"
    assert version() != version(pegasus_worker_slurm_partition="batch")
    assert version() != version(pegasus_worker_max=7)


def test_the_registration_follows_the_endpoints_file() -> None:
    variables = role_variables(
        pegasus_worker_endpoints_file="~/cp/endpoints.json", pegasus_worker_slurm_job_name="p"
    )
    path = role_templates.evaluate(variables, "_pegasus_worker_registration_file")
    assert path == f"{HOME}/cp/scalers/p.json"


def refused(**overrides: Any) -> list[str]:
    """The messages of the preflight's elastic checks that fail with these settings."""
    tasks = yaml.safe_load((ROLE / "tasks" / "preflight.yml").read_text())
    (task,) = [task for task in tasks if "elastic" in task["name"]]
    variables = role_variables(**overrides)
    messages = []
    for item in task["loop"]:
        checked = {key: role_templates.render_text(variables, value) for key, value in item.items()}
        if checked["ok"] != "True":
            messages.append(
                role_templates.render_text(
                    {**variables, "item": checked}, task["ansible.builtin.assert"]["fail_msg"]
                )
            )
    return messages


def test_the_defaults_pass_the_elastic_checks() -> None:
    assert refused() == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pegasus_worker_launch_mode": "direct"},
         "pegasus_worker_launch_mode must be slurm with pegasus_worker_scaling elastic (the scaler submits Slurm "
         "jobs) (got 'direct')."),
        ({"pegasus_worker_slurm_job_name": "han:pose"},
         "pegasus_worker_slurm_job_name allows letters, digits and ._- in elastic mode (the pool's job name) "
         "(got 'han:pose')."),
        ({"pegasus_worker_max": 0}, "pegasus_worker_max must be 1 or more (got 0)."),
        ({"pegasus_worker_min": 5}, "pegasus_worker_min must be within 0 and pegasus_worker_max (4) (got 5)."),
        ({"pegasus_worker_min": -1}, "pegasus_worker_min must be within 0 and pegasus_worker_max (4) (got -1)."),
        ({"pegasus_worker_max_pending": 0}, "pegasus_worker_max_pending must be 1 or more (got 0)."),
        ({"pegasus_worker_idle_timeout": 0},
         "pegasus_worker_idle_timeout must be 1 or more seconds (an elastic worker must leave when idle) (got 0)."),
        ({"pegasus_worker_scaler_tick": 301}, "pegasus_worker_scaler_tick must be 1 to 300 seconds (got 301)."),
        ({"pegasus_worker_scaler_horizon": 0}, "pegasus_worker_scaler_horizon must be 1 or more seconds (got 0)."),
        ({"pegasus_worker_max_failed_submissions": 0},
         "pegasus_worker_max_failed_submissions must be 1 or more (got 0)."),
        ({"pegasus_worker_max_failed_starts": 0}, "pegasus_worker_max_failed_starts must be 1 or more (got 0)."),
    ],
)  # fmt: skip
def test_a_bad_elastic_setting_is_refused_naming_its_variable(
    overrides: dict[str, Any], message: str
) -> None:
    assert refused(**overrides) == [message]


@pytest.mark.parametrize(("launch_mode", "scaling"), [("slurm", "elastic"), ("direct", "fixed")])
def test_elastic_is_the_default_where_slurm_launches_the_workers(launch_mode: str, scaling: str) -> None:
    """Since the elastic chaos round and the drill passed (issue 20); direct launch has no Slurm to submit to."""
    play = {name: value for name, value in PLAY_VARIABLES.items() if name != "pegasus_worker_scaling"}
    variables = role_templates.role_variables(ROLE, play, {"pegasus_worker_launch_mode": launch_mode})
    assert role_templates.evaluate(variables, "pegasus_worker_scaling") == scaling
    assert role_templates.evaluate(variables, "_pegasus_worker_elastic") == (scaling == "elastic")
