#!/usr/bin/python
# Copyright (c) han-infra developers
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
# ruff: noqa: E402 - validate-modules wants the imports below DOCUMENTATION, EXAMPLES and RETURN.

from __future__ import annotations

DOCUMENTATION = r"""
module: slurm_job_info
short_description: List the Slurm jobs of the user the module runs as, by name, job id and state
version_added: 0.1.0
description:
  - Lists the jobs of the user the module runs as that Slurm's controller knows, pending, running and those
    that ended within C(MinJobAge), one entry per array task, oldest first.
  - Selects them by O(name), O(job_ids) and O(states); with none of them, every job of the user.
  - Each job comes with what its state means (RV(jobs[].alive), RV(jobs[].started), RV(jobs[].finished)),
    decided from the collection's one list of Slurm job states, so that no task has to compare states itself.
  - Read-only; it runs C(squeue) as an argument vector, never through a shell.
author:
  - han-infra developers (@han-infra)
options:
  name:
    description:
      - Only jobs of this name (C(squeue --name)).
    type: str
  job_ids:
    description:
      - Only these jobs (C(squeue --jobs)), each a job id, an array task such as V(4211_3), or an array's id
        for all its tasks. An id that Slurm does not know (any more) gives no entry, not an error.
    type: list
    elements: str
    default: []
  states:
    description:
      - Only jobs in one of these states, such as V(RUNNING) or V(PENDING); Slurm's state names (squeue
        C(%T)), in any case. Others are refused.
      - Without it, jobs in any state, those that ended within C(MinJobAge) included.
    type: list
    elements: str
    default: []
  slurm_bin_dir:
    description:
      - Directory holding Slurm's C(squeue) on the target, for sites where it is not on the PATH of a
        non-interactive SSH session. When not set, C(squeue) is looked up on the target's PATH.
    type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: The module only reads; check mode changes nothing in what it does.
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - The user is the one the module runs as (C(remote_user), C(become_user)); jobs of other users are not
    listed.
  - Jobs that ended longer than C(MinJobAge) ago (300 seconds by default) are forgotten by Slurm's controller
    and not listed; M(han.infra.slurm_job) reports the last one of a name from job completion records.
  - Slurm 22.05 has C(squeue --json), but it ignores every filter and prints every job of the cluster, so this
    module reads C(squeue --format) text.
requirements:
  - Slurm's client command C(squeue) on the target (tested with Slurm 22.05).
seealso:
  - module: han.infra.slurm_job
  - name: squeue
    description: What squeue prints for each field, and the job states.
    link: https://slurm.schedmd.com/squeue.html
"""

EXAMPLES = r"""
- name: Read the state of the control plane's jobs.
  han.infra.slurm_job_info:
    name: han-control-plane
  register: control_plane_jobs

- name: Report each of them.
  ansible.builtin.debug:
    msg: "{{ item.job_id }} {{ item.state }} on {{ item.node or 'no node' }}, {{ item.time_left }} left"
  loop: "{{ control_plane_jobs.jobs | selectattr('alive') }}"

- name: Find the running control-plane job.
  han.infra.slurm_job_info:
    name: han-control-plane
    states: [RUNNING]
  register: running_control_plane

- name: Wait until two tasks of the worker array run.
  han.infra.slurm_job_info:
    name: han-pose-worker
    states: [RUNNING]
  register: running_workers
  until: running_workers.jobs | length >= 2
  retries: 30
  delay: 2

- name: Read one array task, by its id.
  han.infra.slurm_job_info:
    job_ids: ["4230_1"]
  register: worker_task
"""

