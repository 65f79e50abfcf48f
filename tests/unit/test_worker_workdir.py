"""A job's scratch directory: its own, private, made only when the backend asks for it, gone afterwards;
and what killed workers left, removed by the next one only once they are provably gone."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

from han_worker.backends.base import JobContext
from han_worker.processes import ProcessMark, mark_of
from han_worker.worker import scratch
from tests.unit.test_worker_monitor import make_worker


def context(scratch: Path) -> JobContext:
    return JobContext("job-1", "noop", {}, {}, scratch, logging.getLogger("test.workdir"))


def test_a_job_that_never_asks_for_its_workdir_costs_no_directory(tmp_path: Path) -> None:
    worker = make_worker(tmp_path)
    scratch = worker._workdir()
    context(scratch)  # built and handed to the backend, which does not ask
    assert not scratch.exists()
    worker._clear(scratch)
    worker._leave()
    assert not scratch.parent.exists()


def test_asking_makes_an_empty_private_directory_that_goes_after_the_job(tmp_path: Path) -> None:
    worker = make_worker(tmp_path)
    scratch = worker._workdir()
    workdir = context(scratch).workdir
    assert workdir == scratch
    assert list(workdir.iterdir()) == []
    assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
    assert stat.S_IMODE(workdir.parent.stat().st_mode) == 0o700
    (workdir / "run").mkdir()
    (workdir / "run" / "out.txt").write_text("this job's")
    assert context(scratch).workdir == workdir  # asking again: the same directory, as the backend left it
    worker._clear(scratch)
    assert not workdir.exists()
    worker._leave()


def test_each_job_gets_a_directory_of_its_own(tmp_path: Path) -> None:
    worker = make_worker(tmp_path)
    first = context(worker._workdir()).workdir
    (first / "out.txt").write_text("the last job's")
    worker.jobs_done += 1  # what _process does after each job
    second = context(worker._workdir()).workdir
    assert second != first
    assert list(second.iterdir()) == []
    worker._leave()  # the worker's directory goes with everything in it, even what a job left behind
    assert not first.parent.exists()


def dead_process() -> ProcessMark:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    mark = mark_of(child.pid)
    child.wait()
    assert mark.start_time is not None
    return mark


def scratch_name(mark: ProcessMark, suffix: str = "abcd1234") -> str:
    return f"han-worker-{mark.pid}-{mark.start_time}-{suffix}"


def test_a_worker_names_its_scratch_directory_after_itself(tmp_path: Path) -> None:
    worker = make_worker(tmp_path)
    made = worker._workdir().parent
    try:
        assert scratch.owner_of(made.name) == mark_of(os.getpid())
        assert stat.S_IMODE(made.stat().st_mode) == 0o700
    finally:
        worker._leave()


def test_a_starting_worker_removes_only_what_workers_gone_for_good_left(tmp_path: Path) -> None:
    me, dead = mark_of(os.getpid()), dead_process()
    assert me.start_time is not None
    live = tmp_path / scratch_name(me)
    killed = tmp_path / scratch_name(dead)
    reused = tmp_path / scratch_name(ProcessMark(me.pid, me.start_time + 1), "efgh5678")  # our pid, not us
    old_style = tmp_path / f"han-worker-{dead.pid}-abcd1234"  # no start time: cannot be judged
    not_ours = tmp_path / "something-else"
    for directory in (live, killed, reused, old_style, not_ours):
        (directory / "job-0" / "inputs").mkdir(parents=True)
        (directory / "job-0" / "inputs" / "frame.jpg").write_bytes(b"input")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not a scratch directory")
    link = tmp_path / scratch_name(dead, "link0000")
    link.symlink_to(elsewhere)
    a_file = tmp_path / scratch_name(dead, "file0000")
    a_file.write_text("a file, not a directory")

    removed = scratch.remove_abandoned(tmp_path)

    assert sorted(removed) == sorted([killed, reused])
    assert not killed.exists()
    assert not reused.exists()
    assert (live / "job-0" / "inputs" / "frame.jpg").exists(), "a live worker's directory is never touched"
    assert all(path.exists() for path in (old_style, not_ours, a_file))
    assert link.is_symlink()
    assert (elsewhere / "keep.txt").exists()


def test_names_that_are_not_a_workers_are_not_judged() -> None:
    assert scratch.owner_of("han-worker-12-34-x") == ProcessMark(12, 34)
    for name in ("han-worker-12-x-abc", "han-worker-12-abc", "han-worker--34-x", "tmp-han-worker-12-34-x"):
        assert scratch.owner_of(name) is None, name
