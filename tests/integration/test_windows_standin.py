"""The Windows STAND-IN on the testbed: NOT a Windows host, a Linux worker with the Windows role's config.

No Windows host can run here. ``playbooks/windows_standin.yml`` runs, as the unprivileged account
``winworker`` reached over SSH at 127.0.0.40 (the Windows workstation's address), the worker that role
``windows_worker`` configures for Windows: its rendered ``worker.json`` and ``supervisor.json`` with only the
Windows paths mapped, under the same supervisor, against the Mac's control plane (mode mac), labelled
``HAN_WORKER_STANDIN_PLATFORM=windows``. A pose job and an Isaac Lab training job (queue gpu, a FAKE trainer)
go to the Mac's control plane and are done by the stand-in, which the ledger records as ``windows-standin``.

The Mac's control plane is started if it is not running (it is left running: others use it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib.cbook
import psycopg
import pytest

from han_worker.selection.checks import s3_client
from han_worker.selection.credentials import S3Credentials
from han_worker.selection.endpoints import ServiceEndpoint
from han_worker.selection.tls import ca_fingerprints, postgres_tls
from han_worker.store.ledger import JobRecord, Ledger
from tests.conftest import run_ansible
from tests.integration.conftest import UnprivilegedEnv, recap
from tests.integration.control_planes import output_body, wait_for
from tests.unit.test_standin_platform import expected_standin_files, standin_role_variables

HOST = "windows-standin"
USER = "winworker"
HOME = f"/home/{USER}"
STANDIN_DIR = Path(HOME) / "han-worker-standin"
MAC_USER = "operator"
MAC_STATE = Path(f"/home/{MAC_USER}/.han/control-plane")
MAC_PORTS = {"postgres": 15432, "redis": 16379, "s3": 19000}
MAC_ADDRESS = "127.0.0.20"


def standin(*args: str) -> subprocess.CompletedProcess[str]:
    return run_ansible("ansible-playbook", "playbooks/windows_standin.yml", *args)


def processes_of(user: str) -> list[str]:
    """The command lines of the user's processes, but its SSH sessions (Ansible's ControlPersist)."""
    listed = subprocess.run(["ps", "-u", user, "-o", "args="], capture_output=True, text=True, check=False)
    return [line for line in listed.stdout.splitlines() if line.strip() and not line.startswith("sshd:")]


def supervisor_pid() -> int:
    return int((STANDIN_DIR / "run" / "supervisor.pid").read_text().strip())


def children_of(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(line) for line in found.stdout.split()]


@pytest.fixture(scope="module")
def mac_control_plane() -> None:
    """The Mac's control plane runs (started if it does not; never stopped here: others use it)."""
    result = run_ansible("ansible-playbook", "playbooks/control_plane.yml", "-e", "control_plane_hosts=mac")
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.fixture(scope="module")
def started(mac_control_plane: None) -> Iterator[list[subprocess.CompletedProcess[str]]]:
    """The stand-in started twice; stopped at the end of the module even when a test failed."""
    runs = [standin()]
    assert runs[0].returncode == 0, runs[0].stdout[-5000:]
    runs.append(standin())
    yield runs
    standin("-e", "state=stopped")


