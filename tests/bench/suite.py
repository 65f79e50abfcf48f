"""The benchmark suite behind ``make bench``: run every benchmark, print its table, write the report.

    python -m tests.bench [--smoke] [--repeat N] [--reports-dir DIR]

Each benchmark is a function of the run's :class:`~tests.bench.context.Context` returning one report
section (:class:`~tests.bench.report.Section`), registered in ``BENCHMARKS``. Figures are printed and
written, never asserted: the exit status says only whether everything could be measured. ``--smoke`` (what
CI runs) measures each once, small: about two and a half minutes (one failover round, a cold start and stop
of the control plane, bootstrap.yml in check mode, a dozen pose jobs, a small chaos round: about 50 s more;
a burst of 12 jobs through an elastic pool and a fixed array: about 35 s);
the full run about 24 minutes (the pose section about 7 of them, scaling about 2), and it rewrites
docs/benchmarks.md from its report (:mod:`tests.bench.docs_page`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from tests.bench import (
    batch,
    chaos,
    control_plane,
    deploy,
    dispatch,
    docs_page,
    elastic_chaos,
    failover,
    metrics,
    pose,
    report,
    scaling,
    selection,
)
from tests.bench.context import Context
from tests.conftest import REPO

Benchmark = Callable[[Context], report.Section]

# name in the report -> benchmark, in the order they run (issue 8 parts 3, 2, 1, 4 and 5, issues 19, 18, 20, 20,
# 21, 22).
BENCHMARKS: dict[str, Benchmark] = {
    "dispatch": dispatch.benchmark,
    "endpoint_selection": selection.benchmark,
    "failover": failover.benchmark,
    "control_plane": control_plane.benchmark,
    "deploy": deploy.benchmark,
    "pose": pose.benchmark,
    "chaos": chaos.benchmark,
    "elastic_chaos": elastic_chaos.benchmark,
    "scaling": scaling.benchmark,
    "batch": batch.benchmark,
    "metrics": metrics.benchmark,
}

# name in the report -> what draws its picture beside the report (report.write).
PICTURES: dict[str, report.Drawer] = {"scaling": scaling.picture}


def run(context: Context, names: list[str]) -> dict[str, report.Section]:
    sections: dict[str, report.Section] = {}
    for name in names:
        started = time.monotonic()
        sections[name] = BENCHMARKS[name](context)
        print(f"\n== {sections[name]['title']} ({time.monotonic() - started:.0f} s)")
        print(report.table_text(sections[name]["columns"], sections[name]["rows"]))
        for note in sections[name]["notes"]:
            print(f"- {note}")
        print(flush=True)
    return sections


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few jobs, once: about two minutes, for CI")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per figure (default: 3)")
    parser.add_argument(
        "--reports-dir", type=Path, default=REPO / "reports", help="where the report goes (default: reports/)"
    )
    parser.add_argument(
        "--only", action="append", choices=sorted(BENCHMARKS), help="run only this benchmark (repeatable)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat: at least 1")
    if os.geteuid() != 0:
        parser.error("run as root: the control plane and the workers run as the cluster user")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    created, described = datetime.now(timezone.utc), report.machine()  # the load before we add ours
    repeat = 1 if args.smoke else args.repeat
    context = Context(smoke=args.smoke, repeat=repeat)
    try:
        sections = run(context, args.only or list(BENCHMARKS))
    finally:
        context.close()
    options: dict[str, object] = {"smoke": args.smoke, "repeat": repeat, "benchmarks": list(sections)}
    paths = report.write(args.reports_dir, created, options, described, sections, drawers=PICTURES)
    print("report: " + ", ".join(str(path) for path in paths))
    if docs_page.due(args.smoke, args.only):  # a full run's figures are the documentation's
        print(f"docs: {docs_page.write(paths[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
