"""han_worker/slurm.py is the one Slurm parser, for han_worker and (through a symlink) the collection's modules."""

from __future__ import annotations

import ast
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

import han_worker.slurm
from han_worker.slurm import parse_local_time
from tests.conftest import REPO

SHARED = REPO / "han_worker" / "slurm.py"
MODULE_UTILS_LINK = REPO / "plugins" / "module_utils" / "slurm.py"


def test_module_utils_reads_the_same_file_as_han_worker() -> None:
    assert MODULE_UTILS_LINK.is_symlink()
    assert MODULE_UTILS_LINK.readlink() == Path("../../han_worker/slurm.py")  # relative: survives a build
    assert MODULE_UTILS_LINK.resolve() == SHARED.resolve() == Path(han_worker.slurm.__file__).resolve()


def test_the_parser_imports_the_standard_library_only() -> None:
    """AnsiballZ ships it to targets that have neither han_worker nor its dependencies."""
    tree = ast.parse(SHARED.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    top_level = {name.split(".")[0] for name in imported}
    assert top_level <= set(sys.stdlib_module_names) | {"__future__"}, top_level


def test_the_parser_compiles_for_the_oldest_target_python() -> None:
    """Targets run the modules with their own Python (3.8 at the oldest, as ansible-core 2.19 supports)."""
    ast.parse(SHARED.read_text(), feature_version=(3, 8))


def test_slurm_times_are_read_as_the_nodes_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        assert parse_local_time("2026-07-01T14:00:00\n") == datetime(2026, 7, 1, 12, 0, tzinfo=timezone.utc)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    for not_a_time in ("N/A", "Unknown", "NONE", "", "garbage"):
        assert parse_local_time(not_a_time) is None
