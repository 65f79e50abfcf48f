"""A job's scratch directory: kept for the next job while jobs leave it empty, never shared with files in it."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.unit.test_worker_monitor import make_worker


def test_a_workdir_left_empty_is_kept_for_the_next_job(tmp_path: Path) -> None:
    worker = make_worker(tmp_path)
    first = worker._workdir()
    worker._clear(first)
    assert worker._workdir() == first
    assert first.is_dir()
    assert stat.S_IMODE(first.stat().st_mode) == 0o700
    worker._leave()
    assert not first.exists()


def test_a_workdir_written_to_is_removed_and_the_next_job_gets_an_empty_one(tmp_path: Path) -> None:
    worker = make_worker(tmp_path)
    first = worker._workdir()
    (first / "run").mkdir()
    (first / "run" / "out.txt").write_text("the last job's")
    worker._clear(first)
    assert not first.exists()
    second = worker._workdir()
    assert second != first
    assert list(second.iterdir()) == []
    assert stat.S_IMODE(second.stat().st_mode) == 0o700
    worker._leave()


def test_a_draining_worker_removes_even_an_empty_workdir(tmp_path: Path) -> None:
    # A backend abandoned during the drain may still write in it.
    worker = make_worker(tmp_path)
    workdir = worker._workdir()
    worker.stop()
    worker._clear(workdir)
    assert not workdir.exists()
