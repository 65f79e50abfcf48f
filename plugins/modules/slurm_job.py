#!/usr/bin/python
# Copyright (c) han-infra developers
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
# ruff: noqa: E402 - validate-modules wants the imports below DOCUMENTATION, EXAMPLES and RETURN.

from __future__ import annotations

DOCUMENTATION = r"""
module: slurm_job
short_description: Submit, inspect and cancel a Slurm batch job identified by its name
version_added: 0.1.0
description:
  - Ensures that a Slurm batch job of a given O(name), owned by the user the module runs as, is queued or
    running (O(state=present)) or is not (O(state=absent)).
  - Idempotence is by name. With O(state=present) the module runs C(sbatch --parsable) only when no job of
    that name is pending or running for the user; otherwise it reports the job it found, unchanged, even
    when that job was submitted with other options (see RV(differs)). A job of that name that already ended
    (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...) does not count, so the module submits a new one and reports
    the previous one in RV(last_finished).
  - With O(state=absent) the module cancels every pending or running job of that name, including array tasks
    and successors queued with C(--dependency=singleton). With O(signal) it signals the running jobs instead
    (with O(batch_only), only their batch shell) and still cancels the pending ones outright, so that no
    queued successor starts once the running job ends.
  - Before anything is submitted the module checks the partition, the walltime against the partition's
    C(MaxTime) (C(scontrol show partition)), the GRES against what the partition's nodes offer (C(sinfo)),
    the script and the presence of Slurm's commands. Every error message starts with the option at fault.
  - Commands run as argument vectors, never through a shell. RV(cmd) shows every command that changed
    something, or would have in check mode.
  - The module never takes secrets and never adds variables to a job's environment (see O(export)).
author:
  - han-infra developers (@han-infra)
options:
  name:
    description:
      - The job name (C(sbatch --job-name)); together with the user the module runs as, it identifies the job.
      - Up to 128 letters, digits and characters from C(._:+@-). Never put a secret in it, C(squeue)
        shows it to every user.
    type: str
    required: true
  state:
    description:
      - V(present) submits the job unless a job of that name is pending or running.
      - V(absent) cancels (or, with O(signal), signals) every pending or running job of that name.
    type: str
    choices: [present, absent]
    default: present
  script:
    description:
      - Path of a batch script on the target, submitted as it is; its C(#SBATCH) lines apply, and the
        options of this module override them.
      - With O(state=present) exactly one of O(script) and O(wrap) is required.
    type: path
  wrap:
    description:
      - A command that C(sbatch --wrap) runs under C(/bin/sh) as the job.
    type: str
  partition:
    description:
      - The partition to submit to (C(--partition)). It must exist; without it the cluster's default partition
        is used and checked.
    type: str
  time:
    description:
      - Walltime (C(--time)) in a form Slurm takes, V(MINUTES), V(MM:SS), V(HH:MM:SS), V(D-HH), V(D-HH:MM),
        V(D-HH:MM:SS), or V(UNLIMITED). It must not exceed the partition's C(MaxTime).
      - Quote it in YAML, C("12:00:00"); unquoted, YAML reads C(12:00:00) as the number 43200.
    type: str
  gres:
    description:
      - Generic resources per node (C(--gres)), V(NAME[:TYPE][:COUNT]) separated by commas, such as V(gpu:1)
        or V(gpu:rtxa6000:1). The partition's nodes must offer that name, type and count. An empty string asks
        for none, as omitting it does.
    type: str
  cpus_per_task:
    description:
      - CPUs per task (C(--cpus-per-task)).
    type: int
  mem:
    description:
      - Memory per node (C(--mem)) in megabytes, or with a unit K, M, G or T, such as V(4G).
    type: str
  output:
    description:
      - Path of the job's standard output (C(--output)); Slurm's patterns such as C(%j) and C(%x) apply. The
        resolved path is returned as RV(output_path).
    type: str
  chdir:
    description:
      - Working directory of the job (C(--chdir)).
    type: path
  dependency:
    description:
      - Dependency (C(--dependency)), such as V(singleton) or V(afterok:123).
    type: str
  signal:
    description:
      - With O(state=present), the signal Slurm sends before the walltime ends (C(sbatch --signal)), such as
        V(B:TERM@120) (the batch shell, 120 seconds before the end).
      - With O(state=absent), the signal to send to running jobs instead of cancelling them (C(scancel
        --signal)), such as V(TERM) or V(USR1). Pending jobs of that name are cancelled all the same.
    type: str
  batch_only:
    description:
      - With O(state=absent) and O(signal), signal only the batch shell of each running job (C(scancel
        --batch)), not the processes it started, so that a script that traps the signal can stop its services
        in order.
    type: bool
    default: false
  full:
    description:
      - With O(state=absent) and O(signal), signal every step of each running job, its batch shell and the
        processes it started included (C(scancel --full)), such as V(KILL) to kill a job without notice.
      - Not with O(batch_only).
    type: bool
    default: false
  job_ids:
    description:
      - With O(state=absent), act only on the jobs of that name with these ids (C(squeue --jobs)), each a job
        id, an array task such as V(4211_3), or an array's id for all its tasks.
    type: list
    elements: str
    default: []
  states:
    description:
      - With O(state=absent), act only on the jobs of that name in one of these states, such as V(PENDING) to
        cancel a queued successor and leave the running job alone, or V(RUNNING).
      - Slurm's state names (squeue C(%T)), in any case; others are refused.
    type: list
    elements: str
    default: []
  array:
    description:
      - Submit a job array (C(--array)) with these indexes, such as V(0-3), V(1,3,5), V(0-15:4) or V(0-15%4).
        Its tasks are returned in RV(job_ids).
    type: str
  fill_array:
    description:
      - With O(state=present) and O(array), when the array that runs has lost tasks (they ended while the
        others run, such as a task killed with its node or by C(scancel --full)), submit those indexes again
        as a new job of the same name, with the walltime the running tasks have left (so that all end
        together, and a C(--dependency=singleton) successor starts on time), and report C(changed).
      - Tasks count as there when they run, or wait for resources; a job that waits on a dependency (such as
        that successor) does not stand in for a running task. Nothing is filled while no task has started,
        nor when less than 5 minutes of walltime are left.
    type: bool
    default: false
  export:
    description:
      - Which environment variables of the module's environment on the target the job receives
        (C(--export)). V(ALL) passes all of them, including any that a task's C(environment) keyword sets;
        V(NONE) passes none, and the job starts with Slurm's C(SLURM_*) variables and the basic login
        environment the node gives it (C(HOME), C(USER), a default C(PATH)).
      - When not set, C(--export) is not passed and sbatch's default applies (V(ALL), unless the site sets
        E(SBATCH_EXPORT)).
      - Variable assignments (C(--export=VAR=value)) are not supported, on purpose, see O(extra_args).
    type: str
    choices: [ALL, NONE]
  extra_args:
    description:
      - More sbatch arguments, one per list item, passed as they are, such as V(--begin=now+1hour).
      - Refused, in any spelling (C(-p), C(--part=...)), are the options this module has its own option for
        (the job name included) and C(--parsable), and C(--export) and C(--export-file), because variables
        given that way are stored with the job where other users can read them.
    type: list
    elements: str
    default: []
  wait_started:
    description:
      - With O(state=present), wait until the job (for an array, one of its tasks) has started, or ended.
      - When O(timeout) passes first the module fails, and the job stays queued.
    type: bool
    default: false
  wait_ended:
    description:
      - With O(state=absent), wait until none of the jobs it cancelled or signalled is pending or running.
        Useful with O(signal), where a job ends only once its script exits.
      - Then a job of that name that is still alive is a successor queued by one of them at its start
        (C(--dependency=singleton)) after the jobs were listed; it is stopped the same way, and waited for.
      - With O(state=present), wait until the job (for an array, every task) has ended and Slurm reports its
        final state (COMPLETED, FAILED, TIMEOUT, ...) in RV(state), as for a short probe job. When O(timeout)
        passes first the module fails, and the job is left as it is.
    type: bool
    default: false
  timeout:
    description:
      - Seconds that O(wait_started) and O(wait_ended) wait at most.
    type: int
    default: 120
  slurm_bin_dir:
    description:
      - Directory holding Slurm's commands (C(sbatch), C(squeue), C(scontrol), C(scancel), C(sinfo),
        C(sacct)) on the target, for sites where they are not on the PATH of a non-interactive SSH session.
      - When not set, the commands are looked up on the target's PATH.
    type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Queries Slurm and reports what would change, without submitting, cancelling or waiting.
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - The user is the one the module runs as (C(remote_user), C(become_user)); jobs of other users with the same
    name are neither found nor touched.
  - The job's final state is read from slurmctld while it still remembers the job (C(MinJobAge), 300 seconds
    by default) and after that from job completion records (C(sacct --completion)), where readable.
  - Check mode with O(state=present) is a read-only status query, see the examples.
requirements:
  - Slurm's client commands on the target (tested with Slurm 22.05).
seealso:
  - name: sbatch
    description: Options of sbatch, which this module passes on.
    link: https://slurm.schedmd.com/sbatch.html
  - name: scancel
    description: How scancel signals jobs, and what --batch means.
    link: https://slurm.schedmd.com/scancel.html
"""

