# Copyright (c) han-infra developers
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""What a slurm_job task asks for: its options checked, the cluster's limits checked, and the argv to run.

Standard library only. Every check raises OptionError, whose message starts with the option at fault.
"""

from __future__ import annotations

import os
import re

from ansible_collections.han.infra.plugins.module_utils.slurm import (
    JOB_ID,
    JOB_STATES,
    format_gres,
    format_walltime,
    parse_array_indexes,
    parse_gres,
    parse_walltime,
)

# Module option -> sbatch flag, in the order they appear in the argv.
SBATCH_FLAGS = (
    ("partition", "--partition"),
    ("time", "--time"),
    ("gres", "--gres"),
    ("cpus_per_task", "--cpus-per-task"),
    ("mem", "--mem"),
    ("output", "--output"),
    ("chdir", "--chdir"),
    ("dependency", "--dependency"),
    ("signal", "--signal"),
    ("array", "--array"),
    ("export", "--export"),
)
_OWNED_FLAGS = (
    ("name", "job-name", "J"),
    ("partition", "partition", "p"),
    ("time", "time", "t"),
    ("gres", "gres", None),
    ("cpus_per_task", "cpus-per-task", "c"),
    ("mem", "mem", None),
    ("output", "output", "o"),
    ("chdir", "chdir", "D"),
    ("dependency", "dependency", "d"),
    ("signal", "signal", None),
    ("array", "array", "a"),
    ("wrap", "wrap", None),
)
# sbatch options that extra_args may not carry: (long name, short letter, why).
REFUSED_EXTRA_ARGS = (
    *(
        (flag, short, f"it sets what the option {option} sets; use that option")
        for option, flag, short in _OWNED_FLAGS
    ),
    (
        "export",
        None,
        "variables passed with sbatch --export are stored with the job where others can read them, so this "
        "module never adds any; the option export chooses between ALL and NONE",
    ),
    ("export-file", None, "this module never adds variables to a job's environment"),
    ("parsable", None, "the module adds it and reads the job id from it"),
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+@-]{0,127}$")
_MEM = re.compile(r"^[0-9]+[KMGT]?$")
_ARRAY = re.compile(r"^[0-9]+(-[0-9]+(:[0-9]+)?)?(,[0-9]+(-[0-9]+(:[0-9]+)?)?)*(%[0-9]+)?$")
_SUBMIT_SIGNAL = re.compile(r"^((R|B|RB|BR):)?(SIG)?([A-Z][A-Z0-9]*|[0-9]+)(@[0-9]+)?$")
_CANCEL_SIGNAL = re.compile(r"^(SIG)?([A-Z][A-Z0-9]*|[0-9]+)$")


class OptionError(ValueError):
    """A task option is wrong; raised before anything is submitted or cancelled."""

    def __init__(self, option, problem):
        super().__init__(f"{option}: {problem}")
        self.option = option
        self.problem = problem


class JobRequest:
    """The options of one task, each checked on its own (no cluster needed)."""

    def __init__(self, params):
        self.state = params.get("state") or "present"
        self.name = checked_name(params)
        self.batch_only = bool(params.get("batch_only"))
        self.full = bool(params.get("full"))
        self.signal = _checked_signal(params.get("signal"), self.state, self.batch_only, self.full)
        self.job_ids = checked_job_ids(params.get("job_ids"))
        self.states = checked_states(params.get("states"))
        self.options = {option: params.get(option) for option, _flag in SBATCH_FLAGS}
        self.options["signal"] = self.signal if self.state == "present" else None
        self.script = params.get("script")
        self.wrap = params.get("wrap")
        self.extra_args = list(params.get("extra_args") or [])
        self.fill_array = bool(params.get("fill_array"))
        self.wait_started = bool(params.get("wait_started"))
        self.wait_ended = bool(params.get("wait_ended"))
        self.timeout = params.get("timeout") or 120
        if self.timeout < 1:
            raise OptionError("timeout", f"must be 1 second or more (got {self.timeout})")
        self.time = None
        self.gres = []
        if self.state == "present":
            self._check_submission()

    def selects(self, job):
        """Whether a job found by name (and job_ids) is one this task acts on: states narrows state=absent."""
        return not self.states or job.state in self.states

    def _check_submission(self):
        for option in ("job_ids", "states"):
            if getattr(self, option):
                raise OptionError(option, "is for state=absent, to choose which jobs of that name to stop")
        if bool(self.script) == bool(self.wrap):
            raise OptionError(
                "script", "give either script (a batch script on the target) or wrap (a command)"
            )
        if self.script and not os.path.isfile(self.script):
            raise OptionError("script", f"'{self.script}' is not a file on the target")
        if self.options["time"] is not None:
            try:
                self.time = parse_walltime(self.options["time"])
            except ValueError as error:
                raise OptionError("time", str(error)) from None
        if self.options["gres"] == "":
            self.options["gres"] = None  # an empty string asks for no GRES, as omitting it does (not --gres=)
        if self.options["gres"]:
            try:
                self.gres = parse_gres(self.options["gres"])
            except ValueError as error:
                raise OptionError("gres", str(error)) from None
        _matching(self.options, "mem", _MEM, "megabytes, or a number with a unit K, M, G or T such as 4G")
        self._check_array()
        if self.options["dependency"] is not None and not self.options["dependency"].strip():
            raise OptionError("dependency", "is empty; leave it out or give e.g. singleton or afterok:123")
        cpus = self.options["cpus_per_task"]
        if cpus is not None and cpus < 1:
            raise OptionError("cpus_per_task", f"must be 1 or more (got {cpus})")
        for arg in self.extra_args:
            _check_extra_arg(arg)

    def _check_array(self):
        _matching(self.options, "array", _ARRAY, "indexes such as 0-3, 1,3,5, 0-15:4 or 0-15%4")
        if self.options["array"] is not None:
            try:
                parse_array_indexes(self.options["array"])
            except ValueError as error:
                raise OptionError("array", str(error)) from None
        if self.fill_array and self.options["array"] is None:
            raise OptionError("fill_array", "needs array: it submits the indexes of the array that are gone")


def checked_name(params):
    return _matching(params, "name", _NAME, "letters, digits and . _ : + @ - (at most 128)")


def checked_job_ids(job_ids):
    """Job ids as squeue --jobs and scancel take them: 4211, an array task 4211_3, or an array's id."""
    job_ids = [str(job_id).strip() for job_id in job_ids or []]
    for job_id in job_ids:
        if not JOB_ID.match(job_id):
            raise OptionError(
                "job_ids", f"'{job_id}' is not a job id; use digits such as 4211, or 4211_3 for an array task"
            )
    return job_ids


