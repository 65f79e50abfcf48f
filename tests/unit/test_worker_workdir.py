"""A job's scratch directory: its own, private, made only when the backend asks for it, gone afterwards."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from han_worker.backends.base import JobContext
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
