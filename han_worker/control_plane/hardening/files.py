"""File modes and owners: the state directory and what it holds are ours and private; the env is ours
and not writable by anyone else (its programs run with the control plane's secrets)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from han_worker.control_plane.hardening.report import FAIL, PASS, Row
from han_worker.control_plane.layout import Layout


def mode_row(path: Path, uid: int, *, private: bool, directory: bool | None = None) -> Row:
    """``private``: no group or other bits at all; else: not group- or world-writable."""
    target = str(path)
    try:
        info = path.lstat()
    except FileNotFoundError:
        return Row("mode", target, FAIL, "does not exist")
    except OSError as exc:
        return Row("mode", target, FAIL, f"cannot be examined: {exc.strerror}")
    mode = stat.S_IMODE(info.st_mode)
    problems = _kind_problems(info, directory)
    if info.st_uid != uid:
        problems.append(f"owned by uid {info.st_uid}, not {uid}")
    if private and mode & 0o077:
        problems.append(f"mode {mode:04o} gives group/others access (want {'0700' if directory else '0600'})")
    if not private and mode & 0o022:
        problems.append(f"mode {mode:04o} is group- or world-writable")
    if problems:
        return Row("mode", target, FAIL, "; ".join(problems))
    return Row("mode", target, PASS, f"mode {mode:04o}, ours")


def _kind_problems(info: os.stat_result, directory: bool | None) -> list[str]:
    if stat.S_ISLNK(info.st_mode):
        return ["is a symbolic link"]
    if directory is not None and stat.S_ISDIR(info.st_mode) != directory:
        return ["is not a directory" if directory else "is not a regular file"]
    return []


def writable_by_others(root: Path, limit: int = 5) -> tuple[int, list[str]]:
    """How many entries under ``root`` (not following links) are group/world-writable, and the first few."""
    count, examples = 0, list[str]()
    for directory, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = Path(directory) / name
            try:
                info = path.lstat()
            except OSError:
                continue
            if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o022:
                count += 1
                if len(examples) < limit:
                    examples.append(f"{path} ({stat.S_IMODE(info.st_mode):04o})")
    return count, examples


def state_dir_rows(layout: Layout, uid: int) -> list[Row]:
    """The state directory, its documents, its data, logs and run directories and each service's data."""
    rows = [mode_row(layout.root, uid, private=True, directory=True)]
    for document in (layout.endpoints_file, layout.credentials_file, layout.secrets_file):
        rows.append(mode_row(document, uid, private=True, directory=False))
    if layout.previous_secrets_file.exists():
        rows.append(mode_row(layout.previous_secrets_file, uid, private=True, directory=False))
    for directory in (layout.data_root, layout.logs_dir, layout.run_dir()):
        if directory.exists():
            rows.append(mode_row(directory, uid, private=True, directory=True))
    if layout.data_root.is_dir():
        rows.extend(
            mode_row(child, uid, private=True, directory=True)
            for child in sorted(layout.data_root.iterdir())
            if child.is_dir() and not child.is_symlink()
        )
    return rows


def env_rows(env: Path, uid: int) -> list[Row]:
    """The env (links resolved) is ours and nothing in it is group- or world-writable."""
    resolved = env.resolve()
    rows = [mode_row(resolved, uid, private=False, directory=True)]
    if resolved.is_dir():
        count, examples = writable_by_others(resolved)
        detail = (
            f"{count} group/world-writable entries, e.g. {'; '.join(examples)}"
            if count
            else "nothing group- or world-writable"
        )
        rows.append(Row("mode", f"{env} (tree)", FAIL if count else PASS, detail))
    return rows
