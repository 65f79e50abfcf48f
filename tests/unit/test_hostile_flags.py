"""Hostile values thrown at every flag of every command of ``han-worker`` and ``han-control-plane``.

Every option that takes a value is found in the parsers themselves, so a new flag is covered (or this test
fails asking for its family). Each run is in-process through the main function, must exit 2 with the flag
(or the input) named on stderr, never a traceback, and must leave nothing behind: no file in HOME or in the
state directory. The commands are given what keeps them from ever starting anything: no Mac address or
endpoints file (selection fails), ``--launch-mode slurm`` without a Slurm job, a state directory under a file.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from han_worker.cli import build_control_plane_parser, build_worker_parser, control_plane_main, worker_main
from tests.unit.hostile_values import (
    HOSTILE,
    HOSTILE_HOSTS,
    HOSTILE_NETWORKS,
    HOSTILE_NUMBER_TEXT,
    HOSTILE_PATHS,
    HOSTILE_TEXT,
    unstorable_text,
)

ENV = ("CONTROL_PLANE_MODE", "HAN_ENDPOINTS_FILE", "HAN_WORKER_QUEUES", "MAC_LAN_IP", "HAN_CONTROL_PLANE_DIR",
       "SLURM_JOB_ID")  # fmt: skip
Main = Callable[[Sequence[str]], int]

HOSTILE_PORTS = st.one_of(
    st.sampled_from(
        ["redis=0", "redis=70000", "redis=²", "redis=-1", "redis=", "=6379", "mysql=3306", "redis"]
    ),
    HOSTILE_NUMBER_TEXT.map(lambda text: "postgres=" + text),
)
# Ages a purge refuses: zero, negative, no unit, another unit, a fraction, past a century, foreign digits.
HOSTILE_DURATIONS = st.one_of(
    st.sampled_from(["0d", "0m", "-1d", "30", "30x", "30s", "1.5d", "d", "", " 30d", "30d ", "30 d", "30D",
                     "1e3d", "٣d", "²d", "99999999999d", "36501d", "30d12h"]),
    HOSTILE_NUMBER_TEXT,
    HOSTILE_NUMBER_TEXT.map(lambda text: text + "d"),
)  # fmt: skip
# Which hostile family each option gets, by its destination. A flag missing here fails the coverage test.
FAMILIES: dict[str, st.SearchStrategy[str]] = {
    **dict.fromkeys(("config", "endpoints_file", "credentials_file", "mac_credentials_file", "input",
                     "state_dir", "env_dir", "pool", "state", "scaler_state", "output", "metrics_targets_file"),
                    HOSTILE_PATHS),
    **dict.fromkeys(("probe_timeout", "timeout", "wait", "wait_workers", "start_timeout", "max_attempts",
                     "limit", "interval", "retention_days", "retention_interval"), HOSTILE_NUMBER_TEXT),
    **dict.fromkeys(("mac_port", "port"), HOSTILE_PORTS),
    **dict.fromkeys(("mac_host", "bind", "bind_address"), HOSTILE_HOSTS),
    **dict.fromkeys(("bind_network", "client_network"), HOSTILE_NETWORKS),
    **dict.fromkeys(("mode", "source", "launch_mode", "kind", "queues", "check", "job", "batch"), HOSTILE_TEXT),
    "param": st.one_of(unstorable_text(), unstorable_text().map(lambda text: "k=" + text)),
    "params_json": HOSTILE_TEXT,
    "older_than": HOSTILE_DURATIONS,
    "states": st.one_of(HOSTILE_TEXT, st.sampled_from(["Queued", "done", "queued,running", "", " dead"])),
}  # fmt: skip
# What each command needs besides the flag under test so that nothing can start even if a value slipped
# through (the test would then fail on the message, not start a service).
CONTEXT: dict[tuple[str, str], list[str]] = {
    ("han-worker", "submit"): ["--kind", "noop"],
    ("han-worker", "run"): ["--queues", "noop"],
    ("han-worker", "fetch"): ["--output", "/nonexistent/han/fetched"],
    ("han-worker", "purge"): ["--older-than", "30d"],
    ("han-worker", "scale"): ["--pool", "/nonexistent/han/pool.json", "--state", "/nonexistent/han/state.json"],
    ("han-worker", "harden-check"): ["--bind-address", "127.0.0.10", "--state-dir", "/nonexistent/han"],
    ("han-control-plane", "run"): ["--bind", "127.0.0.10", "--launch-mode", "slurm", "--state-dir", "/dev/null/x"],
    ("han-control-plane", "start"): ["--bind", "127.0.0.10", "--state-dir", "/dev/null/x"],
    ("han-control-plane", "rotate"): ["--state-dir", "/dev/null/x"],
}  # fmt: skip
POSITIONALS = dict.fromkeys(
    [
        ("han-worker", "wait"),
        ("han-worker", "show"),
        ("han-worker", "fetch"),
        ("han-worker", "cancel"),
        ("han-worker", "requeue"),
    ],
    "00000000-0000-0000-0000-000000000000",
)
PROGRAMS: dict[str, tuple[argparse.ArgumentParser, Main]] = {
    "han-worker": (build_worker_parser(), worker_main),
    "han-control-plane": (build_control_plane_parser(), control_plane_main),
}


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [subparsers] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def _value_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        action for action in parser._actions
        if action.nargs != 0 and not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
    ]  # fmt: skip


def every_flag() -> list[tuple[str, str, str, str]]:
    """(program, command, flag or positional name, destination) for every option that takes a value."""
    flags = []
    for program, (parser, _main) in PROGRAMS.items():
        for command, sub in _commands(parser).items():
            for action in _value_options(sub):
                name = (
                    action.option_strings[-1] if action.option_strings else str(action.metavar or action.dest)
                )
                flags.append((program, command, name, action.dest))
    return flags


FLAGS = every_flag()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # a relative path a bug let through lands here, not in the checkout
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_every_flag_has_a_hostile_family():
    assert len(FLAGS) > 60, FLAGS
    assert sorted({dest for *_rest, dest in FLAGS} - set(FAMILIES)) == []


def _argv(program: str, command: str, flag: str, value: str) -> list[str]:
    context = CONTEXT.get((program, command), [])
    if not flag.startswith("--"):
        return [command, *context, "--", value]
    # "--flag=value" keeps a value that starts with "-" a value; the context's own copy of the flag goes.
    kept = [
        item
        for index, item in enumerate(context)
        if flag not in (item, context[index - 1] if index else None)
    ]
    positional = POSITIONALS.get((program, command))
    return [command, *kept, f"{flag}={value}", *(["--", positional] if positional else [])]


def _run(main: Main, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's refusals
        code = int(exit_.code or 0)
    _out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, err


def _named(flag: str, err: str) -> bool:
    bare = flag.lstrip("-")
    return flag in err or f"argument {bare}" in err or bare.upper() in err or bare in err


@pytest.mark.parametrize("case", FLAGS, ids=[" ".join(case[:3]) for case in FLAGS])
@HOSTILE
@given(data=st.data())
def test_a_hostile_value_exits_2_naming_the_flag_and_leaves_nothing(
    capsys: pytest.CaptureFixture[str], clean_env: Path, case: tuple[str, str, str, str], data: st.DataObject
):
    program, command, flag, dest = case
    value = data.draw(FAMILIES[dest], label=flag)
    _parser, main = PROGRAMS[program]
    before = set(clean_env.rglob("*"))
    code, err = _run(main, _argv(program, command, flag, value), capsys)
    assert code == 2, err
    assert _named(flag, err), err
    assert set(clean_env.rglob("*")) == before
    assert not Path("/dev/null").is_dir()


def test_a_state_dir_with_a_name_too_long_is_refused_before_anything_is_made(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    long_dir = tmp_path / ("d" * 300)
    code, err = _run(control_plane_main, ["init-secrets", f"--state-dir={long_dir}"], capsys)
    assert code == 2
    assert "argument --state-dir" in err
    assert os.listdir(tmp_path) == ["home"]


@pytest.mark.parametrize("command", ["status", "stop", "init-secrets"])
def test_a_state_dir_from_the_environment_is_refused_as_the_flag_is(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: str
):
    too_long = f"/dev/null/{'n' * 300}"
    monkeypatch.setenv("HAN_CONTROL_PLANE_DIR", too_long)
    code, err = _run(control_plane_main, [command], capsys)
    assert code == 2
    assert too_long[:40] in err
    assert os.listdir(tmp_path) == ["home"]


@pytest.mark.parametrize("value", ["٣", "nan", "3e6"], ids=["arabic-indic-digit", "nan", "past-30-days"])
def test_harden_check_timeout_is_read_as_every_other_seconds_flag(
    capsys: pytest.CaptureFixture[str], value: str
):
    # float() reads "٣" as 3: the check then went on to the state directory and named it instead.
    code, err = _run(
        worker_main, ["harden-check", *CONTEXT[("han-worker", "harden-check")], f"--timeout={value}"], capsys
    )
    assert code == 2
    assert "argument --timeout" in err, err
