"""`make demo` and `make demo-down` at a glance: a line per step and drill scenario, the rest in a log.

    python scripts/demo.py up     # make demo: testbed, GPU job, site.yml, Windows stand-in, drill
    python scripts/demo.py down   # make demo-down: the workers and both control planes stopped

Each step is one ansible-playbook run from the repository root. Its whole output (stdout and stderr, without
colour) is appended to reports/demo-<UTC time>.log, whose path is printed first. The terminal gets a line as
each step starts and ends (seconds; ok or FAILED) and, during the failover drill, as each scenario starts and
ends (seconds; passed, FAILED or not applicable; written by the callback han.infra.drill_progress), then the
drill's table. The first step that fails ends the run: which step, the last 40 lines of its output and the
log's path are printed, and the exit status is ansible-playbook's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[1]
TAIL_LINES = 40
FAILED_TASK_LINES = 30
FAILURE_MARK = re.compile(
    r"^(fatal|failed): \["
)  # how Ansible's default output reports a failed host or item
POLL_SECONDS = 0.5
PROGRESS_CALLBACK = "han.infra.drill_progress"
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Step:
    label: str  # what a person reads
    args: tuple[str, ...]  # ansible-playbook's arguments, from the repository root
    drill: bool = False  # the failover drill: its scenarios are followed through han.infra.drill_progress


@dataclass(frozen=True)
class Plan:
    name: str  # the command a person typed
    log_prefix: str
    steps: tuple[Step, ...]
    closing: str  # the last line of a run that went well


UP = Plan(
    name="make demo",
    log_prefix="demo",
    steps=(
        Step("Build the testbed (Slurm, munge, loopback sshd)", ("playbooks/testbed.yml",)),
        Step("Submit a GPU job to Pegasus (the testbed) over SSH", ("playbooks/gpu_check.yml",)),
        Step(
            "Deploy with site.yml: environments, both control planes, Pegasus pose workers",
            ("playbooks/site.yml",),
        ),
        Step(
            "Start the Windows worker's STAND-IN (no Windows host here)", ("playbooks/windows_standin.yml",)
        ),
        Step(
            "Failover drill, every scenario (about 10 minutes)", ("playbooks/failover_drill.yml",), drill=True
        ),
    ),
    closing="Stop everything with: make demo-down",
)
DOWN = Plan(
    name="make demo-down",
    log_prefix="demo-down",
    steps=(
        Step("Stop the Windows worker's stand-in", ("playbooks/windows_standin.yml", "-e", "state=stopped")),
        Step("Stop the Pegasus pose workers", ("playbooks/pegasus_worker.yml", "-e", "state=stopped")),
        Step("Stop the Pegasus control plane", ("playbooks/control_plane.yml", "-e", "state=stopped")),
        Step(
            "Stop the Mac control plane",
            ("playbooks/control_plane.yml", "-e", "control_plane_hosts=mac", "-e", "state=stopped"),
        ),
    ),
    closing="Everything the demo started is stopped (the testbed keeps running: make testbed-down).",
)
PLANS = {"up": UP, "down": DOWN}
LABEL_COLUMN = 48  # where line() starts the label: time, who, outcome and seconds come first
COLOURS = {"ok": "32", "passed": "32", "FAILED": "31", "not applicable": "33"}


class Terminal:
    """What a person sees: one aligned line per event, with the time of day."""

    def __init__(self, out: TextIO, colour: bool) -> None:
        self.out = out
        self.colour = colour
        self.plan: Mapping[str, Any] = {}  # the drill's plan (run id, report paths), once it is known

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def line(self, who: str, outcome: str, seconds: float | None, label: str) -> None:
        padded = f"{outcome:<14}"
        if self.colour and outcome in COLOURS:
            padded = f"\033[{COLOURS[outcome]}m{outcome}\033[0m{padded[len(outcome) :]}"
        duration = "" if seconds is None else f"{seconds:.1f} s"
        self.say(f"{datetime.now():%H:%M:%S}  {who:<12} {padded} {duration:>8}  {label}")

    def drill_event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        if kind == "planned":
            self.plan = event
            scenarios = ", ".join(str(number) for number in event.get("selected") or [])
            self.line("  drill", "planned", None, f"run {event.get('run_id')}: scenarios {scenarios}")
        elif kind == "scenario_started":
            self.line(f"  scenario {event.get('id')}", "start", None, str(event.get("title")))
        elif kind == "scenario_finished":
            self.scenario_finished(event)
        elif kind == "table":
            self.table([str(line) for line in event.get("lines") or []])
        else:  # not one of ours: shown as it came, rather than dropped
            self.say(f"  drill progress: {json.dumps(event)}")

    def scenario_finished(self, event: Mapping[str, Any]) -> None:
        status = str(event.get("status"))
        outcome = "FAILED" if status == "failed" else status.replace("_", " ")
        ran = status in ("passed", "failed")
        label = str(event.get("title")) + ("" if ran or not event.get("error") else f": {event.get('error')}")
        seconds = float(event.get("seconds") or 0) if ran else None
        self.line(f"  scenario {event.get('id')}", outcome, seconds, label)
        if status == "failed":
            indent = " " * LABEL_COLUMN
            self.say(f"{indent}why:  {event.get('error')}")
            logs = [shown(Path(str(log))) for log in event.get("logs") or []] or [self.drill_logs()]
            self.say(f"{indent}logs: {', '.join(logs)}")

    def table(self, lines: list[str]) -> None:
        self.say()
        for text in lines:
            self.say(f"  {text}")
        if self.plan:
            reports = shown(Path(str(self.plan.get("reports_dir")))) + f"/drill-{self.plan.get('run_id')}"
            self.say(f"  Reports: {reports}.{{json,md,xml}}")
            self.say(f"  Logs of every play the drill ran: {self.drill_logs()}")
        self.say()

    def drill_logs(self) -> str:
        """Where the drill keeps the log of every play it ran (as the drill's plan says)."""
        return (
            f"{shown(Path(str(self.plan.get('run_dir'))))}/logs" if self.plan else "the drill's run directory"
        )


class ProgressFile:
    """The events han.infra.drill_progress appends, read as they come (only whole lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def new_events(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as progress:
                progress.seek(self.offset)
                data = progress.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *whole, self.partial = (self.partial + data).split(b"\n")
        return [parse_event(raw) for raw in whole if raw.strip()]


def parse_event(raw: bytes) -> dict[str, Any]:
    text = raw.decode("utf-8", errors="replace")
    try:
        event = json.loads(text)
    except ValueError:
        return {"event": "unreadable", "text": text}
    return event if isinstance(event, dict) else {"event": "unreadable", "text": text}


def ansible_playbook() -> str:
    """The ansible-playbook installed beside this Python (make runs the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    return str(beside) if beside.exists() else "ansible-playbook"


def step_env(base: Mapping[str, str], progress: Path | None) -> dict[str, str]:
    env = dict(base)
    env.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))
    # The output goes to a file that people read with less or grep: colour codes would only clutter it.
    env.update(ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    if progress is not None:
        enabled = [name for name in env.get("ANSIBLE_CALLBACKS_ENABLED", "").split(",") if name.strip()]
        env["ANSIBLE_CALLBACKS_ENABLED"] = ",".join([*enabled, PROGRESS_CALLBACK])
        env["HAN_DRILL_PROGRESS_FILE"] = str(progress)
    return env


def wait_for(process: subprocess.Popen[bytes], progress: ProgressFile | None, terminal: Terminal) -> int:
    """Wait for ansible-playbook, showing the drill's events as they are written; its exit status."""
    if progress is None:
        return process.wait()
    while True:
        exited = process.poll() is not None
        for event in progress.new_events():
            terminal.drill_event(event)
        if exited:
            return process.wait()
        time.sleep(POLL_SECONDS)


def run_step(step: Step, log_path: Path, terminal: Terminal) -> int:
    argv = [ansible_playbook(), *step.args]
    with tempfile.TemporaryDirectory(prefix="han-demo-") as scratch, log_path.open("ab") as log:
        progress = Path(scratch) / "drill-progress.jsonl" if step.drill else None
        process = subprocess.Popen(
            argv, cwd=REPO, env=step_env(os.environ, progress),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            return wait_for(process, ProgressFile(progress) if progress else None, terminal)
        except KeyboardInterrupt:
            process.wait()  # Ctrl-C reached ansible-playbook too: let it write its last lines to the log
            raise


def log_lines(log_path: Path, offset: int) -> list[str]:
    """The lines the log got from `offset` on (one step's output)."""
    with log_path.open("rb") as log:
        log.seek(offset)
        return log.read().decode("utf-8", errors="replace").splitlines()


def failed_task(lines: list[str]) -> list[str]:
    """The last task Ansible reported as failed and did not ignore, from its TASK line to the message."""
    for marker in range(len(lines) - 1, -1, -1):
        if not FAILURE_MARK.match(lines[marker]):
            continue
        end = next((index for index in range(marker, len(lines)) if not lines[index].strip()), len(lines))
        if any(text.strip() == "...ignoring" for text in lines[marker:end]):
            continue
        start = next((index for index in range(marker, -1, -1) if lines[index].startswith("TASK [")), marker)
        block = lines[start:end]
        return (
            block if len(block) <= FAILED_TASK_LINES else [block[0], "...", *block[1 - FAILED_TASK_LINES :]]
        )
    return []


class Run:
    """One run of a plan: its log, and its steps in order until one fails."""

    def __init__(self, plan: Plan, log_dir: Path, terminal: Terminal) -> None:
        self.plan = plan
        self.terminal = terminal
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{plan.log_prefix}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.log"
        self.log_path.touch(mode=0o600)

    def log(self, text: str) -> int:
        """Append a line of the runner's own to the log; the log's size after it."""
        with self.log_path.open("ab") as log:
            log.write(f"{text}\n".encode())
            return log.tell()

    def all_steps(self) -> int:
        """Every step in order, stopping at the first that fails; the exit status."""
        log_shown = shown(self.log_path)
        total = len(self.plan.steps)
        self.terminal.say(f"{self.plan.name}: {total} steps; the full Ansible output goes to {log_shown}")
        started = time.monotonic()
        for number, step in enumerate(self.plan.steps, start=1):
            status = self.one_step(step, f"{number}/{total}")
            if status != 0:
                self.terminal.say(f"Full output: {log_shown}")
                return status
        self.terminal.say(
            f"{self.plan.name}: done in {minutes(time.monotonic() - started)}. Full output: {log_shown}"
        )
        self.terminal.say(self.plan.closing)
        return 0

    def one_step(self, step: Step, where: str) -> int:
        offset = self.log(f"==== {self.plan.name}, step {where}: {step.label}\n$ {command_line(step)}")
        self.terminal.line(f"step {where}", "start", None, step.label)
        started = time.monotonic()
        try:
            status = run_step(step, self.log_path, self.terminal)
        except KeyboardInterrupt:
            self.log(f"==== step {where} interrupted")
            self.terminal.say(f"\n{self.plan.name}: interrupted during step {where}: {step.label}.")
            return EXIT_INTERRUPTED
        seconds = time.monotonic() - started
        self.log(f"==== step {where} exited {status} after {seconds:.1f} s")
        self.terminal.line(f"step {where}", "ok" if status == 0 else "FAILED", seconds, step.label)
        if status == 0:
            return 0
        self.terminal.say(
            f"\n{self.plan.name}: step {where} failed: {step.label} ({command_line(step)} exited {status})."
        )
        self.show_output_end(log_lines(self.log_path, offset))
        return status if 0 < status < 256 else 1  # a signal (negative) still fails the run

    def show_output_end(self, lines: list[str]) -> None:
        """The end of a failed step's output; first its failed task, when that scrolled out of the end (other
        hosts went on after it)."""
        tail = lines[-TAIL_LINES:]
        earlier = lines[: len(lines) - len(tail)]
        if not any(FAILURE_MARK.match(text) for text in tail) and (task := failed_task(earlier)):
            self.terminal.say("The last task that failed:")
            for text in task:
                self.terminal.say(f"  | {text}")
        self.terminal.say(f"Its last {len(tail)} lines of output:")
        for text in tail:
            self.terminal.say(f"  | {text}")


def command_line(step: Step) -> str:
    return " ".join(["ansible-playbook", *step.args])


def run(plan: Plan, log_dir: Path, out: TextIO, colour: bool = False) -> int:
    """Run the plan's steps in order, stopping at the first that fails; the exit status."""
    return Run(plan, log_dir, Terminal(out, colour)).all_steps()


def shown(path: Path) -> str:
    """A path as a person in the repository root would type it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def minutes(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60} s" if whole >= 60 else f"{whole} s"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", maxsplit=1)[0])
    parser.add_argument("plan", choices=sorted(PLANS), help="up: make demo; down: make demo-down")
    parser.add_argument("--log-dir", type=log_directory, default=REPO / "reports",
                        help="where the log goes (default: reports/)")  # fmt: skip
    return parser.parse_args(argv)


def log_directory(text: str) -> Path:
    """--log-dir: a directory, or a path where one can be made."""
    path = Path(text).resolve()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"--log-dir must be a directory; {text!r} is not one")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
    return run(PLANS[args.plan], args.log_dir, sys.stdout, colour)


if __name__ == "__main__":
    sys.exit(main())
