"""Shared test helpers: where the repository is, and how to run its playbooks."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
# The console scripts (ansible-playbook, ...) installed beside the Python that runs the tests.
BIN = Path(sys.executable).parent


def ansible_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    env.update(extra)
    return env


def run_ansible(tool: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / tool), *args],
        cwd=REPO,
        env=env or ansible_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def load_script(path: Path) -> ModuleType:
    """A script that is not in a package (scripts/...), imported under its file's name."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(path.stem, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def recap_counters(output: str, host: str) -> dict[str, int] | None:
    """The PLAY RECAP counters of ``host`` in ansible-playbook's output (ok, changed, failed, ...), or None."""
    line = re.search(rf"^{re.escape(host)}\s+:\s+(.*)$", output, re.MULTILINE)
    if line is None:
        return None
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line.group(1))}
