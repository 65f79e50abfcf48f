"""A chaos round, shared by tests/integration/test_chaos.py (small) and the bench's ``chaos`` section (longer).

One control plane (``han-control-plane run --restart-crashed``, direct mode, its own address 127.0.0.70,
free ports) and W workers (``han-worker run --restart-crashed``, mode ``pegasus`` on it), all as the cluster
user; N ``sleep`` jobs submitted at once. While they run, kills at even steps of the jobs' progress: worker
children SIGKILLed (the keeper stays), Valkey SIGKILLed (the supervisor restarts it in place), and the
supervisor SIGKILLed together with all its services (the keeper starts a new supervisor, which takes over
from its dead predecessor and publishes the next epoch). Then, once the ledger says every job finished and
everything is back, the figures, counted from the ledger:

- succeeded, lost (not succeeded) and duplicated (more than one succeeded attempt) jobs;
- seconds without a control plane: sampled, the endpoints file missing or stale, or PostgreSQL, Valkey or
  the S3 port not answering;
- seconds below the worker count: sampled while Valkey answers, fewer registered workers whose process
  still runs (a killed worker's entry stays until it expires) than configured;
- the control plane's epoch before and after, and whether it is back: its keeper the one started, one
  supervisor, published, not stale (a direct launch has no Slurm successor to queue).

Root runs this (as the tests do): it reads the cluster user's files directly and signals its processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
import redis

from han_worker import client
from han_worker.control_plane.layout import Layout, running_pid
from han_worker.selection.endpoints import parse_endpoints
from han_worker.selection.resolver import Choice
from han_worker.selection.tls import postgres_tls
from han_worker.store.link import open_link
from han_worker.store.queues import Queues
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    WorkerProcess,
    child_pids,
    start_control_plane,
    start_worker,
    worker_settings,
    write_private_file,
)

ADDRESS = "127.0.0.70"  # no other test or benchmark uses it
SAMPLE_S = 0.25
STEP_TIMEOUT_S = 120.0  # far beyond any step's expected time: a step that takes this long is broken
WORKER, VALKEY, CONTROL_PLANE = "worker", "valkey", "control plane"


class ChaosError(RuntimeError):
    """The round could not be run to its end (not a figure: the figures are never judged here)."""


@dataclass(frozen=True)
class Plan:
    workers: int
    jobs: int
    worker_kills: int
    valkey_kills: int = 1
    control_plane_kills: int = 1
    job_seconds: float = 0.5
    max_attempts: int = 5  # a job may meet more than one kill: each costs an attempt

    def kills(self) -> list[str]:
        """The kills in order: the worker kills spread out, Valkey's after a third of them, the control
        plane's after two thirds, so that each happens while jobs run and the others recover."""
        order = [WORKER] * self.worker_kills
        for fraction, what, count in ((2 / 3, CONTROL_PLANE, self.control_plane_kills),
                                      (1 / 3, VALKEY, self.valkey_kills)):  # fmt: skip
            for _kill in range(count):
                order.insert(round(fraction * self.worker_kills), what)
        return order


@dataclass
class Result:
    plan: Plan
    seconds: float = 0.0
    succeeded: int = 0
    lost: int = 0
    duplicated: int = 0
    crashed_attempts: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    worker_kills_mid_job: int = 0
    seconds_without_control_plane: float = 0.0
    seconds_below_worker_count: float = 0.0
    epoch_before: int | None = None
    epoch_after: int | None = None
    control_plane_back: bool = False
    control_plane_processes: int = 0  # keeper and supervisor at the end: 2, no successor of any kind
    workers_at_end: int = 0
    scratch_left_by_killed_workers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# -- looking at the control plane as root ---------------------------------------------------------------


def _postgres(cp: RunningControlPlane, timeout: float = 2.0) -> psycopg.Connection[tuple[Any, ...]]:
    credentials, postgres = cp.worker_credentials(), cp.service("postgres")
    return psycopg.connect(
        postgres_tls(credentials.tls_ca_cert, "credentials.json"),
        host=postgres.host, port=postgres.port, user=credentials.postgres.user,
        password=credentials.postgres.password, dbname=credentials.postgres.database,
        autocommit=True, connect_timeout=max(1, round(timeout)),
    )  # fmt: skip


