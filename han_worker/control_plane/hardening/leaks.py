"""No secret value where others can read it: the user's process list, the control plane's environments,
the state directory's logs and plain files, and (Slurm) the job script, record and name Slurm keeps.

Values are compared here and never printed: a row names the secret's field, not its value.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from han_worker.control_plane.hardening.processes import Supervisor, read_environ
from han_worker.control_plane.hardening.report import FAIL, PASS, Row
from han_worker.control_plane.layout import Layout
from han_worker.slurm import COMMAND_ENVIRONMENT, batch_script_argv, job_record_argv, parse_scontrol


def find_leaks(data: bytes | str, secrets: Mapping[str, str]) -> list[str]:
    """Names of the secrets whose value occurs in ``data`` (never the values)."""
    blob = data.encode(errors="replace") if isinstance(data, str) else data
    return sorted(name for name, value in secrets.items() if value.encode() in blob)


def scan_file_for_leaks(path: Path, secrets: Mapping[str, str], chunk_size: int = 1 << 20) -> list[str]:
    """Like :func:`find_leaks` on a file of any size, read in overlapping chunks."""
    overlap = max((len(value.encode()) for value in secrets.values()), default=1)
    found: set[str] = set()
    tail = b""
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            found.update(find_leaks(tail + chunk, secrets))
            tail = chunk[-overlap:]
    return sorted(found)


def leak_row(check_target: str, leaks: Sequence[str], clean_detail: str) -> Row:
    if leaks:
        return Row("leak", check_target, FAIL, "contains " + ", ".join(leaks))
    return Row("leak", check_target, PASS, clean_detail)


# -- on this host ---------------------------------------------------------------------------------------


def leak_rows(layout: Layout, secrets: Mapping[str, str], supervisor: Supervisor, uid: int) -> list[Row]:
    """The process list of ``uid``, the supervisor tree's environments, the state directory's files."""
    rows = [process_list_row(secrets, supervisor, uid)]
    environment = environment_row(secrets, supervisor)
    if environment is not None:
        rows.append(environment)
    rows.append(state_files_row(layout, secrets))
    return rows


def process_list_row(secrets: Mapping[str, str], supervisor: Supervisor, uid: int) -> Row:
    mine = [process for process in supervisor.processes.values() if process.uid == uid]
    found: set[str] = set()
    for process in mine:
        found.update(find_leaks(process.cmdline, secrets))
    return leak_row(
        f"process list (uid {uid})", sorted(found), f"{len(mine)} processes' arguments free of secrets"
    )


def environment_row(secrets: Mapping[str, str], supervisor: Supervisor) -> Row | None:
    """The environments of the supervisor's process tree; None when it does not run here."""
    tree = supervisor.tree()
    if not tree:
        return None
    found: set[str] = set()
    unreadable = 0
    for pid in sorted(tree):
        try:
            found.update(find_leaks(read_environ(pid), secrets))
        except OSError:
            unreadable += 1
    clean = f"{len(tree) - unreadable} processes' environments free of secrets"
    return leak_row("control-plane environment", sorted(found), clean)


def scanned_files(layout: Layout) -> list[Path]:
    """The state directory's plain files that may be shared or shown, and every log under it."""
    files = [layout.endpoints_file, layout.job_script_file, layout.epoch_file, layout.owner_file]
    files.append(layout.failure_file)  # status shows its reason, which may quote a service's log
    if layout.logs_dir.is_dir():
        files.extend(
            sorted(path for path in layout.logs_dir.rglob("*") if path.is_file() and not path.is_symlink())
        )
    return [path for path in files if path.is_file()]


def state_files_row(layout: Layout, secrets: Mapping[str, str]) -> Row:
    files = scanned_files(layout)
    found: dict[str, list[str]] = {}
    for path in files:
        leaks = scan_file_for_leaks(path, secrets)
        if leaks:
            found[path.name] = leaks
    target = f"{layout.root}/logs and files"
    if found:
        detail = "; ".join(f"{name}: {', '.join(names)}" for name, names in sorted(found.items()))
        return Row("leak", target, FAIL, detail)
    return Row("leak", target, PASS, f"{len(files)} files free of secrets")


# -- what Slurm keeps of the job --------------------------------------------------------------------------


def slurm_rows(job: str, secrets: Mapping[str, str], supervisor: Supervisor) -> list[Row]:
    """The batch script, the job record and name, and how the job was submitted (``--export=NONE``)."""
    target = f"Slurm job {job}"
    rows = [batch_script_row(job, target, secrets)]
    show = subprocess.run(
        job_record_argv("scontrol", job, details=True), env={**os.environ, **COMMAND_ENVIRONMENT},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if show.returncode != 0:
        detail = f"cannot verify: scontrol show job exited {show.returncode}"
        return [*rows, Row("leak", f"{target} record", FAIL, detail)]
    rows.append(_job_name_row(target, show.stdout, secrets))
    clean = "scontrol show job (command, work dir, comment) free of secrets"
    rows.append(leak_row(f"{target} record", find_leaks(show.stdout, secrets), clean))
    exported = exported_environment_row(target, supervisor)
    return rows if exported is None else [*rows, exported]


def _job_name_row(target: str, record: str, secrets: Mapping[str, str]) -> Row:
    name = next((job["JobName"] for job in parse_scontrol(record) if "JobName" in job), None)
    if name is None:
        return leak_row(f"{target} name", [], "job name ?")
    return leak_row(f"{target} name", find_leaks(name, secrets), f"job name {name}")


def batch_script_row(job: str, target: str, secrets: Mapping[str, str]) -> Row:
    script = subprocess.run(
        batch_script_argv("scontrol", job), env={**os.environ, **COMMAND_ENVIRONMENT},
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    if script.returncode != 0:
        detail = f"cannot verify: scontrol write batch_script exited {script.returncode}"
        return Row("leak", f"{target} batch script", FAIL, detail)
    clean = "the script Slurm keeps is free of secrets"
    return leak_row(f"{target} batch script", find_leaks(script.stdout, secrets), clean)


def exported_environment_row(target: str, supervisor: Supervisor) -> Row | None:
    """Whether the submitter's environment reached the job: SLURM_EXPORT_ENV of the supervisor's process."""
    if supervisor.pid is None or not supervisor.visible:
        return None
    try:
        environ = read_environ(supervisor.pid).split(b"\0")
    except OSError:
        return None
    export = next((item for item in environ if item.startswith(b"SLURM_EXPORT_ENV=")), b"")
    value = export.partition(b"=")[2].decode(errors="replace")
    if value == "NONE":
        return Row("leak", f"{target} exported environment", PASS, "submitted with --export=NONE")
    detail = f"SLURM_EXPORT_ENV={value or 'unset'}: the submitter's environment was exported"
    return Row("leak", f"{target} exported environment", FAIL, detail)