def checked_states(states):
    """Job states, in any case, as Slurm spells them (the one list is JOB_STATES)."""
    states = [str(state).strip().upper() for state in states or []]
    for state in states:
        if state not in JOB_STATES:
            raise OptionError(
                "states", f"'{state}' is not a Slurm job state; use one of {', '.join(sorted(JOB_STATES))}"
            )
    return states


def _matching(params, option, pattern, expected):
    value = params.get(option)
    if value is not None and not pattern.match(str(value)):
        raise OptionError(option, f"'{value}' is not valid; expected {expected}")
    return value


def _checked_signal(signal, state, batch_only, full):
    if state == "absent" and batch_only and not signal:
        raise OptionError("batch_only", "needs signal: it sends that signal to the batch shell only")
    if full and (state != "absent" or not signal):
        raise OptionError(
            "full", "needs state=absent and signal: it sends that signal to every step of a job"
        )
    if full and batch_only:
        raise OptionError(
            "full", "and batch_only exclude each other: signal the batch shell only, or everything"
        )
    if signal is None:
        return None
    if state == "present" and not _SUBMIT_SIGNAL.match(signal):
        raise OptionError(
            "signal", f"'{signal}' is not an sbatch --signal; use [R:|B:]SIGNAL[@SECONDS], e.g. B:TERM@120"
        )
    if state == "absent" and not _CANCEL_SIGNAL.match(signal):
        raise OptionError(
            "signal",
            f"'{signal}' is not a signal for scancel; with state=absent give a name or number such as TERM, "
            "SIGUSR1 or 15 ([R:|B:]SIGNAL@SECONDS is for submission)",
        )
    return signal