class MacClient:
    """``han-worker`` as the Mac's operator (this checkout's test venv), with a config for the Mac's control
    plane; the ledger and the object store read as root with the workers' credentials."""

    def __init__(self, env: UnprivilegedEnv, workdir: Path) -> None:
        self.env, self.workdir = env, workdir
        self.config = self.private_file(
            "client.json",
            json.dumps({
                "mode": "mac",
                "mac": {"host": MAC_ADDRESS, "ports": MAC_PORTS,
                        "credentials_file": str(MAC_STATE / "credentials.json")},
                "spool_dir": str(workdir / "spool"),
            }).encode(),
        )  # fmt: skip

    @property
    def credentials(self) -> dict[str, Any]:
        """The Mac's current credentials (a rotation replaces them)."""
        return dict(json.loads((MAC_STATE / "credentials.json").read_text()))

    def private_file(self, name: str, data: bytes) -> Path:
        path = self.workdir / name
        path.write_bytes(data)
        shutil.chown(path, self.env.user)
        path.chmod(0o600)
        return path

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = self.env.argv("han-worker", args[0], "--config", str(self.config), *args[1:])
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def submit(self, kind: str, *args: str) -> str:
        result = self.cli("submit", "--kind", kind, *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def ledger(self) -> Ledger:
        postgres, ca_cert = self.credentials["postgres"], self.credentials["tls"]["ca_cert"]

        def connect() -> psycopg.Connection[tuple[Any, ...]]:
            return psycopg.connect(
                postgres_tls(ca_cert, "the Mac's credentials.json"),
                host=MAC_ADDRESS, port=MAC_PORTS["postgres"], user=postgres["user"],
                password=postgres["password"], dbname=postgres["database"], autocommit=True, connect_timeout=5,
            )  # fmt: skip

        return Ledger(connect)

    def output(self, record: JobRecord, name: str) -> bytes:
        """An output's bytes, in the Mac's ledger (a small one) or its object store."""
        s3 = self.credentials["s3"]
        client = s3_client(
            ServiceEndpoint(MAC_ADDRESS, MAC_PORTS["s3"]), S3Credentials(s3["access_key"], s3["secret_key"], s3["bucket"]),
            ca_cert=self.credentials["tls"]["ca_cert"], origin="the Mac's credentials.json", timeout=5,
        )  # fmt: skip
        ledger = self.ledger()
        try:
            return output_body(ledger, client, s3["bucket"], record, name)
        finally:
            ledger.close()


@pytest.fixture(scope="module")
def mac_client(unprivileged_env: UnprivilegedEnv, mac_control_plane: None) -> Iterator[MacClient]:
    env = UnprivilegedEnv(unprivileged_env.bin_dir, MAC_USER)
    workdir = Path(tempfile.mkdtemp(prefix="han-windows-standin-", dir="/tmp"))
    shutil.chown(workdir, MAC_USER)
    workdir.chmod(0o700)
    yield MacClient(env, workdir)
    shutil.rmtree(workdir, ignore_errors=True)


def test_windows_standin_starts_and_a_second_run_changes_nothing(
    started: list[subprocess.CompletedProcess[str]],
) -> None:
    first, second = started
    assert recap(first, HOST)["failed"] == 0
    assert second.returncode == 0, second.stdout[-5000:]
    assert recap(second, HOST)["changed"] == 0, second.stdout[-5000:]
    log = (STANDIN_DIR / "logs" / "worker.log").read_text()
    assert "WARNING han_worker.worker.loop: this worker is a STAND-IN for windows" in log
    assert "serving gpu, pose on mac" in log
    # One supervisor, running the env's han-worker with the stand-in's config, as winworker.
    pid = supervisor_pid()
    assert Path(f"/proc/{pid}").stat().st_uid == Path(HOME).stat().st_uid
    [worker] = children_of(pid)
    argv = Path(f"/proc/{worker}/cmdline").read_bytes().split(b"\0")
    assert f"{HOME}/.han/env/bin/han-worker".encode() in argv
    assert str(STANDIN_DIR / "config" / "worker.json").encode() in argv


def test_windows_standin_runs_exactly_what_the_windows_role_renders(started: object) -> None:
    """Same keys and values as role windows_worker renders for this host, after the path mapping."""
    config, settings = expected_standin_files(standin_role_variables(HOME), HOME)
    assert json.loads((STANDIN_DIR / "config" / "worker.json").read_text()) == config
    assert json.loads((STANDIN_DIR / "config" / "supervisor.json").read_text()) == settings
    credentials = STANDIN_DIR / "config" / "mac-credentials.json"
    assert credentials.stat().st_mode & 0o777 == 0o600
    assert json.loads(credentials.read_text()) == json.loads((MAC_STATE / "credentials.json").read_text())
    for directory in ("", "bin", "config", "logs", "run", "spool"):
        assert (STANDIN_DIR / directory).stat().st_mode & 0o777 == 0o700


def standin_worker_pid() -> int:
    [worker] = children_of(supervisor_pid())
    return worker


def done_by_the_standin(mac_client: MacClient, job: str) -> JobRecord:
    """The job's record, after asserting that every attempt was the stand-in's (and none a Linux worker's)."""
    worker = standin_worker_pid()
    ledger = mac_client.ledger()
    try:
        record = ledger.job(job)
        attempts = ledger.attempts(job)
    finally:
        ledger.close()
    assert record is not None
    assert record.platform == "windows-standin"
    assert record.worker_id is not None
    assert record.worker_id.rsplit("-", 2)[1] == str(worker), "done by the stand-in's worker"
    assert attempts
    for attempt in attempts:
        assert (attempt["platform"], attempt["worker_id"], attempt["control_plane"]) == (
            "windows-standin", record.worker_id, "mac"
        )  # fmt: skip
    return record


@pytest.fixture(scope="module")
def training_job(started: object, mac_client: MacClient) -> str:
    """An Isaac Lab teacher PPO job (queue gpu, the FAKE trainer), submitted and waited for."""
    job = mac_client.submit(
        "isaaclab_teacher_ppo", "--param", "task=Isaac-Velocity-Rough-Anymal-C-v0",
        "--param", "num_envs=64", "--param", "max_iterations=5", "--param", "seed=7",
    )  # fmt: skip
    waited = mac_client.cli("wait", job, "--timeout", "300", timeout=320)
    assert waited.returncode in (0, 1), waited.stdout + waited.stderr + standin_log_tail()
    return job


def test_windows_standin_does_pose_jobs(started: object, mac_client: MacClient) -> None:
    """Pose jobs on the Mac's queue: a Linux pose worker that also uses the Mac (another test's, or a Pegasus
    worker in auto mode) may take some of them, so three go in and the stand-in must do at least one."""
    photo = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    mac_client.private_file("person.jpg", Path(photo).read_bytes())
    jobs = [
        mac_client.submit("pose", "--input", str(mac_client.workdir / "person.jpg")) for _index in range(3)
    ]
    ledger = mac_client.ledger()
    try:
        for job in jobs:
            waited = mac_client.cli("wait", job, "--timeout", "300", timeout=320)
            assert waited.returncode == 0, waited.stdout + waited.stderr + standin_log_tail()
        records = {job: ledger.job(job) for job in jobs}
    finally:
        ledger.close()
    by_standin = [job for job, record in records.items() if record and record.platform == "windows-standin"]
    assert by_standin, (
        f"no pose job was done by the stand-in: {[(r and r.platform, r and r.host) for r in records.values()]}"
    )
    for job in by_standin:
        record = done_by_the_standin(mac_client, job)
        assert (record.status, record.queue, record.attempts) == ("succeeded", "pose", 1)
        assert record.result is not None
        assert (record.result["frames"], record.result["frames_with_person"]) == (1, 1)


def test_windows_standin_takes_the_gpu_training_job_and_no_linux_worker_does(
    training_job: str, mac_client: MacClient
) -> None:
    record = done_by_the_standin(mac_client, training_job)
    assert record.queue == "gpu"
    assert "Learning iteration 5/5" in (STANDIN_DIR / "logs" / "worker.log").read_text()


def test_windows_standin_training_job_uploads_its_checkpoint(
    training_job: str, mac_client: MacClient
) -> None:
    record = done_by_the_standin(mac_client, training_job)
    assert record.status == "succeeded", record.error
    assert record.result is not None
    assert record.result["exit_code"] == 0
    last = str(record.result["last_checkpoint"])
    assert last.endswith("model_5.pt")
    assert record.outputs is not None
    checkpoint = record.outputs[last]
    body = mac_client.output(record, last)
    assert hashlib.sha256(body).hexdigest() == checkpoint["sha256"]
    assert json.loads(body)["FAKE"].startswith("not a model")
    assert json.loads(body)["task"] == "Isaac-Velocity-Rough-Anymal-C-v0"


def test_windows_standin_is_in_the_worker_registry_as_windows_standin(
    started: object, mac_client: MacClient
) -> None:
    result = mac_client.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    workers = [
        entry for entry in json.loads(result.stdout)["workers"] if entry.get("platform") == "windows-standin"
    ]
    assert [int(entry["pid"]) for entry in workers] == [standin_worker_pid()]
    assert workers[0]["queues"] == "gpu,pose"


def test_a_rotation_moves_the_running_standin_to_the_macs_new_credentials(
    started: object, mac_client: MacClient
) -> None:
    """``harden.yml -e rotate=true`` refreshes the stand-in's copy of the Mac's credentials in phase 2, the
    running worker moves to them between two jobs (no restart), so phase 3 retires the old ones; then the
    stand-in still does a pose job, with the new credentials."""
    worker, before = standin_worker_pid(), mac_client.credentials
    copy = STANDIN_DIR / "config" / "mac-credentials.json"
    result = run_ansible("ansible-playbook", "playbooks/harden.yml", "-e", "rotate=true")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    after = mac_client.credentials
    assert after["generation"] == before.get("generation", 1) + 1
    assert json.loads(copy.read_text()) == after
    assert copy.stat().st_mode & 0o777 == 0o600
    # The copy, after the begin phase and again after the retire phase (its new authority only); no drain, no
    # restart.
    assert recap(result, HOST)["changed"] == 2
    assert len(ca_fingerprints(after["tls"]["ca_cert"])) == 1
    assert standin_worker_pid() == worker
    log = STANDIN_DIR / "logs" / "worker.log"
    old, new = before.get("generation", 1), after["generation"]
    assert f"mac's credentials were rotated (generation {old} -> {new})" in log.read_text()
    # The retire phase's copy is the playbook's last step: the worker sees it at its next health check.
    republished = f"mac's credentials were republished (generation {new}, other authorities)"
    wait_for(lambda: republished in log.read_text(), 60, f"{republished!r} in {log}")
    assert f"every old credential (generation {old}) is refused" in result.stdout
    for secret in (after["redis"]["password"], after["postgres"]["password"], after["s3"]["secret_key"]):
        assert secret not in result.stdout
    test_windows_standin_does_pose_jobs(started, mac_client)


def test_windows_standin_refuses_an_unknown_state() -> None:
    result = standin("-e", "state=paused")
    assert result.returncode == 2
    assert "state must be started, stopped or credentials, not paused" in result.stdout


def test_windows_standin_stops_through_the_stop_file_and_a_second_stop_changes_nothing(
    started: object,
) -> None:
    pid = supervisor_pid()
    stopped = standin("-e", "state=stopped")
    assert stopped.returncode == 0, stopped.stdout[-5000:]
    assert recap(stopped, HOST)["changed"] >= 1
    assert not Path(f"/proc/{pid}").exists()
    assert processes_of(USER) == []
    log = (STANDIN_DIR / "logs" / "worker.log").read_text()
    assert "supervisor: asking han-worker" in log
    assert "supervisor: han-worker stopped with exit code 0" in log.rsplit("asking han-worker", 1)[1]
    assert not (STANDIN_DIR / "run" / "stop").exists()
    again = standin("-e", "state=stopped")
    assert again.returncode == 0, again.stdout[-5000:]
    assert recap(again, HOST)["changed"] == 0


def standin_log_tail() -> str:
    return "\n--- stand-in worker.log ---\n" + "\n".join(
        (STANDIN_DIR / "logs" / "worker.log").read_text().splitlines()[-30:]
    )
