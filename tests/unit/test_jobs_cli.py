"""``han-worker run | submit | wait | status`` on bad input: exit 2 naming the flag, never a traceback.

Everything here is refused before any control plane is contacted, so no service is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from han_worker.cli import worker_main
from han_worker.client import RequestError, check_inputs, parse_params

ENV = ("CONTROL_PLANE_MODE", "HAN_ENDPOINTS_FILE", "HAN_WORKER_QUEUES", "MAC_LAN_IP")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = worker_main(list(argv))
    except SystemExit as exit_:  # argparse's own refusals
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.mark.parametrize("command", ["run", "submit", "wait", "status"])
def test_help_explains_each_command(capsys: pytest.CaptureFixture[str], command: str):
    code, out, _err = run(capsys, command, "--help")
    assert code == 0
    assert "--config PATH" in out
    assert "control plane selection" in out


def test_run_help_documents_the_config_file(capsys: pytest.CaptureFixture[str]):
    out = run(capsys, "run", "--help")[1]
    for field in (
        "lease_seconds",
        "heartbeat_seconds",
        "flap_threshold",
        "mac.credentials_file",
        "spool_dir",
    ):
        assert field in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["submit", "--kind", "nosuch"],
            "han-worker submit: --kind: job kind 'nosuch' has no backend (known kinds:",
        ),
        (["submit"], "the following arguments are required: --kind"),
        (["submit", "--kind", "noop", "--input", "/no/such/file"], "--input: /no/such/file does not exist"),
        (
            ["submit", "--kind", "noop", "--input", "/", "--input", "/etc/hostname"],
            "--input: / is a folder or a pattern (a batch: one job per file); give it alone",
        ),
        (["wait"], "JOB or --batch ID: give exactly one"),
        (["submit", "--kind", "noop", "--param", "seconds"], "--param: 'seconds' is not KEY=VALUE"),
        (["submit", "--kind", "noop", "--param", "=3"], "--param: '=3' is not KEY=VALUE"),
        (["submit", "--kind", "noop", "--param", "a=1", "--param", "a=2"], "--param: 'a' is given twice"),
        (["submit", "--kind", "noop", "--params-json", "{"], "--params-json: not valid JSON"),
        (["submit", "--kind", "noop", "--params-json", "[1]"], "--params-json: must be a JSON object"),
        (["submit", "--kind", "noop", "--params-json", '{"a": NaN}'], "--params-json: not valid JSON"),
        (
            ["submit", "--kind", "noop", "--max-attempts", "0"],
            "argument --max-attempts: '0' is not a whole number",
        ),
        (["wait", "not-a-uuid"], "han-worker wait: JOB: 'not-a-uuid' is not a job id"),
        (
            ["wait", "0b1c5d4e-0000-4000-8000-000000000000", "--timeout", "-1"],
            "argument --timeout: '-1' must be",
        ),
        (["status", "--limit", "x"], "argument --limit: 'x' is not a whole number"),
        (["run", "--queues", "gpu"], "queue 'gpu' runs isaaclab_teacher_ppo, which is Windows-only"),
        (["run", "--queues", "nosuch"], "queue 'nosuch' is served by no backend (known queues:"),
        (["run", "--queues", ","], "--queues: ',' is not a comma-separated list of queue names"),
        (
            ["run"],
            "no queues to serve: pass --queues, set HAN_WORKER_QUEUES or put 'queues' in --config FILE",
        ),
        (["run", "--queues", "noop", "--mode", "cloud"], "argument --mode: invalid choice: 'cloud'"),
        (["run", "--queues", "noop", "--config", "/no/such.json"], "--config: /no/such.json: does not exist"),
        (["run", "--queues", "noop", "--mode", "mac"], "mode mac needs the Mac's address"),
        (["status", "--mode", "mac"], "mode mac needs the Mac's address"),
    ],
)
def test_bad_input_exits_2_naming_the_flag(capsys: pytest.CaptureFixture[str], argv: list[str], message: str):
    code, out, err = run(capsys, *argv)
    assert code == 2, out + err
    assert message in err


def test_pegasus_mode_without_endpoints_exits_2_with_the_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    missing = tmp_path / "home" / ".han" / "control-plane" / "endpoints.json"
    for argv in (["run", "--queues", "noop"], ["submit", "--kind", "noop"], ["status"]):
        code, _out, err = run(capsys, *argv, "--mode", "pegasus")
        assert code == 2
        assert f"{missing}: does not exist" in err


def test_a_bad_variable_is_named(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CONTROL_PLANE_MODE", "cloud")
    code, _out, err = run(capsys, "run", "--queues", "noop")
    assert code == 2
    assert "CONTROL_PLANE_MODE: 'cloud' is not one of auto, pegasus, mac" in err


def test_params_are_json_when_they_parse_and_strings_otherwise():
    params = parse_params(
        [
            "n=3",
            "x=2.5",
            "flag=true",
            "none=null",
            "name=abc",
            'quoted="3"',
            "list=[1,2]",
            "empty=",
            "nan=NaN",
        ],
        '{"n": 1, "kept": {"a": 1}}',
    )
    assert params == {"n": 3, "x": 2.5, "flag": True, "none": None, "name": "abc", "quoted": "3",
                      "list": [1, 2], "empty": "", "nan": "NaN", "kept": {"a": 1}}  # fmt: skip
    json.dumps(params, allow_nan=False)  # what the ledger's jsonb column will take


def test_inputs_are_named_after_their_files_and_names_must_differ(tmp_path: Path):
    (tmp_path / "a").mkdir()
    first, second = tmp_path / "photo.jpg", tmp_path / "a" / "photo.jpg"
    first.write_bytes(b"1")
    second.write_bytes(b"2")
    assert check_inputs([first]) == {"photo.jpg": first}
    with pytest.raises(RequestError, match=r"--input: two inputs are named 'photo\.jpg'"):
        check_inputs([first, second])


def test_harden_check_help_names_every_check_and_the_exit_codes_in_plain_words(
    capsys: pytest.CaptureFixture[str],
):
    code, out, _err = run(capsys, "harden-check", "--help")
    assert code == 0
    for check in ("listen", "auth", "mode", "leak", "pg-hba", "redis-config", "s3-config", "secrets"):
        assert check in out
    assert "Exit 0 when nothing failed, 1 when a" in " ".join(out.split())
    assert "``" not in out  # the docstring's markup is not help text


@pytest.mark.parametrize(
    ("value", "problem"),
    [("1e400", "too large for a float"), ("[" * 100 + "]" * 100, "deep")],
    ids=["overflowing-float", "nested-past-the-limit"],
)
def test_a_param_that_is_json_past_its_bounds_is_an_error_not_a_string(value: str, problem: str):
    with pytest.raises(RequestError, match=rf"^--param: .*{problem}"):
        parse_params([f"k={value}"])
