"""Runbook step 1 on the testbed: playbooks/bootstrap.yml builds the env on "Pegasus" over SSH (wheels).

The first build downloads ~65 MB of wheels (pip caches them in the cluster account's home); later runs
find the spec unchanged and take a few seconds. The runs build han_worker from a snapshot of its sources
taken when the module starts, so that edits to the working tree meanwhile do not change the spec under test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, run_ansible
from tests.integration.conftest import PEGASUS, recap
from tests.integration.conftest import ssh as ssh_to

ENV = "~/.han/env"
WHEELS = ("-e", "pegasus_env_provider=wheels")
Bootstrap = Callable[..., subprocess.CompletedProcess[str]]


def snapshot_sources(dest: Path) -> Path:
    shutil.copytree(REPO / "han_worker", dest / "han_worker", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return snapshot_sources(tmp_path_factory.mktemp("han-worker-sources"))


@pytest.fixture(scope="module")
def bootstrap(sources: Path) -> Bootstrap:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        source = ("-e", f"pegasus_env_source_dir={sources}")
        return run_ansible(
            "ansible-playbook", "playbooks/bootstrap.yml", "--limit", "pegasus", *WHEELS, *source, *args
        )

    return run


def ssh(command: str) -> subprocess.CompletedProcess[str]:
    return ssh_to(PEGASUS, command)


def ssh_ok(command: str) -> str:
    result = ssh(command)
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    return result.stdout


def env_target() -> str:
    return ssh_ok(f"readlink {ENV}").strip()


def flat(text: str) -> str:
    """The output with the YAML callback's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def built(bootstrap: Bootstrap) -> str:
    """Build (or find unchanged) the env; returns the build the env link points at."""
    result = bootstrap()
    assert result.returncode == 0, result.stdout + result.stderr
    assert recap(result, "pegasus-login")["failed"] == 0
    return env_target()


def test_bootstrap_builds_an_env_whose_programs_run_over_ssh(bootstrap: Bootstrap, built: str) -> None:
    assert re.fullmatch(r"env\.builds/[0-9a-f]{16}", built)
    assert ssh_ok(f"{ENV}/bin/han-worker --version").startswith("han-worker ")
    assert ssh_ok(f"{ENV}/bin/python -c 'import han_worker, redis, psycopg, minio'") == ""
    assert ssh_ok(f"{ENV}/bin/initdb --version").startswith("initdb (PostgreSQL) 18.")
    assert "Valkey server v=9.1.2 " in ssh_ok(f"{ENV}/bin/valkey-server --version")
    assert " 4.48 " in ssh_ok(f"{ENV}/bin/weed version")
    assert ssh_ok(f"stat -c '%U %a' {ENV}.builds").split() == ["pegasus", "700"]


def test_second_run_changes_nothing(bootstrap: Bootstrap, built: str) -> None:
    result = bootstrap()
    assert result.returncode == 0, result.stdout
    assert recap(result, "pegasus-login")["changed"] == 0, result.stdout
    assert env_target() == built


def test_check_mode_reports_no_change(bootstrap: Bootstrap, built: str) -> None:
    result = bootstrap("--check")
    assert result.returncode == 0, result.stdout
    assert recap(result, "pegasus-login")["changed"] == 0, result.stdout


def test_check_mode_reports_the_build_that_changed_sources_need(
    bootstrap: Bootstrap, built: str, tmp_path: Path
) -> None:
    changed = snapshot_sources(tmp_path)
    with (changed / "han_worker" / "__init__.py").open("a") as handle:
        handle.write("# changed\n")
    result = bootstrap("--check", "-e", f"pegasus_env_source_dir={changed}")
    assert result.returncode == 0, result.stdout
    assert recap(result, "pegasus-login")["changed"] > 0, result.stdout
    assert "pegasus_env would build /home/pegasus/.han/env.builds/" in flat(result.stdout)
    assert env_target() == built


def test_conda_provider_in_check_mode_validates_and_reports_its_build(
    bootstrap: Bootstrap, built: str
) -> None:
    """conda cannot run here: check mode is how far the conda provider goes on the testbed."""
    result = bootstrap("--check", "-e", "pegasus_env_provider=conda")
    assert result.returncode == 0, result.stdout
    assert re.search(r"pegasus_env would build \S+ \(conda provider\)", flat(result.stdout)), result.stdout
    assert env_target() == built


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        ("pegasus_env_provider=pip", "value of pegasus_env_provider must be one of: conda, wheels, got: pip"),
        ("pegasus_env_path=relative/env", "pegasus_env_path must be an absolute or ~/-relative path"),
        (
            '{"pegasus_env_extra_python_packages": ["fastapi", "--index-url=https://example.invalid"]}',
            "pegasus_env_extra_python_packages must be a list of pip requirements",
        ),
        ("pegasus_env_python=/usr/bin/python9", "pegasus_env_python: '/usr/bin/python9' cannot be run"),
    ],
)
def test_bad_input_fails_naming_the_variable(
    bootstrap: Bootstrap, built: str, extra_vars: str, message: str
) -> None:
    result = bootstrap("-e", extra_vars)
    assert result.returncode == 2, result.stdout
    assert message in flat(result.stdout), result.stdout
    assert env_target() == built


def test_python_without_venv_is_refused(bootstrap: Bootstrap, built: str) -> None:
    """Debian's python3 without python3-venv: ensurepip is missing."""
    wrapper = ssh_ok("mktemp /tmp/python-without-venv.XXXXXX").strip()
    try:
        script = "import sys; sys.modules.update(ensurepip=None); exec(sys.argv[1])"
        ssh_ok(f'printf \'#!/bin/sh\\nexec /usr/bin/python3 -c "{script}" "$2"\\n\' > {wrapper}')
        ssh_ok(f"chmod 700 {wrapper}")
        result = bootstrap("-e", f"pegasus_env_python={wrapper}")
    finally:
        ssh_ok(f"rm -f {wrapper}")
    assert result.returncode == 2, result.stdout
    assert "lacks the venv module or ensurepip" in flat(result.stdout), result.stdout
    assert "install python3-venv" in flat(result.stdout)


def test_failed_build_leaves_the_env_working_and_the_next_run_repairs(
    bootstrap: Bootstrap, built: str
) -> None:
    result = bootstrap("-e", '{"pegasus_env_extra_python_packages": ["han-infra-no-such-package==0.0.0"]}')
    assert result.returncode == 2, result.stdout
    assert "Install the servers, the Python packages and han_worker into the venv." in result.stdout
    assert env_target() == built
    assert ssh_ok(f"{ENV}/bin/han-worker --version").startswith("han-worker ")
    leftovers = ssh_ok(f"ls {ENV}.builds").split()
    assert len(leftovers) > 2, leftovers  # the failed build is there, incomplete

    repaired = bootstrap()
    assert repaired.returncode == 0, repaired.stdout
    assert env_target() == built
    kept = set(ssh_ok(f"ls {ENV}.builds").split())
    previous = ssh(f"readlink {ENV}.previous").stdout.strip()
    expected = {Path(built).name, f"{Path(built).name}.inputs"}
    if previous:
        expected |= {Path(previous).name, f"{Path(previous).name}.inputs"}
    assert kept == expected
    assert recap(bootstrap(), "pegasus-login")["changed"] == 0
