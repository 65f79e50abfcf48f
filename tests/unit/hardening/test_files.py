"""File modes and owners judged on real files."""

from __future__ import annotations

import os
from pathlib import Path

from han_worker.control_plane.hardening.files import mode_row, writable_by_others
from han_worker.control_plane.hardening.report import FAIL, PASS

# -- file modes ----------------------------------------------------------------------------------------


def test_mode_row_on_real_files(tmp_path: Path) -> None:
    uid = os.getuid()
    secret = tmp_path / "credentials.json"
    secret.write_text("{}")
    secret.chmod(0o600)
    assert mode_row(secret, uid, private=True, directory=False).result == PASS
    secret.chmod(0o644)
    row = mode_row(secret, uid, private=True, directory=False)
    assert row.result == FAIL
    assert "mode 0644 gives group/others access (want 0600)" in row.detail
    assert "owned by uid" in mode_row(secret, uid + 1, private=True, directory=False).detail
    assert mode_row(tmp_path / "missing", uid, private=True).detail == "does not exist"
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    assert "want 0700" in mode_row(state, uid, private=True, directory=True).detail
    assert "is not a directory" in mode_row(secret, uid, private=True, directory=True).detail
    link = tmp_path / "link"
    link.symlink_to(secret)
    assert "symbolic link" in mode_row(link, uid, private=True, directory=False).detail


def test_env_tree_not_writable_by_others(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text("")
    assert writable_by_others(tmp_path) == (0, [])
    (tmp_path / "bin").chmod(0o775)
    (tmp_path / "bin" / "python").chmod(0o666)
    count, examples = writable_by_others(tmp_path)
    assert count == 2
    assert any(example.endswith("python (0666)") for example in examples)
    assert mode_row(tmp_path / "bin", os.getuid(), private=False).result == FAIL
