"""Hostile values thrown at every reader of external input: refused with the reader's error (the CLI: exit 2)
naming the input, never a traceback, nothing left behind. No service is needed: all of it is refused first.

Readers: the endpoints file, the credentials file, the worker configuration (a file and ``--config -``), the
control plane's secrets file, ``--params-json`` and ``--param``, submit's inputs and the client API's
``submit`` arguments, the Isaac Lab backend's JSON variables, the lookup plugin's document.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import cast
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from han_worker.backends.base import JobResult
from han_worker.backends.isaaclab import COMMAND_VAR, ConfigError, _json_strings
from han_worker.cli import worker_main
from han_worker.client import (
    RequestError,
    _check_max_attempts,
    check_inputs,
    check_params,
    parse_params,
    snapshots,
    submit_many,
)
from han_worker.config import Overrides, WorkerConfigError, load_worker_config
from han_worker.control_plane.admin_secrets import SecretsError, generate_secrets, load_secrets
from han_worker.fields import (
    INT4_MAX,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    decode_json,
    storable_text,
    text_problem,
)
from han_worker.selection.credentials import CredentialsError, load_credentials_file
from han_worker.selection.endpoints import EndpointsError, check_host, load_endpoints_file, mac_endpoints
from han_worker.store.artifacts import take_snapshot
from han_worker.store.link import Link
from han_worker.worker import attempt
from han_worker.worker.attempt import AttemptResult
from tests.fake_windows import FAKE_CA_CERT
from tests.unit.hostile_values import (
    HOSTILE,
    HOSTILE_HOSTS,
    HOSTILE_JSON,
    HOSTILE_PATHS,
    HOSTILE_TEXT,
    deep_json,
    unstorable_text,
)

ENV = ("CONTROL_PLANE_MODE", "HAN_ENDPOINTS_FILE", "HAN_WORKER_QUEUES", "MAC_LAN_IP", "HAN_CONTROL_PLANE_DIR")
PLACEHOLDER = '"@@hostile@@"'


class Refused(ValueError):
    pass


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # a relative path a bug let through lands here, not in the checkout
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@contextmanager
def private_dir() -> Iterator[Path]:
    """A fresh 0700 directory per example (tmp_path is one per test, Hypothesis runs many examples)."""
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def files_under(directory: Path) -> set[Path]:
    return set(directory.rglob("*")) if directory.exists() else set()


def splice(document: dict[str, object], dotted: str, hostile: str) -> str:
    """``document`` as JSON text with the field ``dotted`` replaced by the raw JSON text ``hostile``."""
    *parents, last = dotted.split(".")
    target: dict[str, object] = document
    for key in parents:
        target = target[key]  # type: ignore[assignment]
    target[last] = PLACEHOLDER.strip('"')
    return json.dumps(document).replace(PLACEHOLDER, hostile)


def write_private(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    path.chmod(0o600)
    return path


def run_worker(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = worker_main(list(argv))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    _out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, err


def endpoints_doc() -> dict[str, object]:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return {
        "schema": 1, "source": "pegasus", "epoch": 7, "slurm_job_id": None, "node": "c0042",
        "started_at": (now - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
        "expires_at": (now + timedelta(hours=11)).isoformat().replace("+00:00", "Z"),
        "services": {name: {"host": "127.0.0.1", "port": port}
                     for name, port in (("postgres", 15432), ("redis", 16379), ("s3", 19000))},
    }  # fmt: skip


ENDPOINTS_FIELDS = [
    "source",
    "node",
    "epoch",
    "schema",
    "started_at",
    "services.redis.host",
    "services.s3.port",
]


def config_doc() -> dict[str, object]:
    return {
        "mode": "mac", "queues": ["noop"], "spool_dir": "/tmp/han-spool",
        "pegasus": {"endpoints_file": "~/cp/endpoints.json"},
        "mac": {"host": "127.0.0.1", "ports": {"redis": 16379}, "credentials_file": "~/mac.json"},
        "lease_seconds": 20, "max_attempts": 5, "flap_threshold": 3,
    }  # fmt: skip


CONFIG_FIELDS = ["mode", "queues", "spool_dir", "pegasus.endpoints_file", "mac.host", "mac.ports.redis",
                 "lease_seconds", "max_attempts", "flap_threshold"]  # fmt: skip

# Values in range for JSON and Python, out of range for what reads them (PostgreSQL's integer, durations).
OUT_OF_RANGE = {
    "epoch": st.integers(INT4_MAX + 1, 2**70),
    "max_attempts": st.integers(INT4_MAX + 1, 2**70),
    "flap_threshold": st.integers(INT4_MAX + 1, 2**70),
    "services.s3.port": st.integers(65536, 2**64),
    "mac.ports.redis": st.integers(65536, 2**64),
    "lease_seconds": st.floats(3e6, 1.7e308),
    "slurm_job_id": st.integers(10**10, 10**40).map(str),
}


# -- the one decoder --------------------------------------------------------------------------------


def test_valid_documents_pass_the_door(tmp_path: Path):
    """The templates below are accepted as they are: a refusal in the tests is the hostile value's doing."""
    endpoints = write_private(tmp_path, "endpoints.json", json.dumps(endpoints_doc()))
    assert load_endpoints_file(endpoints).epoch == 7
    config = write_private(tmp_path, "worker.json", json.dumps(config_doc()))
    assert load_worker_config(config, Overrides(), {}).max_attempts == 5
    assert decode_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "x", Refused) is not None
    assert decode_json('{"a": [1, 2.5e300, "\\u00e9", null, true]}', "x", Refused) == {
        "a": [1, 2.5e300, "é", None, True]
    }


