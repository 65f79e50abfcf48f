"""The processes of this host as ``/proc`` shows them: owners, parents, arguments and environments."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_PPID = re.compile(r"^PPid:\s+(\d+)", re.MULTILINE)
_UID = re.compile(r"^Uid:\s+(\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    uid: int
    cmdline: bytes


def list_processes(proc: Path = PROC) -> dict[int, Process]:
    processes: dict[int, Process] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        ppid, uid = _PPID.search(status), _UID.search(status)
        if ppid and uid:
            pid = int(entry.name)
            processes[pid] = Process(pid, int(ppid.group(1)), int(uid.group(1)), cmdline)
    return processes


def process_tree(root: int, parents: Mapping[int, int]) -> set[int]:
    """``root`` and all its descendants, given each process's parent."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    return tree


def read_environ(pid: int, proc: Path = PROC) -> bytes:
    """The process's environment, NUL-separated; raises OSError when it is gone or not ours."""
    return (proc / str(pid) / "environ").read_bytes()


@dataclass(frozen=True)
class Supervisor:
    """The supervisor found through the state directory's lock, and the processes of this host."""

    pid: int | None
    processes: Mapping[int, Process]

    @property
    def visible(self) -> bool:
        return self.pid is not None and self.pid in self.processes

    def tree(self) -> set[int]:
        """The supervisor and its descendants; empty when it does not run on this host."""
        if self.pid is None or self.pid not in self.processes:
            return set()
        return process_tree(self.pid, {pid: p.ppid for pid, p in self.processes.items()})


NO_SUPERVISOR = Supervisor(None, {})
