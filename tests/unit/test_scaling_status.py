"""``han-worker status --scaler-state``: the scaler's last decision and why, read from its state file
(han_worker/scaling/scaler.py), saying when it is paused; a bad file is refused naming the flag and the field
before any control plane is asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from han_worker.cli import worker_main
from han_worker.private_files import write_private_json
from han_worker.scaling.policy import Failures
from han_worker.scaling.scaler import RESUME_HINT, ScalerState, describe_state, format_state, load_state

PAUSED = {"pool": "han-pose-worker", "at": 1000.0, "submitted": 0, "paused": True,
          "reason": "paused after 3 allocations in a row ended before their worker registered: sbatch: error: "
                    "invalid partition"}  # fmt: skip


def test_before_the_first_tick_there_is_no_decision(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert format_state(describe_state(path)) == f"scaler: no decision yet ({path})"


def test_a_paused_pool_says_so_and_why(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = ScalerState({"4711": 990.0}, Failures(0, 3, 999.0, "sbatch: error: invalid partition"), PAUSED)
    write_private_json(path, state.to_dict())
    assert load_state(path) == state  # the last decision survives a resume's save
    summary = describe_state(path, now=1012.4)
    assert summary["state"] == "paused"
    assert summary["on_the_way"] == ["4711"]
    assert format_state(summary).splitlines() == [
        "scaler han-pose-worker: paused, 12 s ago: paused after 3 allocations in a row ended before their "
        "worker registered: sbatch: error: invalid partition",
        "  failures in a row: 0 submission(s) refused, 3 worker job(s) ended before their worker registered; "
        "the last: sbatch: error: invalid partition",
        "  worker jobs submitted, their worker not registered yet: 4711",
        RESUME_HINT,
    ]
    # Scaling again, nothing failed and nothing on its way: one line.
    write_private_json(
        path, {**ScalerState().to_dict(), "last": {**PAUSED, "paused": False, "reason": "no backlog"}}
    )
    assert (
        format_state(describe_state(path, now=1000.0))
        == "scaler han-pose-worker: scaling, 0 s ago: no backlog"
    )


@pytest.mark.parametrize(
    ("last", "message"),
    [({**PAUSED, "at": "noon"}, "field 'last.at' must be a number of seconds"),
     ({**PAUSED, "reason": 5}, "field 'last.reason'")],
)  # fmt: skip
def test_a_bad_state_file_exits_2_naming_the_flag_and_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], last: dict[str, object], message: str
) -> None:
    path = tmp_path / "state.json"
    write_private_json(path, {**ScalerState().to_dict(), "last": last})
    # No control plane is configured: the file is refused before anyone is asked.
    assert worker_main(["status", "--scaler-state", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"--scaler-state: {path}: " in err
    assert message in err
    assert "Traceback" not in err


def test_the_scaler_is_shown_when_no_control_plane_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    write_private_json(path, ScalerState(failures=Failures(0, 3, 999.0, "sbatch: error: invalid partition"),
                                         last=PAUSED).to_dict())  # fmt: skip
    monkeypatch.setenv("HOME", str(tmp_path))  # no endpoints file and no Mac: no control plane to ask
    for name in ("HAN_WORKER_CONFIG", "CONTROL_PLANE_MODE"):
        monkeypatch.delenv(name, raising=False)

    assert worker_main(["status", "--scaler-state", str(path)]) != 0
    out, err = capsys.readouterr()
    assert out.startswith("scaler han-pose-worker: paused, ")
    assert RESUME_HINT in out
    assert "no Mac is configured" in err
    # JSON stays one document, and only when the status could be read.
    assert worker_main(["status", "--json", "--scaler-state", str(path)]) != 0
    assert capsys.readouterr().out == ""
