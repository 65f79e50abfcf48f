"""``han-worker jobs``, ``show`` and ``fetch`` end to end: jobs submitted to a real control plane and run by a real
worker, listed and shown as the ledger holds them, and a job's output fetched, a small one from the ledger
(stored inline, no object in S3) and one past the threshold from S3: checked against the SHA-256 the ledger
recorded, kept on a second fetch, replaced when the local copy is wrong, refused (naming the output) when the
ledger's copy or the object in S3 is not what the ledger recorded. A result spooled while its control plane
was away is delivered with its small output inline and its large one in S3.

The control plane is the module's own, on 127.0.0.78; the commands run as the cluster user, as a lab member's."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from han_worker import client
from han_worker.selection.checks import s3_client
from han_worker.selection.credentials import S3Credentials
from han_worker.selection.endpoints import parse_endpoints
from han_worker.store.artifacts import INLINE_OUTPUT_MAX_BYTES, InlineOutput
from han_worker.store.ledger import AttemptOwner, JobRecord, NewJob, Outcome
from han_worker.store.link import Link
from han_worker.store.spool import Spool, SpooledResult
from han_worker.worker.attempt import deliver_spooled
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

ADDRESS = "127.0.0.78"  # no other test or benchmark uses it
LARGE = {"seconds": 0.25, "output_bytes": INLINE_OUTPUT_MAX_BYTES + 1}  # one byte too many for the ledger
LARGE_BODY = b"0.25\n" + b"." * (INLINE_OUTPUT_MAX_BYTES + 1 - 5)


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


@pytest.fixture(scope="module")
def finished(link: Link, worker: WorkerProcess) -> dict[str, JobRecord]:
    """Five jobs run to their end, submitted one after the other (so their order is known): noop, a failure,
    noop, a sleep job with a small output (in the ledger) and last one whose output is one byte past the
    threshold (in S3)."""
    submitted = {
        "noop-1": client.submit_many(link, "noop", [{}], 3)[0],
        "fail": client.submit_many(link, "fail", [{"message": "no person found on purpose"}], 1)[0],
        "noop-2": client.submit_many(link, "noop", [{}], 3)[0],
        "sleep": client.submit_many(link, "sleep", [{"seconds": 0.25}], 3)[0],
        "sleep-large": client.submit_many(link, "sleep", [LARGE], 3)[0],
    }
    records = {}
    for name, job_id in submitted.items():
        record = client.wait(link, job_id, 60)
        assert record is not None, f"{name} has not finished: {worker.output()}"
        records[name] = record
    assert records["sleep"].status == "succeeded", records["sleep"]
    assert records["sleep-large"].status == "succeeded", records["sleep-large"]
    assert records["fail"].status == "failed", records["fail"]
    return records


def run(env: UnprivilegedEnv, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = han_worker(env, args[0], "--config", str(config), *args[1:])
    assert "Traceback" not in done.stderr, done.stderr
    return done


def listed(env: UnprivilegedEnv, config: Path, *flags: str) -> list[str]:
    done = run(env, config, "jobs", "--json", *flags)
    assert done.returncode == 0, done.stderr
    return [item["id"] for item in json.loads(done.stdout)]


# -- jobs ----------------------------------------------------------------------------------------------------


def test_jobs_lists_the_newest_first_and_filters_by_state_kind_and_limit(
    unprivileged_env: UnprivilegedEnv, config: Path, finished: dict[str, JobRecord]
) -> None:
    ids = {name: record.id for name, record in finished.items()}
    order = [ids["sleep-large"], ids["sleep"], ids["noop-2"], ids["fail"], ids["noop-1"]]
    assert listed(unprivileged_env, config) == order
    assert listed(unprivileged_env, config, "--limit", "2") == order[:2]
    assert listed(unprivileged_env, config, "--state", "failed") == [ids["fail"]]
    assert listed(unprivileged_env, config, "--state", "failed", "--state", "succeeded") == order
    assert listed(unprivileged_env, config, "--kind", "noop") == [ids["noop-2"], ids["noop-1"]]
    assert listed(unprivileged_env, config, "--state", "queued") == []

    table = run(unprivileged_env, config, "jobs", "--kind", "fail")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["JOB", "KIND", "STATE", "ATTEMPTS", "AGE", "WORKER", "ERROR"]
    assert row.split()[:4] == [ids["fail"], "fail", "failed", "1/1"]
    assert "no person found on purpose" in row


def test_jobs_refuses_a_bad_flag_naming_it(unprivileged_env: UnprivilegedEnv, config: Path) -> None:
    for flags, named in ((["--state", "finished"], "--state"), (["--limit", "0"], "--limit"),
                         (["--kind", "nothing-such"], "--kind")):  # fmt: skip
        done = run(unprivileged_env, config, "jobs", *flags)
        assert done.returncode == 2, done.stderr
        assert named in done.stderr


# -- show ----------------------------------------------------------------------------------------------------


def test_show_gives_each_attempt_with_its_worker_host_control_plane_and_epoch(
    unprivileged_env: UnprivilegedEnv,
    config: Path,
    control_plane: RunningControlPlane,
    finished: dict[str, JobRecord],
) -> None:
    job_id = finished["fail"].id
    done = run(unprivileged_env, config, "show", job_id, "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert (shown["id"], shown["status"], shown["kind"]) == (job_id, "failed", "fail")
    [attempt] = shown["attempts"]
    epoch = parse_endpoints(control_plane.endpoints, "endpoints.json").epoch
    assert attempt["attempt"] == 1
    assert attempt["worker_id"] == finished["fail"].worker_id
    assert attempt["platform"] == "linux"
    assert attempt["host"] == finished["fail"].host
    assert (attempt["control_plane"], attempt["control_plane_epoch"]) == ("pegasus", epoch)
    assert attempt["outcome"] == "failed"
    assert "no person found on purpose" in attempt["error"]
    assert attempt["started_at"] <= attempt["finished_at"]

    text = run(unprivileged_env, config, "show", job_id)
    assert text.returncode == 0, text.stderr
    assert f"job {job_id}  kind fail  queue noop  failed  attempts 1/1" in text.stdout
    assert f"#1 failed  worker {attempt['worker_id']}" in text.stdout
    assert f"control plane pegasus epoch {epoch}" in text.stdout


@pytest.mark.parametrize("command", ["show", "fetch"])
def test_a_job_id_that_is_not_a_uuid_or_not_in_the_ledger_exits_2_naming_it(
    unprivileged_env: UnprivilegedEnv, config: Path, workdir: Path, command: str
) -> None:
    output = ["--output", str(workdir / "never")] if command == "fetch" else []
    not_uuid = run(unprivileged_env, config, command, "job-42", *output)
    assert not_uuid.returncode == 2
    assert "JOB: 'job-42' is not a job id" in not_uuid.stderr
    missing = str(uuid.uuid4())
    unknown = run(unprivileged_env, config, command, missing, *output)
    assert unknown.returncode == 2
    assert f"JOB: no job {missing} in the ledger" in unknown.stderr
    assert not (workdir / "never").exists()


# -- fetch ---------------------------------------------------------------------------------------------------


def sleep_output(record: JobRecord) -> tuple[str | None, str, int]:
    """(object key, None when the ledger holds the bytes itself; SHA-256, size) of the sleep job's output."""
    assert record.outputs is not None
    saved = record.outputs["slept.txt"]
    key = None if saved.get("inline") is True else str(saved["key"])
    return key, str(saved["sha256"]), int(str(saved["size"]))


