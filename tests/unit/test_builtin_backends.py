"""The backends that need nothing but Python (queue ``noop``), run in-process."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from han_worker.backends.base import JobContext, JobFailed
from han_worker.backends.builtin import FailBackend, NoopBackend, SleepBackend


def context(tmp_path: Path, kind: str, params: dict[str, object]) -> JobContext:
    return JobContext("job-1", kind, params, {}, tmp_path / "job", logging.getLogger("test.builtin"))


def test_noop_succeeds_saying_when_it_started_and_makes_no_directory(tmp_path: Path) -> None:
    before = time.time()
    result = NoopBackend().run(context(tmp_path, "noop", {}))
    after = time.time()

    assert result.summary["ok"] is True
    started = result.summary["started"]
    assert isinstance(started, float)
    assert before <= started <= after
    assert result.outputs == {}
    assert not (tmp_path / "job").exists()


def test_sleep_writes_its_output_and_rejects_a_bad_duration(tmp_path: Path) -> None:
    result = SleepBackend().run(context(tmp_path, "sleep", {"seconds": 0}))
    assert result.summary == {"slept": 0}
    assert result.outputs["slept.txt"].read_text() == "0\n"

    with pytest.raises(JobFailed, match="param 'seconds' must be a number from 0 to 86400, not 'soon'"):
        SleepBackend().run(context(tmp_path, "sleep", {"seconds": "soon"}))


@pytest.mark.parametrize("size", [70_000, 2])
def test_sleep_pads_its_output_to_the_size_asked_for(tmp_path: Path, size: int) -> None:
    result = SleepBackend().run(context(tmp_path, "sleep", {"seconds": 0, "output_bytes": size}))
    data = result.outputs["slept.txt"].read_bytes()
    assert len(data) == size
    assert data.startswith(b"0\n")


@pytest.mark.parametrize("size", [1, -1, True, 1.5, "big", 64 * 1024 * 1024 + 1])
def test_sleep_refuses_an_output_size_it_cannot_write(tmp_path: Path, size: object) -> None:
    with pytest.raises(JobFailed, match="param 'output_bytes' must be a whole number from 2 to 67108864"):
        SleepBackend().run(context(tmp_path, "sleep", {"seconds": 0, "output_bytes": size}))


def test_fail_fails_with_its_message(tmp_path: Path) -> None:
    with pytest.raises(JobFailed, match=r"^bad input$"):
        FailBackend().run(context(tmp_path, "fail", {"message": "bad input"}))