EXAMPLES = r"""
- name: Ensure the control plane job is queued or running.
  han.infra.slurm_job:
    name: han-control-plane
    script: "{{ ansible_env.HOME }}/.han/control-plane.sbatch"
    partition: batch
    time: "12:00:00"
    mem: 4G
    signal: B:TERM@120
    output: "{{ ansible_env.HOME }}/.han/logs/%x-%j.out"
    wait_started: true
    timeout: 300
  register: control_plane_job

- name: Run one GPU worker with a command instead of a script.
  han.infra.slurm_job:
    name: han-pose-worker
    wrap: "exec han-worker run"
    partition: RTXA6000
    gres: gpu:1
    cpus_per_task: 4
    time: "2:00:00"
    export: NONE

- name: Run four pose workers as a job array that starts in an hour.
  han.infra.slurm_job:
    name: han-pose-array
    wrap: "exec han-worker run"
    partition: RTXA6000
    gres: gpu:rtxa6000:1
    array: 0-3%2
    extra_args:
      - --begin=now+1hour

- name: Read the control plane job's status without changing anything.
  han.infra.slurm_job:
    name: han-control-plane
    script: "{{ ansible_env.HOME }}/.han/control-plane.sbatch"
  check_mode: true
  register: control_plane_status

- name: Report how the control plane job runs, or how it last ended.
  ansible.builtin.debug:
    msg: >-
      {{ control_plane_status.state | default('no job', true) }}
      on {{ control_plane_status.node | default('no node', true) }};
      last finished: {{ control_plane_status.last_finished }}

- name: Stop the control plane in order, with SIGTERM to its batch shell only, and wait until it has ended.
  han.infra.slurm_job:
    name: han-control-plane
    state: absent
    signal: TERM
    batch_only: true
    wait_ended: true
    timeout: 90

- name: Cancel every job named han-pose-array.
  han.infra.slurm_job:
    name: han-pose-array
    state: absent

- name: Run a short GPU probe job and wait for its final state.
  han.infra.slurm_job:
    name: han-gpu-check
    wrap: nvidia-smi -L
    partition: RTXA6000
    gres: gpu:1
    time: "2"
    wait_ended: true
    timeout: 180
  register: gpu_probe

- name: Cancel the queued successor of the control plane, and leave its running job alone.
  han.infra.slurm_job:
    name: han-control-plane
    state: absent
    states: [PENDING]

- name: Kill one task of the worker array without notice.
  han.infra.slurm_job:
    name: han-pose-worker
    state: absent
    job_ids: ["4230_1"]
    signal: KILL
    full: true
"""

