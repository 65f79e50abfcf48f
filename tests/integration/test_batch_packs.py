"""Packed batches end to end (real S3, PostgreSQL, Redis and worker): a batch's small inputs go into a few pack
objects and each job reads its own range; a submission interrupted during its pack uploads and run again
uploads no pack twice; a corrupted byte in a pack fails the one job whose input it is, naming that input.

The control plane is the module's own, on 127.0.0.87. The interrupted submission runs first, before the worker
starts, and the corruption is made before the jobs are recorded (a worker never sees them earlier)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from han_worker import batches, client, packs
from han_worker.batches import BatchPlan
from han_worker.store.link import Link
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    WorkerProcess,
    han_worker,
    own_control_plane,
    serving_worker,
    worker_settings,
    write_private_file,
)

pytestmark = pytest.mark.self_contained

ADDRESS = "127.0.0.87"  # no other test or benchmark uses it


class Interrupted(Exception):
    """Stands for a Ctrl-C or a killed submitter at a chosen point of a submission."""


@pytest.fixture(scope="module")
def control_plane(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[RunningControlPlane]:
    with own_control_plane(unprivileged_env, workdir / "cp", ADDRESS) as running:
        yield running


@pytest.fixture(scope="module")
def link(control_plane: RunningControlPlane) -> Iterator[Link]:
    opened = control_plane.client_link()
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def config(unprivileged_env: UnprivilegedEnv, workdir: Path, control_plane: RunningControlPlane) -> Path:
    document = worker_settings(control_plane, workdir / "spool", mode="pegasus")
    return write_private_file(unprivileged_env, workdir / "worker.json", json.dumps(document))


@pytest.fixture(scope="module")
def worker(unprivileged_env: UnprivilegedEnv, config: Path) -> Iterator[WorkerProcess]:
    with serving_worker(unprivileged_env, config) as started:
        yield started


def folder_of(env: UnprivilegedEnv, root: Path, files: dict[str, bytes]) -> Path:
    """Files the cluster user owns (the commands run as that user)."""
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    for path in [root, *root.iterdir()]:
        shutil.chown(path, env.user, env.user)
    return root


def run(env: UnprivilegedEnv, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = han_worker(env, args[0], "--config", str(config), *args[1:])
    assert "Traceback" not in done.stderr, done.stderr
    return done


def stop_at(stage: str, after: int) -> batches.Progress:
    def progress(seen: str, done: int, _total: int) -> None:
        if seen == stage and done >= after:
            raise Interrupted(f"{stage} {done}")

    return progress


def objects(link: Link, batch: BatchPlan) -> dict[str, object]:
    """Key -> last-modified time of every object the batch's submission uploaded."""
    listed = link.artifacts.client.list_objects(
        link.artifacts.bucket, f"batches/{batch.batch_id}/", recursive=True
    )
    return {str(item.object_name): item.last_modified for item in listed}


def test_a_submission_interrupted_during_its_pack_uploads_uploads_nothing_twice_when_run_again(
    unprivileged_env: UnprivilegedEnv, workdir: Path, link: Link
) -> None:
    files = {f"frame{index:03d}.bin": os.urandom(500 + index) for index in range(64)}
    files |= {f"large{index}.bin": os.urandom(packs.PACK_BELOW + index) for index in range(2)}
    folder = folder_of(unprivileged_env, workdir / "frames", files)
    batch = client.plan_batch(folder, "sleep", {"seconds": 0}, 3)
    assert [len(pack.members) for pack in batch.packs] == [8] * 8  # 64 small inputs over PACK_SPREAD packs

    with pytest.raises(Interrupted):  # packs go first: one (or two: 1 thread, the next may have begun)
        client.submit_batch(link, batch, threads=1, progress=stop_at("upload", 8))
    first = objects(link, batch)
    assert set(first) in ({batch.packs[0].key}, {batch.packs[0].key, batch.packs[1].key})
    time.sleep(1.1)  # the store's times are in seconds: an object uploaded again would show a later one

    resumed = client.submit_batch(link, batch, threads=4)
    done = 8 * len(first)
    assert (resumed.kept, resumed.uploaded, resumed.recorded) == (done, len(files) - done, len(files))
    after = objects(link, batch)
    assert len(after) == len(batch.packs) + 2  # 8 packs and the 2 large inputs, one object each
    assert {key: after[key] for key in first} == first  # none uploaded again

    again = client.submit_batch(link, batch)
    assert (again.uploaded, again.kept, again.recorded, again.enqueued) == (0, len(files), 0, 0)
    assert objects(link, batch) == after