def _redis(cp: RunningControlPlane, timeout: float = 1.0) -> redis.Redis:
    return cp.redis_admin(timeout)


def control_plane_answers(cp: RunningControlPlane) -> bool:
    """Published, not stale, and each service answering (PostgreSQL and Valkey a query, S3 its port)."""
    try:
        if cp.endpoints.get("stale") is not False:
            return False
        with _postgres(cp) as connection:
            connection.execute("SELECT 1")
        client_ = _redis(cp)
        try:
            client_.ping()
        finally:
            client_.close()
        s3 = cp.service("s3")
        socket.create_connection((s3.host, s3.port), timeout=1.0).close()
    except Exception:  # whatever fails (file, connection, login) means "no control plane" for this sample
        return False
    return True


def registry(cp: RunningControlPlane) -> list[dict[str, str]]:
    """The worker registry's entries, read as the control plane's own code reads them (Queues.workers)."""
    client_ = _redis(cp)
    try:
        return Queues(client_).workers()
    finally:
        client_.close()


def live_workers(cp: RunningControlPlane) -> int | None:
    """Registered workers whose process still runs (not draining); None when Valkey does not answer."""
    try:
        entries = registry(cp)
    except Exception:
        return None
    return len([entry for entry in entries if entry.get("draining") != "1" and _runs(entry.get("pid"))])


def _runs(pid: str | None) -> bool:
    return pid is not None and pid.isdigit() and Path(f"/proc/{pid}").exists()


def epoch(cp: RunningControlPlane) -> int | None:
    try:
        return int(str(cp.endpoints["epoch"]))
    except (OSError, ValueError, KeyError):
        return None


def finished(cp: RunningControlPlane, job_ids: list[str]) -> int | None:
    """How many of the jobs have finished (succeeded, failed or dead); None when PostgreSQL does not answer."""
    try:
        with _postgres(cp) as connection:
            row = connection.execute(
                "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND status IN ('succeeded', 'failed', 'dead')",
                (job_ids,),
            ).fetchone()
    except Exception:
        return None
    return None if row is None else int(row[0])


def _at_least(cp: RunningControlPlane, job_ids: list[str], due: float) -> Callable[[], bool]:
    return lambda: (finished(cp, job_ids) or 0) >= due


class LedgerCounts(Protocol):
    """What :func:`count_from_ledger` fills in (this module's Result, and elastic_chaos_round's)."""

    succeeded: int
    lost: int
    duplicated: int
    crashed_attempts: int


def count_from_ledger(cp: RunningControlPlane, job_ids: list[str], result: LedgerCounts) -> None:
    with _postgres(cp, timeout=5) as connection:
        row = connection.execute(
            "SELECT count(*) FILTER (WHERE status = 'succeeded') FROM jobs WHERE id = ANY(%s::uuid[])",
            (job_ids,),
        ).fetchone()
        result.succeeded = int(row[0]) if row else 0
        result.lost = len(job_ids) - result.succeeded
        row = connection.execute(
            "SELECT count(*) FROM (SELECT job_id FROM job_attempts WHERE job_id = ANY(%s::uuid[]) "
            "AND outcome = 'succeeded' GROUP BY job_id HAVING count(*) > 1) AS twice",
            (job_ids,),
        ).fetchone()
        result.duplicated = int(row[0]) if row else 0
        row = connection.execute(
            "SELECT count(*) FROM job_attempts WHERE job_id = ANY(%s::uuid[]) AND outcome = 'crashed'",
            (job_ids,),
        ).fetchone()
        result.crashed_attempts = int(row[0]) if row else 0


