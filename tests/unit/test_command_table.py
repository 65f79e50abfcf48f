"""han-worker imports only the module of the command it runs (han_worker.cli.commands): the table must say
what each module defines, and a command's process must not import the others."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from han_worker.cli import build_worker_parser, command_named
from han_worker.cli.commands import WORKER_COMMANDS
from tests.unit.test_docs import subcommands


def commands_of(module: str) -> list[str]:
    commands = argparse.ArgumentParser().add_subparsers()
    importlib.import_module(f"han_worker.cli.{module}").add_parsers(commands)
    return list(commands.choices)


@pytest.mark.parametrize("module", sorted({entry.module for entry in WORKER_COMMANDS.values()}))
def test_the_table_names_each_modules_commands_in_their_order(module: str) -> None:
    assert commands_of(module) == [name for name, entry in WORKER_COMMANDS.items() if entry.module == module]


def test_help_without_the_modules_is_the_help_with_them() -> None:
    lazy, whole = build_worker_parser(whole=[]), build_worker_parser()
    assert lazy.format_help() == whole.format_help()
    assert list(subcommands(lazy)) == list(subcommands(whole)) == list(WORKER_COMMANDS)


def test_a_commands_parser_is_whole_and_the_others_are_names() -> None:
    parser = build_worker_parser(whole=["submit"])
    args = parser.parse_args(["submit", "--kind", "noop", "--input", "x"])
    assert args.kind == "noop"
    assert callable(args.handler)
    with pytest.raises(SystemExit):  # `top` is a name here: its --interval is unknown
        parser.parse_args(["top", "--interval", "2"])


LOADED = """
import json, sys
from han_worker.cli import build_worker_parser
build_worker_parser(whole=[sys.argv[1]])
print(json.dumps(sorted(name for name in sys.modules if name.startswith(("han_worker", "rich")))))
"""


def modules_loaded_for(command: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", LOADED, command], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout))


def test_submit_imports_neither_the_worker_nor_the_other_commands() -> None:
    loaded = modules_loaded_for("submit")
    assert {"han_worker.cli.jobs", "han_worker.client", "han_worker.batches"} <= loaded
    unwanted = {"han_worker.worker.loop", "han_worker.cli.top", "han_worker.cli.harden_check",
                "han_worker.control_plane.hardening.checker", "han_worker.cli.scale", "rich"}  # fmt: skip
    assert not unwanted & loaded


def test_run_imports_the_worker() -> None:
    assert {"han_worker.cli.worker", "han_worker.worker.loop"} <= modules_loaded_for("run")


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["submit", "--kind", "noop"], "submit"),
        (["-v", "harden-check"], "harden-check"),
        (["--verbose", "wait", "--batch", "x"], "wait"),
        (["--help"], None),
        (["-v", "--version"], None),
        (["bogus", "submit"], None),
        ([], None),
    ],
)
def test_the_command_is_the_first_word_that_is_not_an_option(argv: list[str], command: str | None) -> None:
    assert command_named(argv) == command
