"""Batches end to end: a folder submitted as one batch (one job per file) to a real control plane, run by a real
worker, waited for with ``wait --batch``, listed with ``jobs --batch`` and fetched with ``fetch --batch``; a
submission interrupted (during its uploads, and between its ledger commit and its enqueue) and run again
submits nothing twice, and so does a submitting command SIGKILLed during its uploads; bad inputs are refused with nothing in the ledger.

The control plane is the module's own, on 127.0.0.80. The interrupted submissions run first, before the worker
starts (so that no reconciler enqueues their jobs meanwhile and the streams say exactly what they did)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from han_worker import batches, client
from han_worker.store.link import Link
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    WorkerProcess,
    han_worker,
    own_control_plane,
    serving_worker,
    wait_for,
    worker_settings,
    write_private_file,
)

pytestmark = pytest.mark.self_contained

ADDRESS = "127.0.0.80"  # no other test or benchmark uses it


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
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for path in [root, *root.rglob("*")]:
        shutil.chown(path, env.user, env.user)
    return root


def run(env: UnprivilegedEnv, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = han_worker(env, args[0], "--config", str(config), *args[1:])
    assert "Traceback" not in done.stderr, done.stderr
    return done


def ledger_totals(link: Link) -> tuple[int, int]:
    """(batches, jobs) in the ledger."""
    row = link.ledger.connection().execute(
        "SELECT (SELECT count(*) FROM batches), (SELECT count(*) FROM jobs)"
    )
    counts = row.fetchone()
    assert counts is not None
    return int(counts[0]), int(counts[1])


def stream_entries(link: Link, job_ids: list[str]) -> dict[str, int]:
    """How many entries of the noop stream each of ``job_ids`` has."""
    entries = link.queues.client.xrange("han:queue:noop", "-", "+")
    found = [fields.get("job") for _entry, fields in entries]
    return {job_id: found.count(job_id) for job_id in job_ids}


def settled_count(count: Callable[[], int], quiet_seconds: float = 1.0, timeout: float = 30.0) -> int:
    """``count()`` once it has not changed for ``quiet_seconds``."""
    deadline = time.monotonic() + timeout
    last = count()
    while time.monotonic() < deadline:
        time.sleep(quiet_seconds)
        now = count()
        if now == last:
            return now
        last = now
    pytest.fail(f"the count kept changing for {timeout:g}s (last {last})")


def interrupt_at(stage: str, after: int) -> batches.Progress:
    def progress(seen: str, done: int, _total: int) -> None:
        if seen == stage and done >= after:
            raise Interrupted(f"{stage} {done}")

    return progress


# -- interrupted submissions (before the worker starts) -------------------------------------------------------


def test_a_submission_interrupted_during_its_uploads_records_nothing_and_resumes_without_uploading_twice(
    unprivileged_env: UnprivilegedEnv, workdir: Path, link: Link
) -> None:
    files = {f"frame{index:02d}.jpg": f"frame {index}\n".encode() * 2000 for index in range(24)}
    folder = folder_of(unprivileged_env, workdir / "frames", files)
    batch = client.plan_batch(folder, "sleep", {"seconds": 0}, 3)
    before = ledger_totals(link)

    with pytest.raises(Interrupted):
        client.submit_batch(link, batch, threads=2, progress=interrupt_at("upload", 3))
    assert ledger_totals(link) == before  # the batch is recorded in one statement: not at all yet
    uploaded = link.artifacts.sizes_under(f"batches/{batch.batch_id}/")
    inputs_of = {pack.key: len(pack.members) for pack in batch.packs}  # small inputs: all packed, 3 a pack
    assert set(uploaded) <= set(inputs_of)
    done = sum(inputs_of[key] for key in uploaded)
    assert 3 <= done < len(files)

    resumed = client.submit_batch(link, batch, threads=4)
    assert (resumed.kept, resumed.uploaded) == (done, len(files) - done)
    assert (resumed.recorded, resumed.enqueued) == (len(files), len(files))
    assert ledger_totals(link) == (before[0] + 1, before[1] + len(files))
    assert set(stream_entries(link, list(resumed.job_ids)).values()) == {1}


def test_a_submission_interrupted_between_its_commit_and_its_enqueue_enqueues_them_when_run_again(
    unprivileged_env: UnprivilegedEnv, config: Path, workdir: Path, link: Link
) -> None:
    files = {f"photo{index}.png": bytes([index]) * 100 for index in range(6)}
    folder = folder_of(unprivileged_env, workdir / "photos", files)
    batch = client.plan_batch(folder, "sleep", {"seconds": 0}, 3)
    before = ledger_totals(link)

    with pytest.raises(Interrupted):  # "record" done == total: committed, nothing enqueued yet
        client.submit_batch(link, batch, progress=interrupt_at("record", len(files)))
    assert ledger_totals(link) == (before[0] + 1, before[1] + len(files))
    assert set(stream_entries(link, batch.job_ids).values()) == {0}

    # the same command as the lab member typed it: the same batch id, nothing uploaded or recorded again
    again = run(
        unprivileged_env, config, "submit", "--kind", "sleep", "--input", str(folder), "--param", "seconds=0"
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == batch.batch_id
    assert f"inputs: 0 uploaded, {len(files)} already there; 0 jobs recorded now, {len(files)} before; " in (
        again.stderr
    )
    assert f"; {len(files)} enqueued" in again.stderr
    assert ledger_totals(link) == (before[0] + 1, before[1] + len(files))
    assert set(stream_entries(link, batch.job_ids).values()) == {1}

    third = client.submit_batch(link, batch)
    assert (third.uploaded, third.recorded, third.enqueued) == (0, 0, 0)
    assert set(stream_entries(link, batch.job_ids).values()) == {1}


def test_a_submitting_command_killed_during_its_uploads_is_run_again_and_uploads_only_the_rest(
    unprivileged_env: UnprivilegedEnv, config: Path, workdir: Path, link: Link
) -> None:
    # Inputs of 2 MiB are one object each (not packed): 48 of them take a while to go up, and the command is
    # SIGKILLed (no handler runs) as soon as the object store holds the first.
    files = {f"scan{index:02d}.tif": bytes([index]) * (2 << 20) for index in range(48)}
    folder = folder_of(unprivileged_env, workdir / "scans", files)
    batch = client.plan_batch(folder, "sleep", {"seconds": 0}, 3)
    before = ledger_totals(link)
    argv = ["submit", "--config", str(config), "--kind", "sleep", "--input", str(folder), "--param",
            "seconds=0"]  # fmt: skip
    submitting = subprocess.Popen(unprivileged_env.argv("han-worker", *argv), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        uploaded = f"batches/{batch.batch_id}/"
        wait_for(lambda: link.artifacts.sizes_under(uploaded), 60, "its first upload", interval=0.02)
        submitting.kill()
    finally:
        submitting.communicate(timeout=30)
    assert submitting.returncode == -9, "killed during its uploads, not finished before the kill"
    assert ledger_totals(link) == before, "nothing recorded: the batch is one statement after the uploads"
    # PUTs whose bodies were sent before the kill still complete on the server: count once the listing settles.
    done = settled_count(lambda: len(link.artifacts.sizes_under(uploaded)))
    assert 1 <= done < len(files)

    again = run(unprivileged_env, config, *argv)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == batch.batch_id
    # A PUT cut short by the kill leaves no object (each input is one PUT of 2 MiB): only whole ones are kept.
    kept = f"inputs: {len(files) - done} uploaded, {done} already there; {len(files)} jobs recorded now"
    assert kept in again.stderr, again.stderr
    assert ledger_totals(link) == (before[0] + 1, before[1] + len(files))
    assert set(stream_entries(link, batch.job_ids).values()) == {1}


# -- bad input ------------------------------------------------------------------------------------------------


def test_bad_inputs_are_refused_naming_them_with_nothing_in_the_ledger(
    unprivileged_env: UnprivilegedEnv, config: Path, workdir: Path, link: Link
) -> None:
    empty = folder_of(unprivileged_env, workdir / "empty", {".hidden": b"x"})
    linked = folder_of(unprivileged_env, workdir / "linked", {"a.jpg": b"a"})
    (linked / "b.jpg").symlink_to(workdir / "worker.json")
    locked = folder_of(unprivileged_env, workdir / "locked", {"a.jpg": b"a", "b.jpg": b"b"})
    (locked / "b.jpg").chmod(0)
    before = ledger_totals(link)
    cases = [
        ([str(empty)], f"--input: {empty}: a folder with no file in it"),
        ([f"{empty}/*.jpg"], f"--input: {empty}/*.jpg: the pattern matches no file"),
        ([str(linked)], f"--input: {linked}/b.jpg is a link to {workdir / 'worker.json'}, out of the folder"),
        ([str(locked)], f"--input: {locked}/b.jpg: cannot be read: Permission denied"),
        ([str(locked), str(locked / "a.jpg")], f"--input: {locked} is a folder or a pattern"),
    ]
    for inputs, message in cases:
        done = run(
            unprivileged_env, config, "submit", "--kind", "noop", *[f"--input={item}" for item in inputs]
        )
        assert done.returncode == 2, done.stderr
        assert message in done.stderr
        assert done.stdout == ""
    assert ledger_totals(link) == before


@pytest.mark.parametrize("command", [["wait"], ["jobs"], ["fetch", "--output", "/nonexistent/han-batch"]])
def test_a_batch_the_ledger_does_not_hold_exits_2_naming_it(
    unprivileged_env: UnprivilegedEnv, config: Path, command: list[str]
) -> None:
    missing = str(uuid.uuid4())
    done = run(unprivileged_env, config, *command, "--batch", missing)
    assert done.returncode == 2, done.stderr
    assert f"--batch: no batch {missing} in the ledger" in done.stderr


# -- a batch's day: submitted, run, waited for, listed, fetched ---------------------------------------------


def test_a_folder_is_submitted_as_one_batch_run_waited_for_listed_and_fetched(
    unprivileged_env: UnprivilegedEnv, config: Path, workdir: Path, link: Link, worker: WorkerProcess
) -> None:
    files = {f"img{index}.jpg": f"image {index}\n".encode() for index in range(5)}
    folder = folder_of(unprivileged_env, workdir / "session", files)
    submitted = run(unprivileged_env, config, "submit", "--kind", "sleep", "--input", str(folder),
                    "--param", "seconds=0.1")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    assert (
        f"batch {batch_id}: 5 jobs; inputs: 5 uploaded, 0 already there; 5 jobs recorded now; 5 enqueued"
        in (submitted.stderr)
    )

    waited = run(unprivileged_env, config, "wait", "--batch", batch_id, "--timeout", "120")
    assert waited.returncode == 0, waited.stderr + worker.output()
    assert waited.stdout.startswith(
        f"batch {batch_id}: 5/5 done (5 succeeded, 0 failed), 0 running, 0 waiting"
    )
    assert "jobs/s" in waited.stdout
    assert f"batch {batch_id}: " in waited.stderr  # the plain progress line: stderr is not a terminal

    listed = run(unprivileged_env, config, "jobs", "--batch", batch_id, "--json")
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    assert len(records) == 5
    assert {record["batch_id"] for record in records} == {batch_id}
    assert sorted(next(iter(record["inputs"])) for record in records) == sorted(files)

    output = workdir / "results"
    fetched = run(unprivileged_env, config, "fetch", "--batch", batch_id, "--output", str(output))
    assert fetched.returncode == 0, fetched.stderr
    assert sorted(path.relative_to(output).as_posix() for path in output.rglob("slept.txt")) == [
        f"{name}/slept.txt" for name in sorted(files)
    ]
    assert (output / "img3.jpg" / "slept.txt").read_text() == "0.1\n"
    assert fetched.stdout.count("downloaded") == 5

    (output / "img3.jpg" / "slept.txt").write_text("0.9\n")
    again = run(unprivileged_env, config, "fetch", "--batch", batch_id, "--output", str(output))
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("kept (already there, SHA-256 matches)") == 4
    assert again.stdout.count("replaced (its SHA-256 differed)") == 1
    assert (output / "img3.jpg" / "slept.txt").read_text() == "0.1\n"

    # from the lab's code, 2 outputs per ledger query: every round is written, in the batch's order
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client, "FETCH_ROUND", 2)
        elsewhere = client.fetch_batch(link, batch_id, workdir / "elsewhere")
    assert [item.action for item in elsewhere.files] == ["downloaded"] * 5
    assert [item.path.parent.name for item in elsewhere.files] == [next(iter(r["inputs"])) for r in records]
    assert {item.path.read_text() for item in elsewhere.files} == {"0.1\n"}
    # the rounds' query: the bytes of the outputs the ledger holds, none for a name it does not
    job_id = records[0]["id"]
    held = link.ledger.inline_outputs([(job_id, "slept.txt"), (job_id, "absent.txt")])
    assert held == {(job_id, "slept.txt"): b"0.1\n"}

    # a file where a job's folder goes: that output is refused naming it, after the others are written
    blocked = workdir / "blocked"
    blocked.mkdir()
    (blocked / "img0.jpg").write_text("in the way")
    with pytest.raises(client.RequestError, match=r"--output: .*/blocked/img0\.jpg: cannot be made"):
        client.fetch_batch(link, batch_id, blocked)
    assert sorted(path.parent.name for path in blocked.rglob("slept.txt")) == sorted(files)[1:]


def test_a_batch_with_failed_jobs_waits_to_exit_1_and_its_fetch_names_them(
    unprivileged_env: UnprivilegedEnv, config: Path, workdir: Path, link: Link, worker: WorkerProcess
) -> None:
    folder = folder_of(unprivileged_env, workdir / "bad-session", {"x.jpg": b"x", "y.jpg": b"y"})
    submitted = run(unprivileged_env, config, "submit", "--kind", "fail", "--input", f"{folder}/*.jpg",
                    "--max-attempts", "1")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    waited = run(unprivileged_env, config, "wait", "--batch", batch_id, "--json", "--timeout", "120")
    assert waited.returncode == 1, waited.stderr
    progress = json.loads(waited.stdout)
    assert (progress["total"], progress["succeeded"], progress["failed"], progress["finished"]) == (
        2,
        0,
        2,
        True,
    )

    fetched = run(unprivileged_env, config, "fetch", "--batch", batch_id, "--output", str(workdir / "none"))
    assert fetched.returncode == 1
    assert f"2 job(s) of batch {batch_id} have no outputs (2 failed)" in fetched.stderr

    # from the lab's code: the same batch, the same outcome
    final = client.wait_batch(link, batch_id, timeout=5)
    assert final.finished
    assert not final.all_succeeded


# -- a batch's jobs cancelled and run again together -------------------------------------------------------


def batch_statuses(link: Link, batch_id: str) -> dict[str, int]:
    counts = link.ledger.batch_counts(batch_id)
    assert counts is not None
    return counts.by_status


def test_a_batch_is_cancelled_at_once_waiting_jobs_never_run_and_the_running_one_stops(
    unprivileged_env: UnprivilegedEnv, config: Path, workdir: Path, link: Link, worker: WorkerProcess
) -> None:
    folder = folder_of(unprivileged_env, workdir / "long-session", {f"{n}.jpg": bytes([n]) for n in range(3)})
    submitted = run(unprivileged_env, config, "submit", "--kind", "sleep", "--input", str(folder),
                    "--param", "seconds=120")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    wait_for(lambda: batch_statuses(link, batch_id).get("running") == 1, 30, "one job of the batch running")

    cancelled = run(unprivileged_env, config, "cancel", "--batch", batch_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(
        f"batch {batch_id}: 2 waiting job(s) cancelled, 1 running job(s) asked to stop"
    ), cancelled.stdout
    # The running one stops at its worker's next heartbeat (0.5 s here), far before its 120 s.
    waited = run(unprivileged_env, config, "wait", "--batch", batch_id, "--json", "--timeout", "60")
    assert waited.returncode == 1, waited.stderr + worker.output()
    assert json.loads(waited.stdout)["by_status"] == {"cancelled": 3}
    started = (
        link.ledger.connection()
        .execute(
            "SELECT count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE j.batch_id = %s",
            (batch_id,),
        )
        .fetchone()
    )
    assert started is not None
    assert started[0] == 1  # the waiting two never ran

    again = run(unprivileged_env, config, "cancel", "--batch", batch_id, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"batch_id": batch_id, "cancelled": 0, "requested": 0, "finished": 3}


def test_a_batchs_failed_jobs_are_requeued_together_and_run_again(
    unprivileged_env: UnprivilegedEnv, config: Path, workdir: Path, link: Link, worker: WorkerProcess
) -> None:
    folder = folder_of(unprivileged_env, workdir / "retry-session", {"p.jpg": b"p", "q.jpg": b"q"})
    submitted = run(unprivileged_env, config, "submit", "--kind", "fail", "--input", str(folder),
                    "--max-attempts", "1")  # fmt: skip
    batch_id = submitted.stdout.strip()
    assert run(unprivileged_env, config, "wait", "--batch", batch_id, "--timeout", "120").returncode == 1

    refused = run(unprivileged_env, config, "requeue", "--batch", batch_id, "--state", "dead")
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout.strip() == f"batch {batch_id}: 0 job(s) requeued"  # they failed, none is dead

    requeued = run(unprivileged_env, config, "requeue", "--batch", batch_id, "--state", "failed")
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.strip() == f"batch {batch_id}: 2 job(s) requeued"
    assert run(unprivileged_env, config, "wait", "--batch", batch_id, "--timeout", "120").returncode == 1
    attempts = (
        link.ledger.connection()
        .execute("SELECT array_agg(attempts ORDER BY attempts) FROM jobs WHERE batch_id = %s", (batch_id,))
        .fetchone()
    )
    assert attempts is not None
    assert attempts[0] == [2, 2]  # each ran once more


def test_cancel_and_requeue_take_a_job_or_a_batch_not_both(
    unprivileged_env: UnprivilegedEnv, config: Path
) -> None:
    for command in ("cancel", "requeue"):
        both = run(unprivileged_env, config, command, str(uuid.uuid4()), "--batch", str(uuid.uuid4()))
        assert both.returncode == 2
        assert "JOB or --batch ID: give exactly one" in both.stderr
        missing = str(uuid.uuid4())
        unknown = run(unprivileged_env, config, command, "--batch", missing)
        assert unknown.returncode == 2
        assert f"--batch: no batch {missing} in the ledger" in unknown.stderr