@HOSTILE
@given(text=st.one_of(HOSTILE_JSON, st.text(max_size=200)))
def test_decode_json_refuses_with_its_error_class_or_decodes(text: str):
    with contextlib.suppress(Refused):
        decode_json(text, "origin-x", Refused)
    with pytest.raises(Refused, match=r"^origin-x: "):
        decode_json(text + "\x00", "origin-x", Refused)  # a NUL outside strings: not JSON; inside: not text


@HOSTILE
@given(text=HOSTILE_JSON)
def test_decode_json_refuses_every_hostile_family(text: str):
    with pytest.raises(Refused, match=r"^origin-x: "):
        decode_json(text, "origin-x", Refused)


def test_the_depth_check_cannot_itself_overflow():
    deep = "[" * 200_000 + "]" * 200_000
    with pytest.raises(Refused, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        decode_json(deep, "x", Refused)
    with pytest.raises(Refused, match="longer than"):
        decode_json(" " * (MAX_JSON_BYTES + 1), "x", Refused)
    # brackets inside strings are not nesting
    assert decode_json(json.dumps(["[" * 1000]), "x", Refused) == ["[" * 1000]


def test_repeated_keys_are_refused():
    with pytest.raises(Refused, match="key 'a' appears twice"):
        decode_json('{"a": 1, "a": 2}', "x", Refused)


# -- files: endpoints, credentials, worker configuration, secrets ------------------------------------


@HOSTILE
@given(field=st.sampled_from(ENDPOINTS_FIELDS), hostile=HOSTILE_JSON)
def test_the_endpoints_file_refuses_hostile_json_in_any_field(
    capsys: pytest.CaptureFixture[str], field: str, hostile: str
):
    with private_dir() as directory:
        path = write_private(directory, "endpoints.json", splice(endpoints_doc(), field, hostile))
        before = files_under(directory)
        with pytest.raises(EndpointsError, match=f"^{path}: "):
            load_endpoints_file(path)
        code, err = run_worker(capsys, "endpoints", "--mode", "pegasus", "--no-probe", "--endpoints-file",
                               str(path))  # fmt: skip
        assert code == 2
        assert str(path) in err
        assert files_under(directory) == before


@HOSTILE
@given(data=st.data())
def test_the_endpoints_file_refuses_values_out_of_range_and_hostile_hosts(data: st.DataObject):
    field = data.draw(st.sampled_from(["epoch", "slurm_job_id", "services.s3.port", "services.redis.host"]))
    value = data.draw(HOSTILE_HOSTS if field.endswith("host") else OUT_OF_RANGE[field])
    with private_dir() as directory:
        path = write_private(directory, "endpoints.json", splice(endpoints_doc(), field, json.dumps(value)))
        with pytest.raises(EndpointsError, match=f"^{path}: "):
            load_endpoints_file(path)


def credentials_doc() -> dict[str, object]:
    return {
        "schema": 1,
        "postgres": {"user": "han", "password": "p" * 20, "database": "han"},
        "redis": {"user": "han", "password": "r" * 20},
        "s3": {"access_key": "han", "secret_key": "s" * 20, "bucket": "han"},
        "generation": 1,
        "tls": {"ca_cert": FAKE_CA_CERT},
    }


@HOSTILE
@given(
    field=st.sampled_from(["schema", "generation", "postgres.password", "redis.user", "s3.bucket"]),
    hostile=HOSTILE_JSON,
)
def test_the_credentials_file_refuses_hostile_json(field: str, hostile: str):
    with private_dir() as directory:
        path = write_private(directory, "credentials.json", splice(credentials_doc(), field, hostile))
        with pytest.raises(CredentialsError, match=f"^{path}: "):
            load_credentials_file(path)


@HOSTILE
@given(field=st.sampled_from(["postgres.password", "redis.admin_password", "s3.root_secret_key"]),
       hostile=HOSTILE_JSON)  # fmt: skip
def test_the_control_planes_secrets_file_refuses_hostile_json(field: str, hostile: str):
    with private_dir() as directory:
        text = splice(generate_secrets().to_dict(), field, hostile)
        path = write_private(directory, "secrets.json", text)
        with pytest.raises(SecretsError, match=f"{path}: "):
            load_secrets(path)


@HOSTILE
@given(data=st.data())
def test_the_worker_config_file_refuses_hostile_values(
    capsys: pytest.CaptureFixture[str], data: st.DataObject
):
    field = data.draw(st.sampled_from(CONFIG_FIELDS))
    choices = [HOSTILE_JSON]
    if field in OUT_OF_RANGE:
        choices.append(OUT_OF_RANGE[field].map(json.dumps))
    if field == "mac.host":
        choices.append(HOSTILE_HOSTS.map(json.dumps))
    hostile = data.draw(st.one_of(*choices))
    with private_dir() as directory:
        path = write_private(directory, "worker.json", splice(config_doc(), field, hostile))
        with pytest.raises(WorkerConfigError, match=f"{path}: "):
            load_worker_config(path, Overrides(), {})
        code, err = run_worker(capsys, "endpoints", "--no-probe", "--config", str(path))
        assert code == 2
        assert str(path) in err
        assert files_under(directory) == {path}


@HOSTILE
@given(text=st.one_of(HOSTILE_JSON, unstorable_text()))
def test_the_worker_config_on_standard_input_refuses_hostile_json(
    capsys: pytest.CaptureFixture[str], text: str
):
    document = splice(config_doc(), "queues", text) if text.startswith(("[", "{", "N", "I", "-", "1", "9", '"'))\
        else text  # fmt: skip
    with mock.patch.object(sys, "stdin", io.StringIO(document)):
        code, err = run_worker(capsys, "endpoints", "--no-probe", "--config", "-")
    assert code == 2
    assert "--config -" in err


def test_non_utf8_bytes_in_a_config_file_are_named(tmp_path: Path):
    path = tmp_path / "worker.json"
    path.write_bytes(b'{"mode": "\xff"}')
    path.chmod(0o600)
    with pytest.raises(WorkerConfigError, match=r"worker\.json: not valid UTF-8"):
        load_worker_config(path, Overrides(), {})


# -- hosts --------------------------------------------------------------------------------------------


@HOSTILE
@given(host=HOSTILE_HOSTS)
def test_every_host_reader_refuses_what_names_no_server(host: str):
    with pytest.raises(EndpointsError):
        check_host(host)
    with pytest.raises(EndpointsError, match="Mac endpoints"):
        mac_endpoints(host)
    with pytest.raises(WorkerConfigError, match=r"^--mac-host: "):
        load_worker_config(None, Overrides(mac_host=host), {})
    if host.strip() and "\x00" not in host:  # an environment variable can hold neither
        with pytest.raises(WorkerConfigError, match=r"^MAC_LAN_IP: "):
            load_worker_config(None, Overrides(), {"MAC_LAN_IP": host})


# -- submit: parameters and inputs ---------------------------------------------------------------------


@HOSTILE
@given(text=HOSTILE_JSON.map(lambda hostile: '{"k": ' + hostile + "}"))
def test_params_json_refuses_hostile_json(capsys: pytest.CaptureFixture[str], text: str):
    with pytest.raises(RequestError, match=r"^--params-json: "):
        parse_params([], text)
    code, err = run_worker(capsys, "submit", "--kind", "noop", "--params-json", text)
    assert code == 2
    assert "--params-json" in err


@HOSTILE
@given(key=unstorable_text(), value=unstorable_text())
def test_a_param_with_text_postgresql_cannot_store_is_refused(key: str, value: str):
    with pytest.raises(RequestError, match=r"^--param: "):
        parse_params([f"ok={value}"])
    with pytest.raises(RequestError, match=r"^--param: "):
        parse_params([f"{key.replace('=', '')}x=1"])


@HOSTILE
@given(value=st.one_of(st.sampled_from([float("nan"), float("inf"), -float("inf")]), unstorable_text()))
def test_the_client_api_checks_params_as_the_ledger_needs(value: object):
    with pytest.raises(RequestError, match=r"^params: "):
        check_params({"k": value})
    with pytest.raises(RequestError, match=r"^params: "):
        check_params({"k": [value]})


def test_the_client_api_refuses_params_nested_past_the_limit_and_attempts_past_int4():
    nested: object = 1
    for _level in range(MAX_JSON_DEPTH + 1):
        nested = [nested]
    with pytest.raises(RequestError, match="nested deeper"):
        check_params({"k": nested})
    very_deep: object = 1
    for _level in range(100_000):
        very_deep = {"k": very_deep}
    with pytest.raises(RequestError, match=r"^params: "):
        check_params({"k": very_deep})
    for bad in (0, INT4_MAX + 1, True, 2.0):
        with pytest.raises(RequestError, match=r"^--max-attempts: "):
            _check_max_attempts(bad)  # type: ignore[arg-type]


HOSTILE_NAMES = st.one_of(
    st.sampled_from(["CON", "nul.txt", "a:b.png", "what?.jpg", "tab\there", "line\nbreak", "trailing.", "a|b"]),
    st.binary(min_size=1, max_size=20).filter(lambda raw: b"/" not in raw and b"\x00" not in raw)
    .map(lambda raw: os.fsdecode(b"\xff" + raw)),
)  # fmt: skip


@HOSTILE
@given(name=HOSTILE_NAMES)
def test_an_input_named_so_that_a_worker_cannot_write_it_is_refused_at_submit(
    capsys: pytest.CaptureFixture[str], name: str
):
    with private_dir() as directory:
        path = directory / name
        path.write_bytes(b"content")
        with pytest.raises(RequestError, match=r"^--input: "):
            check_inputs([path])
        code, err = run_worker(capsys, "submit", "--kind", "noop", "--input", str(path))
        assert code == 2
        assert "--input" in err
        assert files_under(directory) == {path}


def test_a_name_of_255_bytes_is_accepted_and_the_client_reads_what_a_file_holds(tmp_path: Path):
    longest = tmp_path / ("é" * 127 + "x")  # 255 bytes
    longest.write_bytes(b"x")
    assert list(check_inputs([longest])) == [longest.name]
    proc = Path("/proc/self/cmdline")
    assert proc.stat().st_size == 0  # what fput_object trusted: the job got an empty input
    snapshot = take_snapshot(proc)
    try:
        assert snapshot.size > 0
        assert snapshot.data.read() == proc.read_bytes()
    finally:
        snapshot.close()


def test_an_input_that_cannot_be_read_is_refused_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    unreadable = Path("/proc/self/mem")  # a regular file whose read fails, even for root
    with pytest.raises(RequestError, match=r"^--input: /proc/self/mem: cannot be read"):
        check_inputs([unreadable])
    with pytest.raises(RequestError, match=r"^--input: /proc/self/mem: cannot be read"):
        snapshots({"mem": unreadable})
    for path in (unreadable, tmp_path, tmp_path / "missing"):
        code, err = run_worker(capsys, "submit", "--kind", "noop", "--input", str(path))
        assert code == 2
        assert f"--input: {path}" in err
    if os.geteuid() != 0:  # root reads anything: the mode bits only refuse other users
        private = tmp_path / "private.bin"
        private.write_bytes(b"x")
        private.chmod(0)
        with pytest.raises(RequestError, match="cannot be read: Permission denied"):
            check_inputs([private])


# -- the Isaac Lab backend's variables (the lookup plugin's document: tests/unit/plugins/lookup/) --------------------------------


@HOSTILE
@given(text=st.one_of(deep_json(), HOSTILE_JSON))
def test_isaaclab_json_variables_refuse_hostile_json(text: str):
    with pytest.raises(ConfigError, match=f"^{COMMAND_VAR} must be"):
        _json_strings({COMMAND_VAR: text}, COMMAND_VAR, required=True)


# -- environment variables -----------------------------------------------------------------------------


def _settable(value: str) -> bool:
    """What an environment can hold: no NUL, and only the surrogates that stand for undecodable bytes."""
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        return False
    return "\x00" not in value and bool(value.strip())


ENV_READERS: dict[str, tuple[list[str], st.SearchStrategy[str]]] = {
    "CONTROL_PLANE_MODE": (["endpoints", "--no-probe"], HOSTILE_TEXT),
    "MAC_LAN_IP": (["endpoints", "--no-probe"], HOSTILE_HOSTS),
    "HAN_ENDPOINTS_FILE": (["endpoints", "--no-probe", "--mode", "pegasus"], HOSTILE_PATHS),
}


@HOSTILE
@given(data=st.data())
def test_hostile_environment_variables_exit_2_naming_them(
    capsys: pytest.CaptureFixture[str], data: st.DataObject
):
    variable = data.draw(st.sampled_from(sorted(ENV_READERS)))
    argv, values = ENV_READERS[variable]
    value = data.draw(values.filter(_settable), label=variable)
    with mock.patch.dict(os.environ, {variable: value}):
        code, err = run_worker(capsys, *argv)
    assert code == 2, err
    # the file's readers name the path they were given; the others the variable
    assert (value.strip() if variable == "HAN_ENDPOINTS_FILE" else f"{variable}: ") in err, err


# -- what the worker records: a backend's summary and error messages ---------------------------------------


@HOSTILE
@given(text=st.text(st.characters(codec=None)))
def test_any_message_becomes_text_postgresql_can_store(text: str):
    stored = storable_text(text)
    assert text_problem(stored) is None
    assert AttemptResult("failed", error=text).error == stored


@HOSTILE
@given(value=st.one_of(st.sampled_from([float("nan"), float("inf")]), unstorable_text()))
def test_a_summary_the_ledger_cannot_store_is_an_invalid_result(value: object):
    with pytest.raises(ValueError, match=r"^the backend's summary: "):
        attempt._checked(JobResult(summary={"value": value}))


def test_submit_many_checks_what_submit_checks_before_it_touches_the_link():
    link = cast(Link, None)  # never reached: the checks come first
    with pytest.raises(RequestError, match=r"^params\[1\]: "):
        submit_many(link, "noop", [{}, {"x": float("nan")}], max_attempts=3)
    with pytest.raises(RequestError, match=r"^--max-attempts: "):
        submit_many(link, "noop", [{}], max_attempts=INT4_MAX + 1)
