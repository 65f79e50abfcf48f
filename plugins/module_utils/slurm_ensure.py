# Copyright (c) han-infra developers
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Bring the jobs of one name and user to the state a task asks for, and describe what came of it.

Standard library only. Slurm's commands run through a `run(argv) -> (rc, stdout, stderr)` callable: the
module passes AnsibleModule.run_command, the unit tests replay output captured on a real cluster.
"""

from __future__ import annotations

import re
import time

from ansible_collections.han.infra.plugins.module_utils.slurm import (
    SACCT_FIELDS,
    UNKNOWN_JOB_ERROR,
    format_array_indexes,
    format_gres,
    format_walltime,
    has_started,
    is_alive,
    is_finished,
    job_record_argv,
    job_sort_key,
    parse_array_indexes,
    parse_gres,
    parse_partitions,
    parse_sacct,
    parse_scontrol,
    parse_sinfo_gres,
    parse_squeue,
    parse_walltime,
    sacct_user,
    squeue_argv,
)
from ansible_collections.han.infra.plugins.module_utils.slurm_request import (
    check_gres,
    check_partition,
    sbatch_argv,
)

# What squeue says when asked for one job id that slurmctld no longer (or never) knew: no job, not an error.
_UNKNOWN_JOB = (UNKNOWN_JOB_ERROR,)
# scancel's one harmless failure: the job ended between squeue and scancel.
_ALREADY_GONE = (*_UNKNOWN_JOB, "already completing or completed")
NO_JOB = {
    "job_id": "",
    "job_ids": [],
    "state": "",
    "node": "",
    "time_left": "",
    "partition": "",
    "output_path": "",
}


class SlurmError(RuntimeError):
    """A Slurm command failed or a wait timed out; `result` holds what is known of the job by then."""

    def __init__(self, message, result=None, detail=""):
        super().__init__(message)
        self.result = result or {}
        self.detail = detail or message


def required_commands(request):
    if request.state == "absent":
        return ["squeue", "scontrol", "scancel"]
    return ["sbatch", "squeue", "scontrol"] + (["sinfo"] if request.gres else [])


class Slurm:
    """Slurm's commands on the target; `commands` maps each command's name to its path."""

    def __init__(self, run, commands):
        self._run = run
        self.commands = commands

    def read(self, argv, tolerated=()):
        rc, out, err = self._run(argv)
        problems = [
            line for line in err.splitlines() if line.strip() and not any(t in line for t in tolerated)
        ]
        if rc != 0 and (problems or not tolerated):
            detail = (err or out).strip()
            raise SlurmError(f"{' '.join(argv)} failed (exit {rc}): {detail}", detail=detail)
        return out

    def jobs(self, name, user, job_ids=()):
        """Every job of that user (and name, and ids, when given) that slurmctld knows, those finished within
        MinJobAge included, array tasks one by one, oldest first."""
        argv = squeue_argv(self.commands["squeue"], user=user, name=name, job_ids=job_ids)
        try:
            found = parse_squeue(self.read(argv, tolerated=_UNKNOWN_JOB))
        except ValueError as error:
            raise SlurmError(str(error)) from None
        jobs = [job for job in found if job.user == user and (not name or job.name == name)]
        return sorted(jobs, key=lambda job: job_sort_key(job.job_id))

    def partitions(self):
        return parse_partitions(self.read([self.commands["scontrol"], "--oneliner", "show", "partition"]))

    def gres_configurations(self, partition):
        argv = [self.commands["sinfo"], "--noheader", f"--partition={partition}", "--format=%G"]
        return parse_sinfo_gres(self.read(argv))

    def job_record(self, job_id):
        """`scontrol show job` of one job or array task; {} once slurmctld has forgotten it."""
        rc, out, _err = self._run(job_record_argv(self.commands["scontrol"], job_id))
        records = parse_scontrol(out) if rc == 0 else []
        return records[0] if records else {}

    def completion_records(self, name, user):
        # jobcomp/filetxt ignores --name and --user and prints every job of the day: filter here as well.
        argv = [self.commands["sacct"], "--completion", "--parsable2", "--noheader", f"--name={name}"]
        argv += [f"--user={user}", f"--format={','.join(SACCT_FIELDS)}"]
        records = parse_sacct(self.read(argv))
        return [
            record for record in records if record["JobName"] == name and sacct_user(record["User"]) == user
        ]


# fill_array leaves alone an array with less walltime than this left: a task started now would barely serve.
FILL_MIN_SECONDS = 300


def plan_commands(request, alive, commands):
    """The argv lists that bring the jobs of that name to request.state; [] when nothing would change."""
    if request.state == "present":
        if not alive:
            return [sbatch_argv(commands["sbatch"], request)]
        fill = plan_fill(request, alive) if request.fill_array else None
        return [sbatch_argv(commands["sbatch"], request, **fill)] if fill else []
    if not alive:
        return []
    scancel = commands["scancel"]
    if not request.signal:
        return [[scancel, *(job.job_id for job in alive)]]
    # A signal reaches only started jobs (scancel --signal retries on a pending one until it starts); queued
    # ones, such as a --dependency=singleton successor, are cancelled outright so that none starts later.
    waiting = [job.job_id for job in alive if not has_started(job)]
    started = [job.job_id for job in alive if has_started(job)]
    planned = [[scancel, *waiting]] if waiting else []
    if started:
        which = ["--batch"] * request.batch_only + ["--full"] * request.full
        planned.append([scancel, f"--signal={request.signal}", *which, *started])
    return planned


def plan_fill(request, alive):
    """The options (array, time) of the job that gives back the tasks the running array lost, or None.

    A task is there when it runs or waits for resources; one held by a dependency (a --dependency=singleton
    successor) is not. The filler gets the walltime the running tasks have left, so that they all end together
    and the successor, which waits for every job of the name, starts on time."""
    running = [job for job in alive if has_started(job)]
    if not running:
        return None
    there = set()
    for job in alive:
        if (has_started(job) or job.reason != "Dependency") and job.array_task_id not in ("", "N/A"):
            there |= parse_array_indexes(job.array_task_id)
    missing = parse_array_indexes(request.options["array"]) - there
    left = _walltime_left(running)
    if not missing or (left is not None and left < FILL_MIN_SECONDS):
        return None
    if left is not None and request.time is not None:
        left = min(left, request.time)
    time = format_walltime(left) if left is not None else request.options["time"]
    return {"array": format_array_indexes(missing), "time": time}


def _walltime_left(running):
    """The most walltime a running task has left, in seconds; None when unlimited or not known."""
    lefts = []
    for job in running:
        try:
            lefts.append(parse_walltime(job.time_left))
        except ValueError:  # N/A, INVALID: no figure to fill with
            return None
    return None if not lefts or None in lefts else max(lefts)


def main_job(jobs):
    """The job a task is about: a running one first, then a queued one, then the oldest."""
    return min(jobs, key=lambda job: (not is_alive(job), not has_started(job), job_sort_key(job.job_id)))


def differences(request, job):
    """(option, the job's value, the task's value) for each way a queued job differs from the task."""
    found = []
    partition = request.options["partition"]
    if partition and partition != job.partition:
        found.append(("partition", job.partition, partition))
    wanted = _minutes(request.time)
    if request.options["time"] is not None and _limit_minutes(job.time_limit, wanted) != wanted:
        found.append(("time", job.time_limit, request.options["time"]))
    if request.gres:
        wanted_gres = sorted(format_gres([item]) for item in request.gres)
        printed = re.sub(r"gres[:/]", "", job.tres_per_node)  # gres:gpu:1 (gres/gpu:1 in newer Slurm), N/A
        try:
            have = [] if printed == "N/A" else parse_gres(printed)
        except ValueError:
            have = request.gres  # a form this module does not know: do not guess
        if sorted(format_gres([item]) for item in have) != wanted_gres:
            found.append(("gres", job.tres_per_node, request.options["gres"]))
    return found


def _minutes(seconds):
    return None if seconds is None else -(-seconds // 60)


def _limit_minutes(limit, unknown):
    try:
        return _minutes(parse_walltime(limit))
    except ValueError:  # NOT_SET or INVALID: nothing to compare with
        return unknown


def describe(slurm, jobs):
    """The return values for these jobs: those of the main job, and every job's id."""
    if not jobs:
        return dict(NO_JOB)
    main = main_job(jobs)
    return {
        "job_id": main.array_job_id,
        "job_ids": [job.job_id for job in jobs],
        "state": main.state,
        "node": main.node,
        "time_left": main.time_left if is_alive(main) else "",
        "partition": main.partition,
        "output_path": slurm.job_record(main.job_id).get("StdOut", ""),
    }


