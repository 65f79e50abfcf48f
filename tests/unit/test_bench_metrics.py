"""The bench's metrics section: its table and notes from made-up samples (the scrapes themselves run in
`python -m tests.bench --only metrics`)."""

from __future__ import annotations

from tests.bench import metrics, suite
from tests.bench.docs_page import SECTIONS


def test_the_section_reports_the_scrape_against_the_goal() -> None:
    section = metrics.section(
        10_000,
        100_000,
        scrapes=[40.0, 42.0, 120.0],
        snapshots=[20.0, 21.0, 22.0],
        body=5_000,
        fill_seconds=1.25,
    )
    assert section["title"] == "Metrics: a scrape with 10,000 jobs waiting and 100,000 finished"
    assert section["columns"] == ["what", "p50 ms", "p95 ms", "max ms", "samples"]
    assert section["rows"] == [
        ["scrape of /metrics", "42.0", "120.0", "120.0", "3"],
        ["snapshot alone", "21.0", "22.0", "22.0", "3"],
    ]
    assert section["notes"][0] == "The scrape's p95 is 120.0 ms: over the 100 ms goal."
    assert section["figures"]["scrape_ms"] == {"median": 42.0, "min": 40.0, "max": 120.0, "runs": 3}


def test_the_section_is_registered_and_explained() -> None:
    assert suite.BENCHMARKS["metrics"] is metrics.benchmark
    assert "100,000 finished" in SECTIONS["metrics"]
