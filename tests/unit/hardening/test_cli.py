"""``han-worker harden-check``: the table, bad input (exit 2), and a run on an empty state directory (exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from han_worker.cli import worker_main
from han_worker.control_plane.hardening.report import FAIL, Row, format_table


def test_format_table() -> None:
    table = format_table([Row("listen", "tcp 0.0.0.0:1", FAIL, "every interface")]).splitlines()
    assert table == [
        "check  | target        | result | detail",
        "listen | tcp 0.0.0.0:1 | fail   | every interface",
    ]


# -- command line --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--bind-address or --bind-network"),
        (["--bind-address", "0.0.0.0"], "every interface"),
        (["--bind-network", "nonsense"], "--bind-network"),
        (["--bind-address", "127.0.0.10", "--timeout", "0"], "--timeout"),
        (["--bind-address", "127.0.0.10", "--state-dir", "/nonexistent/han"], "--state-dir"),
    ],
)
def test_cli_refuses_bad_input_with_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = worker_main(["harden-check", *args])
    except SystemExit as exit_:  # argparse's own refusals (a flag's type) exit from inside
        code = int(exit_.code or 0)
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_on_an_empty_state_directory_fails_and_prints_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    code = worker_main(
        [
            "harden-check",
            "--state-dir",
            str(state),
            "--env-dir",
            str(tmp_path),
            "--bind-address",
            "127.0.0.10",
            "--json",
        ]
    )
    rows = json.loads(capsys.readouterr().out)
    assert code == 1
    assert {"check", "target", "result", "detail"} == set(rows[0])
    failed = {(row["check"], row["target"]) for row in rows if row["result"] == FAIL}
    assert ("control-plane", f"{state}/endpoints.json") in failed
    assert ("mode", f"{state}/credentials.json") in failed
    assert ("control-plane", f"{state}/supervisor.lock") in failed
