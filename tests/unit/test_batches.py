"""Batches without a control plane: what a folder or a pattern expands to, the ids derived from it, what is
refused (naming the input, before anything is sent), the progress arithmetic and the fetch layout."""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from han_worker import batches, client
from han_worker.cli.progress import Ticker
from han_worker.store.ledger import BatchCounts
from tests.unit.test_jobs_cli import run


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def plan(
    source: Path | str, params: dict[str, object] | None = None, kind: str = "noop"
) -> batches.BatchPlan:
    return client.plan_batch(Path(source), kind, params or {}, 3)


def test_a_folder_is_its_files_sorted_without_subfolders_or_hidden_files(tmp_path: Path):
    folder = _folder(
        tmp_path / "photos", {"b.jpg": b"b", "a.jpg": b"aa", ".DS_Store": b"x", "sub/c.jpg": b"c"}
    )
    planned = plan(folder)
    assert [item.relative for item in planned.inputs] == ["a.jpg", "b.jpg"]
    assert [item.size for item in planned.inputs] == [2, 1]
    jobs = planned.new_jobs()
    assert [list(job.inputs) for job in jobs] == [["a.jpg"], ["b.jpg"]]
    record = jobs[0].inputs["a.jpg"]
    assert record["path"] == "a.jpg"
    assert record["key"] == planned.packs[0].key  # small: packed (tests/unit/test_packs.py)
    assert (record["offset"], record["size"]) == (0, 2)


def test_the_same_files_kind_and_params_give_the_same_ids_wherever_they_are(tmp_path: Path):
    first = plan(_folder(tmp_path / "one", {"a.jpg": b"a", "b.jpg": b"b"}), {"seconds": 1})
    again = plan(_folder(tmp_path / "two", {"b.jpg": b"b", "a.jpg": b"a"}), {"seconds": 1})
    assert (first.batch_id, first.job_ids) == (again.batch_id, again.job_ids)
    assert len(set(first.job_ids)) == 2
    uuid.UUID(first.batch_id)


def test_a_changed_byte_another_param_or_kind_is_another_batch(tmp_path: Path):
    folder = _folder(tmp_path / "photos", {"a.jpg": b"a", "b.jpg": b"b"})
    original = plan(folder)
    assert plan(folder, {"run": 2}).batch_id != original.batch_id
    assert plan(folder, kind="sleep").batch_id != original.batch_id
    (folder / "b.jpg").write_bytes(b"B")
    changed = plan(folder)
    assert changed.batch_id != original.batch_id
    assert set(changed.job_ids).isdisjoint(original.job_ids)


def test_a_pattern_crosses_folders_and_keeps_paths_relative_to_where_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    _folder(tmp_path / "captures", {"s1/img.jpg": b"1", "s2/img.jpg": b"2", "s2/notes.txt": b"n"})
    planned = plan(tmp_path / "captures" / "**" / "*.jpg")
    assert [item.relative for item in planned.inputs] == ["s1/img.jpg", "s2/img.jpg"]
    assert [item.name for item in planned.inputs] == ["img.jpg", "img.jpg"]
    assert len(set(planned.job_ids)) == 2
    assert [batches.output_folder(job.inputs, job.job_id) for job in planned.new_jobs()] == [
        "s1/img.jpg",
        "s2/img.jpg",
    ]
    monkeypatch.chdir(tmp_path / "captures" / "s2")
    assert [item.relative for item in plan("*.jpg").inputs] == ["img.jpg"]


def test_what_names_a_batch(tmp_path: Path):
    odd = tmp_path / "shot[1].jpg"
    odd.write_bytes(b"x")
    assert not batches.is_batch_source(odd)  # a file, although its name looks like a pattern
    assert batches.is_batch_source(tmp_path)
    assert batches.is_batch_source(tmp_path / "*.jpg")
    assert not batches.is_batch_source(tmp_path / "missing.jpg")  # a missing file: refused as one


