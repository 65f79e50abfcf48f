"""Endpoint selection in mode auto: how long choosing a control plane takes when Pegasus is healthy, when
its ports are closed, and when its address is black-holed (no answer at all).

Timed two ways: the CLI ``han-worker endpoints --mode auto --json`` as the cluster user (a whole process:
Python start-up, reading the files, probes), and the function :func:`han_worker.selection.policy.select` in this
process with the real authenticated probes (:func:`han_worker.selection.checks.worker_checks`). The Mac is the
run's control plane itself (as a Mac on 127.0.0.10), so that the fallback is always healthy and only
Pegasus's state changes. Pegasus's probes run in parallel under one deadline, so an unreachable Pegasus
should cost about one probe timeout, not one per service.

The black hole stays inside this machine: listeners on 127.0.0.66 whose accept queue is full, so that
the kernel drops every further SYN without answering (what a DROP rule does: the client only sees its
SYN retransmits go unanswered). iptables is not installed here, and a network namespace cannot
black-hole an address the probing process reaches on its own loopback; nothing is sent outside
127.0.0.0/8.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

from han_worker.selection.checks import worker_checks
from han_worker.selection.endpoints import Endpoints, mac_endpoints, parse_endpoints
from han_worker.selection.policy import select
from han_worker.selection.probes import probe_all
from tests.bench import report
from tests.bench.context import Context
from tests.integration.control_planes import RunningControlPlane, write_private_file

BLACK_HOLE = "127.0.0.66"  # listeners with a full accept queue: SYNs dropped
CLOSED = "127.0.0.67"  # nothing listens: connections refused at once
MAC = "127.0.0.10"  # the run's control plane, reached as "the Mac"
CASES = ("healthy", "port closed", "black-holed")


@contextmanager
def black_hole(host: str, count: int) -> Iterator[list[int]]:
    """``count`` ports on ``host`` that never answer a SYN, until the block exits."""
    with ExitStack() as stack:
        ports = []
        for _index in range(count):
            listener = stack.enter_context(socket.socket())
            listener.bind((host, 0))
            listener.listen(0)  # an accept queue of one: full after the connection below
            filler = stack.enter_context(socket.create_connection(listener.getsockname(), timeout=2))
            filler.setblocking(False)  # held open (never accepted) to keep the queue full
            ports.append(listener.getsockname()[1])
        _check_silent(host, ports[0])
        yield ports


def _check_silent(host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=0.3).close()
    except TimeoutError:
        return
    raise RuntimeError(f"{host}:{port} answered: the black hole does not work on this kernel")


def closed_ports(host: str, count: int) -> list[int]:
    """Ports nothing listens on (bound by us a moment ago, then released)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _index in range(count)]
        for each in sockets:
            each.bind((host, 0))
        return [each.getsockname()[1] for each in sockets]


def moved(document: dict[str, object], host: str, ports: list[int]) -> dict[str, object]:
    """The control plane's endpoints document with its services moved to ``host``:``ports``."""
    services = dict(document["services"])  # type: ignore[call-overload]
    moved_services = {
        name: {**service, "host": host, "port": port}
        for (name, service), port in zip(services.items(), ports, strict=True)
    }
    return {**document, "services": moved_services}


def case_files(context: Context, cp: RunningControlPlane, case: str, document: dict[str, object]) -> Path:
    """endpoints.json and credentials.json of one case, owned by the cluster user, in a 0700 directory."""
    directory = context.workdir / case.replace(" ", "-")
    directory.mkdir(mode=0o700, exist_ok=True)
    shutil.chown(directory, context.env.user, context.env.user)
    write_private_file(context.env, directory / "credentials.json", json.dumps(cp.credentials))
    return write_private_file(context.env, directory / "endpoints.json", json.dumps(document))


def cli_argv(
    context: Context, cp: RunningControlPlane, endpoints_file: Path, timeout: float | None
) -> list[str]:
    mac_ports = [f"--mac-port={name}={service.port}" for name, service in endpoints_of(cp).services.items()]
    probing = ["--probe-timeout", str(timeout)] if timeout else ["--no-probe"]
    return context.env.argv(
        "han-worker", "endpoints", "--mode", "auto", "--endpoints-file", str(endpoints_file),
        "--mac-host", MAC, *mac_ports, "--mac-credentials-file", str(endpoints_file.parent / "credentials.json"),
        *probing, "--json",
    )  # fmt: skip


def endpoints_of(cp: RunningControlPlane) -> Endpoints:
    return parse_endpoints(cp.endpoints, "endpoints.json")


