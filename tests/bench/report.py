"""The benchmark report: the machine's description, then one section per benchmark, as JSON and Markdown.

A section is a plain dict that a benchmark function returns (see :class:`Section`); this module only
renders it, so that the failover, control-plane and deploy benchmarks can add theirs the same way.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import NotRequired, TypedDict

# The libraries whose versions change the figures: the clients of Redis and PostgreSQL, the systems we
# compare against, and ours.
PACKAGES = ("han-worker", "redis", "hiredis", "psycopg", "psycopg-binary", "rq", "celery", "kombu")


class Section(TypedDict):
    """What a benchmark returns: a table for people, figures for programs, and sentences saying what
    each figure means (docs/benchmarks.md quotes them: tests/bench/docs_page.py)."""

    title: str
    explanation: list[str]  # one sentence per figure
    columns: list[str]
    rows: list[list[str]]
    figures: dict[str, object]  # numbers, for the JSON report and the smoke test
    notes: list[str]
    # Set by write() for a section with a drawer: the picture's file name beside the report, or why none.
    picture: NotRequired[str]
    picture_skipped: NotRequired[str]


# Draws a section's figures into the file at the path it is given (its suffix says the format), for
# write(): ValueError when the figures hold nothing to draw, its message the reason.
Drawer = Callable[[Section, Path], None]


class Spread(TypedDict):
    median: float
    min: float
    max: float
    runs: int


def spread(values: Sequence[float]) -> Spread:
    """Median, min and max over repeated runs (the issue asks for spread, not a single figure)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def spread_text(values: Spread, digits: int = 0) -> str:
    """``median (min-max)``, or just the value when it was measured once."""
    if values["runs"] == 1:
        return f"{values['median']:,.{digits}f}"
    return f"{values['median']:,.{digits}f} ({values['min']:,.{digits}f}-{values['max']:,.{digits}f})"


def ratio_text(values: Spread) -> str:
    """A ratio as ``0.52x (0.40-0.61)``."""
    text = spread_text(values, 2)
    median, _space, rest = text.partition(" ")
    return f"{median}x {rest}".rstrip()


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; enough for p50 and p99 of a few hundred samples."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# -- the machine --------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, object]:
    """What the figures were measured on; the load average says how busy the machine was at the start."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(load, 2) for load in os.getloadavg()],
        "packages": {package: _version(package) for package in PACKAGES},
    }


# -- writing ------------------------------------------------------------------------------------------


def _cells(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"  # a | would end the cell


def table_markdown(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [_cells(columns), "|" + "---|" * len(columns)]
    lines += [_cells(row) for row in rows]
    return "\n".join(lines)


def table_text(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table for a terminal: columns padded to their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(columns, *rows, strict=True)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [columns, *rows]
    )


def machine_markdown(description: dict[str, object]) -> str:
    packages = description["packages"]
    assert isinstance(packages, dict)
    versions = ", ".join(f"{name} {version}" for name, version in packages.items() if version)
    load = description["load_average_at_start"]
    return "\n".join(
        [
            f"- CPU: {description['cpu_model']}, {description['cores']} cores; RAM {description['memory_gib']} GiB",
            f"- kernel {description['kernel']}; Python {description['python']}",
            f"- {versions}",
            f"- load average at start (1, 5, 15 min): {load}",
        ]
    )


def _options_text(options: object) -> str:
    assert isinstance(options, dict)
    return ", ".join(f"`{name}={value}`" for name, value in options.items())


def render_markdown(document: dict[str, object]) -> str:
    description, sections = document["machine"], document["sections"]
    assert isinstance(description, dict)
    assert isinstance(sections, dict)
    parts = [
        f"# Benchmark report, {document['created']}",
        "",
        f"Options: {_options_text(document['options'])}. Figures are medians over the repetitions with (min-max) after them; "
        "every comparison is a ratio measured in the same run on the same machine.",
        "",
        "## Machine",
        "",
        machine_markdown(description),
    ]
    for section in sections.values():
        parts += ["", f"## {section['title']}", "", " ".join(section["explanation"]), ""]
        parts.append(table_markdown(section["columns"], section["rows"]))
        parts += [""] + [f"- {note}" for note in section["notes"]] + _picture_markdown(section)
    return "\n".join(parts).rstrip() + "\n"


def _picture_markdown(section: Section) -> list[str]:
    if "picture" in section:
        return ["", f"![{section['title']}]({section['picture']})"]
    if "picture_skipped" in section:
        return [f"- No picture: {section['picture_skipped']}"]
    return []


def draw_pictures(stem: Path, sections: Mapping[str, Section], drawers: Mapping[str, Drawer]) -> None:
    """Each drawn section's picture as ``<stem>-<section>.svg``, its file name (relative to the report, so
    the Markdown's link works wherever the reports directory goes) or the reason for none in the section."""
    for name, draw in drawers.items():
        if name not in sections:
            continue
        path = stem.with_name(f"{stem.name}-{name}.svg")
        try:
            draw(sections[name], path)
        except (ValueError, OSError) as exc:  # the figures are worth writing without their picture
            sections[name]["picture_skipped"] = str(exc)
        else:
            sections[name]["picture"] = path.name


def write(
    directory: Path,
    created: datetime,
    options: dict[str, object],
    described: dict[str, object],
    sections: dict[str, Section],
    *,
    drawers: Mapping[str, Drawer] | None = None,
) -> tuple[Path, Path]:
    """Write ``bench-<UTC time>.json`` and ``.md`` into ``directory``, and beside them the picture of each
    section named in ``drawers``; returns the report's two paths.
    ``described`` is :func:`machine` taken before the benchmarks ran (its load average)."""
    document: dict[str, object] = {
        "created": created.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "options": options,
        "machine": described,
        "sections": sections,
    }
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"bench-{created.astimezone(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    draw_pictures(stem, sections, drawers or {})
    json_path, markdown_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    markdown_path.write_text(render_markdown(document))
    return json_path, markdown_path
