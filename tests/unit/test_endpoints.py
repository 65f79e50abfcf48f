"""han_worker.selection: the endpoints file, the policy, probes over real loopback sockets, hysteresis."""

from __future__ import annotations

import copy
import json
import socket
import stat
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from han_worker.private_files import TrustedFileError
from han_worker.selection.endpoints import (
    Endpoints,
    EndpointsError,
    EndpointsGone,
    ServiceEndpoint,
    load_endpoints_file,
    mac_endpoints,
    parse_endpoints,
    write_endpoints_file,
)
from han_worker.selection.policy import FailoverGate, SelectionError, select
from han_worker.selection.probes import ProbeReport, ProbeResult, probe_all, tcp_probe

ORIGIN = "/home/p/.han/control-plane/endpoints.json"


def valid_doc(**overrides: object) -> dict[str, object]:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    doc: dict[str, object] = {
        "schema": 1,
        "source": "pegasus",
        "epoch": 7,
        "slurm_job_id": "4242",
        "node": "c0042",
        "started_at": (now - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
        "expires_at": (now + timedelta(hours=11)).isoformat().replace("+00:00", "Z"),
        "stale": False,
        "services": {
            "postgres": {"host": "127.0.0.1", "port": 15432},
            "redis": {"host": "127.0.0.1", "port": 16379},
            "s3": {"host": "127.0.0.1", "port": 19000},
        },
    }
    doc.update(overrides)
    return doc


def pegasus_endpoints(**overrides: object) -> Endpoints:
    return parse_endpoints(valid_doc(**overrides), ORIGIN)


# -- parsing --------------------------------------------------------------------------------------


def test_parse_valid_document() -> None:
    doc = valid_doc(started_at="2026-11-28T00:00:00Z", expires_at="2026-11-28T12:00:00+00:00")
    doc["services"]["api"] = {"host": "10.0.0.5", "port": 8000}  # type: ignore[index]
    endpoints = parse_endpoints(doc, ORIGIN)
    assert endpoints.schema == 1
    assert endpoints.source == "pegasus"
    assert endpoints.epoch == 7
    assert endpoints.slurm_job_id == "4242"
    assert endpoints.node == "c0042"
    assert endpoints.started_at == datetime(2026, 11, 28, 0, 0, tzinfo=timezone.utc)
    assert endpoints.expires_at == datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
    assert endpoints.stale is False
    assert dict(endpoints.services) == {
        "postgres": ServiceEndpoint("127.0.0.1", 15432),
        "redis": ServiceEndpoint("127.0.0.1", 16379),
        "s3": ServiceEndpoint("127.0.0.1", 19000),
        "api": ServiceEndpoint("10.0.0.5", 8000),
    }


def test_to_dict_round_trips() -> None:
    doc = valid_doc()
    endpoints = parse_endpoints(doc, ORIGIN)
    assert endpoints.to_dict() == doc
    assert parse_endpoints(json.loads(json.dumps(endpoints.to_dict())), ORIGIN) == endpoints


def test_direct_mode_has_no_job_and_no_expiry_and_stale_defaults_false() -> None:
    doc = valid_doc(slurm_job_id=None, expires_at=None, source="mac")
    del doc["stale"]
    endpoints = parse_endpoints(doc, ORIGIN)
    assert (endpoints.slurm_job_id, endpoints.expires_at, endpoints.stale) == (None, None, False)


def test_unknown_top_level_keys_are_ignored() -> None:
    assert parse_endpoints(valid_doc(written_by="han-control-plane 0.2"), ORIGIN).epoch == 7


def test_services_cannot_be_edited_in_place() -> None:
    endpoints = pegasus_endpoints()
    with pytest.raises(TypeError):
        endpoints.services["redis"] = ServiceEndpoint("203.0.113.9", 6379)  # type: ignore[index]


def _set(path: str, value: object) -> Callable[[dict[str, object]], None]:
    def mutate(doc: dict[str, object]) -> None:
        *parents, last = path.split(".")
        target = doc
        for key in parents:
            target = target[key]  # type: ignore[assignment]
        target[last] = value

    return mutate


def _delete(path: str) -> Callable[[dict[str, object]], None]:
    def mutate(doc: dict[str, object]) -> None:
        *parents, last = path.split(".")
        target = doc
        for key in parents:
            target = target[key]  # type: ignore[assignment]
        del target[last]

    return mutate


BAD_FIELDS = [
    (_delete("epoch"), "field 'epoch' is missing"),
    (_set("epoch", "7"), "field 'epoch' must be an integer, not str"),
    (_set("epoch", True), "field 'epoch' must be an integer, not bool"),
    (_set("epoch", 0), "field 'epoch': 0 is less than 1"),
    (_delete("schema"), "field 'schema' is missing"),
    (_set("schema", 2), "unknown schema 2 (this worker reads schema 1)"),
    (_set("source", ""), "field 'source' must not be empty"),
    (_set("node", None), "field 'node' must be a string, not null"),
    (_set("slurm_job_id", 4242), "field 'slurm_job_id' must be a string, not integer"),
    (_set("slurm_job_id", "42;rm"), "field 'slurm_job_id': '42;rm' is not a Slurm job id (1-10 digits)"),
    (_set("started_at", "yesterday"), "field 'started_at': 'yesterday' is not an ISO-8601 time"),
    (
        _set("started_at", "2026-11-28T10:00:00+01:00"),
        "field 'started_at': '2026-11-28T10:00:00+01:00' must be UTC (end in Z or +00:00)",
    ),
    (
        _set("started_at", "2026-11-28T10:00:00"),
        "field 'started_at': '2026-11-28T10:00:00' must be UTC (end in Z or +00:00)",
    ),
    (_delete("expires_at"), "field 'expires_at' is missing"),
    (_set("stale", "yes"), "field 'stale' must be true or false, not str"),
    (_set("services", []), "field 'services' must be an object, not array"),
    (_delete("services.s3"), "field 'services.s3' is missing"),
    (
        _set("services.mongo", {"host": "h", "port": 1}),
        "field 'services' names unknown service(s) mongo (known: postgres, redis, s3, api)",
    ),
    (_set("services.redis.port", 70000), "field 'services.redis.port': 70000 is out of range 1-65535"),
    (_set("services.redis.port", 0), "field 'services.redis.port': 0 is out of range 1-65535"),
    (_set("services.redis.port", "6379"), "field 'services.redis.port' must be an integer, not str"),
    (_delete("services.postgres.host"), "field 'services.postgres.host' is missing"),
    (_set("services.s3.host", " "), "field 'services.s3.host' must not be empty"),
]


@pytest.mark.parametrize(("mutate", "problem"), BAD_FIELDS)
def test_parse_refuses_bad_field(mutate: Callable[[dict[str, object]], None], problem: str) -> None:
    doc = copy.deepcopy(valid_doc())
    mutate(doc)
    with pytest.raises(EndpointsError) as caught:
        parse_endpoints(doc, ORIGIN)
    assert str(caught.value) == f"{ORIGIN}: {problem}"


def test_parse_refuses_expiry_before_start() -> None:
    doc = valid_doc(started_at="2026-11-28T10:00:00Z", expires_at="2026-11-28T09:00:00Z")
    with pytest.raises(EndpointsError) as caught:
        parse_endpoints(doc, ORIGIN)
    assert str(caught.value) == f"{ORIGIN}: field 'expires_at': 2026-11-28T09:00:00Z is not after started_at"


# -- the file ------------------------------------------------------------------------------------


@pytest.fixture
def endpoints_path(tmp_path: Path) -> Path:
    return tmp_path / "control-plane" / "endpoints.json"


def test_write_then_load(endpoints_path: Path) -> None:
    endpoints = pegasus_endpoints()
    write_endpoints_file(endpoints_path, endpoints)
    assert stat.S_IMODE(endpoints_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(endpoints_path.parent.stat().st_mode) == 0o700
    assert [p.name for p in endpoints_path.parent.iterdir()] == ["endpoints.json"]  # no temp file left
    assert load_endpoints_file(endpoints_path) == endpoints


def test_write_replaces_a_lax_file_with_a_0600_one(endpoints_path: Path) -> None:
    endpoints_path.parent.mkdir(mode=0o700)
    endpoints_path.write_text("old")
    endpoints_path.chmod(0o644)
    write_endpoints_file(endpoints_path, pegasus_endpoints(epoch=8))
    assert stat.S_IMODE(endpoints_path.stat().st_mode) == 0o600
    assert json.loads(endpoints_path.read_text())["epoch"] == 8


def test_write_refuses_a_document_readers_would_refuse(endpoints_path: Path) -> None:
    with pytest.raises(EndpointsError, match="field 'epoch': 0 is less than 1"):
        write_endpoints_file(endpoints_path, mac_endpoints("127.0.0.1"))
    assert not endpoints_path.parent.exists()


def test_load_refuses_expired_file(endpoints_path: Path) -> None:
    doc = valid_doc(started_at="2026-11-28T00:00:00Z", expires_at="2026-11-28T10:00:00Z")
    write_endpoints_file(endpoints_path, parse_endpoints(doc, ORIGIN))
    now = datetime(2026, 11, 28, 11, 0, tzinfo=timezone.utc)
    with pytest.raises(EndpointsGone) as caught:
        load_endpoints_file(endpoints_path, now=now)
    assert (
        str(caught.value) == f"{endpoints_path}: expired at 2026-11-28T10:00:00Z (now 2026-11-28T11:00:00Z)"
    )
    earlier = datetime(2026, 11, 28, 9, 59, tzinfo=timezone.utc)
    assert load_endpoints_file(endpoints_path, now=earlier).epoch == 7


def test_load_refuses_stale_file(endpoints_path: Path) -> None:
    write_endpoints_file(endpoints_path, pegasus_endpoints(stale=True))
    with pytest.raises(EndpointsGone) as caught:  # the worker switches at once on this, without confirming
        load_endpoints_file(endpoints_path)
    assert str(caught.value) == f"{endpoints_path}: marked stale (its control plane was shut down)"


def test_load_refuses_invalid_json(endpoints_path: Path) -> None:
    endpoints_path.parent.mkdir(mode=0o700)
    endpoints_path.write_text('{"schema": 1,')
    endpoints_path.chmod(0o600)
    with pytest.raises(EndpointsError) as caught:
        load_endpoints_file(endpoints_path)
    assert str(caught.value).startswith(f"{endpoints_path}: not valid JSON: Expecting property name")
    assert isinstance(caught.value.__cause__, TrustedFileError)


def test_load_refuses_missing_file(endpoints_path: Path) -> None:
    with pytest.raises(EndpointsError) as caught:
        load_endpoints_file(endpoints_path)
    assert str(caught.value) == f"{endpoints_path}: does not exist"


def test_load_names_the_file_in_field_errors(endpoints_path: Path) -> None:
    endpoints_path.parent.mkdir(mode=0o700)
    endpoints_path.write_text(json.dumps(valid_doc(epoch="7")))
    endpoints_path.chmod(0o600)
    with pytest.raises(EndpointsError) as caught:
        load_endpoints_file(endpoints_path)
    assert str(caught.value) == f"{endpoints_path}: field 'epoch' must be an integer, not str"


# -- the Mac -------------------------------------------------------------------------------------


def test_mac_endpoints_defaults_and_overrides() -> None:
    mac = mac_endpoints("192.168.1.20", {"redis": 6380})
    assert (mac.source, mac.epoch, mac.slurm_job_id, mac.expires_at, mac.node) == (
        "mac",
        0,
        None,
        None,
        "192.168.1.20",
    )
    assert {name: service.address for name, service in mac.services.items()} == {
        "postgres": "192.168.1.20:5432",
        "redis": "192.168.1.20:6380",
        "s3": "192.168.1.20:9000",
    }


@pytest.mark.parametrize(
    ("host", "ports", "problem"),
    [
        (
            "10.0.0.2",
            {"redis": 70000},
            "Mac endpoints for 10.0.0.2: field 'ports.redis': 70000 is out of range",
        ),
        (
            "10.0.0.2",
            {"mongo": 27017},
            "Mac endpoints for 10.0.0.2: field 'ports.mongo' is not a known service",
        ),
        ("", None, "Mac endpoints: field 'host' must not be empty"),
    ],
)
def test_mac_endpoints_refuses_bad_input(host: str, ports: dict[str, int] | None, problem: str) -> None:
    with pytest.raises(EndpointsError) as caught:
        mac_endpoints(host, ports)
    assert str(caught.value).startswith(problem)


# -- selection -----------------------------------------------------------------------------------

MAC = mac_endpoints("192.168.1.20")


def fixed_probe(healthy: bool, calls: list[str] | None = None) -> Callable[[Endpoints], ProbeReport]:
    """A probe whose verdict the test decides; the real probes are tested on sockets below."""

    def probe(endpoints: Endpoints) -> ProbeReport:
        if calls is not None:
            calls.append(endpoints.node)
        service = endpoints.services["redis"]
        detail = "TCP connect ok" if healthy else "connection refused"
        return ProbeReport((ProbeResult("redis", service.host, service.port, healthy, detail, 0.01),))

    return probe


WHERE = "Pegasus endpoints (epoch 7, node c0042)"
UNUSABLE_PEGASUS = [
    pytest.param({"pegasus": None}, "no Pegasus endpoints file was read", id="missing"),
    pytest.param(
        {"pegasus": EndpointsError(f"{ORIGIN}: does not exist")}, f"{ORIGIN}: does not exist", id="load-error"
    ),
    pytest.param(
        {"pegasus": pegasus_endpoints(started_at="2020-01-01T00:00:00Z", expires_at="2020-01-01T12:00:00Z")},
        f"{WHERE}: expired at 2020-01-01T12:00:00Z (now ",
        id="expired",
    ),
    pytest.param(
        {"pegasus": pegasus_endpoints(stale=True)},
        f"{WHERE}: marked stale (its control plane was shut down)",
        id="stale",
    ),
    pytest.param(
        {"pegasus": pegasus_endpoints(), "job_alive": False},
        f"{WHERE}: Slurm job 4242 is no longer running",
        id="job-dead",
    ),
    pytest.param(
        {"pegasus": pegasus_endpoints(), "probe": fixed_probe(healthy=False)},
        f"{WHERE}: unhealthy: redis 127.0.0.1:16379: FAILED (connection refused)",
        id="unhealthy",
    ),
]


@pytest.mark.parametrize(("inputs", "reason"), UNUSABLE_PEGASUS)
def test_pegasus_mode_fails_with_the_reason(inputs: dict[str, object], reason: str) -> None:
    with pytest.raises(SelectionError) as caught:
        select("pegasus", mac=MAC, **inputs)  # type: ignore[arg-type]
    assert str(caught.value).startswith(reason)


@pytest.mark.parametrize(("inputs", "reason"), UNUSABLE_PEGASUS)
def test_auto_mode_falls_back_to_the_mac_saying_why(inputs: dict[str, object], reason: str) -> None:
    selection = select("auto", mac=MAC, **inputs)  # type: ignore[arg-type]
    assert selection.source == "mac"
    assert selection.endpoints == MAC
    assert selection.reason.startswith(f"Pegasus skipped: {reason}")


@pytest.mark.parametrize("mode", ["pegasus", "auto"])
def test_valid_pegasus_is_chosen(mode: str) -> None:
    pegasus = pegasus_endpoints()
    unprobed = select(mode, pegasus=pegasus, mac=MAC, job_alive=True)
    assert (unprobed.source, unprobed.endpoints, unprobed.probes) == ("pegasus", pegasus, ())
    assert unprobed.reason == f"{WHERE} are valid (not probed)"
    probed = select(mode, pegasus=pegasus, mac=MAC, probe=fixed_probe(healthy=True))
    assert probed.reason == f"{WHERE} are valid and healthy"
    assert [result.ok for result in probed.probes] == [True]


def test_mac_mode_ignores_a_valid_pegasus_and_never_fails() -> None:
    chosen = select("mac", pegasus=pegasus_endpoints(), mac=MAC)
    assert (chosen.source, chosen.endpoints) == ("mac", MAC)
    assert chosen.reason == "mode mac always uses the Mac; using the Mac at 192.168.1.20 (not probed)"
    unhealthy = select("mac", pegasus=None, mac=MAC, probe=fixed_probe(healthy=False))
    assert unhealthy.source == "mac"
    assert "although unhealthy: redis 192.168.1.20:6379: FAILED (connection refused)" in unhealthy.reason
    assert [result.ok for result in unhealthy.probes] == [False]


def test_first_healthy_mac_wins() -> None:
    macs = [mac_endpoints("10.0.0.1"), mac_endpoints("10.0.0.2"), mac_endpoints("10.0.0.3")]
    calls: list[str] = []

    def probe(endpoints: Endpoints) -> ProbeReport:
        return fixed_probe(healthy=endpoints.node != "10.0.0.1", calls=calls)(endpoints)

    chosen = select("mac", pegasus=None, mac=macs, probe=probe)
    assert chosen.endpoints.node == "10.0.0.2"
    assert chosen.reason == "mode mac always uses the Mac; the Mac at 10.0.0.2 is healthy"
    none_healthy = select("mac", pegasus=None, mac=macs, probe=fixed_probe(healthy=False))
    assert none_healthy.endpoints.node == "10.0.0.1"


def test_mac_needed_but_not_given() -> None:
    with pytest.raises(SelectionError, match="no Mac is configured to fall back to"):
        select("auto", pegasus=None, mac=[])


def test_unknown_mode_names_the_allowed_values() -> None:
    with pytest.raises(EndpointsError) as caught:
        select("fast", pegasus=None, mac=MAC)
    assert str(caught.value) == "mode 'fast' is not one of auto, pegasus, mac"


def test_selection_to_dict_is_json() -> None:
    selection = select("auto", pegasus=pegasus_endpoints(), mac=MAC, probe=fixed_probe(healthy=True))
    decoded = json.loads(json.dumps(selection.to_dict()))
    assert decoded["source"] == "pegasus"
    assert decoded["endpoints"]["services"]["redis"] == {"host": "127.0.0.1", "port": 16379}
    assert decoded["probes"][0]["ok"] is True


# -- probes on real loopback sockets -------------------------------------------------------------


@pytest.fixture
def listening_ports() -> Iterator[dict[str, int]]:
    servers = []
    for _attempt in range(3):
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        servers.append(server)
    yield {name: s.getsockname()[1] for name, s in zip(("postgres", "redis", "s3"), servers, strict=True)}
    for server in servers:
        server.close()


def closed_port() -> int:
    probe_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe_socket.bind(("127.0.0.1", 0))
    port: int = probe_socket.getsockname()[1]
    probe_socket.close()
    return port


def test_tcp_probe_of_listening_services_is_healthy(listening_ports: dict[str, int]) -> None:
    report = tcp_probe(mac_endpoints("127.0.0.1", listening_ports), timeout=1.0)
    assert report.healthy
    assert [(r.service, r.port, r.detail) for r in report.results] == [
        (name, port, "TCP connect ok") for name, port in listening_ports.items()
    ]


def test_tcp_probe_reports_a_closed_port(listening_ports: dict[str, int]) -> None:
    ports = {**listening_ports, "redis": closed_port()}
    report = tcp_probe(mac_endpoints("127.0.0.1", ports), timeout=1.0)
    assert not report.healthy
    assert [(r.service, r.detail) for r in report.failures] == [("redis", "connection refused")]


def test_probes_run_in_parallel_under_one_deadline() -> None:
    def black_hole(service: ServiceEndpoint, timeout: float) -> str:
        time.sleep(1.0)
        return "answered too late"

    started = time.monotonic()
    report = probe_all(
        mac_endpoints("127.0.0.1"), dict.fromkeys(("postgres", "redis", "s3"), black_hole), 0.5
    )
    elapsed = time.monotonic() - started
    assert elapsed < 0.9
    assert [(r.service, r.ok, r.detail) for r in report.results] == [
        ("postgres", False, "timed out after 0.5s"),
        ("redis", False, "timed out after 0.5s"),
        ("s3", False, "timed out after 0.5s"),
    ]


def test_probe_all_layers_custom_checks(listening_ports: dict[str, int]) -> None:
    def authenticated(service: ServiceEndpoint, timeout: float) -> str:
        raise PermissionError("WRONGPASS invalid username-password pair")

    def ping(service: ServiceEndpoint, timeout: float) -> str:
        return f"PONG within {timeout:g}s"

    endpoints = mac_endpoints("127.0.0.1", listening_ports)
    report = probe_all(endpoints, {"redis": authenticated, "s3": ping}, timeout=1.0)
    assert [(r.service, r.ok, r.detail) for r in report.results] == [
        ("redis", False, "PermissionError: WRONGPASS invalid username-password pair"),
        ("s3", True, "PONG within 1s"),
    ]


def test_probe_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="probe timeout must be > 0 seconds, not 0"):
        tcp_probe(MAC, timeout=0)


def test_an_empty_report_is_not_healthy() -> None:
    assert not ProbeReport().healthy


# -- hysteresis ----------------------------------------------------------------------------------


def test_failover_gate_flips_only_after_consecutive_failures() -> None:
    gate = FailoverGate(3)
    assert [gate.observe(h) for h in (False, False, True, False, False)] == [False] * 5
    assert gate.observe(False) is True
    # After a flip the next one needs three new failures.
    assert [gate.observe(False) for _attempt in range(3)] == [False, False, True]


def test_failover_gate_threshold_one_flips_at_once() -> None:
    assert FailoverGate(1).observe(False) is True


@pytest.mark.parametrize("threshold", [0, -1, True, 2.5, "3"])
def test_failover_gate_refuses_bad_threshold(threshold: object) -> None:
    with pytest.raises(ValueError, match=r"FailoverGate threshold must be an integer >= 1, not "):
        FailoverGate(threshold)  # type: ignore[arg-type]


def test_a_document_that_cannot_be_read_is_not_a_control_plane_that_is_gone(endpoints_path: Path) -> None:
    # Unreadable or broken files count as one failed check each (the gate confirms); only the supervisor's
    # own word (stale) or the walltime (expired) is final.
    endpoints_path.parent.mkdir(mode=0o700)
    endpoints_path.write_text("{}")
    endpoints_path.chmod(0o600)
    with pytest.raises(EndpointsError, match="field 'schema'") as caught:
        load_endpoints_file(endpoints_path)
    assert not isinstance(caught.value, EndpointsGone)