def test_an_empty_folder_or_a_pattern_matching_nothing_is_refused_naming_it(tmp_path: Path):
    empty = tmp_path / "empty"
    _folder(empty, {".hidden": b"x", "sub/a.jpg": b"a"})
    with pytest.raises(client.RequestError, match=rf"^--input: {empty}: a folder with no file in it"):
        plan(empty)
    with pytest.raises(client.RequestError, match=r"^--input: .*/\*\.png: the pattern matches no file"):
        plan(tmp_path / "*.png")


def test_a_link_out_of_the_folder_is_refused_one_inside_is_read(tmp_path: Path):
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"s")
    folder = _folder(tmp_path / "photos", {"a.jpg": b"a"})
    (folder / "b.jpg").symlink_to(folder / "a.jpg")
    assert [item.relative for item in plan(folder).inputs] == ["a.jpg", "b.jpg"]
    (folder / "c.jpg").symlink_to(outside)
    with pytest.raises(
        client.RequestError, match=rf"^--input: {folder}/c.jpg is a link to {outside}, out of"
    ):
        plan(folder)
    (folder / "c.jpg").unlink()
    (folder / "d.jpg").symlink_to(tmp_path / "nothing")
    with pytest.raises(client.RequestError, match=rf"^--input: {folder}/d.jpg is a link to nothing"):
        plan(folder)


def test_an_unreadable_file_or_one_that_is_not_regular_is_refused_naming_it(tmp_path: Path):
    # root reads any file whatever its mode: /proc/self/mem is a file that no read succeeds on
    with pytest.raises(client.RequestError, match=r"^--input: /proc/self/mem: cannot be read"):
        plan("/proc/self/me[m]")
    folder = _folder(tmp_path / "photos", {"a.jpg": b"a"})
    os.mkfifo(folder / "pipe")
    with pytest.raises(client.RequestError, match=rf"^--input: {folder}/pipe is not a regular file"):
        plan(folder)


def test_a_name_no_worker_can_write_is_refused(tmp_path: Path):
    folder = _folder(tmp_path / "photos", {"a:b.jpg": b"a"})
    with pytest.raises(
        client.RequestError, match=r"^--input: 'a:b.jpg' cannot be a file name on every worker"
    ):
        plan(folder)


def test_the_kind_params_and_attempts_are_checked_as_submit_checks_them(tmp_path: Path):
    folder = _folder(tmp_path / "photos", {"a.jpg": b"a"})
    with pytest.raises(client.RequestError, match=r"^--kind: "):
        plan(folder, kind="nosuch")
    with pytest.raises(client.RequestError, match=r"^params: "):
        plan(folder, {"x": float("nan")})
    with pytest.raises(client.RequestError, match=r"^--max-attempts: "):
        client.plan_batch(folder, "noop", {}, 0)


def test_the_manifest_digest_does_not_depend_on_the_order_files_were_found_in(tmp_path: Path):
    items = plan(_folder(tmp_path / "p", {"a": b"1", "b": b"2", "c": b"3"})).inputs
    digest = batches.manifest_digest("noop", {"k": 1}, items)
    assert batches.manifest_digest("noop", {"k": 1}, tuple(reversed(items))) == digest


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input", "{empty}"], "--input: {empty}: a folder with no file in it"),
        (["--input", "{empty}/*.jpg"], "--input: {empty}/*.jpg: the pattern matches no file"),
        (["--input", "{empty}", "--input", "{empty}"], "--input: {empty} is a folder or a pattern"),
    ],
)
def test_submit_refuses_a_bad_batch_before_it_connects(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
):
    empty = tmp_path / "empty"
    empty.mkdir()
    # no control plane is configured: had it got that far, the error would be about selection
    code, out, err = run(capsys, "submit", "--kind", "noop", *[item.format(empty=empty) for item in argv])
    assert code == 2, out + err
    assert message.format(empty=empty) in err
    assert out == ""


@pytest.mark.parametrize("command", [["wait"], ["jobs"], ["fetch", "--output", "/nonexistent/out"]])
def test_a_batch_id_that_is_not_a_uuid_exits_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str], command: list[str]
):
    code, _out, err = run(capsys, *command, "--batch", "my-batch")
    assert code == 2
    assert "argument --batch: 'my-batch' is not a batch id" in err


