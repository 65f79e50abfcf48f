"""The bench's scaling section: its table from made-up runs (no Slurm), and docs/benchmarks.md rendered with it."""

from __future__ import annotations

from pathlib import Path

from tests.bench import docs_page, report, scaling, suite
from tests.unit.test_bench_docs_page import CREATED, section

PLAN = scaling.Plan(jobs=40, job_seconds=1.0, max_workers=4, max_pending=2, idle_timeout=5.0)


def elastic(drained: float, allocated: float) -> scaling.Run:
    return scaling.Run(
        mode="elastic", to_first_sbatch=0.05, to_first_registered=3.2, to_first_started=3.4, drained=drained,
        last_gone=drained + 6.0, worker_jobs=5, peak_workers=4, allocated_s=allocated, busy_s=40.5,
        longest_after_drain_s=6.0, released=1,
    )  # fmt: skip


def fixed(drained: float) -> scaling.Run:
    return scaling.Run(
        mode="fixed", to_first_sbatch=None, to_first_registered=None, to_first_started=0.1, drained=drained,
        last_gone=None, worker_jobs=4, peak_workers=4, allocated_s=0.0, busy_s=40.2,
    )  # fmt: skip


def made_up_section() -> report.Section:
    return scaling.section(PLAN, [(elastic(14.0, 70.0), fixed(11.0)), (elastic(16.0, 74.0), fixed(12.0))])


def test_the_table_has_one_row_per_pool_with_the_fixed_array_over_the_elastic_window() -> None:
    made = made_up_section()

    assert made["columns"] == scaling.COLUMNS
    elastic_row, fixed_row = made["rows"]
    assert elastic_row == [
        "elastic", "0.1 (0.1-0.1)", "3.2 (3.2-3.2)", "3.4 (3.4-3.4)", "15.0 (14.0-16.0)", "6.0 (6.0-6.0)",
        "5 (5-5)", "4 (4-4)", "72 (70-74)", "32 (30-34)", "0 / 2", "0",
    ]  # fmt: skip
    # 4 workers held over the elastic run's window (20 s and 22 s), minus the time they ran jobs.
    assert fixed_row == [
        "fixed array of 4", "-", "-", "0.1 (0.1-0.1)", "11.5 (11.0-12.0)", "never (no idle timeout)",
        "4 (4-4)", "4 (4-4)", "84 (80-88)", "44 (40-48)", "0 / 0", "0",
    ]  # fmt: skip
    goal = made["notes"][0]
    assert goal == (
        "Goal: the elastic pool holds fewer idle allocation-seconds than the fixed array "
        "(32 (30-34) vs 44 (40-48): met) and finishes the burst within 15% of it (elastic/fixed "
        "1.30x (1.27-1.33): NOT met). Measured, never asserted."
    )


def test_the_docs_page_renders_the_scaling_section_from_a_full_report(tmp_path: Path) -> None:
    sections = {name: section(name) for name in suite.BENCHMARKS} | {"scaling": made_up_section()}
    options: dict[str, object] = {"smoke": False, "repeat": 2, "benchmarks": list(sections)}
    json_path, _markdown = report.write(tmp_path, CREATED, options, report.machine(), sections)

    page = docs_page.write(json_path, tmp_path / "benchmarks.md").read_text()

    assert "## Elastic workers: a burst from zero workers, beside a fixed array\n\n" in page
    assert docs_page.SECTIONS["scaling"] in page
    assert "| " + " | ".join(scaling.COLUMNS) + " |" in page
    assert "| fixed array of 4 | - | - | 0.1 (0.1-0.1) | 11.5 (11.0-12.0) | never (no idle timeout) |" in page
    assert "- Goal: the elastic pool holds fewer idle allocation-seconds" in page
    docs_page.check_stamp(page, "page")


JOBCOMP = """\
JobId=1608 UserId=pegasus(1001) GroupId=pegasus(1001) Name=han-bench-elastic-1 JobState=COMPLETED Partition=batch \
TimeLimit=10 StartTime=2026-12-06T13:33:06 EndTime=2026-12-06T13:33:40 NodeList=localhost NodeCnt=1 ProcCnt=1
JobId=1609 UserId=pegasus(1001) GroupId=pegasus(1001) Name=other JobState=COMPLETED Partition=batch \
TimeLimit=10 StartTime=2026-12-06T13:33:39 EndTime=2026-12-06T13:33:41 NodeList=localhost NodeCnt=1 ProcCnt=1
"""


def test_allocations_come_from_slurms_job_completion_log_once_every_job_is_in_it(tmp_path: Path) -> None:
    log = tmp_path / "jobcomp.log"
    log.write_text(JOBCOMP)

    found = scaling.allocations_of(["1608"], log)
    assert found is not None
    start, end = found["1608"]
    assert end - start == 34
    assert scaling.allocations_of(["1608", "1610"], log) is None  # 1610 has not ended yet


def test_the_time_spent_running_jobs_is_summed_per_slurm_job_from_the_worker_ids() -> None:
    attempts = [
        ("localhost-slurm1608-4242-ab12", 100.0, 101.5),
        ("localhost-slurm1608-4242-ab12", 102.0, 103.0),
        ("localhost-slurm1611-77-cd34", 100.0, 101.0),
        ("mac-mini-99-ef56", 100.0, 105.0),  # not a Slurm worker
    ]
    assert scaling.busy_by_slurm_job(attempts) == {"1608": 2.5, "1611": 1.0}
