"""Who owned the control plane's state directory, whether it is provably gone, and what its services left.

Real processes (a child spawned and killed gives a dead pid, one left unreaped a zombie), real files and a
real System V shared memory segment; Slurm's answer is the pure judge's input, not a mock.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from han_worker import processes
from han_worker.control_plane import launch, ownership
from han_worker.control_plane.admin_secrets import generate_secrets
from han_worker.control_plane.incidents import CrashHistory, read_failure, record_failure
from han_worker.control_plane.layout import Layout
from han_worker.control_plane.leftovers import LeftoversInUse, clear_leftovers, seaweed_sockets_of
from han_worker.control_plane.ownership import Owner, OwnerRecordError, ServiceMark, judge_owner
from han_worker.control_plane.services import PostgresService, RedisService, SeaweedS3Service
from han_worker.control_plane.takeover import PredecessorNotGone, Takeover, finish_orphans
from han_worker.processes import ProcessMark

HERE = "node-a"
BOOT = "boot-1"


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


@pytest.fixture
def dead_pid() -> int:
    child = sleeper()
    child.kill()
    child.wait()
    return child.pid


@pytest.fixture
def zombie() -> Iterator[subprocess.Popen[bytes]]:
    """A killed child not yet reaped: its pid exists (kill(pid, 0) succeeds), as the killed postmaster's did."""
    child = sleeper()
    child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, and left unreaped
    yield child
    child.wait()


def owner(
    host: str = HERE,
    boot: str | None = BOOT,
    pid: int = 4242,
    job: str | None = None,
    **services: ServiceMark,
) -> Owner:
    return Owner(host, boot, ProcessMark(pid, 1000), job, services)


# -- processes -------------------------------------------------------------------------------------------


def test_a_running_process_has_a_start_time_and_runs():
    child = sleeper()
    try:
        mark = processes.mark_of(child.pid)
        assert mark.start_time is not None
        assert processes.is_running(mark)
    finally:
        child.kill()
        child.wait()
    assert not processes.is_running(mark)


def test_a_dead_pid_and_a_zombie_do_not_run(dead_pid: int, zombie: subprocess.Popen[bytes]):
    assert processes.process_start_time(dead_pid) is None
    assert Path(f"/proc/{zombie.pid}").exists(), "the zombie must still hold its pid for this test"
    assert processes.process_start_time(zombie.pid) is None
    assert not processes.is_running(ProcessMark(zombie.pid, 1))


def test_a_reused_pid_is_not_the_recorded_process():
    me = processes.mark_of(os.getpid())
    assert me.start_time is not None
    assert not processes.is_running(ProcessMark(me.pid, me.start_time + 1))


def test_still_running_names_the_recorded_processes_alive_here(dead_pid: int):
    child = sleeper()
    try:
        previous = owner(
            pid=dead_pid,
            postgres=ServiceMark(processes.mark_of(child.pid), (5432,)),
            redis=ServiceMark(ProcessMark(dead_pid, 7), (6379,)),
            s3=ServiceMark(None, (9000,)),  # recorded before it was started
        )
        assert ownership.still_running(previous) == [f"postgres (pid {child.pid})"]
    finally:
        child.kill()
        child.wait()


def test_a_retry_judges_its_own_earlier_attempt_gone_once_its_services_stopped():
    itself = ownership.this_supervisor("direct")
    verdict = judge_owner(itself, itself, running_here=[], slurm_alive=None)
    assert verdict.gone
    assert verdict.reason == "this supervisor's earlier attempt: its services no longer run"


def test_still_running_leaves_out_the_caller_itself():
    """A retried start judges the record of its own first attempt: the supervisor is alive, and it is us."""
    itself = Owner(HERE, BOOT, processes.mark_of(os.getpid()), None, {})
    assert ownership.still_running(itself) == []


# -- the judge -------------------------------------------------------------------------------------------


def test_same_host_gone_when_nothing_it_recorded_runs():
    verdict = judge_owner(owner(), owner(pid=1), running_here=[], slurm_alive=True)
    assert verdict.gone
    assert verdict.same_host
    assert "no longer run" in verdict.reason


