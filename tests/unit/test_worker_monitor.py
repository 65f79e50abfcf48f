"""How fast the worker notices that its control plane is gone, without losing the flap protection.

The monitor probes once per probe interval while the control plane is healthy; after a failed check it
confirms at a fifth of the interval until the gate (threshold checks in a row) decides; the worker's own
broken connection wakes it at once; an endpoints file that its supervisor marked stale switches at once.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from han_worker.config import Overrides, load_worker_config
from han_worker.selection.endpoints import parse_endpoints, write_endpoints_file
from han_worker.selection.resolver import Selector
from han_worker.worker.loop import CONFIRM_SPEEDUP, Periodic, Worker, backends_to_serve


def make_worker(tmp_path: Path, mode: str = "pegasus", **settings: object) -> Worker:
    config_file = tmp_path / "worker.json"
    document = {"mode": mode, "queues": ["noop"], "spool_dir": str(tmp_path / "spool"),
                "pegasus": {"endpoints_file": str(tmp_path / "cp" / "endpoints.json")}, **settings}  # fmt: skip
    config_file.write_text(json.dumps(document))
    config_file.chmod(0o600)
    config = load_worker_config(config_file, Overrides(), {})
    return Worker(config, backends_to_serve(config.queues), Selector(config))


def publish(tmp_path: Path, *, stale: bool) -> None:
    service = {"host": "127.0.0.10", "port": 1}
    document = {"schema": 1, "source": "pegasus", "epoch": 4, "slurm_job_id": "17", "node": "localhost",
                "started_at": "2026-11-29T00:00:00Z", "expires_at": None, "stale": stale,
                "services": {"postgres": service, "redis": service, "s3": service}}  # fmt: skip
    write_endpoints_file(tmp_path / "cp" / "endpoints.json", parse_endpoints(document, "test"))


def test_the_monitor_confirms_a_failed_check_five_times_faster_then_slows_down_again(tmp_path: Path) -> None:
    worker = make_worker(tmp_path, probe_interval_seconds=5)
    assert worker.monitor_interval() == 5
    worker.gate.observe(False)
    assert worker.monitor_interval() == 5 / CONFIRM_SPEEDUP == 1
    worker.gate.observe(True)
    assert worker.monitor_interval() == 5


def test_the_gate_still_needs_threshold_checks_in_a_row(tmp_path: Path) -> None:
    worker = make_worker(tmp_path, flap_threshold=3)
    assert [worker.gate.observe(False) for _check in range(3)] == [False, False, True]


def test_an_endpoints_file_marked_stale_switches_at_the_first_check(tmp_path: Path) -> None:
    worker = make_worker(tmp_path, flap_threshold=3)
    publish(tmp_path, stale=True)
    link: Any = SimpleNamespace(source="pegasus", choice=SimpleNamespace(epoch=4))
    worker.link = link
    worker.monitor_tick()
    assert worker._switch.is_set(), "a supervisor's own 'stale' needs no confirmation"
    assert "marked stale" in worker._switch_reason


def test_an_unreadable_endpoints_file_is_one_failed_check_not_a_switch(tmp_path: Path) -> None:
    worker = make_worker(tmp_path, flap_threshold=3)
    publish(tmp_path, stale=False)
    (tmp_path / "cp" / "endpoints.json").write_text('{"schema": 1,')  # half written by hand? confirm first
    link: Any = SimpleNamespace(source="pegasus", choice=SimpleNamespace(epoch=4))
    worker.link = link
    worker.monitor_tick()
    assert not worker._switch.is_set()
    assert worker.gate.failures == 1


def test_periodic_runs_at_its_current_interval_and_at_once_when_woken() -> None:
    runs: list[float] = []
    stop = threading.Event()
    interval = [60.0]
    thread = Periodic("test", lambda: interval[0], lambda: runs.append(time.monotonic()), stop)
    thread.start()
    try:
        time.sleep(0.2)
        assert runs == [], "nothing before the first interval"
        woken_at = time.monotonic()
        thread.wake()
        deadline = time.monotonic() + 5
        while not runs and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runs, "wake() did not run the action"
        assert runs[0] - woken_at < 1
        interval[0] = 0.05  # read before each wait: a shorter interval applies from the next wait
        thread.wake()
        while len(runs) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(runs) >= 4
    finally:
        stop.set()
        thread.wake()
        thread.join(timeout=5)
    assert not thread.is_alive(), "stop and a wake end the thread"
