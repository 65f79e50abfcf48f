"""`han-worker run | submit | wait | status` as the cluster account against a real control plane.

One control plane (PostgreSQL, Valkey, SeaweedFS S3 on the Pegasus address) serves the whole module;
each test starts its own workers and stops them, even when it fails. Jobs use the built-in backends
(queue `noop`): `noop`, `sleep` and `fail`, and real `pose` jobs (queue `pose`) on a photo of a person
and on a short video made from it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cv2
import matplotlib.cbook
import numpy
import pytest

from han_worker.backends.base import JobContext
from han_worker.backends.pose import PoseBackend
from han_worker.store.ledger import JobRecord
from han_worker.store.queues import Queues
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    WorkerProcess,
    han_worker,
    output_body,
    start_control_plane,
    start_worker,
    wait_for,
    worker_settings,
    write_private_file,
)

# Only services this module starts itself: `make test` runs it beside the tests that share the testbed.
pytestmark = pytest.mark.self_contained


class System:
    """A control plane, a client configuration for it, and the workers one test starts."""

    def __init__(self, env: UnprivilegedEnv, workdir: Path, control_plane: RunningControlPlane) -> None:
        self.env, self.workdir, self.cp = env, workdir, control_plane
        self.ledger = control_plane.ledger()
        self.client_config = self.config("client", mode="pegasus")
        self.workers: list[WorkerProcess] = []

    def config(self, name: str, **settings: object) -> Path:
        document = worker_settings(self.cp, self.workdir / f"spool-{name}", **settings)
        return write_private_file(self.env, self.workdir / f"{name}.json", json.dumps(document))

    def start_worker(self, name: str, **settings: object) -> WorkerProcess:
        worker = start_worker(self.env, self.config(name, mode="pegasus", **settings))
        self.workers.append(worker)
        wait_for(lambda: "serving noop" in worker.output() or worker.process.poll() is not None, 30,
                 f"worker {name} to start")  # fmt: skip
        assert worker.process.poll() is None, worker.output()
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            try:
                worker.stop(timeout=15)
            except Exception:  # killed instead; the next test must not meet it
                worker.kill()
        self.ledger.close()

    def cli(self, *args: str, timeout: float = 120) -> tuple[int, str, str]:
        result = han_worker(
            self.env, *args[:1], "--config", str(self.client_config), *args[1:], timeout=timeout
        )
        return result.returncode, result.stdout, result.stderr

    def submit(self, kind: str, *args: str) -> str:
        code, out, err = self.cli("submit", "--kind", kind, *args)
        assert code == 0, err
        return out.strip()

    def job(self, job_id: str) -> JobRecord:
        record = self.ledger.job(job_id)
        assert record is not None
        return record

    def wait_status(self, job_id: str, statuses: set[str], timeout: float) -> JobRecord:
        try:
            return wait_for(lambda: self.job(job_id) if self.job(job_id).status in statuses else None,
                            timeout, f"job {job_id} to be {' or '.join(sorted(statuses))}")  # fmt: skip
        except pytest.fail.Exception as exc:  # what the workers said is the diagnosis
            logs = "".join(
                f"\n--- worker pid {worker.pid} ---\n{worker.output()[-4000:]}" for worker in self.workers
            )
            attempts = self.ledger.attempts(job_id)
            pytest.fail(f"{exc}; the job is {self.job(job_id).status}, attempts {attempts}{logs}")


@pytest.fixture(scope="module")
def control_plane(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[RunningControlPlane]:
    running = start_control_plane(unprivileged_env, workdir / "cp")
    yield running
    running.shutdown()


@pytest.fixture
def system(
    unprivileged_env: UnprivilegedEnv, workdir: Path, control_plane: RunningControlPlane
) -> Iterator[System]:
    running = System(unprivileged_env, workdir, control_plane)
    yield running
    running.stop_all()


def worker_pid(record: JobRecord) -> int:
    assert record.worker_id is not None
    return int(record.worker_id.rsplit("-", 2)[1])  # <host>-<pid>-<random>


def outcomes(system: System, job_id: str) -> list[str]:
    return [str(attempt["outcome"]) for attempt in system.ledger.attempts(job_id)]


def test_submitted_jobs_are_done_and_their_small_outputs_are_in_the_ledger(system: System):
    system.start_worker("w1")
    data = system.workdir / "input.bin"
    write_private_file(system.env, data, "some input\n")
    sleep_job = system.submit("sleep", "--param", "seconds=0.5", "--input", str(data))
    noop_job = system.submit("noop")

    code, out, err = system.cli("wait", sleep_job, "--timeout", "30")
    assert (code, out.strip()) == (0, 'succeeded: {"slept": 0.5}'), err
    assert system.cli("wait", noop_job, "--timeout", "30")[0] == 0

    record = system.job(sleep_job)
    assert record.attempts == 1
    assert record.inputs["input.bin"]["sha256"] == hashlib.sha256(b"some input\n").hexdigest()
    assert record.outputs is not None
    slept = record.outputs["slept.txt"]
    assert slept["inline"] is True, slept  # 5 bytes: stored with the result, no object in S3
    assert "key" not in slept
    _ledger, _redis, s3 = system.cp.link_parts()
    bucket = system.cp.worker_credentials().s3.bucket
    assert not list(s3.list_objects(bucket, prefix=f"jobs/{sleep_job}/outputs/", recursive=True))
    body = output_body(system.ledger, s3, bucket, record, "slept.txt")
    assert body == b"0.5\n"
    assert hashlib.sha256(body).hexdigest() == slept["sha256"]
    assert len(body) == slept["size"]
    assert outcomes(system, sleep_job) == ["succeeded"]


def test_a_pose_job_on_a_photo_of_a_person_yields_33_landmarks(system: System):
    system.start_worker("w1", queues=["noop", "pose"])
    photo = system.workdir / "person.jpg"
    shutil.copyfile(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), photo)
    shutil.chown(photo, system.env.user, system.env.user)
    not_an_image = write_private_file(system.env, system.workdir / "notes.jpg", "not an image at all\n")
    pose_job = system.submit("pose", "--input", str(photo))
    bad_job = system.submit("pose", "--input", str(not_an_image))

    code, out, err = system.cli("wait", pose_job, "--timeout", "120")
    assert code == 0, out + err
    record = system.job(pose_job)
    assert record.result is not None
    assert (record.result["frames"], record.result["frames_with_person"]) == (1, 1)
    assert record.outputs is not None
    saved = record.outputs["landmarks.json"]
    assert saved["inline"] is True, saved  # a few KiB: in the ledger, committed with the result
    _ledger, _redis, s3 = system.cp.link_parts()
    bucket = system.cp.worker_credentials().s3.bucket
    landmarks = json.loads(output_body(system.ledger, s3, bucket, record, "landmarks.json"))
    assert [len(frame["landmarks"]) for frame in landmarks["frames"]] == [33]

    code, out, _err = system.cli("wait", bad_job, "--timeout", "120")
    assert code == 1
    assert out.startswith("failed: ")
    assert outcomes(system, bad_job) == ["failed"], "bad input fails the job once, not the worker"


def cluster_file(system: System, name: str, data: bytes) -> Path:
    """A file the cluster user's ``han-worker submit`` can read."""
    path = system.workdir / name
    path.write_bytes(data)
    shutil.chown(path, system.env.user, system.env.user)
    return path