def time_cli(argv: list[str]) -> tuple[float, str]:
    """(milliseconds, the source it chose) for one run of the CLI."""
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    elapsed = (time.perf_counter() - started) * 1000
    if result.returncode != 0:
        raise RuntimeError(f"han-worker endpoints exited {result.returncode}: {result.stderr}")
    return elapsed, str(json.loads(result.stdout)["source"])


def time_function(cp: RunningControlPlane, document: dict[str, object], timeout: float) -> tuple[float, str]:
    """(milliseconds, the source it chose) for one call of select() with the real probes."""
    credentials, mac_services = cp.worker_credentials(), endpoints_of(cp).services
    checks = worker_checks(credentials)
    mac = mac_endpoints(MAC, {name: service.port for name, service in mac_services.items()})
    started = time.perf_counter()
    pegasus = parse_endpoints(document, "endpoints.json")
    chosen = select("auto", pegasus=pegasus, mac=mac, probe=lambda each: probe_all(each, checks, timeout))
    return (time.perf_counter() - started) * 1000, chosen.source


def sampled(measure: Callable[[], tuple[float, str]], samples: int) -> tuple[list[float], set[str]]:
    results = [measure() for _index in range(samples)]
    return [elapsed for elapsed, _source in results], {source for _elapsed, source in results}


def documents(cp: RunningControlPlane, stack: ExitStack) -> dict[str, dict[str, object]]:
    count = len(cp.endpoints["services"])  # type: ignore[arg-type]
    return {
        "healthy": cp.endpoints,
        "port closed": moved(cp.endpoints, CLOSED, closed_ports(CLOSED, count)),
        "black-holed": moved(cp.endpoints, BLACK_HOLE, stack.enter_context(black_hole(BLACK_HOLE, count))),
    }


def benchmark(context: Context) -> report.Section:
    timeout, samples = (0.5, 1) if context.smoke else (2.0, 3 * context.repeat)
    cp = context.control_plane()
    rows, figures = [], {"probe_timeout_ms": timeout * 1000, "samples": samples, "cases": {}}
    print(f"endpoint selection: probe timeout {timeout:g}s, {samples} sample(s) per figure", flush=True)
    with ExitStack() as stack:
        for case, document in documents(cp, stack).items():
            endpoints_file = case_files(context, cp, case, document)
            measures = {
                "CLI": partial(time_cli, cli_argv(context, cp, endpoints_file, timeout)),
                "select()": partial(time_function, cp, document, timeout),
            }
            if case == "healthy":  # the CLI's own cost (start-up, files) without any probe
                measures["CLI --no-probe"] = partial(time_cli, cli_argv(context, cp, endpoints_file, None))
            for via, measure in measures.items():
                elapsed, chosen = sampled(measure, samples)
                figure = report.spread(elapsed)
                figures["cases"][f"{case}, {via}"] = {"ms": figure, "chose": sorted(chosen)}  # type: ignore[index]
                rows.append([case, via, "/".join(sorted(chosen)), report.spread_text(figure),
                             f"{figure['median'] / (timeout * 1000):.2f}"])  # fmt: skip
                print(
                    f"  {case}, {via}: {report.spread_text(figure)} ms, chose {'/'.join(sorted(chosen))}",
                    flush=True,
                )
    return section(rows, figures, timeout)


def section(rows: list[list[str]], figures: dict[str, object], timeout: float) -> report.Section:
    return {
        "title": "Endpoint selection (mode auto): Pegasus healthy, port closed, black-holed",
        "explanation": [
            "Each figure is the wall time to choose a control plane in mode auto, by the CLI (a whole "
            "process as the cluster user) and by select() in-process with the real authenticated probes.",
            f"'÷ timeout' divides the median by the configured probe timeout ({timeout:g} s): near 1 when "
            "Pegasus does not answer means its services were probed in parallel under one deadline, not one "
            "timeout each.",
            "'CLI --no-probe' is the CLI's own cost (Python start-up and reading the files) to subtract from "
            "the CLI figures.",
        ],
        "columns": ["Pegasus", "via", "chose", "ms", "÷ timeout"],
        "rows": rows,
        "figures": figures,
        "notes": [
            "Black hole: listeners on 127.0.0.66 with a full accept queue, so the kernel drops every SYN "
            "unanswered (iptables is not installed here); closed: 127.0.0.67 ports nothing listens on "
            "(refused at once). All traffic stays on 127.0.0.0/8.",
            "The fallback Mac is this run's control plane reached on 127.0.0.10, healthy in every case, so "
            "the figures add Pegasus's cost to one healthy probe of the Mac.",
            "The lookup plugin han.infra.control_plane calls the same select(); it is not timed separately.",
        ],
    }
