"""`make testbed` stops at once, with what is needed, on a machine that cannot host the testbed."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "roles/testbed/files/host_prereqs.sh"


def run_prereqs(os_release: Path, *, user: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["sh", str(SCRIPT)]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    env = {"PATH": os.environ["PATH"], "OS_RELEASE_FILE": str(os_release)}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory the unprivileged user of the test can read (pytest's tmp tree is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="han-os-release-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


def write_os_release(directory: Path, text: str) -> Path:
    path = directory / "os-release"
    path.write_text(text)
    path.chmod(0o644)
    return path


def test_refuses_a_machine_that_is_not_debian(tmp_path: Path) -> None:
    result = run_prereqs(write_os_release(tmp_path, 'ID=fedora\nVERSION_ID="40"\n'))
    assert result.returncode == 1
    assert "this machine is 'fedora', not Debian" in result.stderr
    assert "Debian 12 or later" in result.stderr


def test_refuses_debian_older_than_12(tmp_path: Path) -> None:
    result = run_prereqs(write_os_release(tmp_path, 'ID=debian\nVERSION_ID="11"\n'))
    assert result.returncode == 1
    assert "this is Debian 11: the testbed needs Debian 12 or later" in result.stderr


def test_refuses_a_missing_os_release(tmp_path: Path) -> None:
    result = run_prereqs(tmp_path / "absent")
    assert result.returncode == 1
    assert "cannot read" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="playing a non-root user needs root (runuser)")
def test_refuses_a_user_that_is_not_root(public_dir: Path) -> None:
    if shutil.which("runuser") is None:
        pytest.skip("runuser is not installed")
    result = run_prereqs(write_os_release(public_dir, 'ID=debian\nVERSION_ID="12"\n'), user="nobody")
    assert result.returncode == 1
    assert "run as root (uid 0), not as nobody" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the script accepts only root")
def test_accepts_debian_12_as_root(tmp_path: Path) -> None:
    result = run_prereqs(write_os_release(tmp_path, 'ID=debian\nVERSION_ID="12"\n'))
    assert result.returncode == 0, result.stderr
