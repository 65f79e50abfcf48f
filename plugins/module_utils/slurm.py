# Copyright (c) han-infra developers
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Slurm values and command output, parsed: walltimes, GRES requests, squeue, scontrol, sinfo, sacct -c.

Standard library only: this file runs on the target (Debian's /usr/bin/python3) as part of a module.
Every parser takes the text a command printed and returns plain data; nothing here runs a command.
"""

from __future__ import annotations

import re
from collections import namedtuple

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
    ("time_left", "%L"),
    ("time_limit", "%l"),
    ("tres_per_node", "%b"),  # gres:gpu:1 or N/A
    ("user", "%u"),
    ("name", "%j"),
)
SQUEUE_FORMAT = "|".join(code for _field, code in SQUEUE_COLUMNS)

# sacct --completion fields (jobcomp/filetxt knows these); the job name last, for the same reason.
SACCT_FIELDS = ("JobID", "State", "ExitCode", "Start", "End", "NodeList", "Partition", "User", "JobName")

QueuedJob = namedtuple("QueuedJob", [field for field, _code in SQUEUE_COLUMNS])
GresItem = namedtuple("GresItem", ["name", "type", "count"])
Partition = namedtuple("Partition", ["name", "default", "max_time", "state"])

# Finished for good; anything else (PENDING, RUNNING, SUSPENDED, REQUEUE_HOLD, states a newer Slurm adds)
# counts as alive, so that an unknown state never leads to a duplicate submission.
FINISHED_STATES = frozenset(
    (
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "COMPLETING",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    )
)
# Alive but not started: no process to signal yet (scancel --signal retries on them until they start).
NOT_STARTED_STATES = frozenset(("PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT"))

_UNLIMITED = ("UNLIMITED", "INFINITE")
_DAYS_FORM = re.compile(r"^(\d+)-(\d+)(?::(\d+))?(?::(\d+))?$")
_PLAIN_FORM = re.compile(r"^(\d+)(?::(\d+))?(?::(\d+))?$")
_GRES_ITEM = re.compile(
    r"^(?P<name>[A-Za-z][A-Za-z0-9_]*)"
    r"(?::(?P<type>[A-Za-z0-9_.-]*[A-Za-z_.-][A-Za-z0-9_.-]*))?"
    r"(?::(?P<count>[0-9]+)(?P<unit>[KMGT]?))?$"
)
_GRES_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SCONTROL_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def parse_walltime(text):
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
        parts = [int(part) for part in plain_form.groups() if part is not None]
        days = 0
        if len(parts) == 1:
            hours, minutes, seconds = 0, parts[0], 0
        elif len(parts) == 2:
            hours, (minutes, seconds) = 0, parts
            _check_ranges(value, ((seconds, 60),))
        else:
            hours, minutes, seconds = parts
            _check_ranges(value, ((minutes, 60), (seconds, 60)))
    else:
        raise ValueError(
            f"'{value}' is not a Slurm time; use MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS "
            "or UNLIMITED"
        )
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return total or None


def _check_ranges(value, pairs):
    for number, bound in pairs:
        if number >= bound:
            raise ValueError(f"'{value}' has a field of {number} where at most {bound - 1} fits")


def format_walltime(seconds):
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


def parse_gres(text):
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


def format_gres(items):
    return ",".join(":".join(str(part) for part in item if part is not None) for item in items)


def parse_key_values(line):
    """One `scontrol --oneliner` record (also a jobcomp/filetxt line) as a dict.

    A value runs up to the next ` Key=`, so values with spaces (paths, comments) survive.
    """
    starts = list(_SCONTROL_KEY.finditer(line))
    record = {}
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(line)
        record[match.group(1)] = line[match.end() : end].strip()
    return record


def parse_scontrol(text):
    """Every record of `scontrol --oneliner show ...` output, one dict per line."""
    return [parse_key_values(line) for line in text.splitlines() if "=" in line]


def parse_partitions(text):
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


def parse_squeue(text):
    """`squeue --noheader --format=SQUEUE_FORMAT` as a list of QueuedJob."""
    jobs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|", len(SQUEUE_COLUMNS) - 1)
        if len(fields) != len(SQUEUE_COLUMNS):
            raise ValueError(f"squeue printed a line this module cannot read: {line!r}")
        jobs.append(QueuedJob(*[field.strip() for field in fields]))
    return jobs


def parse_sinfo_gres(text):
    """`sinfo --noheader --format=%G`: the GRES of each node configuration, as lists of GresItem."""
    configurations = []
    for line in text.splitlines():
        offered = re.sub(r"\([^)]*\)", "", line.strip())  # drops (null) and socket bindings such as (S:0-1)
        if not offered:
            continue
        items = []
        for raw in offered.split(","):
            try:
                items.extend(parse_gres(raw))
            except ValueError:
                continue  # a kind of GRES this module does not check; sbatch still will
        configurations.append(items)
    return configurations


def parse_sacct(text):
    """`sacct --completion --parsable2 --noheader --format=SACCT_FIELDS` as a list of dicts."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|", len(SACCT_FIELDS) - 1)
        if len(fields) == len(SACCT_FIELDS):
            records.append(dict(zip(SACCT_FIELDS, fields)))  # noqa: B905 - lengths checked; runs on py3.8+
    return records


def sacct_user(field):
    """jobcomp/filetxt writes the user as `name(uid)`."""
    return field.split("(", 1)[0]


def job_sort_key(job_id):
    """Order ids numerically: 9 < 16 < 18_0 < 18_2 < 18_[3-5]."""
    base, _sep, task = str(job_id).partition("_")
    task_number = re.match(r"\[?(\d+)", task)
    return (int(base) if base.isdigit() else -1, int(task_number.group(1)) if task_number else -1)


def is_alive(job):
    return job.state not in FINISHED_STATES


def has_started(job):
    return job.state not in NOT_STARTED_STATES
