"""Who ran the control plane last, and whether that supervisor is provably gone.

A supervisor killed with SIGKILL (or its node lost) leaves its services' lock and pid files behind:
PostgreSQL's ``postmaster.pid`` then names a pid that, on this node, may be a zombie or a reused pid, and on
another node of the shared filesystem, anything at all; PostgreSQL refuses to start over it. Those files may
be removed only when their owner cannot still run, so each supervisor records itself in the state directory
(``owner.json``) once it holds the lock, with the processes of its services, and the next one judges that
record before it touches anything:

- same host, same boot: gone when neither the supervisor nor any service it recorded still runs there (the
  pid is absent, a zombie, or now another process: its start time differs);
- same host, another boot: gone (a reboot ends every process);
- a Slurm job: gone when Slurm says the job ended or no longer knows it, or when it is this very job (Slurm
  requeued it: it runs one instance of a job at a time);
- otherwise (another host and no Slurm job, or Slurm cannot tell): not provable; refused, saying what to
  check. The flock on ``supervisor.lock`` proves nothing across hosts on NFS, hence this record.

:func:`judge_owner` is pure (its facts come as arguments) so that each branch can be tested without Slurm.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from han_worker.control_plane import walltime
from han_worker.fields import FieldReader
from han_worker.private_files import TrustedFileError, read_trusted_json, write_private_json
from han_worker.processes import ProcessMark, is_running, mark_of

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


class OwnerRecordError(ValueError):
    """The owner record cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class ServiceMark:
    """A service's process as its supervisor started it (None until then), and the ports it was given."""

    process: ProcessMark | None
    ports: tuple[int, ...]


@dataclass(frozen=True)
class Owner:
    """A supervisor as it records itself in the state directory."""

    host: str
    boot_id: str | None
    supervisor: ProcessMark
    slurm_job_id: str | None
    services: Mapping[str, ServiceMark] = field(default_factory=dict)

    def with_service(self, name: str, mark: ServiceMark) -> Owner:
        return replace(self, services={**self.services, name: mark})

    def to_dict(self) -> dict[str, object]:
        document = asdict(self)
        document["services"] = {name: asdict(service) for name, service in self.services.items()}
        return document


@dataclass(frozen=True)
class Verdict:
    """Whether the previous owner is provably gone, why, whether it ran on this host (then its files in
    /tmp are the ones here), and whether asking again later may change the answer (a process exiting, a
    Slurm job completing); a predecessor that cannot be proved gone from here never will be."""

    gone: bool
    reason: str
    same_host: bool = False
    final: bool = False


def boot_id() -> str | None:
    try:
        return BOOT_ID_FILE.read_text().strip() or None
    except OSError:
        return None


def this_supervisor(launch_mode: str) -> Owner:
    return Owner(
        host=socket.gethostname(),
        boot_id=boot_id(),
        supervisor=mark_of(os.getpid()),
        slurm_job_id=walltime.job_id() if launch_mode == "slurm" else None,
    )


def still_running(owner: Owner) -> list[str]:
    """The processes of ``owner`` that run on this host now, described (call only on its own host).

    The calling supervisor itself is not counted: a retried start judges its own earlier attempt."""
    itself = owner.supervisor == mark_of(os.getpid())
    running = (
        [f"its supervisor (pid {owner.supervisor.pid})"]
        if is_running(owner.supervisor) and not itself
        else []
    )
    return running + [
        f"{name} (pid {service.process.pid})"
        for name, service in owner.services.items()
        if service.process is not None and is_running(service.process)
    ]


def judge_owner(
    previous: Owner, current: Owner, running_here: list[str], slurm_alive: bool | None
) -> Verdict:
    """Whether ``previous`` is provably gone, seen by ``current``.

    ``running_here``: :func:`still_running` of ``previous`` when it ran on this host in this boot (else
    ignored); ``slurm_alive``: what Slurm says of its job (True runs, False ended or unknown, None cannot
    tell; ignored without a job)."""
    where = f"supervisor pid {previous.supervisor.pid} on {previous.host}"
    if previous.host == current.host:
        return _judge_here(previous, current, running_here, where)
    if previous.slurm_job_id is not None:
        return _judge_by_slurm(previous.slurm_job_id, current, slurm_alive, where)
    return Verdict(
        False,
        f"{where}, in direct launch mode: whether it still runs cannot be proved from {current.host}; "
        f"check on {previous.host} (`han-control-plane status`, `ps -p {previous.supervisor.pid}`) and, once "
        "it no longer runs there, remove this owner record",
        final=True,
    )


def _judge_here(previous: Owner, current: Owner, running_here: list[str], where: str) -> Verdict:
    if previous.supervisor == current.supervisor and not running_here:
        return Verdict(True, "this supervisor's earlier attempt: its services no longer run", same_host=True)
    if previous.boot_id is not None and previous.boot_id != current.boot_id:
        return Verdict(True, f"{where} ran before this host's last boot", same_host=True)
    if running_here:
        return Verdict(False, f"{where}: still running here: {', '.join(running_here)}", same_host=True)
    return Verdict(True, f"{where} and its services no longer run", same_host=True)


def _judge_by_slurm(job: str, current: Owner, slurm_alive: bool | None, where: str) -> Verdict:
    if job == current.slurm_job_id:
        return Verdict(True, f"{where} was an earlier run of this Slurm job {job}, which Slurm requeued")
    if slurm_alive is False:
        return Verdict(True, f"{where}: Slurm job {job} has ended")
    if slurm_alive:
        return Verdict(False, f"{where}: Slurm job {job} still runs; wait for it to end or scancel it")
    return Verdict(False, f"{where}: Slurm cannot tell whether job {job} still runs (squeue did not answer)")


# -- the record on disk ------------------------------------------------------------------------------------


def read_owner(path: Path) -> Owner | None:
    """The owner recorded at ``path``, or None when there is none."""
    if not path.exists():
        return None
    try:
        fields = FieldReader(read_trusted_json(path), str(path), OwnerRecordError)
    except TrustedFileError as exc:
        raise OwnerRecordError(str(exc)) from exc
    services = fields.child("services")
    return Owner(
        host=fields.string("host"),
        boot_id=fields.optional_string("boot_id"),
        supervisor=_process(fields.child("supervisor")),
        slurm_job_id=fields.optional_string("slurm_job_id"),
        services={name: _service(services.child(name)) for name in services.data},
    )


def _process(fields: FieldReader) -> ProcessMark:
    start_time = None if fields.raw("start_time") is None else fields.integer("start_time", minimum=0)
    return ProcessMark(fields.integer("pid", minimum=1), start_time)


def _service(fields: FieldReader) -> ServiceMark:
    ports = fields.raw("ports")
    if not isinstance(ports, list) or not all(_is_port(port) for port in ports):
        fields.fail("ports", f" must be an array of port numbers, not {json.dumps(ports)[:80]}")
    process = None if fields.raw("process") is None else _process(fields.child("process"))
    return ServiceMark(process, tuple(ports))


def _is_port(value: object) -> bool:
    # bool is an int subclass in Python but not a port in JSON
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def write_owner(path: Path, owner: Owner) -> None:
    write_private_json(path, owner.to_dict())