def encoded(image: Any, extension: str) -> bytes:
    ok, data = cv2.imencode(extension, image)
    assert ok
    return bytes(data.tobytes())


def moving_clip(system: System, name: str, image: Any, step: tuple[int, int]) -> Path:
    """Twelve frames of the person moving across the picture (tracking carries state between them)."""
    path, (height, width) = system.workdir / name, image.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (width, height))
    for index in range(12):
        shift = numpy.float32([[1, 0, step[0] * index], [0, 1, step[1] * index]])
        writer.write(cv2.warpAffine(image, shift, (width, height), borderValue=(90, 90, 90)))
    writer.release()
    shutil.chown(path, system.env.user, system.env.user)
    return path


def landmarks_of(system: System, job_id: str) -> dict[str, Any]:
    record = system.wait_status(job_id, {"succeeded", "failed", "dead"}, 120)
    assert record.status == "succeeded", record.error
    assert record.outputs is not None
    _ledger, _redis, s3 = system.cp.link_parts()
    bucket = system.cp.worker_credentials().s3.bucket
    document: dict[str, Any] = json.loads(output_body(system.ledger, s3, bucket, record, "landmarks.json"))
    return document


def cold_landmarks(tmp_path: Path, name: str, path: Path) -> dict[str, Any]:
    """The landmarks a new backend (new graphs) finds in this process, the bare model's answer."""
    context = JobContext("cold", "pose", {}, {name: path}, tmp_path / name, logging.getLogger("test.pose"))
    result = PoseBackend().run(context)
    document: dict[str, Any] = json.loads(result.outputs["landmarks.json"].read_text(encoding="utf-8"))
    return document