def _check_extra_arg(arg):
    if arg.startswith("--"):
        given = arg[2:].split("=", 1)[0]
        # sbatch, like getopt_long, also takes an unambiguous prefix such as --part or --expo.
        refused = [
            why for long_name, _short, why in REFUSED_EXTRA_ARGS if given and long_name.startswith(given)
        ]
    elif arg.startswith("-") and len(arg) > 1:
        refused = [why for _long, short, why in REFUSED_EXTRA_ARGS if short == arg[1]]
    else:
        refused = []
    if refused:
        raise OptionError("extra_args", f"'{arg}' is refused: {refused[0]}")


def check_partition(request, partitions):
    """Check the partition and walltime against `scontrol show partition`; return the partition's name."""
    name = request.options["partition"]
    if name is None:
        defaults = [partition.name for partition in partitions.values() if partition.default]
        if not defaults:
            raise OptionError("partition", "not set, and the cluster has no default partition")
        name = defaults[0]
    elif name not in partitions:
        raise OptionError(
            "partition",
            f"partition '{name}' does not exist on this cluster (partitions: {', '.join(partitions)})",
        )
    limit = partitions[name].max_time
    # time=UNLIMITED (or 0) asks for no limit at all, which a partition with a MaxTime does not give.
    asked = request.time
    if request.options["time"] is not None and limit is not None and (asked is None or asked > limit):
        raise OptionError(
            "time",
            f"'{request.options['time']}' is over the limit of partition {name} "
            f"(MaxTime={format_walltime(limit)})",
        )
    return name


def check_gres(requested, partition, configurations):
    """Each requested GRES must fit on one node configuration of the partition (`sinfo --format=%G`)."""
    offered = ", ".join(sorted({format_gres(items) for items in configurations if items})) or "none"
    for item in requested:
        per_configuration = [
            sum(have.amount for have in items if have.name == item.name and item.type in (None, have.type))
            for items in configurations
        ]
        if not any(have.name == item.name for items in configurations for have in items):
            problem = f"partition {partition} has no GRES named '{item.name}' (it offers: {offered})"
        elif not any(per_configuration):
            problem = f"partition {partition} has no {item.name} of type '{item.type}' (it offers: {offered})"
        elif max(per_configuration) < item.amount:
            problem = (
                f"'{format_gres([item])}' asks for {item.amount} per node, but nodes of partition "
                f"{partition} have at most {max(per_configuration)} (it offers: {offered})"
            )
        else:
            continue
        raise OptionError("gres", problem)


def sbatch_argv(sbatch, request, **replaced):
    """sbatch's argv for the request; ``replaced`` overrides options (array and time, to fill an array)."""
    options = dict(request.options, **replaced)
    argv = [sbatch, "--parsable", f"--job-name={request.name}"]
    argv += [f"{flag}={options[option]}" for option, flag in SBATCH_FLAGS if options[option] is not None]
    argv += request.extra_args
    argv.append(f"--wrap={request.wrap}" if request.wrap else request.script)
    return argv


def find_commands(names, bin_dir, search_path):
    """{name: absolute path} of Slurm's commands, from bin_dir when given, else from PATH."""
    directories = [bin_dir] if bin_dir else [entry for entry in search_path.split(os.pathsep) if entry]
    found = {}
    for name in names:
        paths = [os.path.join(directory, name) for directory in directories]
        executable = [path for path in paths if os.path.isfile(path) and os.access(path, os.X_OK)]
        if executable:
            found[name] = executable[0]
        elif bin_dir:
            raise OptionError("slurm_bin_dir", f"'{bin_dir}' holds no executable {name}")
        else:
            raise OptionError(
                "slurm_bin_dir",
                f"not set, and {name} is not on the target's PATH ({search_path}); install Slurm's client "
                "commands or set slurm_bin_dir to the directory that holds them",
            )
    return found
