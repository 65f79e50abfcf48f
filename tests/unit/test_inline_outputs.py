"""Small outputs stored in the ledger: which outputs go inline (the size threshold and a job's budget), their
records, the checked write a fetch makes of them, and a spooled result keeping them as files (the ledger,
the worker and fetch against real services are in tests/integration/test_inline_outputs.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from han_worker.client import JobDetail, format_job
from han_worker.store.artifacts import (
    INLINE_JOB_MAX_BYTES,
    INLINE_OUTPUT_MAX_BYTES,
    Artifact,
    ArtifactError,
    InlineOutput,
    output_record,
    read_small,
    split_outputs,
    write_replacing,
)
from han_worker.store.spool import Spool, SpooledResult
from tests.unit.test_job_views import JOB, attempt, record


def files_of(directory: Path, sizes: dict[str, int]) -> dict[str, Path]:
    made = {}
    for name, size in sizes.items():
        made[name] = directory / name
        made[name].write_bytes(bytes([len(name) % 251]) * size)
    return made


def test_an_output_at_the_threshold_goes_inline_and_one_byte_more_to_the_object_store(tmp_path: Path):
    files = files_of(tmp_path, {"at.json": INLINE_OUTPUT_MAX_BYTES, "over.bin": INLINE_OUTPUT_MAX_BYTES + 1})
    inline, large = split_outputs(files)
    assert list(inline) == ["at.json"]
    assert inline["at.json"] == files["at.json"].read_bytes()
    assert large == {"over.bin": files["over.bin"]}


def test_an_empty_output_goes_inline(tmp_path: Path):
    inline, large = split_outputs(files_of(tmp_path, {"empty.txt": 0}))
    assert inline == {"empty.txt": b""}
    assert large == {}


def test_a_job_stores_inline_only_up_to_its_budget_smallest_first(tmp_path: Path):
    each = INLINE_OUTPUT_MAX_BYTES
    count = INLINE_JOB_MAX_BYTES // each + 2  # two more than the budget holds
    sizes = {f"part{i}.bin": each for i in range(count)} | {"small.json": 10}
    inline, large = split_outputs(files_of(tmp_path, sizes))
    assert "small.json" in inline
    assert sum(len(data) for data in inline.values()) <= INLINE_JOB_MAX_BYTES
    assert len(inline) == INLINE_JOB_MAX_BYTES // each  # small.json and all the parts but what is over
    assert set(inline) | set(large) == set(sizes)
    assert not set(inline) & set(large)


def test_the_split_is_the_same_whatever_order_the_outputs_come_in(tmp_path: Path):
    files = files_of(tmp_path, {f"p{i}.bin": INLINE_OUTPUT_MAX_BYTES for i in range(6)})
    forward = split_outputs(files)
    backward = split_outputs(dict(reversed(list(files.items()))))
    assert set(forward[0]) == set(backward[0])


def test_a_file_is_read_only_up_to_one_byte_past_the_limit(tmp_path: Path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * 100)
    assert read_small(path, 100) == b"x" * 100
    assert read_small(path, 99) is None


def test_an_inline_record_names_no_key_so_a_purge_deletes_no_object_for_it():
    stored = InlineOutput.of(b'{"landmarks": []}')
    saved = stored.to_dict()
    assert "key" not in saved
    assert saved == {"inline": True, "sha256": hashlib.sha256(b'{"landmarks": []}').hexdigest(), "size": 17}
    assert output_record(saved, "output x") == stored


def test_a_record_without_inline_is_an_object_as_before():
    saved = {"key": f"jobs/{JOB}/outputs/1/a.json", "sha256": "ab" * 32, "size": 3}
    assert output_record(saved, "output a.json") == Artifact(saved["key"], "ab" * 32, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "saved",
    [{"inline": True, "sha256": "ab" * 32}, {"inline": True, "sha256": 1, "size": 2},
     {"inline": True, "sha256": "ab", "size": -1}, {"inline": "yes", "sha256": "ab", "size": 1}],
)  # fmt: skip
def test_a_malformed_record_is_refused_naming_the_output(saved: dict[str, object]):
    with pytest.raises(ArtifactError, match=r"output landmarks\.json"):
        output_record(saved, "output landmarks.json")


def test_a_checked_write_replaces_a_wrong_local_copy(tmp_path: Path):
    destination = tmp_path / "landmarks.json"
    destination.write_bytes(b"corrupted")
    data = b'{"ok": 1}'
    write_replacing([data], InlineOutput.of(data), destination)
    assert destination.read_bytes() == data
    assert [path.name for path in tmp_path.iterdir()] == ["landmarks.json"]


@pytest.mark.parametrize(("durable", "flushes"), [(True, 1), (False, 0)])
def test_a_checked_write_flushes_to_disk_only_when_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool, flushes: int
):
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)  # a batch fetch syncs once at its end instead
    destination, data = tmp_path / "landmarks.json", b'{"ok": 2}'
    write_replacing([data], InlineOutput.of(data), destination, durable=durable)
    assert destination.read_bytes() == data
    assert len(synced) == flushes
    assert [path.name for path in tmp_path.iterdir()] == ["landmarks.json"]


def test_a_write_whose_bytes_differ_from_the_record_leaves_the_file_as_it_was(tmp_path: Path):
    destination = tmp_path / "landmarks.json"
    destination.write_bytes(b"before")
    with pytest.raises(ArtifactError, match="corrupt: 5 bytes"):
        write_replacing([b"other"], InlineOutput.of(b"recorded"), destination)
    assert destination.read_bytes() == b"before"
    assert [path.name for path in tmp_path.iterdir()] == ["landmarks.json"]


def test_show_says_where_each_output_is_kept():
    outputs = {
        "landmarks.json": InlineOutput.of(b"{}").to_dict(),
        "big.bin": {"key": f"jobs/{JOB}/outputs/2/big.bin", "sha256": "cd" * 32, "size": 70000},
    }
    text = format_job(JobDetail(record(outputs=outputs), [attempt(1, "succeeded")]))
    assert (
        "output landmarks.json: 2 bytes, SHA-256 " + hashlib.sha256(b"{}").hexdigest() + ", in the ledger"
        in text
    )
    assert f"output big.bin: 70000 bytes, SHA-256 {'cd' * 32}, object jobs/{JOB}/outputs/2/big.bin" in text


def test_a_spooled_result_keeps_small_and_large_outputs_as_files_split_alike_on_delivery(tmp_path: Path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    files = files_of(scratch, {"landmarks.json": 3000, "video.bin": INLINE_OUTPUT_MAX_BYTES + 10})
    contents = {name: path.read_bytes() for name, path in files.items()}
    spool = Spool(tmp_path / "spool")
    result = SpooledResult(
        "pegasus", 3, JOB, 1, "pose", "1-0", "succeeded", {"frames": 1}, None, tuple(files)
    )
    spool.put(result, files)
    delivered: list[tuple[SpooledResult, dict[str, bytes], list[str]]] = []

    def deliver(spooled: SpooledResult, kept: dict[str, Path]) -> None:
        inline, large = split_outputs(kept)
        delivered.append((spooled, {name: path.read_bytes() for name, path in kept.items()}, sorted(large)))
        assert inline == {"landmarks.json": contents["landmarks.json"]}

    assert spool.deliver("pegasus", "worker-2", deliver) == 1
    [(spooled, kept, large)] = delivered
    assert spooled == result
    assert kept == contents
    assert large == ["video.bin"]
    assert list(spool.entries()) == []