def test_same_host_not_gone_while_one_of_its_processes_runs():
    verdict = judge_owner(owner(), owner(pid=1), running_here=["postgres (pid 77)"], slurm_alive=False)
    assert not verdict.gone
    assert "still running here: postgres (pid 77)" in verdict.reason


def test_same_host_after_a_reboot_is_gone_whatever_runs_now():
    verdict = judge_owner(
        owner(boot="boot-0"), owner(pid=1), running_here=["its supervisor (pid 4242)"], slurm_alive=None
    )
    assert verdict.gone
    assert "before this host's last boot" in verdict.reason


@pytest.mark.parametrize(
    ("slurm_alive", "gone", "said"),
    [
        (False, True, "Slurm job 41 has ended"),
        (True, False, "Slurm job 41 still runs; wait for it to end or scancel it"),
        (None, False, "Slurm cannot tell whether job 41 still runs"),
    ],
)
def test_another_host_is_judged_by_slurm(slurm_alive: bool | None, gone: bool, said: str):
    verdict = judge_owner(owner(host="node-b", job="41"), owner(job="42"), [], slurm_alive)
    assert (verdict.gone, verdict.same_host, verdict.final) == (gone, False, False)
    assert said in verdict.reason
    assert "supervisor pid 4242 on node-b" in verdict.reason


def test_an_earlier_run_of_this_very_job_is_gone():
    """Slurm requeued the job onto another node: it runs one instance of a job at a time."""
    verdict = judge_owner(owner(host="node-b", job="41"), owner(job="41"), [], slurm_alive=True)
    assert verdict.gone
    assert "requeued" in verdict.reason


def test_another_host_without_slurm_cannot_be_proved_gone():
    verdict = judge_owner(owner(host="login-2"), owner(), [], slurm_alive=None)
    assert not verdict.gone
    assert verdict.final, "waiting cannot prove it either"
    assert "cannot be proved from node-a" in verdict.reason
    assert "check on login-2" in verdict.reason
    assert "ps -p 4242" in verdict.reason


# -- the record on disk ----------------------------------------------------------------------------------


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "control-plane"
    directory.mkdir(mode=0o700)
    return directory


def test_the_owner_record_reads_back_as_written(state_dir: Path):
    written = owner(job="41", postgres=ServiceMark(ProcessMark(10, 5), (5432,)), s3=ServiceMark(None, (1, 2)))
    ownership.write_owner(state_dir / "owner.json", written)
    assert (state_dir / "owner.json").stat().st_mode & 0o777 == 0o600
    assert ownership.read_owner(state_dir / "owner.json") == written
    assert ownership.read_owner(state_dir / "absent.json") is None


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda doc: doc.pop("host"), "field 'host' is missing"),
        (lambda doc: doc["supervisor"].update(pid=0), "field 'supervisor.pid': 0 is less than 1"),
        (lambda doc: doc["services"]["redis"].update(ports=[70000]), "field 'services.redis.ports' must be"),
        (lambda doc: doc.update(services=[]), "field 'services' must be an object"),
    ],
)
def test_a_broken_owner_record_is_refused_naming_the_field(state_dir: Path, change: object, said: str):
    document = owner(redis=ServiceMark(ProcessMark(10, 5), (6379,))).to_dict()
    change(document)  # type: ignore[operator]
    path = state_dir / "owner.json"
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    with pytest.raises(OwnerRecordError, match=r"owner\.json") as refused:
        ownership.read_owner(path)
    assert said in str(refused.value)


# -- leftovers -------------------------------------------------------------------------------------------


def postgres_service(state_dir: Path) -> PostgresService:
    data_dir = state_dir / "data" / "postgres"
    data_dir.mkdir(parents=True)
    (state_dir / "run").mkdir()
    return PostgresService(
        "postgres",
        "127.0.0.1",
        5432,
        state_dir / "postgres.log",
        data_dir=data_dir,
        socket_dir=state_dir / "run",
    )


