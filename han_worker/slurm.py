# Copyright (c) han-infra developers
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Slurm values and command output, parsed: walltimes, GRES requests, job states, squeue, scontrol, sinfo,
sacct -c; and the argv of the read-only queries, so that every reader asks Slurm the same way.

The one place that reads Slurm, for two kinds of importer:
- han_worker, pip-installed on hosts that have no collection: ``han_worker.slurm``;
- the collection's modules: ``ansible_collections.han.infra.plugins.module_utils.slurm`` is a symlink to this
  file, and AnsiballZ ships its content with the module to the target.
Hence: standard library only, syntax that runs on Python 3.8 (a target's own Python), no import of
han_worker or ansible, and nothing here runs a command (callers run the argv built here).

JSON: Slurm 22.05 (Debian's slurm-wlm 22.05.8) has ``squeue --json`` and ``sinfo --json`` (OpenAPI
v0.0.38), but measured on it, ``squeue --json`` ignores every filter (--user, --me, --name, --jobs,
--states) and dumps every job of every user with ~100 fields each, and ``scontrol`` has no --json at all.
Polled by name every second or two, that is the whole cluster's queue each time; and the JSON schema changes
with every Slurm release (v0.0.39, v0.0.40, ...) where the --format codes below have not changed in a
decade. So the parsers read text: the --format codes named here, and ``scontrol --oneliner`` records.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import NamedTuple

# squeue --format codes, in output order. The name comes last: it is the one field that may contain the
# delimiter, so a line is split at most len(...) - 1 times.
SQUEUE_COLUMNS = (
    ("job_id", "%i"),  # as displayed: 16, 18_0 (array task), 18_[2-3] (pending tasks without --array)
    ("array_job_id", "%F"),  # the id sbatch printed; equals job_id outside arrays
    ("array_task_id", "%K"),  # N/A outside arrays
    ("state", "%T"),
    ("reason", "%r"),
    ("partition", "%P"),
    ("node", "%N"),
    ("time_used", "%M"),
    ("time_left", "%L"),
    ("time_limit", "%l"),
    ("submit_time", "%V"),
    ("start_time", "%S"),  # actual, or expected while pending (N/A when Slurm cannot tell yet)
    ("end_time", "%e"),  # actual, or the walltime end while running
    ("tres_per_node", "%b"),  # gres:gpu:1 or N/A
    ("user", "%u"),
    ("name", "%j"),
)
SQUEUE_FORMAT = "|".join(code for _field, code in SQUEUE_COLUMNS)

# sacct --completion fields (jobcomp/filetxt knows these); the job name last, for the same reason.
SACCT_FIELDS = ("JobID", "State", "ExitCode", "Start", "End", "NodeList", "Partition", "User", "JobName")

# Slurm prints times as the caller's SLURM_TIME_FORMAT says; the parsers read the standard form. Every reader
# runs Slurm's commands with this in their environment.
COMMAND_ENVIRONMENT = {"SLURM_TIME_FORMAT": "standard"}

# The job states Slurm prints (squeue %T, scontrol JobState; flags first, as job_state_string() does), by
# what they mean to a caller. The one list of job states: the modules, the roles (through slurm_job_info's
# alive/started/finished) and han_worker read these and nothing else.
# Queued, not started: no process to signal yet (scancel --signal retries on them until they start). A job
# whose launch or node configuration failed (LAUNCH_FAILED, RECONFIG_FAIL) goes back to the queue.
WAITING_STATES = frozenset(
    (
        "PENDING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
        "LAUNCH_FAILED",
        "RECONFIG_FAIL",
    )
)
# Given its nodes; its processes may run.
ACTIVE_STATES = frozenset(
    ("CONFIGURING", "RESIZING", "RUNNING", "SIGNALING", "STOPPED", "SUSPENDED", "POWER_UP_NODE")
)
# Its script has ended; Slurm is still killing its processes (KillWait), running the epilog or staging out.
ENDING_STATES = frozenset(("COMPLETING", "STAGE_OUT"))
# Ended for good, with the state it ended in.
FINAL_STATES = frozenset(
    (
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    )
)
JOB_STATES = WAITING_STATES | ACTIVE_STATES | ENDING_STATES | FINAL_STATES
# What squeue prints (exit 1) when asked for one job id that slurmctld no longer (or never) knew: no such job.
UNKNOWN_JOB_ERROR = "Invalid job id specified"


class QueuedJob(NamedTuple):
    """One line of squeue (SQUEUE_COLUMNS), every field as Slurm printed it."""

    job_id: str
    array_job_id: str
    array_task_id: str
    state: str
    reason: str
    partition: str
    node: str
    time_used: str
    time_left: str
    time_limit: str
    submit_time: str
    start_time: str
    end_time: str
    tres_per_node: str
    user: str
    name: str


class GresItem(NamedTuple):
    name: str
    type: str | None
    amount: int  # not "count": a tuple has a method of that name


class Partition(NamedTuple):
    name: str
    default: bool
    max_time: int | None
    state: str


_UNLIMITED = ("UNLIMITED", "INFINITE")
# What squeue prints for a value it does not have (no node yet, no array, no GRES, no time left).
_NOT_SET = ("", "N/A", "(null)", "Unknown", "NONE", "INVALID")
_DAYS_FORM = re.compile(r"^(\d+)-(\d+)(?::(\d+))?(?::(\d+))?$")
_PLAIN_FORM = re.compile(r"^(\d+)(?::(\d+))?(?::(\d+))?$")
_GRES_ITEM = re.compile(
    r"^(?P<name>[A-Za-z][A-Za-z0-9_]*)"
    r"(?::(?P<type>[A-Za-z0-9_.-]*[A-Za-z_.-][A-Za-z0-9_.-]*))?"
    r"(?::(?P<count>[0-9]+)(?P<unit>[KMGT]?))?$"
)
_GRES_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SCONTROL_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")
# What squeue --jobs and scontrol take: a job, an array task (18_0) or a whole array (its id).
JOB_ID = re.compile(r"^[0-9]+(_[0-9]+)?$")


def parse_walltime(text: object) -> int | None:
    """Seconds in a Slurm time limit, or None for no limit.

    Takes every form sbatch --time takes (minutes, minutes:seconds, hours:minutes:seconds, days-hours,
    days-hours:minutes, days-hours:minutes:seconds) and what Slurm prints (UNLIMITED, 1-00:00:00, 5:00).
    Zero means no limit, as for sbatch. Raises ValueError saying what is wrong.
    """
    value = str(text).strip()
    if value.upper() in _UNLIMITED:
        return None
    days_form = _DAYS_FORM.match(value)
    plain_form = _PLAIN_FORM.match(value)
    if days_form:
        days, hours, minutes, seconds = (int(part or 0) for part in days_form.groups())
        _check_ranges(value, ((hours, 24), (minutes, 60), (seconds, 60)))
    elif plain_form:
        days, hours, minutes, seconds = _plain_parts(value, [int(p) for p in plain_form.groups() if p])
    else:
        raise ValueError(
            f"'{value}' is not a Slurm time; use MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS "
            "or UNLIMITED"
        )
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return total or None


def parse_time_left(text: str) -> int | None:
    """Seconds left of a job's walltime as squeue prints it (%L): None when unlimited or unknown; unlike a
    time limit, zero is none left. Raises ValueError as parse_walltime does."""
    value = text.strip()
    if value.upper() in _UNLIMITED or value in _NOT_SET:
        return None
    return parse_walltime(value) or 0


def _plain_parts(value: str, parts: list[int]) -> tuple[int, int, int, int]:
    if len(parts) == 1:
        return 0, 0, parts[0], 0
    if len(parts) == 2:
        _check_ranges(value, ((parts[1], 60),))
        return 0, 0, parts[0], parts[1]
    _check_ranges(value, ((parts[1], 60), (parts[2], 60)))
    return 0, parts[0], parts[1], parts[2]


def _check_ranges(value: str, pairs: Sequence[tuple[int, int]]) -> None:
    for number, bound in pairs:
        if number >= bound:
            raise ValueError(f"'{value}' has a field of {number} where at most {bound - 1} fits")


def format_walltime(seconds: int | None) -> str:
    """Slurm's own spelling: UNLIMITED, MM:SS, HH:MM:SS or D-HH:MM:SS."""
    if seconds is None:
        return "UNLIMITED"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def parse_local_time(text: str) -> datetime | None:
    """A time Slurm printed (``2026-11-29T09:00:00``: the node's local time, no zone) in UTC; None for
    N/A, Unknown, NONE or anything else that is not a time."""
    value = text.strip()
    if value in _NOT_SET:
        return None
    try:
        naive = datetime.fromisoformat(value)
    except ValueError:
        return None
    # astimezone() reads a naive time as local time, which is what Slurm printed.
    return naive.astimezone(timezone.utc)


def parse_gres(text: object) -> list[GresItem]:
    """The items of a --gres request (NAME[:TYPE][:COUNT], comma separated); COUNT defaults to 1."""
    items = []
    for raw in str(text).split(","):
        match = _GRES_ITEM.match(raw.strip())
        if not match or (match.group("count") is not None and int(match.group("count")) == 0):
            raise ValueError(
                f"'{text}' is not a GRES request; use NAME[:TYPE][:COUNT] such as gpu:1 or "
                "gpu:rtxa6000:1, several separated by commas"
            )
        count = int(match.group("count") or 1) * _GRES_UNITS[match.group("unit") or ""]
        items.append(GresItem(match.group("name"), match.group("type"), count))
    return items


def format_gres(items: Sequence[GresItem]) -> str:
    return ",".join(":".join(str(part) for part in item if part is not None) for item in items)


def parse_key_values(line: str) -> dict[str, str]:
    """One `scontrol --oneliner` record (also a jobcomp/filetxt line) as a dict.

    A value runs up to the next ` Key=`, so values with spaces (paths, comments) survive.
    """
    starts = list(_SCONTROL_KEY.finditer(line))
    record = {}
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(line)
        record[match.group(1)] = line[match.end() : end].strip()
    return record


def parse_scontrol(text: str) -> list[dict[str, str]]:
    """Every record of `scontrol --oneliner show ...` output, one dict per line."""
    return [parse_key_values(line) for line in text.splitlines() if "=" in line]


def parse_partitions(text: str) -> dict[str, Partition]:
    """`scontrol --oneliner show partition` as {name: Partition}."""
    partitions = {}
    for record in parse_scontrol(text):
        name = record.get("PartitionName")
        if name:
            partitions[name] = Partition(
                name=name,
                default=record.get("Default") == "YES",
                max_time=parse_walltime(record.get("MaxTime", "UNLIMITED")),
                state=record.get("State", ""),
            )
    return partitions


def parse_squeue(text: str) -> list[QueuedJob]:
    """`squeue --noheader --format=SQUEUE_FORMAT` (see squeue_argv) as a list of QueuedJob."""
    jobs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|", len(SQUEUE_COLUMNS) - 1)
        if len(fields) != len(SQUEUE_COLUMNS):
            raise ValueError(f"squeue printed a line this module cannot read: {line!r}")
        jobs.append(QueuedJob(*[field.strip() for field in fields]))
    return jobs


def parse_sinfo_gres(text: str) -> list[list[GresItem]]:
    """`sinfo --noheader --format=%G`: the GRES of each node configuration, as lists of GresItem."""
    configurations = []
    for line in text.splitlines():
        offered = re.sub(r"\([^)]*\)", "", line.strip())  # drops (null) and socket bindings such as (S:0-1)
        if not offered:
            continue
        items: list[GresItem] = []
        for raw in offered.split(","):
            try:
                items.extend(parse_gres(raw))
            except ValueError:
                continue  # a kind of GRES this module does not check; sbatch still will
        configurations.append(items)
    return configurations


def parse_sacct(text: str) -> list[dict[str, str]]:
    """`sacct --completion --parsable2 --noheader --format=SACCT_FIELDS` as a list of dicts."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|", len(SACCT_FIELDS) - 1)
        if len(fields) == len(SACCT_FIELDS):
            records.append(dict(zip(SACCT_FIELDS, fields)))  # noqa: B905 - lengths checked; runs on py3.8+
    return records


def sacct_user(field: str) -> str:
    """jobcomp/filetxt writes the user as `name(uid)`."""
    return field.split("(", 1)[0]


def job_sort_key(job_id: str) -> tuple[int, int]:
    """Order ids numerically: 9 < 16 < 18_0 < 18_2 < 18_[3-5]."""
    base, _sep, task = str(job_id).partition("_")
    task_number = re.match(r"\[?(\d+)", task)
    return (int(base) if base.isdigit() else -1, int(task_number.group(1)) if task_number else -1)


# More indexes than any array Slurm accepts (MaxArraySize is at most 4,000,001): a bound, so that a typo such
# as 0-99999999999 is an error rather than a set that fills the memory.
MAX_ARRAY_INDEXES = 4_000_001
_ARRAY_PART = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


def parse_array_indexes(text: str) -> set[int]:
    """The task indexes of an --array value (0-3, 1,3,5, 0-15:4, 0-15%4) or of squeue's %K ([2-3%2], 7)."""
    spec = text.strip().strip("[]").partition("%")[0]
    indexes: set[int] = set()
    for part in spec.split(","):
        match = _ARRAY_PART.match(part.strip())
        if not match:
            raise ValueError(f"{text!r} is not a list of array indexes such as 0-3, 1,3,5 or 0-15:4")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        step = int(match.group(3) or 1)
        if last < first or step < 1 or (last - first) // step + len(indexes) >= MAX_ARRAY_INDEXES:
            raise ValueError(f"{text!r}: {part!r} is not a range of at most {MAX_ARRAY_INDEXES} indexes")
        indexes.update(range(first, last + 1, step))
    return indexes


def format_array_indexes(indexes: Iterable[int]) -> str:
    """The shortest --array value for these indexes: [0, 1, 2, 5] -> 0-2,5."""
    parts: list[str] = []
    ordered = sorted(set(indexes))
    start = 0
    for position in range(1, len(ordered) + 1):
        if position == len(ordered) or ordered[position] != ordered[position - 1] + 1:
            first, last = ordered[start], ordered[position - 1]
            parts.append(str(first) if first == last else f"{first}-{last}")
            start = position
    return ",".join(parts)


def is_alive(job: QueuedJob) -> bool:
    """Pending or running: it may still run. A state this list does not know counts as alive, so that an
    unknown state never leads to a duplicate submission."""
    return job.state not in FINAL_STATES and job.state not in ENDING_STATES


def has_started(job: QueuedJob) -> bool:
    """No longer queued: running, ending or ended (a job cancelled while pending too)."""
    return job.state not in WAITING_STATES


def is_finished(job: QueuedJob) -> bool:
    """Ended, and Slurm has its final state (COMPLETING is neither alive nor finished)."""
    return job.state in FINAL_STATES


def may_be_running(job: QueuedJob) -> bool:
    """Started and without a final state yet (running, suspended, completing, or a state this list does not
    know): its processes may still be there, such as the services of a control plane."""
    return has_started(job) and not is_finished(job)


def job_facts(job: QueuedJob) -> dict[str, object]:
    """A job as a module returns it: every squeue field (empty where Slurm printed N/A or the like, and the
    time left of a job that ended), and what its state means (alive, started, finished)."""
    facts: dict[str, object] = {
        field: "" if value in _NOT_SET else value
        for field, value in zip(job._fields, job)  # noqa: B905
    }
    facts.update(alive=is_alive(job), started=has_started(job), finished=is_finished(job))
    if not facts["alive"]:
        facts["time_left"] = ""  # squeue goes on printing the limit minus the time used
    return facts


def squeue_argv(
    squeue: str, user: str | None = None, name: str | None = None, job_ids: Sequence[str] = ()
) -> list[str]:
    """Every job (array tasks one by one, finished ones slurmctld still remembers included) of that user,
    name and ids, in SQUEUE_FORMAT. squeue exits 1 with "Invalid job id specified" when one id is asked for
    and slurmctld does not know it."""
    argv = [squeue, "--noheader", "--array", "--states=all"]
    argv += [f"--user={user}"] if user else []
    argv += [f"--name={name}"] if name else []
    argv += [f"--jobs={','.join(job_ids)}"] if job_ids else []
    return [*argv, f"--format={SQUEUE_FORMAT}"]


def job_record_argv(scontrol: str, job_id: str, details: bool = False) -> list[str]:
    """`scontrol show job` of one job or array task, one line per record (parse_scontrol); with details,
    as `scontrol -dd` shows it (the allocation per node, the command and its working directory)."""
    return [scontrol, "--oneliner", *(["--details", "--details"] if details else []), "show", "job", job_id]


def batch_script_argv(scontrol: str, job_id: str) -> list[str]:
    """The batch script Slurm keeps for a job, printed to standard output as it was submitted."""
    return [scontrol, "write", "batch_script", job_id, "-"]
