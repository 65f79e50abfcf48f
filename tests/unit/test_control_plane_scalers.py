"""The elastic pools' registration files and the scalers the supervisor runs from them
(han_worker/control_plane/scalers.py): every bad file refused naming it and the problem, logged once and never
raised; a scaler started per file, started again after it is killed, stopped when its file goes or changes
(the new one only once the old one has ended), all stopped at the end. The scalers here are a small Python
program standing in for ``han-worker scale`` (it records its arguments and waits for SIGTERM): what is tested
is the supervision, not the scaler."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from han_worker.control_plane import scalers
from han_worker.control_plane.scalers import (
    RegistrationError,
    Scalers,
    load_registration,
    parse_registration,
)

GOOD: dict[str, object] = {
    "schema": 1,
    "config": "/home/pegasus/.han/worker/config/worker.json",
    "pool": "/home/pegasus/.han/worker/config/pool.json",
    "state": "/home/pegasus/.han/worker/run/scaler-state.json",
}
ORIGIN = Path("/home/pegasus/.han/control-plane/scalers/han-pose-worker.json")

STAND_IN = """\
import signal, sys, time
print("started", *sys.argv[1:], flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(0.1)
"""


def test_a_good_registration_gives_the_scale_command() -> None:
    registration = parse_registration(dict(GOOD), ORIGIN)
    assert registration.name == "han-pose-worker"
    assert registration.log_file == ORIGIN.with_suffix(".log")
    assert registration.argv(["han-worker"]) == [
        "han-worker", "scale",
        "--config=/home/pegasus/.han/worker/config/worker.json",
        "--pool=/home/pegasus/.han/worker/config/pool.json",
        "--state=/home/pegasus/.han/worker/run/scaler-state.json",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema": 2}, "field 'schema': 2 is not 1"),
        ({"schema": "1"}, "field 'schema' must be an integer, not str"),
        ({"schema": None}, "field 'schema' must be an integer"),
        (
            {"config": "relative/worker.json"},
            "field 'config': 'relative/worker.json' is not an absolute path",
        ),
        ({"pool": ""}, "field 'pool' must not be empty"),
        ({"pool": 7}, "field 'pool' must be a string, not int"),
        ({"state": "/x/state\nmore.json"}, "field 'state' must be one line"),
        ({"state": "/x/a\0b"}, "field 'state'"),
        ({"extra": 1}, "unknown field(s) extra"),
    ],
)
def test_a_bad_field_is_refused_naming_the_file_and_the_field(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(RegistrationError) as refused:
        parse_registration({**GOOD, **change}, ORIGIN)
    assert str(refused.value).startswith(f"{ORIGIN}: ")
    assert message in str(refused.value)


@pytest.mark.parametrize("missing", ["schema", "config", "pool", "state"])
def test_a_missing_field_is_refused(missing: str) -> None:
    data = {key: value for key, value in GOOD.items() if key != missing}
    with pytest.raises(RegistrationError, match=rf"field '{missing}' is missing"):
        parse_registration(data, ORIGIN)


@pytest.mark.parametrize("name", ["a b.json", "pool$(id).json", "päl.json", ".json"])
def test_a_file_name_that_is_no_pool_name_is_refused(name: str) -> None:
    with pytest.raises(RegistrationError, match=r"must be <pool>\.json"):
        parse_registration(dict(GOOD), ORIGIN.with_name(name))


def test_a_file_others_can_write_or_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(GOOD))
    path.chmod(0o666)
    with pytest.raises(RegistrationError, match="writable by group or others"):
        load_registration(path)
    path.chmod(0o600)
    path.write_text("{not json")
    with pytest.raises(RegistrationError, match=str(path)):
        load_registration(path)
    path.write_text("[1, 2]")
    with pytest.raises(RegistrationError, match="must hold a JSON object"):
        load_registration(path)


# -- supervision, with a stand-in for han-worker scale ---------------------------------------------------------


@pytest.fixture
def pools(tmp_path: Path) -> Iterator[Scalers]:
    stand_in = tmp_path / "stand_in.py"
    stand_in.write_text(STAND_IN)
    directory = tmp_path / "scalers"
    directory.mkdir(mode=0o700)
    supervised = Scalers(directory, program=[sys.executable, str(stand_in)], stop_timeout=10)
    try:
        yield supervised
    finally:
        supervised.stop_all()


def register(pools: Scalers, name: str, **change: object) -> Path:
    work = pools.directory.parent
    files = {"config": str(work / "worker.json"), "pool": str(work / f"{name}-pool.json"),
             "state": str(work / f"{name}-state.json")}  # fmt: skip
    path = pools.directory / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"schema": 1, **files, **change}))
    tmp.chmod(0o600)
    tmp.rename(path)
    return path


def until(condition: Callable[[], object], pools: Scalers, timeout: float = 20) -> None:
    """Tick as the supervisor's watch loop does until ``condition`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not reached; running: {pools.running()}"
        pools.tick()
        time.sleep(0.1)


def log_says(pools: Scalers, name: str, text: str) -> bool:
    log_file = pools.directory / f"{name}.log"
    return log_file.exists() and text in log_file.read_text()


def test_a_registered_scaler_runs_is_restarted_after_a_kill_and_stops_when_its_file_goes(
    pools: Scalers,
) -> None:
    path = register(pools, "alpha")
    until(lambda: "alpha" in pools.running(), pools)
    first = pools.running()["alpha"]
    until(lambda: log_says(pools, "alpha", "started scale --config="), pools)
    os.kill(first, signal.SIGKILL)
    until(lambda: pools.running().get("alpha") not in (None, first), pools)
    path.unlink()
    until(lambda: not pools.running() and not pools.retiring, pools)
    with pytest.raises(ProcessLookupError):
        os.kill(pools.running().get("alpha", first), 0)


def test_a_changed_pool_file_starts_a_new_scaler_after_the_old_one_ended(pools: Scalers) -> None:
    register(pools, "beta")
    until(lambda: "beta" in pools.running(), pools)
    old = pools.running()["beta"]
    pool_file = pools.directory.parent / "beta-pool.json"
    pool_file.write_text("{}")  # the scaler read the pool's file at its start: a new one must read it again
    pools.tick()
    assert "beta" not in pools.running(), "the old scaler is being stopped"
    assert [process.pid for process in pools.retiring] == [old]
    until(lambda: pools.running().get("beta") not in (None, old), pools)
    assert not pools.retiring, "the old one had ended before the new one started"


def test_a_bad_file_is_logged_once_and_the_good_ones_run(
    pools: Scalers, caplog: pytest.LogCaptureFixture
) -> None:
    register(pools, "good")
    bad = register(pools, "bad", pool="relative.json")
    register(pools, "twin", state=str(pools.directory.parent / "good-state.json"))
    with caplog.at_level(logging.ERROR, logger=scalers.__name__):
        for _tick in range(3):
            pools.tick()
    assert set(pools.running()) == {"good"}
    refused = [record.getMessage() for record in caplog.records]
    assert refused.count(f"scaler not run: {bad}: field 'pool': 'relative.json' is not an absolute path") == 1
    assert sum("is the state file of" in message for message in refused) == 1, refused


def test_a_file_that_becomes_bad_stops_its_scaler(pools: Scalers) -> None:
    register(pools, "gamma")
    until(lambda: "gamma" in pools.running(), pools)
    register(pools, "gamma", schema=9)
    until(lambda: not pools.running() and not pools.retiring, pools)


def test_stop_all_ends_every_scaler(pools: Scalers) -> None:
    register(pools, "one")
    register(pools, "two")
    until(lambda: set(pools.running()) == {"one", "two"}, pools)
    pids = list(pools.running().values())
    pools.stop_all()
    assert pools.running() == {}
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_scaler_says_where_it_runs_while_it_runs(pools: Scalers) -> None:
    register(pools, "delta")
    until(lambda: "delta" in pools.running(), pools)
    running = pools.directory / "delta.running"
    assert json.loads(running.read_text())["pid"] == pools.running()["delta"]
    (pools.directory / "delta.json").unlink()
    until(lambda: not pools.running() and not pools.retiring, pools)
    assert not running.exists()


def test_a_new_pool_version_resumes_the_pool_and_a_restart_does_not(
    pools: Scalers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scalers, "STEADY_S", 0.0)  # the version counts as run at once
    register(pools, "eps", resume="v1")
    until(lambda: log_says(pools, "eps", "started scale"), pools)
    assert "--resume" not in (pools.directory / "eps.log").read_text(), "the first version: nothing to resume"
    until(lambda: (pools.directory / "eps.resumed").read_text().strip() == "v1", pools)
    os.kill(pools.running()["eps"], signal.SIGKILL)
    until(lambda: (pools.directory / "eps.log").read_text().count("started scale") == 2, pools)
    assert "--resume" not in (pools.directory / "eps.log").read_text(), "a restart of the same version"
    register(pools, "eps", resume="v2")
    until(lambda: log_says(pools, "eps", "--resume"), pools)
    assert (pools.directory / "eps.log").read_text().count("started scale") == 3
