"""`make bench` in smoke mode: the suite runs end to end and writes a complete report.

Only the report's shape is checked (its sections, the machine's description, figures that are numbers):
benchmark figures are printed, never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = (
    pytest.mark.own_names
)  # the testbed under its own names: beside the inventory lane (tests/run_lanes.sh)

SECTIONS = ("dispatch", "endpoint_selection", "failover", "control_plane", "deploy", "pose", "chaos")
MACHINE = ("cpu_model", "cores", "memory_gib", "kernel", "python", "load_average_at_start", "packages")


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reports")


@pytest.fixture(scope="module")
def bench_report(reports: Path) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--smoke", "--reports-dir", str(reports)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    json_files, markdown_files = sorted(reports.glob("bench-*.json")), sorted(reports.glob("bench-*.md"))
    assert len(json_files) == 1, list(reports.iterdir())
    assert [path.stem for path in markdown_files] == [json_files[0].stem]
    document: dict[str, object] = json.loads(json_files[0].read_text())
    return document


def numbers(value: object) -> list[float]:
    """Every number inside a figures tree."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [number for item in value.values() for number in numbers(item)]
    if isinstance(value, list):
        return [number for item in value for number in numbers(item)]
    return []


def test_report_describes_the_machine(bench_report: dict[str, object]) -> None:
    machine = bench_report["machine"]
    assert isinstance(machine, dict)
    assert set(MACHINE) <= set(machine)
    packages = machine["packages"]
    assert isinstance(packages, dict)
    assert all(packages[name] for name in ("redis", "psycopg", "rq", "celery"))


@pytest.mark.parametrize("name", SECTIONS)
def test_report_has_the_section_with_figures(bench_report: dict[str, object], name: str) -> None:
    sections = bench_report["sections"]
    assert isinstance(sections, dict)
    section = sections[name]
    assert section["title"]
    assert section["explanation"]
    assert section["rows"]
    assert all(len(row) == len(section["columns"]) for row in section["rows"])
    assert numbers(section["figures"])


def test_dispatch_compares_three_systems(bench_report: dict[str, object]) -> None:
    sections = bench_report["sections"]
    assert isinstance(sections, dict)
    systems = sections["dispatch"]["figures"]["systems"]
    assert len(systems) == 3
    for per_count in systems.values():
        for figures in per_count.values():
            assert {"jobs_per_s", "p50_ms", "p99_ms"} <= set(figures)
            assert all(
                isinstance(figures[key]["median"], float) for key in ("jobs_per_s", "p50_ms", "p99_ms")
            )


def test_endpoint_selection_times_the_three_cases(bench_report: dict[str, object]) -> None:
    sections = bench_report["sections"]
    assert isinstance(sections, dict)
    cases = sections["endpoint_selection"]["figures"]["cases"]
    for case in ("healthy", "port closed", "black-holed"):
        assert {f"{case}, CLI", f"{case}, select()"} <= set(cases)
        assert isinstance(cases[f"{case}, CLI"]["ms"]["median"], float)


def section_figures(bench_report: dict[str, object], name: str) -> dict[str, object]:
    sections = bench_report["sections"]
    assert isinstance(sections, dict)
    figures = sections[name]["figures"]
    assert isinstance(figures, dict)
    return figures


def is_spread(value: object) -> bool:
    """A median (min-max) of numbers, as tests.bench.report.spread gives it."""
    keys = ("median", "min", "max")
    return isinstance(value, dict) and len(numbers([value.get(key) for key in keys])) == len(keys)


def test_failover_times_detection_fallback_and_return(bench_report: dict[str, object]) -> None:
    figures = section_figures(bench_report, "failover")
    assert numbers([figures["probe_interval_s"], figures["flap_threshold"], figures["goals_s"]])
    # Smoke runs the first way to stop Pegasus's Slurm job only: SIGKILL of every process.
    rounds = figures["stops"]["SIGKILL of every process"]  # type: ignore[index]
    for name in ("detect_s", "on_mac_s", "first_mac_job_s", "restart_s", "back_s", "first_pegasus_job_s"):
        assert is_spread(rounds[name]), name


def test_control_plane_times_a_cold_start_and_a_stop(bench_report: dict[str, object]) -> None:
    figures = section_figures(bench_report, "control_plane")
    for name in ("seconds", "submit_to_published_s", "ssh_commands", "ssh_connections"):
        assert is_spread(figures["cold start"][name]), name  # type: ignore[index]
    assert is_spread(figures["stop"]["seconds"])  # type: ignore[index]


def test_deploy_counts_time_changes_and_ssh(bench_report: dict[str, object]) -> None:
    runs = section_figures(bench_report, "deploy")["runs"]
    assert isinstance(runs, dict)
    assert runs
    for figures in runs.values():
        for name in ("seconds", "changed", "ssh_commands", "ssh_connections"):
            assert is_spread(figures[name]), name


def test_pose_compares_the_system_with_the_bare_model(bench_report: dict[str, object]) -> None:
    figures = section_figures(bench_report, "pose")
    for run in ("images, 1", "images, 2", "video, 1"):
        entry = figures[run]
        assert isinstance(entry, dict)
        assert is_spread(entry["ratio"]), run
        for side in ("bare", "system"):
            assert all(is_spread(entry[side][name]) for name in ("rate", "p50_ms", "p99_ms")), (run, side)
    breakdown = figures["breakdown_ms"]["images"]  # type: ignore[index]
    for part in ("download", "decode", "inference", "upload", "ledger", "bare decode", "bare inference"):
        assert is_spread(breakdown[part]), part
    assert is_spread(figures["first_job"]["first_ms"])  # type: ignore[index]
    assert is_spread(figures["memory"]["end_mib"])  # type: ignore[index]


def test_scaling_draws_its_picture_beside_the_report(bench_report: dict[str, object], reports: Path) -> None:
    sections = bench_report["sections"]
    assert isinstance(sections, dict)
    scaling = sections["scaling"]
    assert "picture_skipped" not in scaling, scaling.get("picture_skipped")
    root = ET.parse(reports / scaling["picture"]).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    elastic, fixed = scaling["figures"]["timelines"][0]
    assert elastic["backlog"][0] == [0.0, scaling["figures"]["plan"]["jobs"]]
    assert fixed["label"].startswith("fixed array of")
