"""Failover in mode auto: Pegasus's control plane goes away, the worker moves to the Mac, and back.

Two control planes of this run, both ``han-control-plane run`` as the cluster user: Pegasus's a Slurm
batch job on 127.0.0.10 (free ports; the supervisor is the batch shell, as role control_plane runs it),
the Mac's launched directly on 127.0.0.20 (fixed free ports, as an inventory gives them; a Mac has no
Slurm). One ``han-worker run`` in mode auto serves the queue ``noop`` with the worker's DEFAULT failover
settings: a probe every 5 s, a switch after 3 failed probes in a row, the 2nd and 3rd a fifth of an
interval apart (and back after 3 good ones, an interval apart). Each round:

1. Pegasus's job stops, one of two ways: SIGKILL of every process of the job at once (as the OOM killer
   or a node's crash leaves it: nothing gets to mark the endpoints stale), or ``scancel`` (Slurm's
   cancel: SIGTERM to every process at once, then SIGKILL after KillWait; the supervisor marks the
   endpoints stale first. On Slurm 22.05 ``scancel --signal=KILL --full`` is the same cancel).
2. A no-op job is submitted to the Mac at that moment. Detection is the worker's log line "control
   plane switch requested", the switch its line "control plane: pegasus ... -> mac", and the first job
   on the fallback that job's finished_at in the Mac's ledger; each measured from the stop.
3. Pegasus's job is submitted again on the same state directory (the next epoch); a no-op job goes to
   Pegasus as soon as it has published. Fail-back is the worker's line "-> pegasus" and that job's
   finished_at, each measured from the publication.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from han_worker import client
from han_worker.control_plane.layout import pick_free_ports
from han_worker.selection.endpoints import parse_endpoints
from han_worker.selection.resolver import Choice
from han_worker.store.link import Link, open_link
from tests.bench import report
from tests.bench.context import Context
from tests.bench.logs import logged_at, wait_until
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    ADDRESS,
    MAC_ADDRESS,
    RunningControlPlane,
    WorkerProcess,
    start_worker,
    write_private_file,
)

# The worker's defaults (han_worker.config): the benchmark measures them, it does not tune them.
PROBE_INTERVAL_S = 5.0
FLAP_THRESHOLD = 3
PROBE_TIMEOUT_S = 2.0
DETECTION_GOAL_S = 3 * PROBE_INTERVAL_S  # issue 8: detection in under 3 probe intervals
FIRST_JOB_GOAL_S = 10.0  # issue 8: first job on the fallback within 10 s
STEP_TIMEOUT_S = 90.0  # far beyond any step's expected time: a step that takes this long is broken

# (figure, column) in the order of the table.
FIGURES = (
    ("detect_s", "detected (s)"),
    ("on_mac_s", "worker on the Mac (s)"),
    ("first_mac_job_s", "first Mac job done (s)"),
    ("restart_s", "restart to published (s)"),
    ("back_s", "worker back on Pegasus (s)"),
    ("first_pegasus_job_s", "first Pegasus job done (s)"),
)


# -- control planes --------------------------------------------------------------------------------


def launch(env: UnprivilegedEnv, state_dir: Path, *extra: str, address: str = ADDRESS) -> RunningControlPlane:
    """``han-control-plane run`` as tests.integration.control_planes.start_control_plane starts it (the
    Mac's: it has no Slurm), in a session of its own so that no signal to this benchmark reaches it."""
    log = state_dir.parent / f"supervisor-{time.monotonic_ns()}.log"
    argv = env.argv("han-control-plane", "run", "--state-dir", str(state_dir), "--bind", address, *extra)
    with log.open("w") as handle:
        process = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    return until_published(RunningControlPlane(process, state_dir, log), f"{state_dir.name}'s endpoints")


_Plane = TypeVar("_Plane", bound=RunningControlPlane)


def until_published(running: _Plane, what: str) -> _Plane:
    """``running`` once it has published its endpoints; shut down if it does not."""
    try:
        wait_until(lambda: published(running), STEP_TIMEOUT_S, what)
    except BaseException:
        running.shutdown()
        raise
    return running


def published(running: RunningControlPlane) -> bool:
    if running.process.poll() is not None:
        raise RuntimeError(f"han-control-plane exited with {running.process.returncode}:\n{running.output()}")
    try:
        # On a restart the previous run's file is there already: wait for this run's own log line.
        return running.endpoints.get("stale") is False and "published" in running.output()
    except (OSError, ValueError):
        return False


@dataclass
class SlurmControlPlane(RunningControlPlane):
    """Pegasus's control plane as a Slurm batch job of the cluster user, the supervisor its batch shell (as
    role control_plane runs it). ``process`` is ``sbatch --wait``, alive while the job is; ``log`` its output."""

    job_id: str = ""

    def scancel(self, *args: str) -> None:
        subprocess.run(["scancel", *args, self.job_id], check=True, capture_output=True, timeout=30)

    def request_stop(self) -> None:
        if self.process.poll() is None:
            self.scancel("--batch", "--signal=TERM")  # the supervisor's clean stop, as the role stops it

    def shutdown(self, timeout: float = 60) -> None:
        try:
            self.stop(timeout)
        except subprocess.TimeoutExpired:
            self.scancel("--signal=KILL", "--full")
            self.process.wait(30)


def launch_in_slurm(env: UnprivilegedEnv, state_dir: Path) -> SlurmControlPlane:
    """``sbatch`` a script whose one command is ``exec han-control-plane run``, as the cluster user."""
    directory = state_dir.parent
    log = directory / f"slurm-{time.monotonic_ns()}.out"
    # The same program and environment as the direct launch (env.argv): this machine's /usr/local/bin holds
    # another PostgreSQL, whose server would refuse the data directory the other launch initialised.
    command = env.argv("han-control-plane", "run", "--state-dir", str(state_dir), "--bind", ADDRESS)
    as_user, command = command[: command.index("env")], command[command.index("env") :]
    script = write_private_file(env, directory / "control-plane.sbatch",
                                "#!/bin/bash\nexec " + " ".join(map(shlex.quote, command)) + "\n", mode=0o700)  # fmt: skip
    argv = [*as_user, "env", "-i", f"HOME=/home/{env.user}", "PATH=/usr/bin:/bin",
            "sbatch", "--wait", "--parsable", f"--job-name={SLURM_JOB_NAME}", "--partition=batch",
            "--time=30", "--cpus-per-task=1", "--mem=1G", "--export=NONE", f"--chdir={directory}",
            f"--output={log}", str(script)]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    job_id = process.stdout.readline().strip().split(";")[0]  # printed at submission; --wait blocks after
    if not job_id.isdigit():
        process.wait(30)
        raise RuntimeError(f"sbatch did not submit the control plane: {job_id}")
    running = SlurmControlPlane(process, state_dir, log, job_id=job_id)
    return until_published(running, f"{state_dir.name}'s endpoints (job {job_id})")


def supervisor_pid(state_dir: Path) -> int:
    """The pid of ``han-control-plane run --state-dir state_dir`` (the Slurm job's batch shell), from /proc."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if any(arg.endswith(b"/han-control-plane") for arg in argv) and str(state_dir).encode() in argv:
                return int(cmdline.parent.name)
    raise RuntimeError(f"no han-control-plane process serves {state_dir}")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the children of each of its threads, recursively), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError):
            for child in map(int, (task / "children").read_text().split()):
                found += [child, *descendants(child)]
    return found


def kill_every_process(running: RunningControlPlane) -> None:
    """SIGKILL to every process of the job at once, as the kernel's OOM killer or a node's crash leaves it:
    nothing gets to mark the endpoints stale. (scancel --signal=KILL cannot do this on Slurm 22.05: it
    cancels the job, which sends SIGTERM first.) The supervisor is stopped first: were it to see a service
    die, it would mark the endpoints stale."""
    pid = supervisor_pid(running.state_dir)
    os.kill(pid, signal.SIGSTOP)
    for child in descendants(pid):
        with suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)


def cancel_job(running: RunningControlPlane) -> None:
    if not isinstance(running, SlurmControlPlane):
        raise TypeError(f"{running.state_dir} is not a Slurm job")
    running.scancel()


# How Pegasus's control plane, a Slurm job, goes away in each round.
STOPS: dict[str, Callable[[RunningControlPlane], None]] = {
    "SIGKILL of every process": kill_every_process,  # endpoints left as they were
    # Slurm's cancel: SIGTERM to every process of the job at once (the services die with the supervisor,
    # which marks the endpoints stale first), SIGKILL after KillWait. scancel --signal=KILL does the same.
    "scancel": cancel_job,
}
SLURM_JOB_NAME = "han-bench-failover"


def link_to(running: RunningControlPlane, source: str) -> Link:
    """A link as root (the control plane's files belong to the cluster user: read them directly)."""
    endpoints = parse_endpoints(running.endpoints, "endpoints.json")
    choice = Choice(source, endpoints, running.worker_credentials(), "benchmark")
    return open_link(choice, timeout=5, name="han-bench-failover")


# -- the drill ---------------------------------------------------------------------------------------


@dataclass
class Drill:
    """The control planes of the run; ``pegasus`` is replaced by each restart."""

    env: UnprivilegedEnv
    pegasus: RunningControlPlane
    mac: RunningControlPlane


def worker_config(env: UnprivilegedEnv, directory: Path, pegasus: Path, mac: RunningControlPlane) -> Path:
    """Mode auto; every failover setting left at the worker's default (see PROBE_INTERVAL_S)."""
    mac_ports = {name: service.port for name, service in parse_endpoints(mac.endpoints, "").services.items()}
    settings = {
        "mode": "auto",
        "queues": ["noop"],
        "spool_dir": str(directory / "spool"),
        "pegasus": {"endpoints_file": str(pegasus / "endpoints.json")},
        "mac": {"host": MAC_ADDRESS, "ports": mac_ports, "credentials_file": str(mac.state_dir / "credentials.json")},
    }  # fmt: skip
    return write_private_file(env, directory / "worker.json", json.dumps(settings))


def start_planes(env: UnprivilegedEnv, directory: Path) -> tuple[RunningControlPlane, RunningControlPlane]:
    ports = dict(zip(("postgres", "redis", "s3"), pick_free_ports(MAC_ADDRESS, 3), strict=True))
    mac_args = ["--source", "mac", *(f"--port={name}={port}" for name, port in ports.items())]
    with ThreadPoolExecutor(2) as pool:  # seconds each: in parallel
        pegasus = pool.submit(launch_in_slurm, env, directory / "pegasus")
        mac = pool.submit(launch, env, directory / "mac", *mac_args, address=MAC_ADDRESS)
    started = [future.result() for future in (pegasus, mac) if future.exception() is None]
    if len(started) < 2:
        for running in started:
            running.shutdown()
        (pegasus if pegasus.exception() else mac).result()  # raises the failure
    return started[0], started[1]


@contextmanager
def drill(context: Context) -> Iterator[tuple[Drill, WorkerProcess, Link]]:
    """The two control planes, a link to the Mac's and the worker, serving Pegasus; all stopped after."""
    directory = context.workdir / "failover"
    directory.mkdir(mode=0o700)
    shutil.chown(directory, context.env.user, context.env.user)
    with ExitStack() as stack:
        running = Drill(context.env, *start_planes(context.env, directory))
        stack.callback(stop_planes, running)  # whichever Pegasus is current at the end
        mac_link = link_to(running.mac, "mac")
        stack.callback(mac_link.close)
        config = worker_config(context.env, directory, running.pegasus.state_dir, running.mac)
        worker = start_worker(context.env, config)
        stack.callback(stop_worker, worker)
        wait_until(lambda: worker_failed(worker) or "serving noop on pegasus" in worker.output(),
                   STEP_TIMEOUT_S, "the worker to choose Pegasus")  # fmt: skip
        yield running, worker, mac_link


def worker_failed(worker: WorkerProcess) -> bool:
    if worker.process.poll() is not None:
        raise RuntimeError(f"han-worker exited with {worker.process.returncode}:\n{worker.output()}")
    return False


def stop_worker(worker: WorkerProcess) -> None:
    try:
        worker.stop(timeout=30)
    finally:
        worker.kill()


def stop_planes(running: Drill) -> None:
    """Clean stops, both at once (each takes ~15 s, SeaweedFS's filer): a SIGKILL would leave PostgreSQL's
    shared memory segment behind once the directory is gone."""
    for plane in (running.pegasus, running.mac):
        plane.request_stop()
    for plane in (running.pegasus, running.mac):
        plane.shutdown()


# -- one round ---------------------------------------------------------------------------------------


def worker_logged(worker: WorkerProcess, since: int, pattern: str, what: str) -> float:
    """When the worker logged ``pattern`` after offset ``since`` of its log (epoch seconds)."""

    def found() -> float | None:
        worker_failed(worker)
        return logged_at(worker.output()[since:], pattern)

    return wait_until(found, STEP_TIMEOUT_S, what)


def finished_at(link: Link, job_id: str) -> float:
    def finished() -> float | None:
        record = link.ledger.job(job_id)
        if record is None or record.status not in ("succeeded", "failed", "dead"):
            return None
        if record.status != "succeeded" or record.finished_at is None:
            raise RuntimeError(f"job {job_id} on {link.source} ended {record.status}: {record.error}")
        return record.finished_at.timestamp()

    return wait_until(finished, STEP_TIMEOUT_S, f"job {job_id} on {link.source}")


def fail_over(
    running: Drill, worker: WorkerProcess, mac_link: Link, how: str, phase: float
) -> dict[str, float]:
    """Stop Pegasus ``how``, ``phase`` of a probe interval after the worker settled on it; seconds from the
    stop to detection, to the switch, to the first Mac job."""
    # The worker settles on a control plane at one of its probe ticks (or at its start, when its ticks
    # start): stopping at once would always hit the same point of the probe cycle, just after a probe.
    time.sleep(phase * PROBE_INTERVAL_S)
    since = len(worker.output())
    stopped = time.time()
    STOPS[how](running.pegasus)
    job = client.submit(mac_link, "noop", {}, {}, max_attempts=3)
    detected = worker_logged(worker, since, r"control plane switch requested: pegasus ", "detection")
    on_mac = worker_logged(worker, since, r"control plane: pegasus .* -> mac ", "the switch to the Mac")
    done = finished_at(mac_link, job)
    return {"detect_s": detected - stopped, "on_mac_s": on_mac - stopped, "first_mac_job_s": done - stopped}


def unlocked(lock_file: Path) -> bool:
    """Whether no supervisor holds ``lock_file`` (flock, as the supervisor takes it); released at once."""
    with lock_file.open("rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def fail_back(running: Drill, worker: WorkerProcess) -> dict[str, float]:
    """Restart Pegasus's job on its state directory; seconds from sbatch to publication, then from
    publication to the worker's return and to the first Pegasus job done."""
    running.pegasus.process.wait(STEP_TIMEOUT_S)
    # A clean stop takes ~15 s (SeaweedFS), and a cancelled job's state is final while its processes still
    # stop (sbatch --wait has returned): the next supervisor can start once the last one let go of the lock.
    wait_until(lambda: unlocked(running.pegasus.state_dir / "supervisor.lock"), STEP_TIMEOUT_S,
               "the stopped control plane to release its state directory")  # fmt: skip
    since, restarted = len(worker.output()), time.time()
    running.pegasus = launch_in_slurm(running.env, running.pegasus.state_dir)  # the next epoch, same ledger
    published_at = logged_at(running.pegasus.output(), r"published ")
    if published_at is None:
        raise RuntimeError(f"no 'published' line in {running.pegasus.log}")
    link = link_to(running.pegasus, "pegasus")
    try:
        job = client.submit(link, "noop", {}, {}, max_attempts=3)
        back = worker_logged(worker, since, r"control plane: mac .* -> pegasus ", "the return to Pegasus")
        done = finished_at(link, job)
    finally:
        link.close()
    return {
        "restart_s": published_at - restarted,
        "back_s": back - published_at,
        "first_pegasus_job_s": done - published_at,
    }


def round_trip(
    running: Drill, worker: WorkerProcess, mac_link: Link, how: str, phase: float
) -> dict[str, float]:
    figures = fail_over(running, worker, mac_link, how, phase) | fail_back(running, worker)
    print(f"  {how}: " + ", ".join(f"{name} {value:.1f}" for name, value in figures.items()), flush=True)
    return figures


# -- the section -------------------------------------------------------------------------------------


def benchmark(context: Context) -> report.Section:
    """``repeat`` rounds for each way to stop Pegasus; smoke: one SIGKILL round."""
    stops = list(STOPS)[:1] if context.smoke else list(STOPS)
    print(f"failover: probe interval {PROBE_INTERVAL_S:g}s, flap threshold {FLAP_THRESHOLD}, "
          f"{context.repeat} round(s) per stop ({', '.join(stops)})", flush=True)  # fmt: skip
    measured: dict[str, list[dict[str, float]]] = {how: [] for how in stops}
    with drill(context) as (running, worker, mac_link):
        for how in stops:
            for index in range(context.repeat):
                phase = (index + 0.5) / context.repeat  # the rounds' stops spread evenly over the cycle
                measured[how].append(round_trip(running, worker, mac_link, how, phase))
    return section(measured)


def spreads(rounds: list[dict[str, float]]) -> dict[str, report.Spread]:
    return {name: report.spread([each[name] for each in rounds]) for name, _column in FIGURES}


def goal_notes(figures: dict[str, dict[str, report.Spread]]) -> list[str]:
    notes = []
    for how, spread in figures.items():
        detect, first = spread["detect_s"], spread["first_mac_job_s"]
        notes.append(
            f"Goals after {how} (not asserted): detection < {DETECTION_GOAL_S:g} s (3 probe intervals): "
            f"{'met' if detect['max'] < DETECTION_GOAL_S else 'not met'} (median {detect['median']:.2f} s, "
            f"worst {detect['max']:.2f} s); first job on the Mac within {FIRST_JOB_GOAL_S:g} s: "
            f"{'met' if first['max'] <= FIRST_JOB_GOAL_S else 'not met'} (median {first['median']:.2f} s, "
            f"worst {first['max']:.2f} s)."
        )
    return notes


def section(measured: dict[str, list[dict[str, float]]]) -> report.Section:
    figures = {how: spreads(rounds) for how, rounds in measured.items()}
    rows = [
        [how] + [report.spread_text(spread[name], 1) for name, _column in FIGURES]
        for how, spread in figures.items()
    ]
    return {
        "title": "Failover in mode auto: Pegasus's control plane stopped, the Mac takes over, and back",
        "explanation": [
            f"The worker runs with its default failover settings: a health probe every {PROBE_INTERVAL_S:g} s "
            f"({PROBE_TIMEOUT_S:g} s timeout), a switch after {FLAP_THRESHOLD} failed probes in a row and a "
            f"return after {FLAP_THRESHOLD} good ones, only between jobs.",
            "'detected' is the time from Pegasus's stop to the worker's log line asking to switch, 'worker on "
            "the Mac' to its line saying it switched, and 'first Mac job done' to the finished_at, in the "
            "Mac's ledger, of a no-op job submitted to the Mac at the moment of the stop.",
            "'restart to published' is how long Pegasus's control plane takes to come back on the same state "
            "directory (after a SIGKILL PostgreSQL recovers first); 'worker back on Pegasus' and 'first "
            "Pegasus job done' are measured from that publication, the job submitted to Pegasus at once.",
            "Pegasus's control plane runs as a Slurm batch job of the cluster user, the supervisor its batch "
            "shell, as role control_plane runs it. 'SIGKILL of every process' kills the job's processes at "
            "once, as the OOM killer or a node's crash would (the endpoints stay as they were); 'scancel' is "
            "Slurm's cancel, SIGTERM to every process of the job at once (the services die with the "
            "supervisor, which marks the endpoints stale first), SIGKILL after KillWait.",
        ],
        "columns": ["Pegasus stopped by", *(column for _name, column in FIGURES)],
        "rows": rows,
        "figures": {
            "probe_interval_s": PROBE_INTERVAL_S,
            "flap_threshold": FLAP_THRESHOLD,
            "probe_timeout_s": PROBE_TIMEOUT_S,
            "goals_s": {"detection": DETECTION_GOAL_S, "first_fallback_job": FIRST_JOB_GOAL_S},
            "stops": figures,
        },
        "notes": [
            *goal_notes(figures),
            "Pegasus on 127.0.0.10 (free ports), the Mac on 127.0.0.20 (launched directly: it has no "
            "Slurm). 'restart to published' runs from sbatch, after the stopped job let go of the state "
            "directory, to the new supervisor's publication: the scheduler's start is in it.",
            "On this Slurm (22.05) scancel --signal=KILL --full does what plain scancel does: it cancels "
            "the job, which sends SIGTERM first; only the kernel (OOM) or a crash SIGKILLs a job outright.",
            "Pegasus stops at a phase of the worker's probe cycle spread evenly over the rounds ((i + 0.5) / "
            "rounds of an interval after the worker settled on Pegasus, which it does at a probe). After "
            "SIGKILL the worker's own connection breaks, which triggers a check at once; the gate then "
            f"confirms with {FLAP_THRESHOLD - 1} more failed checks a fifth of an interval apart "
            f"({PROBE_INTERVAL_S / 5:g} s), so detection is about {(FLAP_THRESHOLD - 1) * PROBE_INTERVAL_S / 5:g} s "
            "whatever the phase; the worker moves at the end of its current back-off (up to 2 s).",
            "After a clean stop the supervisor marks the endpoints file stale before it stops anything; the "
            "worker's next check (at once, as its connection breaks) reads that and switches without "
            "confirming: the supervisor's own word is not a lost packet.",
            "Fail-back is not hurried: Pegasus must pass 3 checks in a row, one interval apart.",
            "Times come from the worker's and the supervisor's log lines (milliseconds) and the ledgers' "
            "finished_at, all on this machine's clock.",
        ],
    }
