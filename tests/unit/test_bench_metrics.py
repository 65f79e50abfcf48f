"""The bench's metrics section: its table and notes from made-up samples (the scrapes themselves run in
`python -m tests.bench --only metrics`)."""

from __future__ import annotations

from tests.bench import metrics, suite
from tests.bench.dispatch import Sample
from tests.bench.docs_page import SECTIONS


def test_the_section_reports_the_scrape_and_the_dispatch_against_the_goals() -> None:
    measured = metrics.Dispatch(
        without=[Sample(900.0, 1.0, 2.0), Sample(1000.0, 1.1, 2.0)],
        with_scrapes=[Sample(800.0, 1.2, 2.5), Sample(850.0, 1.3, 2.5)],
        scrapes_meanwhile=[50.0, 60.0],
    )
    section = metrics.section(
        10_000, 100_000, scrapes=[40.0, 42.0, 120.0], snapshots=[20.0, 21.0, 22.0], body=5_000, fill_seconds=1.25,
        measured=measured,
    )  # fmt: skip
    assert section["title"] == "Metrics: a scrape with 10,000 jobs waiting and 100,000 finished"
    assert section["columns"] == ["what", "median", "p95", "max", "samples"]
    assert section["rows"] == [
        ["scrape of /metrics (ms)", "42.0", "120.0", "120.0", "3"],
        ["snapshot alone (ms)", "21.0", "22.0", "22.0", "3"],
        ["dispatch, no scrape (jobs/s)", "950", "-", "1000", "2"],
        ["dispatch, a scrape every second (jobs/s)", "825", "-", "850", "2"],
    ]
    assert section["notes"][:2] == [
        "The scrape's p95 is 120.0 ms: over the 100 ms goal.",
        "With a scrape every second one worker ran 825 jobs/s against 950 without (0.87x; 2 scrapes meanwhile).",
    ]
    assert section["figures"]["scrape_ms"] == {"median": 42.0, "min": 40.0, "max": 120.0, "runs": 3}


def test_the_section_is_registered_and_explained() -> None:
    assert suite.BENCHMARKS["metrics"] is metrics.benchmark
    assert "100,000 finished" in SECTIONS["metrics"]