def fetch(env: UnprivilegedEnv, config: Path, job_id: str, output: Path) -> subprocess.CompletedProcess[str]:
    return run(env, config, "fetch", job_id, "--output", str(output))


@pytest.mark.parametrize(("job", "body"), [("sleep", b"0.25\n"), ("sleep-large", LARGE_BODY)])
def test_fetch_downloads_checks_keeps_and_replaces(  # noqa: PLR0917 - fixtures
    unprivileged_env: UnprivilegedEnv,
    config: Path,
    workdir: Path,
    link: Link,
    finished: dict[str, JobRecord],
    job: str,
    body: bytes,
) -> None:
    record = finished[job]
    key, sha256, size = sleep_output(record)
    outputs_in_s3 = link.artifacts.sizes_under(f"jobs/{record.id}/outputs/")
    if job == "sleep":  # small: in the ledger, and no object at all
        assert key is None
        assert outputs_in_s3 == {}
    else:
        assert outputs_in_s3 == {key: len(body)}
    output = workdir / "results" / job
    fetched = output / "slept.txt"

    first = fetch(unprivileged_env, config, record.id, output)
    assert first.returncode == 0, first.stderr
    assert fetched.read_bytes() == body
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == sha256
    assert fetched.stat().st_size == size
    assert first.stdout.strip().endswith("downloaded")

    again = fetch(unprivileged_env, config, record.id, output)
    assert again.returncode == 0, again.stderr
    assert "kept (already there, SHA-256 matches)" in again.stdout

    fetched.write_bytes(b"0.99" + body[4:])  # same size, other bytes: only the hash tells
    repaired = fetch(unprivileged_env, config, record.id, output)
    assert repaired.returncode == 0, repaired.stderr
    assert "replaced (its SHA-256 differed)" in repaired.stdout
    assert fetched.read_bytes() == body
    assert sorted(path.name for path in output.iterdir()) == ["slept.txt"]  # no temporary file left


