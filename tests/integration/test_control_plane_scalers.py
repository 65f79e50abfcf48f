"""The control plane runs the elastic pools' scalers (issue 20, han_worker/control_plane/scalers.py), on the
testbed's real Slurm: a pool registered in ``<state dir>/scalers/<pool>.json`` gets its ``han-worker scale``
as a child of the supervisor, which starts it again after a SIGKILL, stops it when the file is removed and
while the control plane stops; a restart of the control plane in the middle of a scale-up starts it again from
the same files, and no worker job is submitted twice (never more than the pool's limits alive or waiting, every
job one attempt). A registration file that cannot be used is named in the supervisor's log and changes nothing
else.

The control plane (127.0.0.88), the pool's job name and the state directories are this module's own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    start_control_plane,
    wait_for,
    write_private_file,
)
from tests.integration.scaling_pools import ElasticPool, PeakSampler

pytestmark = pytest.mark.own_names

ADDRESS = "127.0.0.88"  # no other test or benchmark uses it
JOBS = 10
MAX_WORKERS, MAX_PENDING = 3, 1


class RegisteredPool(ElasticPool):
    """A pool's files, as role pegasus_worker writes them, and its registration with the control plane."""

    def __init__(self, env: UnprivilegedEnv, workdir: Path, control_plane: RunningControlPlane) -> None:
        super().__init__(env, workdir, control_plane, job_prefix="han-test-cpscaler", tick_seconds=2,
                         max_workers=MAX_WORKERS, max_pending=MAX_PENDING)  # fmt: skip

    @property
    def scalers_dir(self) -> Path:
        return self.cp.state_dir / "scalers"

    @property
    def registration(self) -> Path:
        return self.scalers_dir / f"{self.job_name}.json"

    @property
    def scaler_log(self) -> Path:
        return self.scalers_dir / f"{self.job_name}.log"

    def register(self, name: str | None = None, **document: object) -> Path:
        """Write a registration file as the cluster user, atomically (a rename, as Ansible's copy does)."""
        target = self.registration if name is None else self.scalers_dir / name
        content = {"schema": 1, "config": str(self.worker_config), "pool": str(self.pool_file),
                   "state": str(self.state), **document}  # fmt: skip
        staged = write_private_file(self.env, self.scalers_dir / f".{target.name}.tmp", json.dumps(content))
        staged.rename(target)
        return target

    def scaler_pid(self) -> int | None:
        """The pid of the pool's scaler while the supervisor says it runs."""
        try:
            return int(json.loads((self.scalers_dir / f"{self.job_name}.running").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None


@pytest.fixture
def pool(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[RegisteredPool]:
    control_plane = start_control_plane(unprivileged_env, workdir / "cp", address=ADDRESS)
    made = RegisteredPool(unprivileged_env, workdir, control_plane)
    try:
        yield made
    finally:
        made.registration.unlink(missing_ok=True)
        made.cp.shutdown()  # the one running now (the test restarts it)
        subprocess.run(["scancel", f"--name={made.job_name}"], check=False)
        shutil.rmtree(made.cp.state_dir, ignore_errors=True)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught, 16) & (1 << (signal.SIGTERM - 1)))


def test_the_supervisor_runs_restarts_and_stops_a_registered_scaler(pool: RegisteredPool) -> None:
    bad = pool.register("broken.json", pool="relative/pool.json")
    pool.register()
    first = wait_for(pool.scaler_pid, 30, f"the scaler started:\n{pool.cp.output()[-3000:]}")
    wait_for(pool.state.exists, 30, f"the scaler's first tick:\n{pool.scaler_log.read_text()[-3000:]}")
    assert (
        f"scaler not run: {bad}: field 'pool': 'relative/pool.json' is not an absolute path"
        in pool.cp.output()
    )
    assert pool.cp.process.poll() is None, "a bad file does not bring the control plane down"

    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: pool.scaler_pid() not in (None, first) and pool.scaler_pid(), 30,
                      f"the scaler started again:\n{pool.cp.output()[-3000:]}")  # fmt: skip
    assert f"scaler {pool.job_name} exited with code -9" in pool.cp.output()

    # A scaler stops between two ticks once it handles SIGTERM; before that (Python still importing) SIGTERM's
    # default ends it (exit code -15), which is as harmless but not what is checked here.
    wait_for(lambda: catches_sigterm(int(second)), 30, "the restarted scaler handles SIGTERM")
    pool.registration.unlink()
    # The supervisor removes the running file, then logs the exit: wait for the line, not only for the file.
    stopped = f"scaler {pool.job_name} stopped (exit code "
    wait_for(lambda: pool.scaler_pid() is None and gone(int(second)) and stopped in pool.cp.output(), 30,
             f"the scaler stopped once its file was removed:\n{pool.cp.output()[-3000:]}")  # fmt: skip
    assert f"{stopped}0)" in pool.cp.output(), "SIGTERM: between two ticks"


def test_a_control_plane_restart_mid_scale_up_submits_no_worker_job_twice(pool: RegisteredPool) -> None:
    jobs = pool.submit_sleeps(JOBS, seconds=2)
    sampler = PeakSampler(pool)
    sampler.start()
    try:
        pool.register()
        wait_for(lambda: "submitted worker job" in (pool.scaler_log.read_text() if pool.scaler_log.exists()
                                                    else ""), 60, "the first worker job")  # fmt: skip
        scaler = pool.scaler_pid()
        assert scaler is not None
        epoch = int(str(pool.cp.endpoints["epoch"]))
        assert pool.cp.stop() == 0, pool.cp.output()[-3000:]
        stopped = pool.cp.output()
        assert gone(scaler)
        assert pool.scaler_pid() is None, "the supervisor stopped its scaler before it ended"
        # The scaler first, then the services: it submits nothing to a control plane going away.
        assert stopped.index(f"scaler {pool.job_name} stopped") < stopped.index("postgres stopped"), stopped
        pool.cp = start_control_plane(pool.env, pool.cp.state_dir, address=ADDRESS)
        assert pool.cp.endpoints["epoch"] == epoch + 1
        wait_for(pool.scaler_pid, 30, f"the successor's scaler:\n{pool.cp.output()[-3000:]}")
        ledger = pool.cp.ledger()
        try:
            wait_for(lambda: all(ledger.status(job) == "succeeded" for job in jobs), 240,
                     f"the {JOBS} jobs to succeed:\n{pool.scaler_log.read_text()[-3000:]}", interval=0.5)  # fmt: skip
            records = [ledger.job(job) for job in jobs]
        finally:
            ledger.close()
        wait_for(lambda: pool.alive() == [], 60, "every worker job to leave (idle_timeout 3 s)", interval=0.5)
    finally:
        sampler.stopping.set()
    output = pool.scaler_log.read_text()
    assert sampler.most_alive <= MAX_WORKERS, output
    assert sampler.most_waiting <= MAX_PENDING, output
    assert [record.attempts if record else None for record in records] == [1] * JOBS, (
        "none killed or run twice"
    )
    submitted = output.count("submitted worker job")
    assert 1 <= submitted <= MAX_WORKERS + 2, output  # a worker that left may be replaced while work remains
    state = json.loads(pool.state.read_text())
    assert state["submitted"] == {}, "every worker job it submitted registered, across the restart"
    assert state["failures"]["starts"] == 0, state
    assert "Traceback" not in output, output