def test_wait_and_fetch_take_a_job_or_a_batch_not_both(capsys: pytest.CaptureFixture[str]):
    job = "0b1c5d4e-0000-4000-8000-000000000000"
    for command in (["wait"], ["fetch", "--output", "/nonexistent/out"]):
        code, _out, err = run(capsys, *command, job, "--batch", job)
        assert code == 2
        assert "JOB or --batch ID: give exactly one" in err


def _counts(by_status: dict[str, int], started: float | None = 10.0) -> BatchCounts:
    origin = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
    first = None if started is None else origin + timedelta(seconds=started)
    return BatchCounts(
        "b",
        "pose",
        sum(by_status.values()),
        origin,
        "d",
        by_status,
        first,
        None,
        origin + timedelta(seconds=30),
    )


def test_progress_counts_rate_and_time_left():
    progress = batches.progress_of(
        _counts({"succeeded": 36, "dead": 3, "failed": 1, "running": 2, "queued": 58})
    )
    assert (progress.total, progress.succeeded, progress.failed, progress.running, progress.waiting) == (
        100, 36, 4, 2, 58,
    )  # fmt: skip
    assert progress.rate == pytest.approx(2.0)  # 40 finished in the 20 s since the first started
    assert progress.seconds_left == pytest.approx(30.0)
    assert not progress.finished
    assert batches.format_progress(progress) == (
        "batch b: 40/100 done (36 succeeded, 4 failed), 2 running, 58 waiting, 2.0 jobs/s, 0:30 left"
    )


def test_progress_before_any_job_finished_has_no_rate_and_a_finished_batch_says_how_it_ended():
    waiting = batches.progress_of(_counts({"queued": 5}, started=None))
    assert (waiting.rate, waiting.seconds_left, waiting.finished) == (None, None, False)
    assert batches.format_progress(waiting).endswith("0 running, 5 waiting")
    assert batches.progress_of(_counts({"succeeded": 5})).all_succeeded
    # a final status this code does not know (a cancel, say) counts as finished, not succeeded
    ended = batches.progress_of(_counts({"succeeded": 4, "cancelled": 1}))
    assert ended.finished
    assert not ended.all_succeeded
    assert ended.failed == 1


def test_a_batch_jobs_output_folder_is_its_input_path_unless_that_is_unsafe():
    record = {"key": "k", "sha256": "s", "size": 1}
    assert batches.output_folder({"a.jpg": {**record, "path": "s1/a.jpg"}}, "job") == "s1/a.jpg"
    for hostile in ("../../etc", "/abs", "a/../b", "", 3):
        assert batches.output_folder({"a.jpg": {**record, "path": hostile}}, "job") == "job"
    assert batches.output_folder({"a.jpg": record}, "job") == "job"


def test_off_a_terminal_progress_is_a_line_every_few_seconds_and_the_last_news(
    capsys: pytest.CaptureFixture[str],
):
    with Ticker(interval=3600, terminal=False) as ticker:
        for done in range(1, 6):
            ticker.update("uploading inputs", done, 5)
    assert capsys.readouterr().err.splitlines() == ["uploading inputs: 1/5", "uploading inputs: 5/5"]


def test_beside_a_bar_progress_leaves_out_what_the_bar_shows():
    progress = batches.progress_of(_counts({"succeeded": 36, "failed": 4, "running": 2, "queued": 58}))
    assert (
        batches.format_progress_short(progress) == "36 succeeded, 4 failed, 2 running, 2.0 jobs/s, 0:30 left"
    )


def test_on_a_terminal_progress_is_a_bar(capsys: pytest.CaptureFixture[str]):
    with Ticker(terminal=True) as ticker:
        ticker.update("uploading inputs", 3, 5)
        ticker.update("uploading inputs", 5, 5)
    assert "5/5" in capsys.readouterr().err