RETURN = r"""
jobs:
  description:
    - The jobs found, oldest first, one entry per array task; empty when there is none.
    - Every field as C(squeue) prints it, with an empty string where it prints N/A or the like.
  returned: always
  type: list
  elements: dict
  contains:
    job_id:
      description: The job's id as Slurm displays it, C(ID) or C(ARRAYID_TASK) for an array task.
      type: str
      sample: "4230_1"
    array_job_id:
      description: The id sbatch printed, the array's for an array task (C(%F)); the job id otherwise.
      type: str
      sample: "4230"
    array_task_id:
      description: The task's index in its array (C(%K)); empty outside arrays.
      type: str
      sample: "1"
    name:
      description: The job's name.
      type: str
      sample: han-pose-worker
    user:
      description: The job's user, the one the module runs as.
      type: str
      sample: pegasus
    state:
      description: Slurm's state of the job (C(%T)), such as PENDING, RUNNING, COMPLETING, COMPLETED or
        FAILED.
      type: str
      sample: RUNNING
    reason:
      description: Why it is pending, or how it ended (C(%r)), such as Resources, Dependency, None or
        NonZeroExitCode.
      type: str
      sample: None
    partition:
      description: Its partition.
      type: str
      sample: RTXA6000
    node:
      description: The node(s) it runs or ran on, as Slurm lists them (C(%N)); empty while pending.
      type: str
      sample: gpu-node07
    time_used:
      description: How long it has run (C(%M)), such as C(1:02:03) or C(0:00).
      type: str
      sample: "1:02:03"
    time_left:
      description: The walltime it has left (C(%L)); empty for a job that has ended.
      type: str
      sample: "10:57:57"
    time_limit:
      description: Its walltime (C(%l)), such as C(12:00:00) or C(UNLIMITED).
      type: str
      sample: "12:00:00"
    submit_time:
      description: When it was submitted (C(%V)); the node's local time.
      type: str
      sample: "2026-12-05T20:59:58"
    start_time:
      description: When it started, or is expected to start while pending (C(%S)); the node's local time,
        empty when Slurm cannot tell.
      type: str
      sample: "2026-12-05T21:00:00"
    end_time:
      description: When it ended, or when its walltime ends while it runs (C(%e)); the node's local time.
      type: str
      sample: "2026-12-06T09:00:00"
    tres_per_node:
      description: Its generic resources per node (C(%b)), such as C(gres:gpu:1); empty when none.
      type: str
      sample: "gres:gpu:1"
    alive:
      description: Pending or running, so it may still run; false once it ends (COMPLETING included). A state
        the collection does not know counts as alive.
      type: bool
      sample: true
    started:
      description: It is no longer queued; it runs, or has ended (a job cancelled while pending included).
      type: bool
      sample: true
    finished:
      description: It has ended and Slurm reports its final state (COMPLETED, FAILED, CANCELLED, TIMEOUT,
        ...). A job that is C(started) and not C(finished) may still have processes on its node.
      type: bool
      sample: false
option:
  description: The option at fault, when the module failed because of one.
  returned: when an option is wrong
  type: str
  sample: states
problem:
  description: What is wrong with RV(option).
  returned: when an option is wrong
  type: str
  sample: "'RUNING' is not a Slurm job state; use one of BOOT_FAIL, CANCELLED, ..."
"""

import os
import pwd

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.han.infra.plugins.module_utils.slurm import COMMAND_ENVIRONMENT
from ansible_collections.han.infra.plugins.module_utils.slurm_ensure import Slurm, SlurmError
from ansible_collections.han.infra.plugins.module_utils.slurm_info import InfoRequest, job_infos
from ansible_collections.han.infra.plugins.module_utils.slurm_request import OptionError, find_commands

ARGUMENT_SPEC = {
    "name": {"type": "str"},
    "job_ids": {"type": "list", "elements": "str", "default": []},
    "states": {"type": "list", "elements": "str", "default": []},
    "slurm_bin_dir": {"type": "path"},
}


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        request = InfoRequest(module.params)
        commands = find_commands(["squeue"], module.params["slurm_bin_dir"], os.environ.get("PATH", ""))
        slurm = Slurm(lambda argv: module.run_command(argv, environ_update=COMMAND_ENVIRONMENT), commands)
        jobs = job_infos(slurm, request, pwd.getpwuid(os.geteuid()).pw_name)
    except OptionError as error:
        module.fail_json(msg=str(error), option=error.option, problem=error.problem)
    except SlurmError as error:
        module.fail_json(msg=str(error))
    module.exit_json(changed=False, jobs=jobs)


if __name__ == "__main__":
    main()
