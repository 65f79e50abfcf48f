"""docs/benchmarks.md is rendered from a bench report as tests.bench.report writes it, and only from a full run's."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.bench import docs_page, report, suite

CREATED = datetime(2026, 12, 2, 6, 0, tzinfo=timezone.utc)


def section(name: str) -> report.Section:
    return {
        "title": f"Title of {name}",
        "explanation": [f"{name} explained, first sentence.", "Second sentence."],
        "columns": ["what", "seconds"],
        "rows": [[f"{name} row", "1.5 (1.4-1.6)"], ["another | row", "2"]],
        "figures": {"seconds": report.spread([1.4, 1.5, 1.6])},
        "notes": [f"A note on {name}."],
    }


def write_report(directory: Path, *, smoke: bool = False, names: list[str] | None = None) -> Path:
    names = list(suite.BENCHMARKS) if names is None else names
    sections = {name: section(name) for name in names}
    options: dict[str, object] = {"smoke": smoke, "repeat": 3, "benchmarks": names}
    json_path, _markdown = report.write(directory, CREATED, options, report.machine(), sections)
    return json_path


def test_every_benchmark_has_its_explanation() -> None:
    assert list(docs_page.SECTIONS) == list(suite.BENCHMARKS)


def test_a_full_report_renders_every_section_with_its_table(tmp_path: Path) -> None:
    output = docs_page.write(write_report(tmp_path), tmp_path / "benchmarks.md")
    page = output.read_text()

    assert page.startswith("# Benchmarks\n")
    assert (
        "Latest full run: 2026-12-02T06:00:00Z, report `bench-20261202T060000Z.json` (kept in `reports/`"
        in page
    )
    assert "Not yet generated" not in page
    for name, text in docs_page.SECTIONS.items():
        assert f"## Title of {name}\n\n{text}\n\n{name} explained, first sentence. Second sentence.\n" in page
        assert f"| {name} row | 1.5 (1.4-1.6) |" in page
        assert f"- A note on {name}." in page
    assert "| what | seconds |\n|---|---|\n" in page
    assert "| another \\| row | 2 |" in page  # a | inside a cell is escaped
    assert "## Machine" in page
    docs_page.check_stamp(page, "page")


def test_the_pending_page_explains_every_section_without_figures() -> None:
    page = docs_page.render(None)

    assert "**Not yet generated from a run of this code.**" in page
    assert "python -m tests.bench.docs_page reports/bench-<time>.json" in page
    for text in docs_page.SECTIONS.values():
        assert text in page
    assert "|---|" not in page
    docs_page.check_stamp(page, "page")


def test_an_edit_by_hand_breaks_the_stamp() -> None:
    page = docs_page.render(None)
    with pytest.raises(docs_page.DocsPageError, match="page: edited by hand since it was generated"):
        docs_page.check_stamp(page.replace("Dispatch", "Dispatching", 1), "page")
    with pytest.raises(docs_page.DocsPageError, match="page: no generator stamp at its end"):
        docs_page.check_stamp(page.rsplit("<!--", 1)[0], "page")


def test_a_smoke_report_is_refused(tmp_path: Path) -> None:
    path = write_report(tmp_path, smoke=True)
    with pytest.raises(docs_page.DocsPageError, match=r"options\.smoke is not false"):
        docs_page.load_report(path)


def test_a_report_of_some_benchmarks_is_refused_naming_the_missing_ones(tmp_path: Path) -> None:
    path = write_report(tmp_path, names=["dispatch", "failover"])
    with pytest.raises(
        docs_page.DocsPageError,
        match="endpoint_selection, control_plane, deploy, pose, chaos, elastic_chaos, scaling, batch, metrics are missing",
    ):
        docs_page.load_report(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda doc: doc.pop("machine"), "field 'machine' is missing"),
        (lambda doc: doc["sections"]["deploy"].pop("notes"), r"sections\.deploy\.notes is missing"),
        (lambda doc: doc["sections"]["deploy"]["rows"].append(["one cell"]), r"sections\.deploy\.rows\[2\]"),
        (lambda doc: doc["sections"]["failover"].update(columns="what"), r"failover\.columns is not a list"),
    ],
)
def test_a_malformed_report_is_refused_naming_the_field(
    tmp_path: Path, change: Callable[[dict[str, Any]], object], message: str
) -> None:
    path = write_report(tmp_path)
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    with pytest.raises(docs_page.DocsPageError, match=message):
        docs_page.load_report(path)


def test_only_a_full_run_rewrites_the_page() -> None:
    assert docs_page.due(smoke=False, only=None)
    assert not docs_page.due(smoke=True, only=None)
    assert not docs_page.due(smoke=False, only=["dispatch"])


def test_the_command_line_rewrites_the_page_or_exits_2_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "page.md"
    assert docs_page.main([str(write_report(tmp_path)), "--output", str(output)]) == 0
    docs_page.check_stamp(output.read_text(), str(output))

    assert docs_page.main([str(tmp_path / "nothing.json"), "--output", str(output)]) == 2
    assert "nothing.json: cannot be read" in capsys.readouterr().err
