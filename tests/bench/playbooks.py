"""The collection's playbooks as a user runs them, timed, with the SSH sessions each one opens counted.

Counting is exact and needs no server-side log (the testbed's sshd logs to a syslog this machine does
not run): every ssh process Ansible starts writes its debug log to a file of this run (``ssh -E FILE
-v``, through ``ANSIBLE_SSH_EXTRA_ARGS``; sftp transfers through a two-line wrapper given to ``sftp
-S``). Each ssh process logs "auto-mux: Trying existing master" once (ansible.cfg sets ControlMaster=auto
with ControlPersist): that is one SSH command; only a process that opened a new connection logs
"Authenticated to": that is one new SSH connection. Each run gets its own ControlPath directory, so it
starts without a master (as after ControlPersist's 30 s) and never shares one with another user of
this checkout; its masters are closed when it ends.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import BIN, REPO, ansible_env, recap_counters

PLAY_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Played:
    seconds: float
    recap: dict[str, int]  # ok, changed, failed, ... of the host measured
    ssh_commands: int
    ssh_connections: dict[str, int]  # address -> new connections

    @property
    def connections(self) -> int:
        return sum(self.ssh_connections.values())

    def figures(self) -> dict[str, object]:
        return {
            "seconds": self.seconds,
            "changed": self.recap.get("changed", 0),
            "ssh_commands": self.ssh_commands,
            "ssh_connections": self.connections,
            "ssh_connections_by_address": self.ssh_connections,
        }


def recap(output: str, host: str) -> dict[str, int]:
    """The PLAY RECAP counters of ``host`` (ok, changed, failed, ...)."""
    counters = recap_counters(output, host)
    if counters is None:
        raise RuntimeError(f"no PLAY RECAP line for {host}:\n{output[-3000:]}")
    return counters


def slurm_job_ids(name: str) -> list[str]:
    """The ids of every pending or running job of that name (the benchmarks' own job names)."""
    result = subprocess.run(
        ["squeue", "--noheader", f"--name={name}", "--format=%i"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return result.stdout.split()


def count_ssh(log: str) -> tuple[int, dict[str, int]]:
    commands = log.count("auto-mux: Trying existing master")
    connections = Counter(re.findall(r"^Authenticated to (\S+) ", log, re.MULTILINE))
    return commands, dict(connections)


def close_masters(control_dir: Path) -> None:
    """End the ControlPersist masters of one run now rather than 30 s later."""
    for socket_path in control_dir.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "han-bench"],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip


def play(playbook: str, *args: str, host: str = "pegasus-login") -> Played:
    """Run ``ansible-playbook playbook args`` from the repository; RuntimeError when it fails."""
    # Root's own private directory: root runs the wrapper in it, so no other user may write there.
    scratch = Path(tempfile.mkdtemp(prefix="han-bench-ssh-"))
    try:
        log, control_dir, wrapper = scratch / "ssh.log", scratch / "cp", scratch / "ssh-logged"
        control_dir.mkdir(mode=0o700)
        wrapper.write_text(f'#!/bin/sh\nexec ssh -E {log} -v "$@"\n')
        wrapper.chmod(0o700)
        env = ansible_env(
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(control_dir),
            ANSIBLE_SSH_EXTRA_ARGS=f"-E {log} -v",
            ANSIBLE_SFTP_EXTRA_ARGS=f"-S {wrapper}",
        )
        started = time.monotonic()
        result = subprocess.run(
            [str(BIN / "ansible-playbook"), playbook, *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=PLAY_TIMEOUT_S, check=False,
        )  # fmt: skip
        seconds = time.monotonic() - started
        close_masters(control_dir)
        if result.returncode != 0:
            raise RuntimeError(
                f"ansible-playbook {playbook} {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-4000:]}{result.stderr[-2000:]}"
            )
        commands, connections = count_ssh(log.read_text(errors="replace") if log.exists() else "")
        return Played(seconds, recap(result.stdout, host), commands, connections)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def extra_vars(settings: dict[str, object]) -> list[str]:
    """The settings as one JSON ``-e``: ``-e name=false`` would pass the string "false", which a
    template's ``{% if %}`` takes for true (control_plane_successor does)."""
    return ["-e", json.dumps(settings)]
