"""`han-worker queues`: what a deploying play asks before it submits workers (real backends, no mocks)."""

from __future__ import annotations

import json
import sys

import pytest

from han_worker.cli import worker_main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = worker_main(["queues", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_pose_and_noop_can_be_served_on_linux(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run(capsys, "--check", "pose, noop", "--json")
    assert code == 0
    assert json.loads(out) == {"platform": "linux", "queues": ["pose", "noop"], "ok": True}


@pytest.mark.parametrize(
    ("queues", "reason"),
    [
        ("gpu", "queue 'gpu' runs isaaclab_teacher_ppo, which is Windows-only"),
        ("pose,videos", "queue 'videos' is served by no backend (known queues: gpu, noop, pose)"),
        ("", "--check: '' is not a comma-separated list of queue names"),
        ("pose,,noop", "is not a comma-separated list of queue names"),
    ],
)
def test_a_queue_that_cannot_be_served_here_is_exit_2_with_the_reason(
    capsys: pytest.CaptureFixture[str], queues: str, reason: str
) -> None:
    code, out, err = run(capsys, "--check", queues)
    assert code == 2
    assert out == ""
    assert reason in err


def test_the_listing_says_which_queues_are_not_for_this_platform(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run(capsys)
    assert code == 0
    assert "gpu: not on linux" in out.splitlines()
    assert "pose: pose" in out.splitlines()


def test_the_windows_stand_in_may_serve_gpu(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAN_WORKER_STANDIN_PLATFORM", "windows")
    monkeypatch.delenv("HAN_ISAACLAB_COMMAND", raising=False)
    code, _out, err = run(capsys, "--check", "gpu")
    assert code == 2, "as the worker would, the check asks whether the backend can run"
    assert "HAN_ISAACLAB_COMMAND is not set" in err
    monkeypatch.setenv("HAN_ISAACLAB_COMMAND", json.dumps([sys.executable, "-c", "pass"]))
    code, out, _err = run(capsys, "--check", "gpu", "--json")
    assert code == 0
    assert json.loads(out)["platform"] == "windows"


def test_a_bad_stand_in_platform_is_refused_naming_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAN_WORKER_STANDIN_PLATFORM", "bsd")
    code, _out, err = run(capsys)
    assert code == 2
    assert "HAN_WORKER_STANDIN_PLATFORM='bsd'" in err