def proc_maps(worker: WorkerProcess) -> str:
    return Path(f"/proc/{worker.pid}/maps").read_text()


def test_a_pose_worker_warms_its_model_up_before_it_registers_and_a_noop_worker_loads_none(system: System):
    pose_worker = system.start_worker("pose", queues=["noop", "pose"])
    noop_worker = system.start_worker("noop")

    output = pose_worker.output()
    assert "backend pose warmed up in " in output, output
    assert output.index("backend pose warmed up in ") < output.index("serving noop, pose on ")
    assert "mediapipe" in proc_maps(pose_worker)
    assert "warmed up" not in noop_worker.output()
    assert "mediapipe" not in proc_maps(noop_worker), "a worker without the pose queue loads no model"


def test_a_warm_worker_finds_the_landmarks_a_cold_model_finds(system: System, tmp_path: Path):
    grace = cv2.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    mirrored = cv2.flip(grace, 1)
    photo = cluster_file(system, "grace.jpg", encoded(grace, ".jpg"))
    clip = moving_clip(system, "walk.avi", grace, (-4, 3))
    others = [moving_clip(system, "other.avi", mirrored, (5, 2)),
              cluster_file(system, "mirrored.png", encoded(mirrored, ".png")), clip]  # fmt: skip
    system.start_worker("w1", queues=["noop", "pose"])

    for path in others:  # the worker's graphs have run these before the jobs compared
        landmarks_of(system, system.submit("pose", "--input", str(path)))
    warm = {name: landmarks_of(system, system.submit("pose", "--input", str(path)))
            for name, path in (("photo", photo), ("video", clip))}  # fmt: skip

    cold = {
        "photo": cold_landmarks(tmp_path, "image", photo),
        "video": cold_landmarks(tmp_path, "video", clip),
    }
    assert [frame["landmarks"] is not None for frame in cold["video"]["frames"]] == [True] * 12
    assert warm == cold


def test_a_failing_job_fails_with_its_message_and_is_not_retried(system: System):
    system.start_worker("w1")
    job = system.submit("fail", "--param", "message=no person found in input.jpg")
    code, out, _err = system.cli("wait", job, "--timeout", "30")
    assert (code, out.strip()) == (1, "failed: no person found in input.jpg")
    record = system.job(job)
    assert (record.status, record.attempts, record.error) == ("failed", 1, "no person found in input.jpg")
    assert outcomes(system, job) == ["failed"]


def test_an_input_that_no_longer_matches_its_hash_fails_the_job(system: System):
    data = write_private_file(system.env, system.workdir / "input.txt", "the original\n")
    job = system.submit("sleep", "--param", "seconds=0", "--input", str(data))
    _ledger, _redis, s3 = system.cp.link_parts()  # tampered with before any worker fetched it
    s3.put_object(
        system.cp.worker_credentials().s3.bucket, f"jobs/{job}/inputs/input.txt", io.BytesIO(b"evil"), 4
    )
    system.start_worker("w1")
    code, out, _err = system.cli("wait", job, "--timeout", "30")
    assert code == 1
    assert f"failed: jobs/{job}/inputs/input.txt: corrupt: 4 bytes with SHA-256" in out
    assert outcomes(system, job) == ["failed"]