# -- processes ------------------------------------------------------------------------------------------


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def control_plane_programs(state_dir: Path) -> list[int]:
    """The keepers and supervisors running on ``state_dir`` (``han-control-plane ... --state-dir DIR`` or
    ``python -m han_worker.control_plane ...``), whatever started them."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        ours = any(arg == "han_worker.control_plane" or arg.endswith("/han-control-plane") for arg in argv)
        if ours and str(state_dir) in argv:
            found.append(int(entry.name))
    return found


class Sampler(threading.Thread):
    """Samples the control plane and the worker count every SAMPLE_S until stopped; adds up the seconds."""

    def __init__(self, cp: RunningControlPlane, workers: int, result: Result) -> None:
        super().__init__(name="chaos-sampler", daemon=True)
        self.cp, self.workers, self.result = cp, workers, result
        self.stopping = threading.Event()

    def run(self) -> None:
        last = time.monotonic()
        while not self.stopping.wait(SAMPLE_S):
            up = control_plane_answers(self.cp)
            count = live_workers(self.cp) if up else None
            now = time.monotonic()
            if not up:
                self.result.seconds_without_control_plane += now - last
            elif count is not None and count < self.workers:
                self.result.seconds_below_worker_count += now - last
            last = now


# -- the round ------------------------------------------------------------------------------------------


def wait_until(
    condition: Callable[[], object],
    what: str,
    timeout: float = STEP_TIMEOUT_S,
    detail: Callable[[], str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ChaosError(f"timed out after {timeout:g}s waiting for {what}{detail() if detail else ''}")
        time.sleep(0.1)


@dataclass
class Round:
    env: UnprivilegedEnv
    workdir: Path
    plan: Plan
    log: Callable[[str], None] = print
    result: Result = field(init=False)
    cp: RunningControlPlane | None = field(default=None, init=False)
    workers: list[WorkerProcess] = field(default_factory=list, init=False)
    killed_worker_pids: list[int] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.result = Result(self.plan, kills={WORKER: 0, VALKEY: 0, CONTROL_PLANE: 0})

    def run(self) -> Result:
        with self._running() as cp:
            started = time.monotonic()
            self.result.epoch_before = epoch(cp)
            job_ids = self._submit(cp)
            sampler = Sampler(cp, self.plan.workers, self.result)
            sampler.start()
            try:
                self._kill_while_running(cp, job_ids)
                wait_until(lambda: finished(cp, job_ids) == len(job_ids), "every job to finish", 600)
                wait_until(
                    lambda: self._back(cp), "the control plane and every worker back", detail=self._state
                )
            finally:
                sampler.stopping.set()
                sampler.join()
            self.result.seconds = time.monotonic() - started
            count_from_ledger(cp, job_ids, self.result)
            self._final_state(cp)
        return self.result

    @contextmanager
    def _running(self) -> Iterator[RunningControlPlane]:
        state_dir = self.workdir / "cp"
        cp = self.cp = start_control_plane(self.env, state_dir, "--restart-crashed", address=ADDRESS)
        try:
            settings = worker_settings(cp, self.workdir / "spool", mode="pegasus")
            config = write_private_file(self.env, self.workdir / "worker.json", json.dumps(settings))
            self.workers = [start_worker(self.env, config, "--restart-crashed", "--quiet")
                            for _worker in range(self.plan.workers)]  # fmt: skip
            wait_until(
                lambda: live_workers(cp) == self.plan.workers, f"{self.plan.workers} workers registered"
            )
            yield cp
        finally:
            for worker in self.workers:
                with contextlib.suppress(Exception):
                    worker.stop(timeout=30)
                worker.kill()
            cp.shutdown()

    def _submit(self, cp: RunningControlPlane) -> list[str]:
        endpoints = parse_endpoints(cp.endpoints, "endpoints.json")
        link = open_link(
            Choice("pegasus", endpoints, cp.worker_credentials(), "chaos"), timeout=5, name="chaos"
        )
        try:
            params = [{"seconds": self.plan.job_seconds}] * self.plan.jobs
            return client.submit_many(link, "sleep", params, max_attempts=self.plan.max_attempts)
        finally:
            link.close()

    def _kill_while_running(self, cp: RunningControlPlane, job_ids: list[str]) -> None:
        kills = self.plan.kills()
        for index, what in enumerate(kills):
            # Kill k of n when a share (k + 1) / (n + 2) of the jobs has finished: all of them while jobs run.
            due = len(job_ids) * (index + 1) / (len(kills) + 2)
            wait_until(_at_least(cp, job_ids, due), f"{due:.0f} jobs finished", 300)
            self._killers()[what](cp)
            self.result.kills[what] += 1

    def _killers(self) -> dict[str, Callable[[RunningControlPlane], None]]:
        return {WORKER: self._kill_worker, VALKEY: self._kill_valkey, CONTROL_PLANE: self._kill_control_plane}

    def _kill_worker(self, cp: RunningControlPlane) -> None:
        keeper = self.workers[len(self.killed_worker_pids) % len(self.workers)]
        wait_until(lambda: child_pids(keeper.pid), "the worker's keeper to have a worker")
        pid = min(child_pids(keeper.pid))  # its one worker
        mid_job = self._busy(cp, pid)
        os.kill(pid, signal.SIGKILL)
        self.killed_worker_pids.append(pid)
        self.result.worker_kills_mid_job += int(mid_job)
        self.log(f"chaos: SIGKILL worker pid {pid}{' (mid-job)' if mid_job else ''}")

    @staticmethod
    def _busy(cp: RunningControlPlane, pid: int) -> bool:
        with contextlib.suppress(Exception):
            return any(entry.get("pid") == str(pid) and entry.get("current_job") for entry in registry(cp))
        return False

    def _supervisor(self, cp: RunningControlPlane) -> int:
        pid = running_pid(Layout(cp.state_dir))
        if pid is None:
            raise ChaosError("no supervisor holds the state directory's lock")
        return pid

    def _kill_valkey(self, cp: RunningControlPlane) -> None:
        wait_until(lambda: control_plane_answers(cp), "the control plane before Valkey's kill")
        pid = next((child for child in child_pids(self._supervisor(cp)) if "valkey" in _exe(child)), None)
        if pid is None:
            raise ChaosError("the supervisor has no Valkey child")
        os.kill(pid, signal.SIGKILL)
        self.log(f"chaos: SIGKILL Valkey pid {pid}")

    def _kill_control_plane(self, cp: RunningControlPlane) -> None:
        wait_until(lambda: control_plane_answers(cp), "the control plane before its kill")
        supervisor = self._supervisor(cp)
        for pid in [supervisor, *child_pids(supervisor)]:  # at once, as a killed Slurm job's processes
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.log(f"chaos: SIGKILL supervisor pid {supervisor} and its services")

    def _state(self) -> str:
        """What a timed-out wait reports: the control plane's and the workers' state and logs' ends."""
        cp = self.cp
        if cp is None:
            return ""
        parts = [f"\ncontrol plane answers: {control_plane_answers(cp)}; live workers: {live_workers(cp)}"]
        with contextlib.suppress(Exception):
            parts += [str(entry) for entry in registry(cp)]
        parts += ["--- control plane:", *cp.output().splitlines()[-40:]]
        for worker in self.workers:
            parts += [f"--- worker keeper {worker.pid}:", *worker.output().splitlines()[-25:]]
        return "\n".join(parts)

    def _back(self, cp: RunningControlPlane) -> bool:
        return control_plane_answers(cp) and live_workers(cp) == self.plan.workers

    def _final_state(self, cp: RunningControlPlane) -> None:
        self.result.epoch_after = epoch(cp)
        self.result.control_plane_back = cp.process.poll() is None and control_plane_answers(cp)
        self.result.control_plane_processes = len(control_plane_programs(cp.state_dir))
        self.result.workers_at_end = live_workers(cp) or 0
        self.result.scratch_left_by_killed_workers = sorted(
            str(path) for pid in self.killed_worker_pids for path in Path("/tmp").glob(f"han-worker-{pid}-*")
        )