def test_show_says_which_output_is_in_the_ledger_and_which_in_s3(
    unprivileged_env: UnprivilegedEnv, config: Path, finished: dict[str, JobRecord]
) -> None:
    small, large = finished["sleep"], finished["sleep-large"]
    shown = run(unprivileged_env, config, "show", small.id)
    assert shown.returncode == 0, shown.stderr
    assert (
        f"output slept.txt: 5 bytes, SHA-256 {hashlib.sha256(b'0.25' + bytes([10])).hexdigest()}, in the ledger"
        in (shown.stdout)
    )
    shown_large = run(unprivileged_env, config, "show", large.id)
    assert shown_large.returncode == 0, shown_large.stderr
    assert (
        f"bytes, SHA-256 {sleep_output(large)[1]}, object jobs/{large.id}/outputs/1/slept.txt"
        in shown_large.stdout
    )
    as_json = run(unprivileged_env, config, "show", small.id, "--json")
    assert json.loads(as_json.stdout)["outputs"]["slept.txt"]["inline"] is True


def test_fetch_of_a_job_without_outputs_yet_or_into_a_file_exits_2(
    unprivileged_env: UnprivilegedEnv, config: Path, workdir: Path, link: Link, worker: WorkerProcess
) -> None:
    [waiting] = client.submit_many(link, "sleep", [{"seconds": 0.5}], 3)
    early = fetch(unprivileged_env, config, waiting, workdir / "early")
    # queued or running, unless the worker was quicker than this command: then it is fetched
    if early.returncode == 2:
        assert f"JOB: job {waiting} is " in early.stderr
        assert not (workdir / "early").exists()
    else:
        assert early.returncode == 0, early.stderr
    a_file = write_private_file(unprivileged_env, workdir / "a-file", "x")
    into_file = fetch(unprivileged_env, config, waiting, a_file)
    assert into_file.returncode == 2
    assert f"--output: {a_file} is not a directory" in into_file.stderr
    assert client.wait(link, waiting, 60) is not None


def test_fetch_refuses_an_object_that_is_not_what_the_ledger_recorded_naming_it(
    unprivileged_env: UnprivilegedEnv,
    config: Path,
    workdir: Path,
    control_plane: RunningControlPlane,
    finished: dict[str, JobRecord],
) -> None:
    record = finished["sleep-large"]
    key, _sha256, _size = sleep_output(record)
    assert key is not None
    root_keys = control_plane.secrets["s3"]
    root = s3_client(
        control_plane.service("s3"),
        S3Credentials(root_keys["root_access_key"], root_keys["root_secret_key"], root_keys["bucket"]),
        ca_cert=control_plane.worker_credentials().tls_ca_cert, origin="secrets.json", timeout=5,
    )  # fmt: skip
    root.put_object(root_keys["bucket"], key, io.BytesIO(b"tampered\n"), 9)

    output = workdir / "results" / "tampered"
    refused = fetch(unprivileged_env, config, record.id, output)
    assert refused.returncode == 1, refused.stderr
    assert f"{key}: corrupt" in refused.stderr
    assert list(output.iterdir()) == []  # neither the bad bytes nor a temporary file

    kept = (
        workdir / "results" / "sleep-large"
    )  # fetched correctly before: a refused fetch leaves it as it was
    if (kept / "slept.txt").exists():
        again = fetch(unprivileged_env, config, record.id, kept)
        assert again.returncode == 0, again.stderr  # the local copy is right: no download at all
        assert (kept / "slept.txt").read_bytes() == LARGE_BODY