def last_finished(slurm, jobs, name, user):
    """(record, problem): the latest finished job of that name: slurmctld's (MinJobAge), else sacct -c."""
    finished = [job for job in jobs if not is_alive(job)]
    if finished:
        job = max(finished, key=lambda job: job_sort_key(job.job_id))
        record = slurm.job_record(job.job_id)
        found = {"job_id": job.job_id, "state": job.state, "node": job.node, "partition": job.partition}
        found.update(exit_code=record.get("ExitCode", ""), end_time=record.get("EndTime", ""))
        return dict(found, output_path=record.get("StdOut", ""), source="squeue"), None
    if "sacct" not in slurm.commands:
        return {}, None
    try:
        records = slurm.completion_records(name, user)
    except SlurmError as error:
        problem = f"sacct --completion cannot read job completion records ({error.detail}), so "
        return {}, f"{problem}last_finished covers only jobs that ended within Slurm's MinJobAge"
    if not records:
        return {}, None
    record = max(records, key=lambda record: job_sort_key(record["JobID"]))
    found = {
        "job_id": record["JobID"],
        "state": record["State"].split(" ")[0],
        "partition": record["Partition"],
    }
    found.update(exit_code=record["ExitCode"], end_time=record["End"])
    node = "" if record["NodeList"] in ("(null)", "None assigned") else record["NodeList"]
    return dict(found, node=node, output_path="", source="sacct"), None