RETURN = r"""
job_id:
  description:
    - The id of the job the task is about, as sbatch printed it (the array's id for an array job).
    - The one submitted, else the running (or, failing that, the oldest pending) job of that name; with
      O(state=absent), the running (or oldest) of the jobs cancelled. Empty when there is none.
  returned: always
  type: str
  sample: "4211"
job_ids:
  description:
    - With O(state=present), every pending or running job of that name after the task, one entry per array
      task, such as a running job and its C(--dependency=singleton) successor.
    - With O(state=absent), the jobs cancelled or signalled (or, in check mode, those that would be).
  returned: always
  type: list
  elements: str
  sample: ["4211", "4212"]
state:
  description: Slurm's state of RV(job_id), such as PENDING, RUNNING, CANCELLED or COMPLETED; empty when
    there is no job.
  returned: always
  type: str
  sample: RUNNING
node:
  description: The node(s) RV(job_id) runs on, as Slurm lists them; empty while it is pending.
  returned: always
  type: str
  sample: gpu-node07
time_left:
  description: The walltime RV(job_id) has left, as Slurm prints it (C(D-HH:MM:SS), C(HH:MM:SS), C(MM:SS) or
    C(UNLIMITED)); empty when it is not pending or running.
  returned: always
  type: str
  sample: "11:59:58"
partition:
  description: The partition of RV(job_id).
  returned: always
  type: str
  sample: batch
output_path:
  description: Where the standard output of RV(job_id) goes, with Slurm's patterns resolved; for an array,
    that of the task RV(state) describes (a running one first).
  returned: always
  type: str
  sample: /home/pegasus/.han/logs/han-control-plane-4211.out
differs:
  description:
    - Options (V(partition), V(time), V(gres)) in which the pending or running job found differs from what the
      task asks. The job is left as it is, and a warning says how it differs; cancel it with O(state=absent)
      to resubmit.
  returned: always
  type: list
  elements: str
  sample: [partition]
cmd:
  description: Every command that changed something (sbatch or scancel), as argument vectors; in check mode,
    those that would run. Empty when nothing changed.
  returned: always
  type: list
  elements: list
  sample: [["/usr/bin/sbatch", "--parsable", "--job-name=han-control-plane", "--partition=batch",
            "--time=12:00:00", "/home/pegasus/.han/control-plane.sbatch"]]
last_finished:
  description:
    - The most recent job of that name that has ended, when none is pending or running before the task;
      otherwise, or when nothing is known of one, an empty dictionary.
  returned: always
  type: dict
  contains:
    job_id:
      description: Its id (array tasks as C(ID_TASK) while slurmctld remembers them).
      type: str
      sample: "4198"
    state:
      description: Its final state, such as COMPLETED, FAILED, CANCELLED or TIMEOUT.
      type: str
      sample: FAILED
    exit_code:
      description: Its exit code and the signal that ended it, as C(CODE:SIGNAL).
      type: str
      sample: "3:0"
    end_time:
      description: When it ended.
      type: str
      sample: "2026-11-28T21:04:34"
    node:
      description: Where it ran; empty when it never started.
      type: str
      sample: gpu-node07
    partition:
      description: Its partition.
      type: str
      sample: RTXA6000
    output_path:
      description: Its standard output; empty when read from job completion records, which do not keep it.
      type: str
      sample: /home/pegasus/.han/logs/han-control-plane-4198.out
    source:
      description: V(squeue) (slurmctld still remembers the job) or V(sacct) (job completion records).
      type: str
      sample: squeue
option:
  description: The option at fault, when the module failed because of one (RV(problem) says why).
  returned: when an option is wrong
  type: str
  sample: partition
problem:
  description: What is wrong with RV(option), for a caller that names it in its own words.
  returned: when an option is wrong
  type: str
  sample: "partition 'RTXA600' does not exist on this cluster (partitions: batch, RTXA6000)"
"""