def test_a_packed_batch_runs_and_every_job_gets_exactly_its_own_bytes(
    unprivileged_env: UnprivilegedEnv,
    config: Path,
    workdir: Path,
    link: Link,
    worker: WorkerProcess,
) -> None:
    files = {f"photo{index:02d}.jpg": os.urandom(1 + 37 * index) for index in range(30)}
    files |= {"same-a.jpg": b"same bytes", "same-b.jpg": b"same bytes", "empty.jpg": b""}
    files["large.jpg"] = os.urandom(packs.PACK_BELOW)
    folder = folder_of(unprivileged_env, workdir / "session", files)
    submitted = run(unprivileged_env, config, "submit", "--kind", "sleep", "--input", str(folder),
                    "--param", "seconds=0")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    waited = run(unprivileged_env, config, "wait", "--batch", batch_id, "--timeout", "120")
    assert waited.returncode == 0, waited.stdout + waited.stderr + worker.output()  # each range checked

    records = link.ledger.batch_jobs(batch_id)
    packed = {name: record for job in records for name, record in job.inputs.items() if "offset" in record}
    assert set(packed) == set(files) - {"empty.jpg", "large.jpg"}
    assert (
        len({record["key"] for record in packed.values()}) == packs.PACK_SPREAD
    )  # 32 small inputs, 4 a pack
    for job in records:  # what a worker downloads for each job: exactly its own file's bytes
        local = link.artifacts.download_inputs(job.inputs, workdir / "downloads" / job.id)
        assert {name: path.read_bytes() for name, path in local.items()} == {
            name: files[name] for name in job.inputs
        }

    job = next(job for job in records if "photo07.jpg" in job.inputs)
    shown = run(unprivileged_env, config, "show", job.id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["inputs"]["photo07.jpg"]["offset"] == packed["photo07.jpg"]["offset"]
    fetched = run(unprivileged_env, config, "fetch", "--batch", batch_id, "--output", str(workdir / "out"))
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.count("downloaded") == len(files)


def test_a_corrupted_byte_in_a_pack_fails_the_job_of_that_input_naming_it(
    unprivileged_env: UnprivilegedEnv,
    config: Path,
    workdir: Path,
    link: Link,
    worker: WorkerProcess,
) -> None:
    files = {f"shot{index:02d}.jpg": os.urandom(100) for index in range(16)}
    folder = folder_of(unprivileged_env, workdir / "shots", files)
    batch = client.plan_batch(folder, "sleep", {"seconds": 0}, 1)
    with pytest.raises(Interrupted):  # uploaded, not recorded yet: no worker can see the jobs
        client.submit_batch(link, batch, progress=stop_at("record", 0))
    pack = batch.packs[3]
    by_path = {item.relative: item for item in batch.inputs}
    victim, neighbour = by_path[pack.members[1].relative], by_path[pack.members[0].relative]
    store = link.artifacts
    response = store.client.get_object(store.bucket, pack.key)
    try:
        data = bytearray(response.read())
    finally:
        response.close()
        response.release_conn()
    data[pack.offsets[1] + 50] ^= (
        0xFF  # one byte of the victim's range; the same size, so the resume keeps it
    )
    store.client.put_object(store.bucket, pack.key, io.BytesIO(bytes(data)), len(data))

    resumed = client.submit_batch(link, batch)
    assert (resumed.uploaded, resumed.recorded) == (0, len(files))
    waited = run(unprivileged_env, config, "wait", "--batch", batch.batch_id, "--json", "--timeout", "120")
    assert waited.returncode == 1, waited.stderr + worker.output()
    assert json.loads(waited.stdout)["by_status"] == {"succeeded": len(files) - 1, "failed": 1}

    failed = link.ledger.job(batch.job_id(victim))
    assert failed is not None
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.startswith(
        f"input {victim.name!r}: {pack.key} bytes {pack.offsets[1]}-{pack.offsets[1] + victim.size - 1}: corrupt: "
        f"100 bytes with SHA-256 "
    ), failed.error
    neighbour_job = link.ledger.job(batch.job_id(neighbour))
    assert neighbour_job is not None
    assert neighbour_job.status == "succeeded"  # the same pack, its own range intact