def postmaster_pid(service: PostgresService, segment: int) -> Path:
    path = service.data_dir / "postmaster.pid"
    lines = ["999999", str(service.data_dir), "1796529821", "5432", str(service.socket_dir), "127.0.0.1"]
    path.write_text("\n".join([*lines, f"  1614001 {segment:>9}", "ready   "]) + "\n")
    return path


def test_only_lock_pid_and_socket_files_are_cleared(state_dir: Path):
    service = postgres_service(state_dir)
    pid_file = postmaster_pid(service, segment=2**30)  # a segment that does not exist
    socket_lock = service.socket_dir / ".s.PGSQL.40335.lock"
    socket_lock.write_text("1234\n")
    data = service.data_dir / "PG_VERSION"
    data.write_text("18\n")
    removed = clear_leftovers(service, same_host=True, ports=())
    assert sorted(removed) == sorted([pid_file, socket_lock])
    assert data.exists()
    assert clear_leftovers(service, same_host=True, ports=()) == []


@pytest.fixture
def attached_segment() -> Iterator[int]:
    """A System V shared memory segment this process is attached to, as a live backend would be."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    ipc_private, ipc_creat, ipc_rmid = 0, 0o1000, 0
    segment = libc.shmget(ipc_private, 4096, ipc_creat | 0o600)
    assert segment >= 0, os.strerror(ctypes.get_errno())
    address = libc.shmat(segment, None, 0)
    try:
        yield segment
    finally:
        libc.shmdt(ctypes.c_void_p(address))
        libc.shmctl(segment, ipc_rmid, None)


def test_postmaster_pid_stays_while_its_shared_memory_is_attached(state_dir: Path, attached_segment: int):
    service = postgres_service(state_dir)
    pid_file = postmaster_pid(service, attached_segment)
    with pytest.raises(LeftoversInUse, match=f"still use its shared memory {attached_segment}"):
        clear_leftovers(service, same_host=True, ports=())
    assert pid_file.exists()
    # From another host, this host's segments say nothing about that one's backends: Slurm's word decides.
    assert clear_leftovers(service, same_host=False, ports=()) == [pid_file]


def test_seaweed_sockets_in_tmp_are_ours_by_port(tmp_path: Path):
    for name in (
        "seaweedfs-s3-grpc-18333.sock",
        "seaweedfs-filer-grpc-18888.sock",
        "seaweedfs-s3-grpc-9.sock",
    ):
        (tmp_path / name).touch()
    (tmp_path / "other-18333.sock").touch()
    found = seaweed_sockets_of([18333, 18888], tmp=tmp_path)
    assert sorted(path.name for path in found) == [
        "seaweedfs-filer-grpc-18888.sock",
        "seaweedfs-s3-grpc-18333.sock",
    ]
    if os.geteuid() == 0:  # another user's socket is not ours to remove
        os.chown(tmp_path / "seaweedfs-s3-grpc-18333.sock", 65534, -1)
        assert seaweed_sockets_of([18333], tmp=tmp_path) == []


def test_seaweed_lock_files_are_its_data_dir_sockets(state_dir: Path):
    service = SeaweedS3Service(
        "s3", "127.0.0.1", 9000, state_dir / "s3.log", data_dir=state_dir, internal_ports=(1, 2)
    )
    assert service.ports == (9000, 1, 2)
    assert [path.name for path in service.lock_files()] == ["filer.sock", "s3.sock"]


def test_an_orphan_past_its_stop_grace_is_killed_once_its_supervisor_is_dead(state_dir: Path, dead_pid: int):
    weed = SeaweedS3Service("s3", "127.0.0.1", 9000, state_dir / "s3.log")  # a 3 s stop grace
    orphan = sleeper()
    try:
        alive = owner(pid=dead_pid, s3=ServiceMark(processes.mark_of(orphan.pid), (9000,)))
        alive_supervisor = Owner(HERE, BOOT, processes.mark_of(os.getpid()), None, alive.services)
        finish_orphans(alive_supervisor, [weed], waited=10.0)  # its supervisor would stop it itself
        finish_orphans(alive, [weed], waited=1.0)  # still within its grace
        assert orphan.poll() is None
        finish_orphans(alive, [weed], waited=4.0)
        assert orphan.wait(10) == -9
    finally:
        orphan.kill()
        orphan.wait()


def test_a_takeover_clears_a_dead_owners_files_and_records_itself(state_dir: Path, dead_pid: int):
    service = postgres_service(state_dir)
    pid_file = postmaster_pid(service, segment=2**30)
    here = ownership.this_supervisor("direct")
    gone = Owner(
        here.host, here.boot_id, ProcessMark(dead_pid, 1), None, {"postgres": ServiceMark(None, (5432,))}
    )
    ownership.write_owner(state_dir / "owner.json", gone)
    recorded = Takeover(Layout(state_dir), here, [service], 5.0, threading.Event()).run()
    assert not pid_file.exists()
    assert recorded.services == {"postgres": ServiceMark(None, (5432,))}
    assert ownership.read_owner(state_dir / "owner.json") == recorded


def test_a_takeover_from_an_unprovable_owner_is_refused_at_once_and_touches_nothing(state_dir: Path):
    service = postgres_service(state_dir)
    pid_file = postmaster_pid(service, segment=2**30)
    foreign = owner(host="login-2")
    ownership.write_owner(state_dir / "owner.json", foreign)
    with pytest.raises(PredecessorNotGone, match="cannot be proved") as refused:
        Takeover(
            Layout(state_dir), ownership.this_supervisor("direct"), [service], 60.0, threading.Event()
        ).run()
    assert refused.value.final
    assert pid_file.exists()
    assert ownership.read_owner(state_dir / "owner.json") == foreign


# -- crashes and the failure record ------------------------------------------------------------------------


def test_three_crashes_within_the_window_are_too_many():
    crashes = CrashHistory(limit=3, window=300.0)
    assert [crashes.too_many(crashes.record("redis", t)) for t in (0.0, 100.0)] == [False, False]
    assert crashes.record("s3", 150.0) == 1  # counted per service
    assert crashes.too_many(crashes.record("redis", 299.0))


def test_crashes_spread_out_are_not_too_many():
    crashes = CrashHistory(limit=3, window=300.0)
    counts = [crashes.record("redis", t) for t in (0.0, 200.0, 400.0, 600.0)]
    assert counts == [1, 2, 2, 2]


def test_status_says_why_nothing_runs(state_dir: Path):
    layout = Layout(state_dir)
    assert launch.status(layout).failure is None
    record_failure(layout, "running", "redis exited with code -9, 3 crashes within 300s")
    failure = read_failure(layout)
    assert failure is not None
    assert failure.phase == "running"
    described = launch.status(layout).failure
    assert described is not None
    assert described.startswith("stopped at ")
    assert described.endswith(": redis exited with code -9, 3 crashes within 300s")


# -- a server (re)started during a rotation --------------------------------------------------------------


def test_a_server_started_during_a_rotation_accepts_both_generations(state_dir: Path):
    """A restart in place must not take back what the rotation gave the running server: both generations."""
    old = generate_secrets()
    new = old.rotated()
    redis = RedisService("redis", "127.0.0.1", 6379, state_dir / "redis.log", data_dir=state_dir / "redis")
    weed = SeaweedS3Service("s3", "127.0.0.1", 9000, state_dir / "s3.log", data_dir=state_dir / "s3")
    for service in (redis, weed):
        service.use_secrets(new, old)
        assert service.generations() == [new, old]
    redis.prepare()
    conf = (state_dir / "redis" / "redis.conf").read_text()
    assert f"user {new.redis_user} on >{new.redis_password} >{old.redis_password} resetchannels" in conf
    assert (
        f"user {new.redis_admin_user} on >{new.redis_admin_password} >{old.redis_admin_password} ~*" in conf
    )
    identities: Any = weed._identities()["identities"]
    assert [len(identity["credentials"]) for identity in identities] == [2, 2]
    redis.use_secrets(new, None)  # the rotation retired the old generation
    redis.prepare()
    assert old.redis_password not in (state_dir / "redis" / "redis.conf").read_text()