def test_fetch_refuses_an_inline_output_that_is_not_what_the_ledger_recorded_naming_it(
    unprivileged_env: UnprivilegedEnv, config: Path, workdir: Path, link: Link, worker: WorkerProcess
) -> None:
    [job_id] = client.submit_many(link, "sleep", [{"seconds": 0}], 3)
    record = client.wait(link, job_id, 60)
    assert record is not None
    assert record.status == "succeeded", record
    link.ledger.connection().execute(
        "UPDATE job_outputs SET data = %s WHERE job_id = %s AND name = 'slept.txt'", (b"9\n", job_id)
    )  # the same size, other bytes
    output = workdir / "results" / "tampered-inline"
    refused = fetch(unprivileged_env, config, job_id, output)
    assert refused.returncode == 1, refused.stderr
    assert f"output 'slept.txt' of job {job_id}: the ledger's copy: corrupt: 2 bytes" in refused.stderr
    assert list(output.iterdir()) == []  # neither the bad bytes nor a temporary file


# -- a spooled result ----------------------------------------------------------------------------------------


def test_a_spooled_result_is_delivered_with_its_small_output_inline_and_its_large_one_in_s3(
    link: Link, tmp_path: Path
) -> None:
    """The worker's own delivery (as after its control plane came back) of a result spooled with two outputs,
    for a job claimed by hand in a queue no worker serves."""
    job_id = str(uuid.uuid4())
    link.ledger.insert_jobs([NewJob(job_id, "sleep", "spool-test", {}, {}, 1)])
    claim = link.ledger.claim(job_id, "0-1", AttemptOwner("spool-test", "host", "linux", "pegasus", 1), 30.0)
    assert claim is not None
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    files = {"landmarks.json": scratch / "landmarks.json", "big.bin": scratch / "big.bin"}
    files["landmarks.json"].write_bytes(b'{"frames": []}')
    files["big.bin"].write_bytes(b"x" * (INLINE_OUTPUT_MAX_BYTES + 1))
    spool = Spool(tmp_path / "spool")
    spool.put(SpooledResult("pegasus", 1, job_id, claim.attempt, "spool-test", "0-1", "succeeded", {"ok": 1},
                            None, tuple(files)), files)  # fmt: skip

    assert deliver_spooled(link, spool, "test") == 1
    record = link.ledger.job(job_id)
    assert record is not None
    assert record.status == "succeeded"
    assert record.outputs is not None
    assert record.outputs["landmarks.json"]["inline"] is True
    assert link.ledger.inline_output(job_id, "landmarks.json") == b'{"frames": []}'
    assert record.outputs["big.bin"]["key"] == f"jobs/{job_id}/outputs/1/big.bin"
    assert link.artifacts.sizes_under(f"jobs/{job_id}/outputs/") == {
        f"jobs/{job_id}/outputs/1/big.bin": 65537
    }
    assert list(spool.entries()) == []
    fetched = client.fetch(link, job_id, tmp_path / "fetched")
    assert {item.name: item.action for item in fetched} == {
        "big.bin": "downloaded",
        "landmarks.json": "downloaded",
    }
    assert (tmp_path / "fetched" / "landmarks.json").read_bytes() == b'{"frames": []}'


# -- the worker's warm-up of the ledger ----------------------------------------------------------------------


def test_the_ledger_warm_up_prepares_the_job_statements_and_changes_nothing(
    control_plane: RunningControlPlane,
) -> None:
    """Ledger.warm on a connection of its own: the claim, the finish and the two together prepared, no row
    changed, no commit counted; a job's claim and finish then use those statements (none prepared anew)."""
    ledger = control_plane.ledger()
    try:
        connection = ledger.connection()
        before = connection.execute("SELECT count(*), max(heartbeat_at) FROM jobs").fetchone()
        owner = AttemptOwner("warm-test", "host", "linux", "pegasus", 1)
        ledger.warm(owner, 30.0)
        assert ledger.commits == 0
        assert connection.execute("SELECT count(*), max(heartbeat_at) FROM jobs").fetchone() == before
        prepared = connection.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
        assert prepared == (3,)
        job_id = str(uuid.uuid4())
        ledger.insert_jobs([NewJob(job_id, "sleep", "warm-test", {}, {}, 1)])
        claim = ledger.claim(job_id, "0-1", owner, 30.0)
        assert claim is not None
        data = b"0\n"
        outputs = {"slept.txt": InlineOutput.of(data).to_dict()}
        outcome = Outcome("succeeded", {"slept": 0}, None, outputs, {"slept.txt": data})
        assert ledger.finish(job_id, claim.attempt, outcome).status == "succeeded"
        assert ledger.inline_output(job_id, "slept.txt") == data
        assert connection.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (3,)
    finally:
        ledger.close()
