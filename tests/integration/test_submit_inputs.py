"""Submitting inputs against a real control plane: what is uploaded is what the file holds, an input that cannot
be read is refused before anything is uploaded, and a submission the ledger refuses leaves no object behind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from han_worker import client
from han_worker.selection.endpoints import parse_endpoints
from han_worker.selection.resolver import Choice
from han_worker.store.artifacts import Artifact
from han_worker.store.link import Link, open_link
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import (
    RunningControlPlane,
    han_worker,
    start_control_plane,
    worker_settings,
    write_private_file,
)

# Only services this module starts itself: `make test` runs it beside the tests that share the testbed.
pytestmark = pytest.mark.self_contained


@pytest.fixture(scope="module")
def control_plane(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[RunningControlPlane]:
    running = start_control_plane(unprivileged_env, workdir / "cp")
    yield running
    running.shutdown()


@pytest.fixture
def link(control_plane: RunningControlPlane) -> Iterator[Link]:
    endpoints = parse_endpoints(control_plane.endpoints, "endpoints.json")
    choice = Choice("pegasus", endpoints, control_plane.worker_credentials(), "submit inputs test")
    opened = open_link(choice, timeout=5, name="han-submit-inputs-test")
    opened.ledger.migrate()
    yield opened
    opened.close()


def stored_keys(link: Link) -> set[str]:
    objects = link.artifacts.client.list_objects(link.artifacts.bucket, prefix="jobs/", recursive=True)
    return {item.object_name for item in objects if item.object_name}


def test_a_proc_file_is_uploaded_with_what_it_holds_not_its_st_size(link: Link, tmp_path: Path):
    source = Path("/proc/self/cmdline")  # st_size 0; our own command line, the same on every read
    assert source.stat().st_size == 0
    content = source.read_bytes()
    job_id = client.submit(link, "noop", {}, {"cmdline": source}, max_attempts=3)

    record = link.ledger.job(job_id)
    assert record is not None
    artifact = Artifact.from_dict(record.inputs["cmdline"], "cmdline")
    assert artifact.size == len(content) > 0
    assert link.artifacts.download(artifact, tmp_path / "cmdline").read_bytes() == content


def test_a_submission_the_ledger_refuses_removes_the_inputs_it_uploaded(link: Link, tmp_path: Path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8 not really a photo")
    before = stored_keys(link)
    # A real refusal by PostgreSQL after the upload: every new row breaks a constraint, for this test only.
    link.ledger.connection().execute("ALTER TABLE jobs ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
    try:
        with pytest.raises(psycopg.errors.CheckViolation):
            client.submit(link, "noop", {}, {"photo.jpg": photo, "second.bin": photo}, max_attempts=3)
    finally:
        link.ledger.connection().execute("ALTER TABLE jobs DROP CONSTRAINT refuse_all")
    assert stored_keys(link) == before


def test_an_input_the_user_cannot_read_exits_2_naming_it_and_uploads_nothing(
    unprivileged_env: UnprivilegedEnv, workdir: Path, control_plane: RunningControlPlane, link: Link
):
    readable = workdir / "readable.txt"
    write_private_file(unprivileged_env, readable, "fine")
    unreadable = workdir / "root-only.txt"
    unreadable.write_text("secret")  # root's, mode 0600: the cluster user cannot open it
    unreadable.chmod(0o600)
    settings = worker_settings(control_plane, workdir / "spool-submit", mode="pegasus")
    config = write_private_file(unprivileged_env, workdir / "submit.json", json.dumps(settings))
    before = stored_keys(link)

    result = han_worker(unprivileged_env, "submit", "--config", str(config), "--kind", "noop",
                        "--input", str(readable), "--input", str(unreadable))  # fmt: skip

    assert result.returncode == 2, result.stdout + result.stderr
    assert f"--input: {unreadable}: cannot be read: Permission denied" in result.stderr
    assert "Traceback" not in result.stderr
    assert stored_keys(link) == before


def test_an_input_name_of_255_bytes_goes_through_the_object_store_and_the_workers_download(
    link: Link, tmp_path: Path
):
    longest = tmp_path / ("é" * 127 + "x")  # 255 bytes: the longest name submit accepts
    longest.write_bytes(b"the longest name")
    job_id = client.submit(link, "noop", {}, client.check_inputs([longest]), max_attempts=3)

    record = link.ledger.job(job_id)
    assert record is not None
    downloaded = link.artifacts.download_inputs(record.inputs, tmp_path / "worker" / "inputs")
    assert downloaded[longest.name].read_bytes() == b"the longest name"