def test_status_shows_the_control_plane_workers_and_queues(system: System):
    worker = system.start_worker("w1")
    wait_for(lambda: system.cli("status", "--json")[1].count('"host"') == 1, 10, "the worker registry")
    code, out, err = system.cli("status", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["control_plane"]["source"] == "pegasus"
    assert report["control_plane"]["seconds_left"] is None  # direct launch mode: no walltime
    assert [int(entry["pid"]) for entry in report["workers"]] == [worker.pid]
    assert report["workers"][0]["control_plane"] == "pegasus"
    assert "noop" in {queue["queue"] for queue in report["queues"]}
    code, out, _err = system.cli("status")
    assert code == 0
    assert "control plane: pegasus epoch 1" in out


def test_kill_9_mid_job_another_worker_completes_it(system: System):
    first, second = system.start_worker("w1"), system.start_worker("w2")
    job = system.submit("sleep", "--param", "seconds=4")
    running = system.wait_status(job, {"running"}, 15)
    victim = next(worker for worker in (first, second) if worker.pid == worker_pid(running))
    os.kill(victim.pid, signal.SIGKILL)
    victim.kill()

    done = system.wait_status(job, {"succeeded", "failed", "dead"}, 40)
    assert done.status == "succeeded"
    assert done.attempts == 2
    assert outcomes(system, job) == ["crashed", "succeeded"]
    assert worker_pid(done) != victim.pid


def test_a_job_run_twice_after_its_lease_expired_records_one_success(system: System):
    # The first worker's heartbeat is slowed far past its lease: a live worker that looks dead.
    slow = system.start_worker("slow", heartbeat_seconds=60, lease_seconds=2)
    job = system.submit("sleep", "--param", "seconds=5")
    system.wait_status(job, {"running"}, 15)
    system.start_worker("fast", heartbeat_seconds=0.5, lease_seconds=2)

    wait_for(lambda: system.job(job).attempts == 2, 20, "the second worker to take the job over")
    done = system.wait_status(job, {"succeeded", "failed", "dead"}, 30)
    assert done.status == "succeeded"
    assert sorted(outcomes(system, job)) == ["succeeded", "superseded"]
    assert outcomes(system, job).count("succeeded") == 1
    wait_for(lambda: "a later attempt took over: result discarded" in slow.output(), 15,
             "the slow worker to learn that its attempt was superseded")  # fmt: skip


def test_redis_losing_its_streams_loses_no_job(system: System):
    # All three are queued before the worker starts, and the first runs long enough to be seen running: a
    # submission (a whole han-worker process) takes about as long as a short job, so submitting them while
    # the worker ran let the first finish before the test looked.
    jobs = [system.submit("sleep", "--param", f"seconds={seconds}") for seconds in (4, 1.5, 1.5)]
    first = system.start_worker("w1")
    running = system.wait_status(jobs[0], {"running"}, 15)
    assert worker_pid(running) == first.pid
    # The worker dies mid-job, then Redis loses every stream (the admin deletes them): only the
    # ledger still knows the three jobs, one of them "running" on a dead worker.
    first.kill()
    admin = system.cp.redis_admin()
    assert admin.delete("han:queue:noop") == 1
    second = system.start_worker("w2")

    for job in jobs:
        assert system.wait_status(job, {"succeeded", "failed", "dead"}, 40).status == "succeeded"
    assert outcomes(system, jobs[0]) == ["crashed", "succeeded"]
    assert "reconciler: re-enqueued" in second.output()


def test_sigterm_releases_a_job_that_outlasts_the_grace_period_and_exits_0(system: System):
    worker = system.start_worker("w1", drain_grace_seconds=0.5)
    job = system.submit("sleep", "--param", "seconds=3")
    system.wait_status(job, {"running"}, 15)
    started = time.monotonic()
    assert worker.stop(timeout=15) == 0
    assert time.monotonic() - started < 5
    assert system.job(job).status == "queued"
    assert outcomes(system, job) == ["released"]

    system.start_worker("w2")
    assert system.wait_status(job, {"succeeded"}, 30).attempts == 2


def test_sigterm_lets_a_short_job_finish(system: System):
    worker = system.start_worker("w1", drain_grace_seconds=10)
    job = system.submit("sleep", "--param", "seconds=1.5")
    system.wait_status(job, {"running"}, 15)
    assert worker.stop(timeout=20) == 0
    assert system.job(job).status == "succeeded"


def test_a_worker_with_nothing_to_do_for_idle_timeout_leaves_by_itself(system: System):
    """An elastic worker's way of giving its GPU back: idle for idle_timeout_seconds, it leaves (exit 0,
    unregistered); a job in between restarts the count, and the job is never cut short."""
    worker = system.start_worker("idle", idle_timeout_seconds=3)
    job = system.submit("sleep", "--param", "seconds=4")  # longer than the timeout: busy is not idle
    assert system.wait_status(job, {"succeeded"}, 30).attempts == 1
    assert worker.process.poll() is None, "it left less than idle_timeout_seconds after its job ended"
    assert worker.process.wait(30) == 0
    output = worker.output()
    assert output.count("nothing to do for 3s (idle_timeout_seconds): leaving") == 1, output
    assert "stopped after 1 job(s)" in output
    _ledger, redis_client, _s3 = system.cp.link_parts()
    try:
        registered = [entry.get("pid") for entry in Queues(redis_client).workers()]
    finally:
        redis_client.close()
    assert str(worker.pid) not in registered
    assert outcomes(system, job) == ["succeeded"]


def test_wait_times_out_with_exit_3(system: System):
    # No Linux worker serves the gpu queue: the job stays queued.
    job = system.submit("isaaclab_teacher_ppo")
    code, _out, err = system.cli("wait", job, "--timeout", "0.5")
    assert code == 3
    assert f"job {job} has not finished after 0.5s" in err


# -- refusals at start: exit 2 with the reason, never a traceback --------------------------------------


def run_refused(system: System, *settings_and_args: tuple[str, object]) -> str:
    """``han-worker run --mode pegasus`` with these config settings: exit 2, the reason, no traceback."""
    config = system.config("refused", mode="auto", **dict(settings_and_args))
    result = han_worker(system.env, "run", "--mode", "pegasus", "--config", str(config), timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def endpoints_file(system: System, case: str) -> Path:
    """A copy of the control plane's endpoints file, spoilt as ``case`` says."""
    path, document = system.workdir / f"endpoints-{case}.json", system.cp.endpoints
    if case == "expired":
        past = datetime.now(timezone.utc) - timedelta(hours=1)
        document.update(started_at=(past - timedelta(hours=1)).isoformat(), expires_at=past.isoformat())
    text = json.dumps(document)[:-20] if case == "malformed" else json.dumps(document)
    write_private_file(system.env, path, text, 0o666 if case == "world-writable" else 0o600)
    if case == "foreign-owned":
        shutil.chown(path, "root", "root")
    return path


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing", "{path}: does not exist"),
        ("malformed", "{path}: not valid JSON"),
        ("expired", "{path}: expired at"),
        ("foreign-owned", "{path}: is owned by uid 0, not by us"),
        ("world-writable", "{path}: is writable by group or others (mode 0666); run chmod go-w {path}"),
    ],
)
def test_pegasus_mode_with_an_unusable_endpoints_file_exits_2(system: System, case: str, reason: str):
    path = (
        system.workdir / "nowhere" / "endpoints.json" if case == "missing" else endpoints_file(system, case)
    )
    credentials = str(system.cp.state_dir / "credentials.json")
    stderr = run_refused(system, ("pegasus", {"endpoints_file": str(path), "credentials_file": credentials}))
    assert reason.format(path=path) in stderr


@pytest.mark.parametrize(
    ("service", "field", "complaint"),
    [
        ("postgres", "password", "password authentication failed for user"),
        ("redis", "password", "authentication failed for user"),
        ("s3", "secret_key", "SignatureDoesNotMatch"),
    ],
)
def test_wrong_credentials_exit_2_naming_the_service(
    system: System, service: str, field: str, complaint: str
):
    wrong = system.cp.credentials
    wrong[service][field] = "a-wrong-secret-of-some-length"  # type: ignore[index]
    credentials = write_private_file(system.env, system.workdir / f"wrong-{service}.json", json.dumps(wrong))
    endpoints = str(system.cp.state_dir / "endpoints.json")
    stderr = run_refused(
        system, ("pegasus", {"endpoints_file": endpoints, "credentials_file": str(credentials)})
    )
    address = system.cp.service(service).address
    assert f"{service} {address}" in stderr
    assert complaint in stderr
    assert "a-wrong-secret" not in stderr


def test_the_gpu_queue_is_refused_on_linux(system: System):
    stderr = run_refused(system, ("queues", ["gpu"]))
    assert "queue 'gpu' runs isaaclab_teacher_ppo, which is Windows-only" in stderr
