"""The worker's private scratch directory, and those that killed workers left behind.

A worker keeps its jobs' scratch directories (downloaded inputs, outputs before upload) in one private
directory under the temporary directory and removes it when it stops. A worker killed with SIGKILL cannot,
and a keeper that restarts it (or a Slurm task started after it) would leave one per kill. So the directory's
name says who made it, ``han-worker-<pid>-<start time>-<random>``, and a starting worker removes those of
this user whose process provably no longer runs: the pid is gone, or now another process (its start time
differs). A live worker's directory is never touched; a name it cannot judge is left alone.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from han_worker.processes import ProcessMark, is_running, mark_of

log = logging.getLogger(__name__)

PREFIX = "han-worker-"
UNKNOWN_START = "x"  # off Linux there is no start time to record: the pid alone is judged
NAME = re.compile(rf"^{PREFIX}(\d{{1,10}})-(\d{{1,20}}|{UNKNOWN_START})-")


def make_scratch_dir() -> Path:
    """A new private (0700) directory for this worker's jobs, named after this process."""
    mark = mark_of(os.getpid())
    start = UNKNOWN_START if mark.start_time is None else str(mark.start_time)
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{mark.pid}-{start}-"))


def owner_of(name: str) -> ProcessMark | None:
    """The process a scratch directory's name records, or None when the name is not one we can judge."""
    match = NAME.match(name)
    if match is None:
        return None
    start = None if match[2] == UNKNOWN_START else int(match[2])
    if start is None and Path("/proc/self/stat").exists():
        return None  # made without a start time, yet here one could be read: not ours to judge
    return ProcessMark(int(match[1]), start)


def remove_abandoned(parent: Path | None = None) -> list[Path]:
    """Remove the scratch directories in ``parent`` (the temporary directory) that belong to this user and
    whose worker no longer runs; the directories removed."""
    if sys.platform == "win32":
        # Without /proc, is_running would signal the pid, and os.kill terminates a process on Windows.
        return []
    parent = Path(tempfile.gettempdir()) if parent is None else parent
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError as exc:
        log.debug("cannot list %s: %s", parent, exc)
        return []
    for entry in entries:
        owner = owner_of(entry.name)
        if owner is None or not _ours(entry) or is_running(owner):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        log.info("removed %s, left by worker pid %d, which no longer runs", entry.path, owner.pid)
        removed.append(Path(entry.path))
    return removed


def _ours(entry: os.DirEntry[str]) -> bool:
    """A real directory (not a link to one) of this user: another user's is not ours to judge or remove."""
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