import contextlib
import os
import pwd

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.han.infra.plugins.module_utils.slurm import COMMAND_ENVIRONMENT
from ansible_collections.han.infra.plugins.module_utils.slurm_ensure import (
    JobControl,
    Slurm,
    SlurmError,
    required_commands,
)
from ansible_collections.han.infra.plugins.module_utils.slurm_request import (
    JobRequest,
    OptionError,
    find_commands,
)

ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "script": {"type": "path"},
    "wrap": {"type": "str"},
    "partition": {"type": "str"},
    "time": {"type": "str"},
    "gres": {"type": "str"},
    "cpus_per_task": {"type": "int"},
    "mem": {"type": "str"},
    "output": {"type": "str"},
    "chdir": {"type": "path"},
    "dependency": {"type": "str"},
    "signal": {"type": "str"},
    "batch_only": {"type": "bool", "default": False},
    "full": {"type": "bool", "default": False},
    "job_ids": {"type": "list", "elements": "str", "default": []},
    "states": {"type": "list", "elements": "str", "default": []},
    "array": {"type": "str"},
    "fill_array": {"type": "bool", "default": False},
    "export": {"type": "str", "choices": ["ALL", "NONE"]},
    "extra_args": {"type": "list", "elements": "str", "default": []},
    "wait_started": {"type": "bool", "default": False},
    "wait_ended": {"type": "bool", "default": False},
    "timeout": {"type": "int", "default": 120},
    "slurm_bin_dir": {"type": "path"},
}


def slurm_commands(module, request):
    search_path = os.environ.get("PATH", "")
    commands = find_commands(required_commands(request), module.params["slurm_bin_dir"], search_path)
    with contextlib.suppress(OptionError):  # only for last_finished, which does without it
        commands.update(find_commands(["sacct"], module.params["slurm_bin_dir"], search_path))
    return commands


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=[("script", "wrap")],
        required_if=[("state", "present", ("script", "wrap"), True)],
        supports_check_mode=True,
    )
    try:
        request = JobRequest(module.params)
        slurm = Slurm(
            lambda argv: module.run_command(argv, environ_update=COMMAND_ENVIRONMENT),
            slurm_commands(module, request),
        )
        user = pwd.getpwuid(os.geteuid()).pw_name
        result, warnings = JobControl(slurm, request, user).run(module.check_mode)
    except OptionError as error:
        module.fail_json(msg=str(error), changed=False, option=error.option, problem=error.problem)
    except SlurmError as error:
        module.fail_json(msg=str(error), **error.result)
    for warning in warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
