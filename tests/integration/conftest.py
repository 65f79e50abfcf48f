"""Integration tests run against the local testbed that `make testbed` builds."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

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
