"""What an operator sees of a real system: the metrics snapshot (han_worker/observe/snapshot.py) after jobs were
submitted, run and failed against a real control plane, its Prometheus exposition, and ``han-worker top`` on a
terminal (tmux, read back with ``capture-pane``): the queues and the workers the ledger and the registry hold,
``q`` exiting 0, and a control plane stopped mid-view shown as a line on the screen, not a traceback.

The control plane is the module's own, on 127.0.0.77; the last test stops it."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from han_worker import client
from han_worker.observe.exposition import exposition
from han_worker.observe.snapshot import Snapshot, take_snapshot
from han_worker.store.link import Link
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    WorkerProcess,
    han_worker,
    own_control_plane,
    serving_worker,
    wait_for,
    worker_settings,
    write_private_file,
)

pytestmark = pytest.mark.self_contained

ADDRESS = "127.0.0.77"  # no other test or benchmark uses it
HOST = socket.gethostname()  # the workers run here, so their registry entries name this host


@pytest.fixture(scope="module")
def control_plane(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[RunningControlPlane]:
    with own_control_plane(unprivileged_env, workdir / "cp", ADDRESS) as running:
        yield running


@pytest.fixture(scope="module")
def link(control_plane: RunningControlPlane) -> Iterator[Link]:
    opened = control_plane.client_link()
    yield opened
    opened.close()


def client_config(env: UnprivilegedEnv, workdir: Path, control_plane: RunningControlPlane, name: str) -> Path:
    document = worker_settings(control_plane, workdir / f"spool-{name}", mode="pegasus")
    return write_private_file(env, workdir / f"{name}.json", json.dumps(document))


@pytest.fixture(scope="module")
def worker(
    unprivileged_env: UnprivilegedEnv, workdir: Path, control_plane: RunningControlPlane
) -> Iterator[WorkerProcess]:
    """One worker of queue noop, started by the first test that needs it, stopped with the module."""
    config = client_config(unprivileged_env, workdir, control_plane, "worker")
    with serving_worker(unprivileged_env, config) as started:
        yield started


def finished(snapshot: Snapshot, kind: str, outcome: str) -> int:
    return sum(item.count for item in snapshot.finished if (item.kind, item.outcome) == (kind, outcome))


def queue(snapshot: Snapshot, name: str) -> tuple[int, int, float]:
    [figures] = [item for item in snapshot.queues if item.queue == name]
    return figures.waiting, figures.running, figures.oldest_waiting_seconds


def test_the_snapshot_counts_the_jobs_waiting_before_any_worker_runs(link: Link) -> None:
    before = take_snapshot(link)
    assert before.control_plane.source == "pegasus"
    assert before.control_plane.walltime_left_seconds is None  # direct launch: no walltime
    assert queue(before, "noop") == (0, 0, 0.0)
    client.submit_many(link, "noop", [{}] * 4, 3)
    waiting = take_snapshot(link)
    assert queue(waiting, "noop")[:2] == (4, 0)
    assert queue(waiting, "noop")[2] > 0


def test_a_worker_runs_them_and_the_snapshot_shows_it_busy_and_the_failure_with_its_error(
    link: Link, worker: WorkerProcess
) -> None:
    client.submit_many(link, "fail", [{"message": "no person found on purpose"}], 1)
    wait_for(lambda: finished(take_snapshot(link), "fail", "failed") == 1, 60, "the failed job")
    wait_for(lambda: finished(take_snapshot(link), "noop", "succeeded") >= 4, 60, "the four noop jobs")
    [sleeper] = client.submit_many(link, "sleep", [{"seconds": 300}], 1)
    snapshot = wait_for(lambda: _busy(link), 30, "the worker to take the sleep job")
    [busy] = [item for item in snapshot.workers if item.state == "busy"]
    assert (busy.host, busy.platform, busy.current_job) == (HOST, "linux", sleeper)
    assert busy.job_seconds is not None
    assert busy.control_plane == "pegasus"
    assert busy.epoch == snapshot.control_plane.epoch
    assert queue(snapshot, "noop")[:2] == (0, 1)
    assert snapshot.failures[0].kind == "fail"
    assert snapshot.failures[0].status == "failed"
    assert snapshot.failures[0].error is not None
    assert "no person found on purpose" in snapshot.failures[0].error
    assert finished(snapshot, "noop", "failed") == 0


def _busy(link: Link) -> Snapshot | None:
    snapshot = take_snapshot(link)
    return snapshot if any(item.state == "busy" for item in snapshot.workers) else None


def test_the_exposition_of_a_real_snapshot_parses_back_to_its_figures(
    link: Link, worker: WorkerProcess
) -> None:
    text = exposition(take_snapshot(link))
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert (
        samples[("han_jobs_finished_total", (("kind", "fail"), ("outcome", "failed"), ("queue", "noop")))]
        == 1
    )
    assert (
        samples[("han_jobs_finished_total", (("kind", "noop"), ("outcome", "succeeded"), ("queue", "noop")))]
        >= 4
    )
    assert samples[("han_workers", (("host", HOST), ("platform", "linux"), ("state", "busy")))] == 1
    assert samples[("han_queue_jobs_running", (("queue", "noop"),))] == 1


def test_top_off_a_terminal_prints_one_plain_snapshot(
    unprivileged_env: UnprivilegedEnv,
    workdir: Path,
    control_plane: RunningControlPlane,
    worker: WorkerProcess,
) -> None:
    config = client_config(unprivileged_env, workdir, control_plane, "top-once")
    result = han_worker(unprivileged_env, "top", "--config", str(config), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "control plane: pegasus epoch" in result.stdout
    assert HOST in result.stdout
    assert "no person found on purpose" in result.stdout
    assert "\x1b[" not in result.stdout  # no terminal codes in a pipe


# -- han-worker top on a terminal ----------------------------------------------------------------------------


class Screen:
    """``han-worker top`` in a detached tmux session of 160x50; its exit status lands in a file."""

    def __init__(self, env: UnprivilegedEnv, workdir: Path, config: Path, name: str) -> None:
        self.session = f"han-top-{name}-{time.monotonic_ns()}"
        self.status_file = workdir / f"{self.session}.status"
        argv = env.argv("han-worker", "top", "--config", str(config), "--interval", "0.5")
        at = argv.index("-i") + 1  # after `env -i`: a terminal type, as an SSH session has
        argv[at:at] = ["TERM=xterm-256color", "LANG=C.UTF-8"]
        command = f"{shlex.join(argv)}; echo $? > {shlex.quote(str(self.status_file))}; sleep 600"
        subprocess.run(
            ["tmux", "new-session", "-d", "-x", "160", "-y", "50", "-s", self.session, command], check=True
        )

    def text(self) -> str:
        result = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.session], capture_output=True, text=True, check=False
        )
        return result.stdout

    def shows(self, *pieces: str) -> str | None:
        text = self.text()
        return text if all(piece in text for piece in pieces) else None

    def press(self, key: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.session, key], check=True)

    def status(self) -> int | None:
        text = self.status_file.read_text().strip() if self.status_file.exists() else ""
        return int(text) if text else None

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.session], capture_output=True, check=False)


@pytest.fixture
def screen(
    unprivileged_env: UnprivilegedEnv,
    workdir: Path,
    control_plane: RunningControlPlane,
    request: pytest.FixtureRequest,
) -> Iterator[Screen]:
    config = client_config(unprivileged_env, workdir, control_plane, "top")
    opened = Screen(unprivileged_env, workdir, config, request.node.name[-20:].strip("_"))
    yield opened
    opened.close()


def test_top_on_a_terminal_shows_the_queues_and_the_workers_and_q_exits_0(
    screen: Screen, worker: WorkerProcess
) -> None:
    text = wait_for(lambda: screen.shows("queues", "noop", HOST, "busy", "recent failures"), 30, "the view")
    assert "control plane: pegasus epoch" in text
    assert "no person found on purpose" in text
    assert "Traceback" not in text
    screen.press("q")
    assert wait_for(lambda: screen.status() is not None, 15, "top to exit on q") is not None
    assert screen.status() == 0


def test_a_control_plane_stopped_mid_view_is_a_line_on_the_screen_not_a_traceback(
    screen: Screen, control_plane: RunningControlPlane, worker: WorkerProcess
) -> None:
    wait_for(lambda: screen.shows("queues", "noop", HOST), 30, "the view")
    control_plane.stop()
    text = wait_for(lambda: screen.shows("control plane unreachable since"), 60, "the unreachable line")
    assert "Traceback" not in text
    assert HOST in text  # the last picture stays on the screen
    time.sleep(2)  # the view keeps trying, and keeps standing
    assert "Traceback" not in screen.text()
    assert screen.status() is None
    screen.press("q")
    wait_for(lambda: screen.status() is not None, 30, "top to exit on q")
    assert screen.status() == 0
