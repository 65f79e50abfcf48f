"""scripts/demo.py (make demo, make demo-down) with stand-in playbooks on localhost: what a person sees.

The drill's stand-in runs the drill's own task files (playbooks/drill/plan.yml, run_scenario.yml, report.yml)
and its own plays (playbooks/failover_drill.yml without the play that prepares Pegasus and the Mac), with
three stand-in scenarios: one passes, one fails, one needs a Windows worker the inventory does not have.
"""

from __future__ import annotations

import io
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, load_script, run_ansible

TIME = r"\d\d:\d\d:\d\d"
STAND_IN_CATALOG = [
    {"id": 1, "title": "Stand-in that passes", "needs": ["pegasus"]},
    {"id": 2, "title": "Stand-in that fails", "needs": ["pegasus"]},
    {"id": 3, "title": "Stand-in that needs Windows", "needs": ["windows"]},
]
STAND_IN_SCENARIOS = {
    1: [{"name": "Observe.", "ansible.builtin.set_fact": {"_drill_observed": {"stand_in": True}}}],
    2: [{"name": "Fail on purpose.", "ansible.builtin.fail": {"msg": "the stand-in fails on purpose"}}],
}


demo = load_script(REPO / "scripts" / "demo.py")


@pytest.fixture
def stand_ins(tmp_path: Path) -> Path:
    """Stand-in playbooks and a localhost inventory in tmp_path."""
    (tmp_path / "inventory.ini").write_text(
        f"[pegasus]\nlocalhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    )
    play = {"name": "Stand-in.", "hosts": "localhost", "gather_facts": False}
    say = {"name": "Say hello.", "ansible.builtin.debug": {"msg": "hello"}}
    fail = {
        "name": "Fail like a broken step.",
        "ansible.builtin.fail": {"msg": "the stand-in step is broken"},
    }
    write_yaml(tmp_path / "hello.yml", [{**play, "tasks": [say] * 30}])
    write_yaml(tmp_path / "broken.yml", [{**play, "tasks": [say, fail]}])
    shutil.copytree(REPO / "playbooks" / "drill", tmp_path / "drill")
    catalog = [
        {**entry, "setup": "None.", "action": "None.", "expected": "None."} for entry in STAND_IN_CATALOG
    ]
    write_yaml(tmp_path / "drill" / "scenarios.yml", {"drill_catalog": catalog})
    for number, tasks in STAND_IN_SCENARIOS.items():
        write_yaml(tmp_path / "drill" / f"scenario_{number}.yml", tasks)
    drill_plays = yaml.safe_load((REPO / "playbooks" / "failover_drill.yml").read_text())
    write_yaml(tmp_path / "drill.yml", [play for play in drill_plays if play["hosts"] == "localhost"])
    return tmp_path


def write_yaml(path: Path, content: object) -> None:
    path.write_text("---\n" + yaml.safe_dump(content, sort_keys=False))


def step(label: str, playbook: Path, *extra: str, drill: bool = False) -> object:
    return demo.Step(
        label, (str(playbook), "-i", str(playbook.parent / "inventory.ini"), *extra), drill=drill
    )


def run_plan(steps: list[object], log_dir: Path) -> tuple[int, list[str], Path]:
    """The exit status, the lines printed and the log of a run of these steps."""
    out = io.StringIO()
    status = demo.run(demo.Plan("make stand-in", "stand-in", tuple(steps), "All done."), log_dir, out)
    lines = out.getvalue().splitlines()
    logs = list(log_dir.glob("stand-in-*.log"))
    assert len(logs) == 1, logs
    return status, lines, logs[0]


def drill_step(stand_ins: Path, scenarios: str) -> object:
    reports = f"drill_reports_dir={stand_ins / 'reports'}"
    return step(
        "Stand-in drill",
        stand_ins / "drill.yml",
        "-e",
        f"drill_scenarios={scenarios}",
        "-e",
        reports,
        drill=True,
    )


def test_a_run_that_passes_prints_a_line_per_step_and_scenario_and_keeps_ansible_in_the_log(
    stand_ins: Path,
) -> None:
    steps = [step("Say hello", stand_ins / "hello.yml"), drill_step(stand_ins, "1,3")]
    status, lines, log = run_plan(steps, stand_ins / "logs")
    print("\n".join(lines))  # what a person sees, shown by pytest -s
    assert status == 0
    assert lines[0] == f"make stand-in: 2 steps; the full Ansible output goes to {log}"
    expected = [
        rf"{TIME}  step 1/2     start                    Say hello",
        rf"{TIME}  step 1/2     ok             +\d+\.\d s  Say hello",
        rf"{TIME}  step 2/2     start                    Stand-in drill",
        rf"{TIME}    drill      planned                  run \d{{8}}T\d{{6}}Z: scenarios 1, 3",
        rf"{TIME}    scenario 1 start                    Stand-in that passes",
        rf"{TIME}    scenario 1 passed         +\d+\.\d s  Stand-in that passes",
        rf"{TIME}    scenario 2 not selected             Stand-in that fails",
        rf"{TIME}    scenario 3 not applicable           Stand-in that needs Windows: the inventory has no windows",
        "",
        "  #  result          seconds  scenario",
        r"  1  PASSED +\d+\.\d  Stand-in that passes",
        "  2  NOT_SELECTED          0  Stand-in that fails",
        "  3  NOT_APPLICABLE        0  Stand-in that needs Windows",
        rf"  Reports: {stand_ins}/reports/drill-\d{{8}}T\d{{6}}Z\.{{json,md,xml}}",
        rf"  Logs of every play the drill ran: {stand_ins}/reports/drill-\d{{8}}T\d{{6}}Z/logs",
        "",
        rf"{TIME}  step 2/2     ok             +\d+\.\d s  Stand-in drill",
        rf"make stand-in: done in \d+ s\. Full output: {log}",
        "All done.",
    ]
    assert_lines(lines[1:], expected)
    logged = log.read_text()
    assert logged.count("TASK [Say hello.]") == 30
    assert "TASK [Print the table.]" in logged
    assert "\x1b[" not in logged  # no colour codes in the log
    assert re.search(r"^==== step 2/2 exited 0 after \d+\.\d s$", logged, re.MULTILINE)


def test_a_step_that_fails_stops_the_run_and_shows_which_with_the_end_of_its_output(stand_ins: Path) -> None:
    steps = [step("Say hello", stand_ins / "hello.yml"), step("Broken", stand_ins / "broken.yml")]
    steps.append(step("Never reached", stand_ins / "hello.yml"))
    status, lines, log = run_plan(steps, stand_ins / "logs")
    print("\n".join(lines))
    assert status == 2  # ansible-playbook's: a task failed
    failed_at = next(
        index for index, text in enumerate(lines) if re.match(rf"{TIME}  step 2/3     FAILED", text)
    )
    assert lines[failed_at + 1 : failed_at + 4] == [
        "",
        f"make stand-in: step 2/3 failed: Broken (ansible-playbook {stand_ins}/broken.yml -i "
        f"{stand_ins}/inventory.ini exited 2).",
        f"Its last {len(lines) - failed_at - 5} lines of output:",
    ]
    tail = lines[failed_at + 4 : -1]
    assert 0 < len(tail) <= demo.TAIL_LINES
    assert all(text.startswith("  | ") for text in tail)
    assert any("fatal: [localhost]: FAILED!" in text for text in tail)
    assert any("the stand-in step is broken" in text for text in tail)
    # Only the failed step's output: step 1's thirty hellos are not in it, broken.yml's one is.
    assert sum("TASK [Say hello.]" in text for text in tail) == 1
    assert lines[-1] == f"Full output: {log}"
    assert not any("step 3/3" in text for text in lines)
    assert "Never reached" not in log.read_text()


def test_a_failure_that_scrolled_out_of_the_end_is_shown_first(stand_ins: Path) -> None:
    """One host fails early, another goes on for 60 tasks (as site.yml's hosts do): the failure is shown."""
    local = f"ansible_connection=local ansible_python_interpreter={sys.executable}"
    (stand_ins / "inventory.ini").write_text(f"[pegasus]\nlocalhost {local}\n[mac]\nother-host {local}\n")
    fail = {
        "name": "Fail on Pegasus.",
        "ansible.builtin.fail": {"msg": "the Pegasus stand-in failed"},
        "when": "'pegasus' in group_names",
    }
    ignored = {
        "name": "Fail on the Mac, ignored.",
        "ansible.builtin.fail": {"msg": "ignored"},
        "ignore_errors": True,
        "when": "'mac' in group_names",
    }
    say = {"name": "Go on.", "ansible.builtin.debug": {"msg": "on"}}
    write_yaml(
        stand_ins / "early.yml",
        [
            {
                "name": "Two hosts.",
                "hosts": "all",
                "gather_facts": False,
                "tasks": [fail, ignored] + [say] * 60,
            }
        ],
    )
    status, lines, _log = run_plan([step("Two hosts", stand_ins / "early.yml")], stand_ins / "logs")
    print("\n".join(lines))
    assert status == 2
    shown_from = lines.index("The last task that failed:")
    tail_from = lines.index("Its last 40 lines of output:")
    task = lines[shown_from + 1 : tail_from]
    assert task[0].startswith("  | TASK [Fail on Pegasus.]")
    assert "  |     msg: the Pegasus stand-in failed" in task
    assert not any("ignored" in text for text in task)
    assert len(lines[tail_from + 1 : -1]) == demo.TAIL_LINES


def test_a_failed_scenario_says_why_then_the_table_then_the_drill_step_fails(stand_ins: Path) -> None:
    status, lines, _log = run_plan([drill_step(stand_ins, "all")], stand_ins / "logs")
    print("\n".join(lines))
    assert status == 2
    failed = next(index for index, text in enumerate(lines) if "scenario 2 FAILED" in text)
    assert re.fullmatch(
        rf"{TIME}    scenario 2 FAILED         +\d+\.\d s  Stand-in that fails", lines[failed]
    )
    indent = " " * demo.LABEL_COLUMN
    assert lines[failed + 1] == f"{indent}why:  Fail on purpose.: the stand-in fails on purpose"
    assert re.fullmatch(rf"{indent}logs: {stand_ins}/reports/drill-\d{{8}}T\d{{6}}Z/logs", lines[failed + 2])
    assert re.fullmatch(
        r"  2  FAILED +\d+\.\d  Stand-in that fails",
        lines[lines.index("  #  result          seconds  scenario") + 2],
    )
    assert any(re.match(rf"{TIME}  step 1/1     FAILED", text) for text in lines)
    assert any("Scenario(s) 2 failed" in text for text in lines if text.startswith("  | "))


def assert_lines(lines: list[str], patterns: list[str]) -> None:
    assert len(lines) == len(patterns), "\n".join(lines)
    for text, pattern in zip(lines, patterns, strict=True):
        assert re.fullmatch(pattern, text), f"{text!r} does not match {pattern!r}"


def test_progress_is_read_in_whole_lines_and_a_line_that_is_not_json_is_shown_not_dropped(
    tmp_path: Path,
) -> None:
    progress = demo.ProgressFile(tmp_path / "progress.jsonl")
    assert progress.new_events() == []  # not written yet
    with progress.path.open("wb") as written:
        written.write(b'{"event": "scenario_started", "id": 1, "ti')
        written.flush()
        assert progress.new_events() == []
        written.write(b'tle": "One"}\nnot json\n')
    assert progress.new_events() == [
        {"event": "scenario_started", "id": 1, "title": "One"},
        {"event": "unreadable", "text": "not json"},
    ]


def test_make_demo_and_demo_down_run_the_playbooks_they_always_ran() -> None:
    assert [step.args for step in demo.UP.steps] == [
        ("playbooks/testbed.yml",),
        ("playbooks/gpu_check.yml",),
        ("playbooks/site.yml",),
        ("playbooks/windows_standin.yml",),
        ("playbooks/failover_drill.yml",),
    ]
    assert [step.drill for step in demo.UP.steps] == [False] * 4 + [True]
    assert [step.args for step in demo.DOWN.steps] == [
        ("playbooks/windows_standin.yml", "-e", "state=stopped"),
        ("playbooks/pegasus_worker.yml", "-e", "state=stopped"),
        ("playbooks/control_plane.yml", "-e", "state=stopped"),
        ("playbooks/control_plane.yml", "-e", "control_plane_hosts=mac", "-e", "state=stopped"),
    ]


def test_the_log_directory_must_be_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit) as stopped:
        demo.parse_args(["up", "--log-dir", str(tmp_path / "a-file")])
    assert stopped.value.code == 2
    assert "--log-dir must be a directory" in capsys.readouterr().err


def test_the_progress_callback_is_documented_for_ansible_doc() -> None:
    shown = run_ansible("ansible-doc", "-t", "callback", "han.infra.drill_progress")
    assert shown.returncode == 0, shown.stderr
    assert "HAN_DRILL_PROGRESS_FILE" in shown.stdout
