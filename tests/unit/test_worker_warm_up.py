"""A worker warms its backends up in the thread that runs their jobs, before it registers.

The backends here are plain Python stand-ins with a ``warm()`` hook; the pose backend's own warm-up is
tested in test_pose_backend.py and through a real worker in tests/integration/test_worker.py.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from han_worker.backends.base import LINUX, JobContext, JobResult, warm_up
from han_worker.backends.builtin import NoopBackend
from han_worker.config import Overrides, load_worker_config
from han_worker.selection.resolver import Selector
from han_worker.worker.attempt import Timings
from han_worker.worker.loop import StartError, Worker


@dataclass
class Warmable:
    name: str = "warmable"
    queue: str = "warm"
    platforms: frozenset[str] = frozenset({LINUX})
    fails: bool = False
    loading: threading.Event | None = None  # set: the model has loaded (None: at once)
    warmed_in: list[str] = field(default_factory=list)  # the threads that warmed it up

    def warm(self) -> None:
        self.warmed_in.append(threading.current_thread().name)
        if self.loading is not None:
            self.loading.wait(10)
        if self.fails:
            raise OSError("model file pose_landmark_full.tflite: no such file")

    def run(self, context: JobContext) -> JobResult:
        return JobResult({})


def make_worker(tmp_path: Path, backends: dict[str, Any]) -> Worker:
    config_file = tmp_path / "worker.json"
    config_file.write_text(json.dumps({"mode": "pegasus", "queues": ["noop"], "spool_dir": str(tmp_path)}))
    config_file.chmod(0o600)
    config = load_worker_config(config_file, Overrides(), {})
    return Worker(config, backends, Selector(config))


class FakeLink:
    closed = False

    def close(self) -> None:
        self.closed = True


def warm_in_a_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker._warm_up, name="serving")
    thread.start()
    return thread


def test_warm_up_calls_the_hook_and_says_how_long_it_took() -> None:
    backend = Warmable()
    seconds = warm_up(backend)
    assert seconds is not None
    assert seconds >= 0
    assert backend.warmed_in == [threading.current_thread().name]
    assert warm_up(NoopBackend()) is None  # no hook: nothing to do


def test_the_worker_warms_every_backend_up_in_the_serving_thread_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = Warmable(), Warmable(name="other")
    worker = make_worker(tmp_path, {"warmable": first, "other": second, "noop": NoopBackend()})
    link = FakeLink()
    with caplog.at_level(logging.INFO, logger="han_worker.worker.loop"):
        thread = warm_in_a_thread(worker)
        assert worker._warmed_up(link)  # type: ignore[arg-type]
        thread.join(5)
    assert (first.warmed_in, second.warmed_in) == (["serving"], ["serving"])
    assert not link.closed
    lines = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("backend warmable warmed up in ") for line in lines), lines
    assert not any("noop" in line for line in lines)


def test_a_backend_that_cannot_warm_up_stops_the_worker_from_starting(tmp_path: Path) -> None:
    worker = make_worker(tmp_path, {"warmable": Warmable(fails=True)})
    link = FakeLink()
    warm_in_a_thread(worker).join(5)
    with pytest.raises(StartError, match=r"queue 'warm': backend warmable cannot load its model: OSError: "
                       "model file pose_landmark_full.tflite: no such file"):  # fmt: skip
        worker._warmed_up(link)  # type: ignore[arg-type]
    assert link.closed


def test_a_stop_during_the_warm_up_does_not_wait_for_it(tmp_path: Path) -> None:
    release = threading.Event()
    worker = make_worker(tmp_path, {"warmable": Warmable(loading=release)})
    link = FakeLink()
    thread = warm_in_a_thread(worker)
    worker.stop()
    started = time.monotonic()
    assert not worker._warmed_up(link)  # type: ignore[arg-type]
    assert time.monotonic() - started < 2
    assert link.closed
    release.set()
    thread.join(5)


def test_a_worker_stopped_before_it_connects_leaves_no_serving_thread_behind(
    tmp_path: Path, restored_signals: None
) -> None:
    worker = make_worker(tmp_path, {"warmable": Warmable()})
    worker.stopping.set()
    assert worker.run() == 0
    deadline = time.monotonic() + 5
    while any(thread.name == "serving" for thread in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(thread.name == "serving" for thread in threading.enumerate())


def test_timings_add_up_per_job() -> None:
    total = Timings()
    for backend_seconds in (0.030, 0.040):
        job = Timings()
        job.seconds.update(download=0.002, backend=backend_seconds, upload=0.003, ledger=0.001, queue=0.0005)
        job.seconds["total"] = sum(job.seconds.values()) + 0.001
        total.add(job)
    assert total.per_job(2) == (
        "total 42.5 ms: download 2.0, backend 35.0, upload 3.0, ledger 1.0, queue 0.5, other 1.0"
    )
