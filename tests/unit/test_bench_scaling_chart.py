"""The scaling section's picture from made-up series (no Slurm): the step functions, the SVG and PNG files with
the words a reader needs, and the report linking the picture beside it (or saying why there is none)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from tests.bench import report, scaling, scaling_chart, suite
from tests.unit.test_bench_docs_page import CREATED
from tests.unit.test_bench_scaling import PLAN, elastic, fixed

SVG = "{http://www.w3.org/2000/svg}"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def elastic_timeline(drained: float = 14.0) -> scaling_chart.Timeline:
    starts = [1.0 + index * 0.3 for index in range(40)]
    return scaling_chart.Timeline(
        label="elastic",
        backlog=scaling_chart.backlog_steps(40, starts),
        busy=scaling_chart.busy_steps([(start, start + 1.0) for start in starts]),
        running=[(0.0, 0), (1.0, 1), (2.0, 3), (3.0, 4), (16.0, 2), (20.0, 0)],
        pending=[(0.0, 0), (0.3, 2), (2.0, 1), (3.0, 0)],
        drained=drained,
    )


def fixed_timeline() -> scaling_chart.Timeline:
    starts = [0.1 + index * 0.25 for index in range(40)]
    return scaling_chart.Timeline(
        label="fixed",
        backlog=scaling_chart.backlog_steps(40, starts),
        busy=scaling_chart.busy_steps([(start, start + 1.0) for start in starts]),
        running=[(0.0, 4)],
        pending=[(0.0, 0)],
        drained=11.0,
    )


def svg_texts(path: Path) -> set[str]:
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    return {"".join(element.itertext()).strip() for element in root.iter(f"{SVG}text")}


def test_samples_become_steps_that_keep_only_changes_and_start_at_the_burst() -> None:
    samples = [(-0.4, 0), (-0.1, 2), (0.24, 2), (0.5, 3), (0.52, 2), (0.8, 2), (1.26, 0)]

    assert scaling_chart.steps(samples) == [(0.0, 2), (1.3, 0)]  # 3 at 0.5 was overwritten within its tenth
    assert scaling_chart.value_at([(0.0, 2), (1.3, 0)], 1.29) == 2
    assert scaling_chart.value_at([(0.5, 2)], 0.1) == 0


def test_the_backlog_falls_as_jobs_start_and_busy_workers_follow_the_attempts() -> None:
    assert scaling_chart.backlog_steps(3, [2.0, 1.0, 1.0]) == [(0.0, 3), (1.0, 1), (2.0, 0)]
    # One worker ends an attempt as it starts the next: busy stays 2 at t = 2.
    attempts = [(1.0, 2.0), (1.5, 3.0), (2.0, 2.5)]
    assert scaling_chart.busy_steps(attempts) == [(0.0, 0), (1.0, 1), (1.5, 2), (2.5, 1), (3.0, 0)]


def test_a_timeline_goes_into_the_report_and_comes_back() -> None:
    timeline = elastic_timeline()
    figures = json.loads(json.dumps(timeline.figures()))

    assert figures["backlog"][:2] == [[0.0, 40], [1.0, 39]]
    assert scaling_chart.Timeline.from_figures(figures) == timeline
    with pytest.raises(ValueError, match="'pending' is not a list"):
        scaling_chart.Timeline.from_figures(figures | {"pending": 3})


def test_the_svg_holds_the_words_a_reader_needs(tmp_path: Path) -> None:
    path = scaling_chart.draw([elastic_timeline(), fixed_timeline()], tmp_path / "burst.svg", "A burst of 40")

    texts = svg_texts(path)
    assert {scaling_chart.X_LABEL, scaling_chart.BACKLOG_AXIS, scaling_chart.WORKERS_AXIS} <= texts  # axes
    legend = {scaling_chart.BACKLOG, scaling_chart.BUSY, scaling_chart.IDLE, scaling_chart.PENDING}
    assert legend | {scaling_chart.MAKESPAN} <= texts
    assert {"A burst of 40", "elastic: drained at 14.0 s", "fixed: drained at 11.0 s"} <= texts


def test_a_png_is_drawn_when_the_path_asks_for_one(tmp_path: Path) -> None:
    path = scaling_chart.draw([elastic_timeline()], tmp_path / "burst.png", "one pool")

    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_nothing_to_draw_is_an_error_not_an_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no timeline"):
        scaling_chart.draw([], tmp_path / "none.svg", "nothing")
    assert not (tmp_path / "none.svg").exists()


def test_the_report_links_the_picture_of_the_median_repetition_beside_it(tmp_path: Path) -> None:
    runs = [
        (replace(elastic(drained, 70.0), timeline=elastic_timeline(drained)), replace(fixed(11.0), timeline=fixed_timeline()))
        for drained in (18.0, 14.0, 16.0)
    ]  # fmt: skip
    sections = {"scaling": scaling.section(PLAN, runs)}
    options: dict[str, object] = {"smoke": True, "repeat": 3, "benchmarks": ["scaling"]}

    json_path, markdown_path = report.write(
        tmp_path, CREATED, options, report.machine(), sections, drawers=suite.PICTURES
    )

    document = json.loads(json_path.read_text())
    written = document["sections"]["scaling"]
    picture = tmp_path / written["picture"]
    assert picture.name == f"{json_path.stem}-scaling.svg"
    assert f"![{written['title']}]({picture.name})" in markdown_path.read_text()
    texts = svg_texts(picture)
    assert "elastic: drained at 16.0 s" in texts  # the median of 18, 14 and 16
    assert any("repetition 3 of 3" in text for text in texts)
    assert "fixed array of 4: drained at 11.0 s" in texts
    pairs = written["figures"]["timelines"]
    assert [pair[1]["label"] for pair in pairs] == ["fixed array of 4"] * 3
    assert "timeline" not in written["figures"]["elastic"][0]


def test_a_report_without_timelines_says_why_it_has_no_picture(tmp_path: Path) -> None:
    sections = {"scaling": scaling.section(PLAN, [(elastic(14.0, 70.0), fixed(11.0))])}
    options: dict[str, object] = {"smoke": True, "repeat": 1, "benchmarks": ["scaling"]}

    _json, markdown_path = report.write(
        tmp_path, CREATED, options, report.machine(), sections, drawers=suite.PICTURES
    )

    assert "- No picture: no repetition recorded a timeline" in markdown_path.read_text()
    assert not list(tmp_path.glob("*.svg"))
