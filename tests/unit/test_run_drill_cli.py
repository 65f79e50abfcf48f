"""scripts/ci/run_drill.py, the ansible-runner example: its flags, checked where they enter."""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.conftest import REPO, load_script


def load_example() -> ModuleType:
    return load_script(REPO / "scripts" / "ci" / "run_drill.py")


@pytest.mark.parametrize("bad", ["0", "-5", "ten", "1.5", ""])
def test_a_timeout_that_is_not_whole_seconds_above_zero_is_refused_naming_the_flag(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        load_example().parse_args(["--timeout", bad])
    assert stopped.value.code == 2
    assert "--timeout must be a whole number of seconds above 0" in capsys.readouterr().err


def test_the_timeout_is_optional_and_read_as_seconds() -> None:
    example = load_example()
    assert example.parse_args([]).timeout is None
    assert example.parse_args(["--timeout", "900"]).timeout == 900


@pytest.mark.parametrize("flag", ["--walltime-minutes", "--walltime-warning"])
def test_a_walltime_setting_that_is_not_a_whole_number_above_zero_is_refused(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        load_example().parse_args([flag, "0"])
    assert stopped.value.code == 2
    assert f"{flag} must be a whole number above 0, not '0'" in capsys.readouterr().err


def test_the_walltime_settings_become_the_drills_variables() -> None:
    args = load_example().parse_args(["--walltime-minutes", "2", "--walltime-warning", "30"])
    assert (args.walltime_minutes, args.walltime_warning) == (2, 30)