class JobControl:
    """Query, check, decide, then (outside check mode) act and wait, for one task on one target."""

    def __init__(self, slurm, request, user, sleep=time.sleep, clock=time.monotonic):
        self.slurm = slurm
        self.request = request
        self.user = user
        self._sleep = sleep
        self._clock = clock

    def jobs(self):
        return self.slurm.jobs(self.request.name, self.user, self.request.job_ids)

    def run(self, check_mode):
        """Returns (result, warnings); raises OptionError before any change, SlurmError when Slurm fails."""
        request = self.request
        jobs = self.jobs()
        alive = [job for job in jobs if is_alive(job) and request.selects(job)]
        result = {"differs": [], "last_finished": {}}
        warnings = []
        if request.state == "present":
            partition = check_partition(request, self.slurm.partitions())
            if request.gres:
                check_gres(request.gres, partition, self.slurm.gres_configurations(partition))
            warnings += self._differences_reported(alive, result)
        if not alive:
            result["last_finished"], problem = last_finished(self.slurm, jobs, request.name, self.user)
            warnings += [problem] if problem else []
        commands = plan_commands(request, alive, self.slurm.commands)
        result.update(changed=bool(commands), cmd=commands)
        if check_mode:
            result.update(describe(self.slurm, alive))
        elif request.state == "present":
            result.update(self._present(alive, commands))
        else:
            result.update(self._absent(alive, commands))
        return result, warnings

    def _differences_reported(self, alive, result):
        if not alive:
            return []
        job = main_job(alive)
        found = differences(self.request, job)
        result["differs"] = [option for option, _theirs, _ours in found]
        return [
            f"job {job.job_id} ({self.request.name}) has {option}={theirs} where the task asks for {ours}; "
            "it is left as it is, since jobs are identified by name"
            for option, theirs, ours in found
        ]

    def _present(self, alive, commands):
        job_id = _submitted_id(self.slurm.read(commands[0])) if commands else main_job(alive).array_job_id
        if self.request.wait_ended:
            self._wait_finished(job_id)
        elif self.request.wait_started:
            self._wait_started(job_id)
        after = [job for job in self.jobs() if is_alive(job) or job.array_job_id == job_id]
        return describe(self.slurm, after) if after else dict(NO_JOB, job_id=job_id, job_ids=[job_id])

    def _absent(self, alive, commands):
        for argv in commands:
            self.slurm.read(argv, tolerated=_ALREADY_GONE)
        acted = [job.job_id for job in alive]
        if self.request.wait_ended and acted:
            self._wait_ended(acted)
            acted += self._stop_late_successors(acted)
        after = [job for job in self.jobs() if job.job_id in acted]
        return dict(describe(self.slurm, after), job_ids=acted)

    def _stop_late_successors(self, acted):
        """A job that queues its successor when it starts (--dependency=singleton) may have done so after
        the jobs were listed, and that successor may even have started once they ended: once every job acted
        on has ended, whatever of that name is alive is such a successor, stopped the same way."""
        late = []
        for _round in range(_LATE_SUCCESSOR_ROUNDS):
            alive = [
                job
                for job in self.jobs()
                if is_alive(job) and self.request.selects(job) and job.job_id not in acted + late
            ]
            if not alive:
                break
            for argv in plan_commands(self.request, alive, self.slurm.commands):
                self.slurm.read(argv, tolerated=_ALREADY_GONE)
            late += [job.job_id for job in alive]
            self._wait_ended(late)
        return late

    def _wait_started(self, job_id):
        deadline = self._clock() + self.request.timeout
        while True:
            mine = [job for job in self.jobs() if job.array_job_id == job_id]
            if not mine or any(has_started(job) for job in mine):
                return
            if self._clock() >= deadline:
                raise SlurmError(
                    f"timeout: job {job_id} is still {mine[0].state} (reason: {mine[0].reason}) after "
                    f"{self.request.timeout} s of wait_started; it stays queued",
                    dict(describe(self.slurm, mine), changed=True),
                )
            self._sleep(1)

    def _wait_finished(self, job_id):
        """Until every job (array task) of that id has its final state, or slurmctld forgot it."""
        deadline = self._clock() + self.request.timeout
        while True:
            mine = [job for job in self.jobs() if job.array_job_id == job_id]
            if all(is_finished(job) for job in mine):
                return
            if self._clock() >= deadline:
                still = [job for job in mine if not is_finished(job)]
                raise SlurmError(
                    f"timeout: job {still[0].job_id} is still {still[0].state} after "
                    f"{self.request.timeout} s of wait_ended; it is left as it is",
                    dict(describe(self.slurm, mine), changed=True),
                )
            self._sleep(1)

    def _wait_ended(self, acted):
        deadline = self._clock() + self.request.timeout
        while True:
            still = [job for job in self.jobs() if job.job_id in acted and is_alive(job)]
            if not still:
                return
            if self._clock() >= deadline:
                raise SlurmError(
                    f"timeout: job {', '.join(job.job_id for job in still)} is still {still[0].state} after "
                    f"{self.request.timeout} s of wait_ended",
                    dict(describe(self.slurm, still), changed=True),
                )
            self._sleep(1)


# Each started successor may queue one more before its signal arrives; a chain longer than this is not ours.
_LATE_SUCCESSOR_ROUNDS = 3


def _submitted_id(output):
    job_id = output.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch --parsable printed {output.strip()!r} where a job id was expected")
    return job_id
