"""Packs without a control plane: which inputs are packed and how they are spread, the keys (the same for the
same inputs, others for other bytes), a pack's bytes (the bytes planning read, kept up to a budget; past it the
files read again, a changed or vanished file refused naming it), and a packed input's ledger record."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from han_worker import batches, client, packs
from han_worker.fields import RequestError
from han_worker.store.artifacts import Artifact, ArtifactError

BATCH = "5e2d8a3c-1111-5222-8333-944455556666"


def folder_of(root: Path, sizes: dict[str, int]) -> Path:
    root.mkdir()
    for name, size in sizes.items():
        (root / name).write_bytes(hashlib.sha256(name.encode()).digest()[:1] * size)
    return root


def plan(folder: Path) -> batches.BatchPlan:
    return client.plan_batch(folder, "noop", {}, 3)


def test_small_inputs_are_spread_over_packs_and_large_or_empty_ones_stay_objects(tmp_path: Path) -> None:
    sizes = {f"f{index:03d}": 100 + index for index in range(20)}
    sizes |= {"large": packs.PACK_BELOW, "empty": 0}
    planned = plan(folder_of(tmp_path / "in", sizes))
    members = [member.relative for pack in planned.packs for member in pack.members]
    assert members == sorted(name for name in sizes if name.startswith("f"))  # in order, each once
    assert [len(pack.members) for pack in planned.packs] == [3] * 6 + [2]  # ceil(20 / PACK_SPREAD)
    for item in planned.inputs:
        record = planned.artifact(item)
        if item.relative in ("large", "empty"):
            assert (record.key, record.offset) == (planned.key(item), None)
        else:
            assert record.key.startswith(f"batches/{planned.batch_id}/packs/")
    for pack in planned.packs:
        assert pack.offsets[0] == 0
        assert pack.size == sum(member.size for member in pack.members)
        ends = [offset + member.size for offset, member in zip(pack.offsets, pack.members, strict=True)]
        assert list(pack.offsets[1:]) == ends[:-1]


def test_a_pack_holds_at_most_its_inputs_and_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packs, "PACK_MAX_BYTES", 1000)
    monkeypatch.setattr(packs, "PACK_MAX_INPUTS", 4)
    planned = plan(folder_of(tmp_path / "in", {f"f{index:03d}": 300 for index in range(80)}))
    assert {len(pack.members) for pack in planned.packs} == {3, 2}  # 4 would be 1,200 bytes; 80 = 26 * 3 + 2
    assert max(pack.size for pack in planned.packs) <= 1000


@dataclass(frozen=True)
class Member:
    path: Path
    relative: str
    sha256: str
    size: int
    data: bytes | None = None


def test_the_same_inputs_give_the_same_keys_and_other_bytes_other_keys(tmp_path: Path) -> None:
    first = plan(folder_of(tmp_path / "one", {"a": 10, "b": 20}))
    again = plan(folder_of(tmp_path / "two", {"a": 10, "b": 20}))
    assert [pack.key for pack in first.packs] == [pack.key for pack in again.packs]
    a, b = Member(Path("a"), "a", "aa" * 32, 1), Member(Path("b"), "b", "bb" * 32, 1)
    keys = {
        packs.pack_key(BATCH, 0, members)
        for members in ([a, b], [b, a], [a], [a, replace(b, sha256="cc" * 32)], [a, replace(b, size=2)])
    }
    assert len(keys) == 5
    assert all(key.startswith(f"batches/{BATCH}/packs/00000-") for key in keys)


def test_a_packs_bytes_are_its_members_files_at_their_offsets(tmp_path: Path) -> None:
    planned = plan(folder_of(tmp_path / "in", {f"f{index}": 50 * (index + 1) for index in range(16)}))
    pack = planned.packs[0]
    snapshot = packs.read_pack(pack)
    try:
        data = snapshot.data.read()
    finally:
        snapshot.close()
    assert (len(data), snapshot.size, snapshot.sha256) == (
        pack.size,
        pack.size,
        hashlib.sha256(data).hexdigest(),
    )
    for relative, artifact in pack.artifacts().items():
        assert artifact.offset is not None
        piece = data[artifact.offset : artifact.offset + artifact.size]
        assert piece == (tmp_path / "in" / relative).read_bytes()
        assert hashlib.sha256(piece).hexdigest() == artifact.sha256


def change_file(target: Path, change: str) -> None:
    if change == "removed":
        target.unlink()
    else:
        target.write_bytes(b"z" * (10 if change == "same size" else 11))


@pytest.mark.parametrize("change", ["same size", "grown", "removed"])
def test_a_member_that_changed_since_the_plan_is_refused_naming_it_when_its_bytes_were_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    monkeypatch.setattr(batches, "KEPT_BYTES", 10)  # the first input's bytes only
    planned = plan(folder_of(tmp_path / "in", {"a": 10, "b": 10}))
    assert [item.data is not None for item in planned.inputs] == [True, False]
    target = tmp_path / "in" / planned.packs[-1].members[-1].relative
    change_file(target, change)
    message = (
        f"--input: {target}: cannot be read: No such file or directory"
        if change == "removed"
        else f"--input: {target} changed while the batch was being submitted"
    )
    with pytest.raises(RequestError, match=message):
        packs.read_pack(planned.packs[-1])


@pytest.mark.parametrize("change", ["same size", "grown", "removed"])
def test_a_pack_of_kept_bytes_holds_what_the_plan_hashed_whatever_the_files_became(
    tmp_path: Path, change: str
) -> None:
    planned = plan(folder_of(tmp_path / "in", {"a": 10, "b": 10}))
    pack = planned.packs[-1]
    planned_bytes = b"".join((tmp_path / "in" / member.relative).read_bytes() for member in pack.members)
    for member in pack.members:
        change_file(tmp_path / "in" / member.relative, change)
    snapshot = packs.read_pack(pack)
    try:
        data = snapshot.data.read()
    finally:
        snapshot.close()
    assert data == planned_bytes
    assert (snapshot.size, snapshot.sha256) == (pack.size, hashlib.sha256(planned_bytes).hexdigest())


def test_planning_keeps_the_bytes_of_small_inputs_within_its_budget_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batches, "KEPT_BYTES", 250)
    sizes = {"a": 100, "b": 100, "c": 100, "d": 50, "large": packs.PACK_BELOW, "empty": 0}
    planned = plan(folder_of(tmp_path / "in", sizes))
    kept = {item.relative: item.data for item in planned.inputs}
    # a and b fit; c would pass the budget; d still fits after it; large and empty are never packed.
    assert {name for name, data in kept.items() if data is not None} == {"a", "b", "d"}
    for name in ("a", "b", "d"):
        assert kept[name] == (tmp_path / "in" / name).read_bytes()


def test_a_packed_record_round_trips_and_a_bad_offset_is_refused() -> None:
    packed = Artifact("batches/b/packs/00000-ab", "cd" * 32, 7, 1024)
    assert packed.to_dict() == {
        "key": "batches/b/packs/00000-ab",
        "sha256": "cd" * 32,
        "size": 7,
        "offset": 1024,
    }
    assert Artifact.from_dict(packed.to_dict(), "input") == packed
    assert packed.where == "batches/b/packs/00000-ab bytes 1024-1030"
    assert "offset" not in Artifact("k", "s", 1).to_dict()
    for offset, size in ((-1, 7), (True, 7), ("0", 7), (0, 0)):
        with pytest.raises(ArtifactError, match=r"input 'a.jpg': .* has no valid offset"):
            Artifact.from_dict({"key": "k", "sha256": "s", "size": size, "offset": offset}, "input 'a.jpg'")


def test_no_pack_without_small_inputs() -> None:
    assert packs.plan_packs(BATCH, []) == ()
