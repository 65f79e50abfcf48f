"""Runbook step 5 on the testbed: `failover_drill.yml`, through the ansible-runner example CI uses.

The first test runs every scenario once (the 'make test runs the drill' of issue 6) and reads the reports;
the others are short: scenarios that cannot apply to an inventory, a scenario that fails and says why, and
bad input. The Windows worker of the testbed is the STAND-IN (a Linux worker with the Windows role's
config, recorded as windows-standin): the reports say so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, run_ansible

RUNNER_EXAMPLE = REPO / "scripts" / "ci" / "run_drill.py"


def run_example(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess[str]:
    """The example with its own --timeout, so that a drill that hangs still ends with its output kept."""
    return subprocess.run([sys.executable, str(RUNNER_EXAMPLE), "--timeout", str(timeout), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout + 120, check=False)  # fmt: skip


def only_report(directory: Path, suffix: str) -> Path:
    [report] = sorted(directory.glob(f"drill-*{suffix}"))
    return report


def scenarios(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {scenario["id"]: scenario for scenario in report["scenarios"]}


@pytest.fixture(scope="module")
def bootstrapped() -> Iterator[None]:
    """This checkout's env on Pegasus and the Mac (the stand-in's play builds its own). Afterwards the
    workers the drill started are stopped (they hold both of the testbed's GPUs); the control planes stay."""
    result = run_ansible("ansible-playbook", "playbooks/bootstrap.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    yield
    for play in ("playbooks/pegasus_worker.yml", "playbooks/windows_standin.yml"):
        stopped = run_ansible("ansible-playbook", play, "-e", "state=stopped")
        assert stopped.returncode == 0, stopped.stdout[-3000:]


def test_every_scenario_passes_through_ansible_runner(bootstrapped: None, tmp_path: Path):
    # Scenario 7 on a 2-minute walltime, signalled 30 s before (the bench's rollover does the same): a minute
    # less than the drill's defaults (3 minutes, 60 s) for the same check.
    result = run_example(
        "--reports-dir", str(tmp_path), "--walltime-minutes", "2", "--walltime-warning", "30"
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "-- Scenario 1: Pegasus pose worker does a pose job" in result.stdout, "progress as it goes"
    report = json.loads(only_report(tmp_path, ".json").read_text())
    assert report["passed"] is True
    assert report["windows_is_standin"] is True
    by_id = scenarios(report)
    assert sorted(by_id) == list(range(1, 10))
    assert {scenario["status"] for scenario in by_id.values()} == {"passed"}

    # The observed routing, from the ledger.
    assert by_id[1]["observed"]["pose"]["platform"] == "linux"
    assert by_id[1]["observed"]["pose"]["control_plane"] == "pegasus"
    assert by_id[1]["observed"]["slurm_partition"] == "RTXA6000"
    assert by_id[2]["observed"]["pose"]["platform"] == "windows-standin"
    assert by_id[2]["observed"]["pose"]["control_plane"] == "mac"
    assert by_id[3]["observed"]["pose"]["control_plane"] == "mac"
    assert by_id[3]["observed"]["pose"]["platform"] == "linux"
    assert by_id[4]["observed"]["training"]["platform"] == "windows-standin"
    assert by_id[4]["observed"]["training"]["attempts"] == 1
    assert by_id[5]["observed"]["in_flight_job_on_pegasus"]["status"] == "succeeded"
    assert by_id[5]["observed"]["new_job_via_mac"]["control_plane"] == "mac"
    assert by_id[6]["observed"]["job"]["attempts"] == 2
    assert by_id[6]["observed"]["job"]["worker_id"] != by_id[6]["observed"]["killed_worker"]
    first, second = by_id[7]["observed"]["epochs"]
    assert second > first
    assert by_id[7]["observed"]["after"]["control_plane_epoch"] > first
    assert "stale" in by_id[8]["observed"]["refusal"]
    # Burst and drain: the elastic pool within its limits at every squeue sample, each job done once, and
    # gone by itself once the queue was empty; the scaler says why it does nothing.
    burst, pool, scaler = (by_id[9]["observed"][part] for part in ("burst", "pool", "scaler"))
    assert burst["succeeded_once"] == burst["jobs"] == 12
    assert 1 <= pool["most_alive"] <= pool["max_workers"]
    assert pool["most_waiting"] <= pool["max_pending"]
    assert set(pool["ended"].values()) == {"COMPLETED"}
    assert pool["left_after_last_job_s"] <= pool["idle_timeout"] + 15
    assert scaler["state"] == "scaling"
    assert scaler["reason"].startswith("no backlog"), scaler

    markdown = only_report(tmp_path, ".md").read_text()
    assert "Result: **PASSED**" in markdown
    assert "STAND-IN" in markdown
    suite = ET.parse(only_report(tmp_path, ".xml")).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("9", "0")


def inventory_lacking_parts(tmp_path: Path) -> Path:
    """The testbed's inventory with no Windows worker at all (neither a real one nor the stand-in), and with
    Pegasus's workers launched as processes (pegasus_worker_launch_mode direct), so no elastic pool."""
    inventory = tmp_path / "inventory"
    shutil.copytree(REPO / "inventories" / "local", inventory)
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    del hosts["all"]["children"]["windows_standin"]
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    with (inventory / "group_vars" / "pegasus.yml").open("a") as pegasus:
        pegasus.write("pegasus_worker_launch_mode: direct\n")
    return inventory


def test_scenarios_whose_parts_are_absent_are_not_applicable_not_passed(bootstrapped: None, tmp_path: Path):
    result = run_example("--inventory", str(inventory_lacking_parts(tmp_path)), "--scenarios", "2,4,9",
                         "--reports-dir", str(tmp_path / "reports"))  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    by_id = scenarios(json.loads(only_report(tmp_path / "reports", ".json").read_text()))
    assert by_id[2]["status"] == by_id[4]["status"] == "not_applicable"
    assert "windows" in by_id[4]["error"]
    assert by_id[9]["status"] == "not_applicable"
    assert "pegasus_slurm" in by_id[9]["error"], "an elastic pool needs Slurm to launch the workers"
    assert by_id[1]["status"] == "not_selected"
    assert by_id[2]["logs"] == [], "nothing ran"
    suite = ET.parse(only_report(tmp_path / "reports", ".xml")).getroot().find("testsuite")
    assert suite is not None
    assert suite.get("skipped") == "9"


def test_a_failing_scenario_says_what_was_expected_observed_and_where_the_logs_are(
    bootstrapped: None, tmp_path: Path
):
    # A setup that cannot work (no workers asked for) must fail the scenario, not the drill's bookkeeping.
    result = run_ansible("ansible-playbook", "playbooks/failover_drill.yml", "-e", "drill_scenarios=1",
                         "-e", "drill_worker_count=0", "-e", f"drill_reports_dir={tmp_path}")  # fmt: skip
    assert result.returncode != 0
    assert "Scenario 1 FAILED" in result.stdout
    assert "Expected: Done by a Slurm-launched Linux worker" in result.stdout
    assert "pegasus_worker_count must be 1 or more" in result.stdout
    report = json.loads(only_report(tmp_path, ".json").read_text())
    failed = scenarios(report)[1]
    assert failed["status"] == "failed"
    assert report["passed"] is False
    assert failed["logs"], "the failing play's log is named"
    assert all(Path(log).is_file() for log in failed["logs"])
    assert "pegasus_worker_count must be 1 or more" in Path(failed["logs"][-1]).read_text()
    suite = ET.parse(only_report(tmp_path, ".xml")).getroot().find("testsuite")
    assert suite is not None
    assert suite.get("failures") == "1"


def test_a_job_that_never_finishes_fails_its_scenario_with_the_control_planes_account(
    bootstrapped: None, tmp_path: Path
):
    # Workers that serve only noop leave the pose job in its queue, as workers busy with an earlier run's jobs do.
    result = run_ansible("ansible-playbook", "playbooks/failover_drill.yml", "-e", "drill_scenarios=1",
                         "-e", "drill_worker_queues=noop", "-e", "drill_job_timeout=5",
                         "-e", f"drill_reports_dir={tmp_path}")  # fmt: skip
    assert result.returncode != 0
    failed = scenarios(json.loads(only_report(tmp_path, ".json").read_text()))[1]
    assert failed["status"] == "failed"
    assert "The pegasus control plane's status then:" in failed["error"], failed["error"]
    error = " ".join(failed["error"].split())
    job = re.search(r"job ([0-9a-f-]{36}) has not finished after 5s", error)
    assert job, error
    # The account shows why: the job waits in its queue, and the workers serve another one. (The job stays
    # queued on the testbed's Pegasus: the next pose workers do it.)
    assert re.search(r"pose: [1-9][0-9]* waiting, 0 in flight", error), error
    assert f"{job.group(1)} pose queued attempts 0" in error, error
    assert "queues noop" in error, error


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("drill_job_timeout=soon", "drill_job_timeout must be a whole number of at least 1 (got 'soon')"),
        ("drill_walltime_minutes=0", "drill_walltime_minutes must be a whole number of at least 1 (got '0')"),
    ],
)
def test_bad_drill_settings_are_refused_naming_them(setting: str, message: str, tmp_path: Path):
    result = run_ansible("ansible-playbook", "playbooks/failover_drill.yml", "-e", setting,
                         "-e", f"drill_reports_dir={tmp_path}")  # fmt: skip
    assert result.returncode != 0
    assert message in result.stdout, result.stdout[-3000:]
    assert "Run the scenarios" not in result.stdout


@pytest.mark.parametrize("asked", ["10", "1,x", "0"])
def test_unknown_scenarios_are_refused_naming_drill_scenarios(asked: str, tmp_path: Path):
    result = run_ansible("ansible-playbook", "playbooks/failover_drill.yml", "-e", f"drill_scenarios={asked}",
                         "-e", f"drill_reports_dir={tmp_path}")  # fmt: skip
    assert result.returncode != 0
    assert "drill_scenarios takes 'all' or scenario numbers" in result.stdout
    assert not list(tmp_path.glob("drill-*.json"))
