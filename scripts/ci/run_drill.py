"""Run the failover drill from CI with ansible-runner's Python API, follow its events, read its report.

    python scripts/ci/run_drill.py [--inventory inventories/local] [--scenarios 1,3] [--reports-dir DIR]
                                   [--walltime-minutes N --walltime-warning SECONDS]

It runs playbooks/failover_drill.yml as `ansible-playbook` would (the repository's ansible.cfg applies),
prints each scenario as it starts and every task that fails, then reads the JSON report the play wrote and
prints one line per scenario. Exit 0 when every applicable scenario passed, 1 when one failed (printed with
what was expected, what was observed and where its logs are), 2 when the drill could not run at all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ansible_runner

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = "playbooks/failover_drill.yml"
EXIT_PASSED, EXIT_FAILED, EXIT_BROKEN = 0, 1, 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", maxsplit=1)[0])
    parser.add_argument("--inventory", default=str(REPO / "inventories" / "local"), help="inventory path")
    parser.add_argument("--scenarios", default="all", help="'all' or scenario numbers, e.g. 1,3")
    parser.add_argument("--reports-dir", help="where the reports go (default: the repository's reports/)")
    parser.add_argument("--timeout", type=positive_seconds, default=None,
                        help="stop the drill after this many seconds (default: no limit)")  # fmt: skip
    parser.add_argument(
        "--walltime-minutes", type=whole_number("--walltime-minutes"),
        help="scenario 7's control-plane walltime in minutes (drill_walltime_minutes; default 3)",
    )  # fmt: skip
    parser.add_argument(
        "--walltime-warning", type=whole_number("--walltime-warning"),
        help="seconds before it that Slurm signals the control plane (drill_walltime_warning; default 60)",
    )  # fmt: skip
    return parser.parse_args(argv)


def whole_number(flag: str) -> Callable[[str], int]:
    """An argparse type: a whole number above zero; the message names ``flag``."""

    def parse(text: str) -> int:
        if not text.isdigit() or int(text) == 0:
            raise argparse.ArgumentTypeError(f"{flag} must be a whole number above 0, not {text!r}")
        return int(text)

    return parse


def positive_seconds(text: str) -> int:
    """--timeout: a whole number of seconds above zero."""
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"--timeout must be a whole number of seconds above 0, not {text!r}")
    return int(text)


class Progress:
    """An ansible-runner event handler: scenario starts and failed tasks, as they happen."""

    def __init__(self) -> None:
        self.report_path: Path | None = None

    def __call__(self, event: dict[str, Any]) -> bool:
        data = event.get("event_data", {})
        task = str(data.get("task", ""))
        if event.get("event") == "playbook_on_task_start" and task.startswith("Scenario "):
            print(f"-- {task}", flush=True)
        elif event.get("event") == "runner_on_failed" and not data.get("ignore_errors"):
            print(f"   failed: {task}: {data.get('res', {}).get('msg', '')}", flush=True)
        elif event.get("event") == "runner_on_ok" and task == "Write the JSON report.":
            self.report_path = Path(data["res"]["dest"])
        return True  # keep the event in the runner's artifacts too


def run_drill(args: argparse.Namespace) -> tuple[Any, Progress]:
    extravars: dict[str, Any] = {"drill_scenarios": args.scenarios}
    if args.reports_dir:
        extravars["drill_reports_dir"] = str(Path(args.reports_dir).resolve())
    if args.walltime_minutes is not None:
        extravars["drill_walltime_minutes"] = args.walltime_minutes
    if args.walltime_warning is not None:
        extravars["drill_walltime_warning"] = args.walltime_warning
    progress = Progress()
    # ansible-runner starts ansible-playbook from PATH: the one installed beside this Python.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with tempfile.TemporaryDirectory(prefix="han-drill-runner-") as private_data_dir:
        result = ansible_runner.run(
            private_data_dir=private_data_dir,
            project_dir=str(REPO),
            playbook=PLAYBOOK,
            inventory=str(Path(args.inventory).resolve()),
            extravars=extravars,
            envvars={"ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
            event_handler=progress,
            timeout=args.timeout,
            quiet=True,
        )
    return result, progress


def summarize(report: dict[str, Any]) -> list[str]:
    lines = [f"drill {report['run_id']}: {'PASSED' if report['passed'] else 'FAILED'} {report['summary']}"]
    for scenario in report["scenarios"]:
        status, seconds = scenario["status"], scenario["seconds"]
        lines.append(f"{scenario['id']}  {status:<15} {seconds:>7}  {scenario['title']}")
        if scenario["status"] == "failed":
            lines += [
                f"     expected: {scenario['expected']}",
                f"     observed: {json.dumps(scenario['observed'])}",
                f"     why:      {scenario['error']}",
                f"     logs:     {', '.join(scenario['logs']) or report['logs']}",
            ]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result, progress = run_drill(args)
    if result.status == "timeout":
        print(f"the drill did not finish within --timeout {args.timeout} s and was stopped", file=sys.stderr)
        return EXIT_BROKEN
    if progress.report_path is None or not progress.report_path.is_file():
        problem = f"ansible-runner status {result.status}, rc {result.rc}"
        print(f"the drill wrote no report ({problem}); see the output above", file=sys.stderr)
        return EXIT_BROKEN
    report = json.loads(progress.report_path.read_text(encoding="utf-8"))
    print("\n".join(summarize(report)))
    print(f"report: {progress.report_path}")
    return EXIT_PASSED if report["passed"] and result.rc == 0 else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
